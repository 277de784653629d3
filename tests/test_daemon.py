"""The daemon end to end: a real ``coldvault daemon`` process archiving what a scanner and an
export job drop, signals, and (in-process, with a fake drive-event source) syncing a plugged
drive: a folder, and as root a real loop-mounted ext4 found through the mount table."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coldvault.catalog.db import Catalog
from coldvault.config import load_config
from coldvault.daemon import Daemon
from coldvault.drives.events import DriveEvent, FakeDriveSource
from coldvault.drives.station import enroll
from tests import fs_fixtures
from tests.daemon_fixtures import (
    Source,
    VaultEnv,
    decrypt_object,
    make_env,
    sha256,
    spool_strays,
    wait_for,
)

pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

SCANNER = Source("scanner", pattern=r"^(?P<patient>[0-9]+)_", kind="scan")
EXPORTS = Source("exports", per_patient_folders=True, kind="export")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[VaultEnv]:
    e = make_env(tmp_path, [SCANNER, EXPORTS])
    try:
        yield e
    finally:
        e.kill_all()


def _data(seed: int, size: int) -> bytes:
    import random

    return random.Random(seed).randbytes(size)


# --- writers, as real programs write ---------------------------------------------------------
def slow_chunks(path: Path, data: bytes, chunks: int = 5, pause: float = 0.2) -> None:
    """A scanner writing in place, slowly, then closing once."""
    step = -(-len(data) // chunks)
    with open(path, "wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i : i + step])
            f.flush()
            time.sleep(pause)


def tmp_then_rename(path: Path, data: bytes, suffix: str = ".tmp") -> None:
    tmp = path.with_name("." + path.name + suffix)
    with open(tmp, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(0.2)
        f.write(data[len(data) // 2 :])
    os.rename(tmp, path)


def presized_then_filled(path: Path, data: bytes, chunks: int = 5, pause: float = 0.15) -> None:
    """Windows' copy engine over SMB: the file gets its final size (zeros) and is closed, then
    reopened and filled, then its time is set."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, len(data))
    os.close(fd)
    time.sleep(0.02)
    fd = os.open(path, os.O_WRONLY)
    step = -(-len(data) // chunks)
    try:
        for off in range(0, len(data), step):
            os.pwrite(fd, data[off : off + step], off)
            time.sleep(pause)
    finally:
        os.close(fd)
    os.utime(path, (1_700_000_000, 1_700_000_000))


def test_daemon_archives_what_scanners_and_exports_drop(env: VaultEnv, tmp_path: Path) -> None:
    scan = env.sources["scanner"]
    exp = env.sources["exports"]
    expected: dict[tuple[str, str], tuple[bytes, str | None]] = {}

    def put(source: str, rel: str, data: bytes, patient: str | None) -> bytes:
        expected[(source, rel)] = (data, patient)
        return data

    # Before the daemon starts: found by the start-up scan.
    (scan / "1004_before.pdf").write_bytes(
        put("scanner", "1004_before.pdf", _data(1, 3000), "1004")
    )
    (scan / "leftover.tmp").write_bytes(b"a temporary file is never archived")
    d = env.start_daemon()
    d.wait_ready()

    # A tree prepared elsewhere on the same filesystem, copied in and moved in.
    staging = tmp_path / "staging"
    for patient, files in {"2001": ["a.pdf", "sub/b.pdf", "sub/deeper/c.pdf"], "2002": ["x.pdf"],
                           "2003": ["moved.pdf", "deep/er/moved2.pdf"]}.items():  # fmt: skip
        for i, rel in enumerate(files):
            p = staging / patient / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(
                put(
                    "exports",
                    f"{patient}/{rel}",
                    _data(zlib.crc32(rel.encode()), 2000 + i),
                    patient,
                )
            )

    def job(fn: Any, name: str, data: bytes, patient: str, *more: str) -> threading.Thread:
        return threading.Thread(
            target=fn, args=(scan / name, put("scanner", name, data, patient), *more)
        )

    writers = [
        job(slow_chunks, "1001_slow.pdf", _data(7, 600_000), "1001"),
        job(tmp_then_rename, "1002_renamed.pdf", _data(2, 200_000), "1002"),
        job(tmp_then_rename, "1002_part.pdf", _data(3, 50_000), "1002", ".part"),
        job(presized_then_filled, "1003_presized.pdf", _data(4, 400_000), "1003"),
        threading.Thread(target=shutil.copytree, args=(staging / "2001", exp / "2001")),
        threading.Thread(target=shutil.copytree, args=(staging / "2002", exp / "2002")),
    ]
    for t in writers:
        t.start()
    os.rename(staging / "2003", exp / "2003")  # moved in: no close event at all
    (scan / "unsorted_letter.pdf").write_bytes(
        put("scanner", "unsorted_letter.pdf", _data(5, 1500), None)
    )
    (exp / "toplevel.pdf").write_bytes(put("exports", "toplevel.pdf", _data(6, 1700), None))
    for t in writers:
        t.join()

    wait_for(f"{len(expected)} documents", lambda: env.document_count() >= len(expected), 30)
    time.sleep(2.5)  # more than a rescan interval: nothing is archived a second time
    assert d.alive(), d.log_text()

    st = env.status()
    assert st["documents"] == len(expected)
    assert st["unsorted"] == 2
    master = env.unlock()
    vault = env.vault
    for (source, rel), (data, patient) in expected.items():
        versions = env.docs_for(source, rel)
        assert len(versions) == 1, f"{source}/{rel} archived {len(versions)} times"
        _doc_id, digest, key_id, obj = versions[0]
        assert digest == sha256(data), f"{source}/{rel}: archived content is not the final one"
        assert (key_id is None) == (patient is None)
        got = decrypt_object((vault.spool / obj).read_bytes(), vault, master, key_id)
        assert got == data
    for patient in ("1001", "1002", "1003", "1004", "2001", "2002", "2003"):
        want = sum(1 for (_s, _r), (_d, p) in expected.items() if p == patient)
        assert len(env.ls(patient)) == want
    unsorted = env.ls("--unsorted")
    assert sorted(u["source"] for u in unsorted) == ["exports", "scanner"]
    summary = env.ls()
    assert summary["unsorted"] == 2 and len(summary["patients"]) == 7

    # Modified after archiving: a new version, archived on its own; the first one stays.
    with open(scan / "1004_before.pdf", "ab") as f:
        f.write(b"addendum")
    new = expected[("scanner", "1004_before.pdf")][0] + b"addendum"
    versions = wait_for(
        "the new version", lambda: (v := env.docs_for("scanner", "1004_before.pdf"))[1:] and v, 20
    )
    assert [v[1] for v in versions] == [
        sha256(expected[("scanner", "1004_before.pdf")][0]),
        sha256(new),
    ]
    assert versions[0][2] == versions[1][2]  # same patient
    time.sleep(1.0)
    assert len(env.docs_for("scanner", "1004_before.pdf")) == 2
    assert env.document_count() == len(expected) + 1

    t0 = time.monotonic()
    assert d.stop(signal.SIGTERM) == 0, d.log_text()
    assert time.monotonic() - t0 < 15
    events = env.journal_events()
    assert "daemon-start" in events and events.count("ingest") >= 1
    assert "Traceback" not in d.log_text()
    assert spool_strays(vault) == []
    for name in os.listdir(scan):
        assert name in {"1001_slow.pdf", "1002_renamed.pdf", "1002_part.pdf", "1003_presized.pdf",
                        "1004_before.pdf", "unsorted_letter.pdf", "leftover.tmp"}  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_batch_exits_0_and_nothing_is_lost(env: VaultEnv, sig: int) -> None:
    scan = env.sources["scanner"]
    files = {f"{3000 + i}_doc.pdf": _data(100 + i, 300_000) for i in range(12)}
    d = env.start_daemon()
    d.wait_ready()
    for name, data in files.items():
        (scan / name).write_bytes(data)
    wait_for("the first document", lambda: env.document_count() >= 1, 20, interval=0.02)
    t0 = time.monotonic()
    assert d.stop(sig) == 0, d.log_text()
    assert time.monotonic() - t0 < 15
    assert "Traceback" not in d.log_text()
    # Restarted, it archives the rest, each file once.
    d2 = env.start_daemon()
    d2.wait_ready()  # the first one may have finished it all: d2 must be past its start-up
    wait_for("every document", lambda: env.document_count() >= len(files), 30)
    time.sleep(0.8)
    assert d2.stop(sig) == 0
    for name, data in files.items():
        versions = env.docs_for("scanner", name)
        assert [v[1] for v in versions] == [sha256(data)], name
    assert env.journal_events().count("daemon-start") == 2
    assert spool_strays(env.vault) == []


# --- in-process: drives ----------------------------------------------------------------------
class Running:
    """``Daemon(...).run(install_signals=False)`` in a thread, with a fake drive source."""

    def __init__(self, env: VaultEnv, *, unmount: bool = True) -> None:
        self.source = FakeDriveSource()
        self.messages: list[tuple[str, str]] = []
        self.daemon = Daemon(
            load_config(env.config),
            drive_source=self.source,
            watch_drives=True,
            notify=lambda summary, body: self.messages.append((summary, body)),
            unmount=unmount,
        )
        self.rc: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.rc = self.daemon.run(install_signals=False)
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int | None:
        self.daemon.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the daemon thread did not stop"
        if self.error is not None:
            raise self.error
        return self.rc

    def told(self, needle: str) -> list[tuple[str, str]]:
        if self.error is not None or not self.thread.is_alive():
            raise AssertionError(f"the daemon stopped: {self.error!r}")
        return [m for m in list(self.messages) if needle in m[1]]


def _fill(env: VaultEnv, n: int) -> dict[str, bytes]:
    files = {f"{4000 + i % 3}_doc{i}.pdf": _data(200 + i, 20_000 + i) for i in range(n)}
    for name, data in files.items():
        (env.sources["scanner"] / name).write_bytes(data)
    return files


def test_plugged_folder_drive_is_synced_then_user_told_to_remove(
    env: VaultEnv, tmp_path: Path
) -> None:
    files = _fill(env, 5)
    drive = tmp_path / "usb-folder"
    drive.mkdir()
    with Running(env) as run:
        wait_for("ingest", lambda: env.document_count() >= len(files), 20)
        with Catalog(env.vault.catalog_path) as cat:
            enroll(env.vault, cat, drive, "Cle-A", is_directory=True)
        run.source.inject(
            DriveEvent(
                action="add",
                devnode="/dev/fake0",
                fs_uuid=None,
                fs_label=None,
                fs_type=None,
                serial=None,
                is_usb=True,
                devtype="disk",
                mountpoint=str(drive),
                source="fake",
            )
        )
        msgs = wait_for("the 'can remove' message", lambda: run.told("You can remove"), 20)
        assert msgs[0][0] == "coldvault: drive Cle-A"
        assert f"{len(files) + 3} file(s) copied and verified" in msgs[0][1]  # + 3 patient keys
        # An unrelated folder that is not a vault drive is ignored, and the daemon lives on.
        other = tmp_path / "other-stick"
        other.mkdir()
        run.source.inject(
            DriveEvent("add", "/dev/fake1", None, None, None, None, True, "disk", str(other))
        )
        time.sleep(0.5)
        assert run.told("You can remove") == msgs
        assert not (other / "coldvault").exists()
    assert run.rc == 0
    with Catalog(env.vault.catalog_path) as cat:
        for d in cat.documents():
            assert cat.copies_of(d.object_path) == ["Cle-A"]
            assert (drive / "coldvault" / d.object_path).is_file()
    assert "drive-done" in env.journal_events()


def _blkid_uuid(dev: str) -> str:
    return fs_fixtures.run("blkid", "-s", "UUID", "-o", "value", dev).stdout.strip()


@pytest.mark.root
def test_plugged_ext4_drive_found_by_uuid_synced_and_unmounted(
    env: VaultEnv, tmp_path: Path
) -> None:
    fs_fixtures.require("ext4")
    if shutil.which("blkid") is None:
        pytest.skip("needs blkid (util-linux)")
    files = _fill(env, 6)
    (tmp_path / "img").mkdir()
    with fs_fixtures.loop_drive(tmp_path / "img", "ext4", size_mib=32) as loop:
        uuid = _blkid_uuid(loop.loop)
        assert uuid
        assert env.cli_inprocess("drive", "enroll", str(loop.mountpoint), "--name", "Ext") == 0
        with Catalog(env.vault.catalog_path) as cat:
            row = cat.drive(name="Ext")
            assert row is not None and row.fs_uuid == uuid and not row.is_directory
        with Running(env, unmount=True) as run:
            wait_for("ingest", lambda: env.document_count() >= len(files), 20)
            run.source.inject(
                DriveEvent("add", loop.loop, uuid, "CVTEST", "ext4", None, True, "disk")
            )
            msgs = wait_for("the 'can remove' message", lambda: run.told("You can remove"), 30)
            assert msgs[0][0] == "coldvault: drive Ext"
            assert not fs_fixtures.is_mounted(loop.mountpoint), "the daemon did not unmount it"
        assert run.rc == 0
        loop.mount()  # plugged in again: read everything back from the medium
        top = loop.mountpoint / "coldvault"
        with Catalog(env.vault.catalog_path) as cat:
            docs = cat.documents()
            assert len(docs) == len(files)
            held = cat.conn.execute(
                "SELECT i.path, i.sha256 FROM items i JOIN copies c ON c.path = i.path"
            ).fetchall()
        assert {p for p, _ in held} >= {d.object_path for d in docs}
        for path, digest in held:
            assert sha256((top / path).read_bytes()) == digest
        assert list((top / "manifests").glob("*.txt"))
        assert list((top / "catalog").glob("snapshot-*.age"))
        events = env.journal_events()
        assert "drive-done" in events
        res = env.cli("verify", "--drive", "Ext", check=False)
        assert res.returncode == 0, res.stdout + res.stderr


def test_overdue_drive_is_journaled_and_notified_once_not_every_hour(
    env: VaultEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drive not plugged in for longer than ``drive_overdue_days``: a warning in the journal
    and a desktop notification, repeated when the situation changes, not at every check."""
    import coldvault.daemon as daemon_mod
    from coldvault.catalog.db import Catalog

    drive = tmp_path / "drive-A"
    drive.mkdir()
    assert env.cli_inprocess("drive", "enroll", str(drive), "--name", "A") == 0
    with Catalog(env.vault.catalog_path) as cat, cat.transaction():
        cat.conn.execute("UPDATE drives SET last_seen = '2020-01-01T00:00:00+00:00', enrolled = "
                         "'2020-01-01T00:00:00+00:00'")  # fmt: skip
    monkeypatch.setattr(daemon_mod, "CHECK_INTERVAL", 0.2)
    with Running(env) as r:
        wait_for("the overdue notification", lambda: r.told("has not been plugged in"), 20)
        time.sleep(1.0)  # several more checks
        assert len(r.told("has not been plugged in")) == 1
        assert "'A' has not been plugged in for" in r.told("plugged")[0][1]
    warnings = [e for e in env.journal_events() if e == "warning"]
    assert len(warnings) == 1
    assert env.status()["alerts"][0].startswith("drive 'A' has not been plugged in for")
