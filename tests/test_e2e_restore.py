"""End to end, as a practice meets it: the daemon archives several patients' documents and
syncs them to two folder drives and a loop-mounted ext4 drive; a patient's file is restored;
then the workstation is lost and everything comes back from the ext4 drive and the recovery
sheet alone, on a "new machine" with no configuration and no state."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from coldvault.catalog.db import Catalog
from coldvault.drives.events import DriveEvent
from tests import fs_fixtures
from tests.daemon_fixtures import (
    Source,
    VaultEnv,
    coldvault_argv,
    make_env,
    recovery_key,
    signing_fingerprint,
    subprocess_env,
    wait_for,
)
from tests.test_daemon import Running, _blkid_uuid, _fill

SCANNER = Source("scanner", pattern=r"^(?P<patient>[0-9]+)_", kind="scan")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[VaultEnv]:
    e = make_env(tmp_path / "practice", [SCANNER], copies=3)
    try:
        yield e
    finally:
        e.kill_all()


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.root
def test_three_drives_restore_then_recover_from_one(env: VaultEnv, tmp_path: Path) -> None:
    fs_fixtures.require("ext4")
    if shutil.which("blkid") is None:
        pytest.skip("needs blkid (util-linux)")
    files = _fill(env, 9)  # patients 4000, 4001, 4002
    folders = {name: tmp_path / f"usb-{name}" for name in ("A", "B")}
    for name, folder in folders.items():
        folder.mkdir()
        assert env.cli_inprocess("drive", "enroll", str(folder), "--name", name) == 0
    (tmp_path / "img").mkdir()
    with fs_fixtures.loop_drive(tmp_path / "img", "ext4", size_mib=32) as loop:
        uuid = _blkid_uuid(loop.loop)
        assert env.cli_inprocess("drive", "enroll", str(loop.mountpoint), "--name", "Ext") == 0
        with Running(env, unmount=True) as run:
            wait_for("ingest", lambda: env.document_count() >= len(files), 30)
            for i, folder in enumerate(folders.values()):
                run.source.inject(
                    DriveEvent(
                        "add",
                        f"/dev/fake{i}",
                        None,
                        None,
                        None,
                        None,
                        True,
                        "disk",
                        str(folder),
                        "fake",
                    )
                )
            run.source.inject(
                DriveEvent("add", loop.loop, uuid, "CVTEST", "ext4", None, True, "disk")
            )
            wait_for("three drives done", lambda: len(run.told("You can remove")) >= 3, 60)
        assert not fs_fixtures.is_mounted(loop.mountpoint), "the daemon did not unmount it"
        with Catalog(env.vault.catalog_path) as cat:
            docs = cat.documents()
            assert len(docs) == len(files)
            for d in docs:  # on three drives: gone from the spool
                assert sorted(cat.copies_of(d.object_path)) == ["A", "B", "Ext"]
                assert not (env.vault.spool / d.object_path).exists()
        loop.mount()
        penv = subprocess_env(COLDVAULT_PASSPHRASE_FILE=str(env.passphrase_file))

        # A patient asks for their file.
        out = tmp_path / "restored"
        env.cli("restore", "4001", "--to", str(out), "--reason", "demande du patient", env=penv)
        want = {n: d for n, d in files.items() if n.startswith("4001_")}
        assert _tree(out / "4001") == want

        # The workstation is lost: a new machine, no configuration, no state; the ext4 drive
        # and the recovery sheet only.
        sheet = tmp_path / "sheet.txt"
        sheet.write_text(recovery_key(env.init_output) + "\n")
        shutil.rmtree(env.state)
        env.config.unlink()
        new_machine = subprocess_env(COLDVAULT_CONFIG=str(tmp_path / "nowhere.toml"))
        rec = tmp_path / "recovered"
        res = subprocess.run(
            [
                *coldvault_argv(),
                "recover",
                "--drive",
                str(loop.mountpoint),
                "--to",
                str(rec),
                "--recovery-key-file",
                str(sheet),
                "--fingerprint",
                signing_fingerprint(env.init_output),
            ],
            env=new_machine,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stdout + res.stderr
        got = {p.name: p.read_bytes() for p in rec.rglob("*") if p.is_file()}
        assert got == files
        for pid in ("4000", "4001", "4002"):
            assert {p.name for p in (rec / pid).iterdir()} == {
                n for n in files if n.startswith(pid + "_")
            }
