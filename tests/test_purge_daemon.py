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
