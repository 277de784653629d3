"""A purge run while the daemon runs: documents the daemon archives afterwards (a new patient,
the unsorted inbox) are sealed to the new master, never to the one the purge destroys."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_fixtures import Source, VaultEnv, make_env, subprocess_env, wait_for

SCANNER = Source("scanner", pattern=r"^(?P<patient>[0-9]+)_(?P<date>[0-9]{8})", kind="scan")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[VaultEnv]:
    e = make_env(tmp_path, [SCANNER])
    try:
        yield e
    finally:
        e.kill_all()


def test_purge_while_the_daemon_runs(env: VaultEnv, tmp_path: Path) -> None:
    scan = env.sources["scanner"]
    penv = subprocess_env(COLDVAULT_PASSPHRASE_FILE=str(env.passphrase_file))

    def cv(*args: str) -> str:
        return env.cli(*args, env=penv).stdout

    d = env.start_daemon()
    d.wait_ready()
    (scan / "100_20050110_old.pdf").write_bytes(os.urandom(2000))  # expired by 2030
    wait_for("the first document", lambda: env.document_count() >= 1, 30)
    cv("patient", "set", "100", "--born", "1950-01-01")
    drive = tmp_path / "drive"
    drive.mkdir()
    cv("drive", "enroll", str(drive), "--name", "A")

    out = cv("purge", "--as-of", "2030-06-15", "--execute", "--yes")
    assert "Destroyed 1 document(s) of 1 patient(s)" in out
    # Drive A (plugged in) got the re-sealed keys: the old master is destroyed already.
    assert not (env.state / "identity.previous.age").exists()

    # Documents the running daemon archives now: a new patient and an unsorted scan.
    new_doc = os.urandom(3000)
    unsorted = os.urandom(2500)
    (scan / "777_20300701_new.pdf").write_bytes(new_doc)
    (scan / "scan sans nom.pdf").write_bytes(unsorted)
    wait_for("both documents", lambda: env.document_count() >= 2, 30)  # 1 was purged
    # The drive takes everything; the previous master is then destroyed.
    cv("drive", "sync", "A")
    assert not (env.state / "identity.previous.age").exists()
    assert d.stop() == 0, d.log_text()

    to = tmp_path / "restored"
    cv("restore", "777", "--to", str(to))
    assert (to / "777" / "777_20300701_new.pdf").read_bytes() == new_doc
    (doc,) = json.loads(cv("ls", "--unsorted", "--json"))
    cv("assign", doc["doc_id"], "--patient", "778")
    cv("restore", "778", "--to", str(to))
    assert (to / "778" / "scan sans nom.pdf").read_bytes() == unsorted


def test_a_drive_away_during_the_purge_is_purged_when_the_daemon_sees_it(
    env: VaultEnv, tmp_path: Path
) -> None:
    import shutil

    from coldvault.drives.events import DriveEvent
    from tests.test_daemon import Running

    penv = subprocess_env(COLDVAULT_PASSPHRASE_FILE=str(env.passphrase_file))

    def cv(*args: str) -> str:
        return env.cli(*args, env=penv).stdout

    scan = env.sources["scanner"]
    (scan / "100_20050110_old.pdf").write_bytes(os.urandom(2000))  # expired by 2030
    (scan / "300_20290110_recent.pdf").write_bytes(os.urandom(2000))
    drives = {n: tmp_path / f"usb-{n}" for n in ("A", "B")}
    with Running(env) as run:
        wait_for("ingest", lambda: env.document_count() >= 2, 30)
    cv("patient", "set", "100", "--born", "1950-01-01")
    for name, folder in drives.items():
        folder.mkdir()
        cv("drive", "enroll", str(folder), "--name", name)
    cv("drive", "sync")
    with env.catalog() as cat:
        ref = cat.patient_by_lookup(env.vault.lookup("patient", "100"))
        assert ref is not None
        (old,) = [d.object_path for d in cat.documents(ref.id)]
    away = tmp_path / "away-B"
    shutil.move(drives["B"], away)
    out = cv("purge", "--as-of", "2030-06-15", "--execute", "--yes")
    assert "Destroyed 1 document(s)" in out and "Plug in every other drive" in out
    assert (env.state / "identity.previous.age").exists()  # B lacks the re-sealed keys
    shutil.move(away, drives["B"])
    b = drives["B"] / "coldvault"
    assert (b / old).exists() and (b / "keys" / f"{ref.key_id}.age").exists()

    with Running(env) as run:
        run.source.inject(
            DriveEvent(
                "add", "/dev/fakeB", None, None, None, None, True, "disk", str(drives["B"]), "fake"
            )
        )
        wait_for("drive B done", lambda: run.told("You can remove"), 30)
    assert not (b / old).exists() and not (b / "keys" / f"{ref.key_id}.age").exists()
    assert not (env.state / "identity.previous.age").exists()  # every drive caught up
    record = json.loads(next((env.state / "records").glob("destruction-*.json")).read_text())
    (patient,) = record["patients"]
    assert patient["drives_pending"] == [] and sorted(patient["drives_confirmed"]) == ["A", "B"]
