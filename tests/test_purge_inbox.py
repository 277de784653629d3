"""The unsorted inbox is sealed to the master key: a purge's master rotation carries it over
(re-encrypted to the new master), or refuses to start when it cannot reach it."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest

from coldvault import keys, objects
from coldvault.errors import AgeError
from coldvault.ingest import Ingestor, IngestRequest
from tests.test_cli import Cli, assert_one_error, make_cli

AS_OF = "2030-06-15"


def _unsorted(cv: Cli, name: str, data: bytes) -> tuple[str, str]:
    path = cv.write(name, data)
    with cv.catalog() as cat:
        ing = Ingestor(cv.vault, cat)
        try:
            (res,) = ing.ingest_batch([IngestRequest(path, source="scanner", patient_id=None)])
        finally:
            ing.close()
    assert res.doc_id is not None and res.object_path is not None
    return res.doc_id, res.object_path


def _opens(data: bytes, identity: keys.AnyIdentity) -> bytes | None:
    out = io.BytesIO()
    try:
        objects.read_object(io.BytesIO(data), [identity], out)
    except AgeError:
        return None
    return out.getvalue()


@pytest.fixture
def cv(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    c = make_cli(tmp_path, capsys, monkeypatch)
    c.init()
    return c


def test_purge_carries_the_unsorted_inbox_over_to_the_new_master(cv: Cli) -> None:
    scan = os.urandom(7000)
    doc_id, obj = _unsorted(cv, "scan sans nom.pdf", scan)
    cv.ingest("100", cv.write("old.pdf", os.urandom(3000)), date="2005-01-10")  # expired
    assert cv("patient", "set", "100", "--born", "1950-01-01").rc == 0
    a, b = cv.drive("A"), cv.drive("B")
    assert cv("drive", "sync").rc == 0
    assert not (cv.vault.spool / obj).exists()  # only on the drives now
    old_master = keys.parse_recovery_key(cv.recovery_key)

    # Both drives away: the inbox cannot be carried over, so nothing is done.
    away = cv.tmp / "away"
    away.mkdir()
    shutil.move(a, away / "A")
    shutil.move(b, away / "B")
    dry = cv("purge", "--as-of", AS_OF)
    assert dry.rc == 0 and "Unsorted inbox: 1 document(s), kept" in dry.out
    assert "plug in one of: A, B" in dry.out
    r = cv("purge", "--as-of", AS_OF, "--execute", "--yes")
    assert_one_error(r, 3, "unsorted inbox", "not plugged in")
    assert len(cv.documents("100")) == 1 and not (cv.state / "identity.next.age").exists()

    # Drive A back: the purge runs and re-encrypts the inbox object into the spool.
    shutil.move(away / "A", a)
    r = cv("purge", "--as-of", AS_OF, "--execute", "--yes")
    assert r.rc == 0, r.err
    new_key = r.out.split("NEW RECOVERY KEY", 1)[1].split("AGE-SECRET-KEY-", 1)[1].split()[0]
    new_master = keys.parse_recovery_key("AGE-SECRET-KEY-" + new_key)
    assert "Destroyed 1 document(s) of 1 patient(s)" in r.out
    spool_copy = (cv.vault.spool / obj).read_bytes()
    assert _opens(spool_copy, new_master) == scan
    assert _opens(spool_copy, old_master) is None
    # Drive A got the new version at the purge's sync; B gets it when it comes back, and
    # then the old master is destroyed.
    assert _opens((a / "coldvault" / obj).read_bytes(), new_master) == scan
    shutil.move(away / "B", b)
    assert cv("drive", "sync", "B").rc == 0
    assert not (cv.state / "identity.previous.age").exists()
    for root in (a, b):
        data = (root / "coldvault" / obj).read_bytes()
        assert _opens(data, new_master) == scan and _opens(data, old_master) is None
    assert cv("verify").rc == 0
    # The document is still in the inbox and can be filed.
    r = cv("assign", doc_id, "--patient", "9")
    assert r.rc == 0, r.err
    out = cv.tmp / "restored"
    assert cv("restore", "9", "--to", str(out)).rc == 0
    assert (out / "9" / "scan sans nom.pdf").read_bytes() == scan


@pytest.mark.parametrize(
    "spec",
    [
        "coldvault.inbox:reseal_inbox:after:1",  # inbox re-encrypted, masters not switched
        "coldvault.keys:reseal_patient_key:after:1",  # one patient key re-sealed
        "coldvault.vault:Vault.update_info:after:1",  # vault.json names the new master
        "coldvault.vault:Vault.switch_master:before:1",
    ],
)
def test_a_purge_killed_during_the_rotation_is_resumed_with_the_same_new_master(
    cv: Cli, tmp_path: Path, spec: str, caplog: pytest.LogCaptureFixture
) -> None:
    import subprocess

    from tests.daemon_fixtures import coldvault_argv, crash_env

    scan = os.urandom(5000)
    _doc_id, obj = _unsorted(cv, "inbox.pdf", scan)
    for pid in ("100", "200"):
        cv.ingest(pid, cv.write(f"{pid}.pdf", os.urandom(3000)), date="2005-01-10")
    assert cv("patient", "set", "100", "--born", "1950-01-01").rc == 0
    keep = os.urandom(4000)
    cv.ingest("300", cv.write("recent.pdf", keep), date="2029-01-10")
    argv = [*coldvault_argv(), "--config", str(cv.config), "purge", "--as-of", AS_OF]
    killed = subprocess.run(
        [*argv, "--execute", "--yes"],
        env=crash_env(tmp_path / "crash", spec),
        capture_output=True,
        timeout=120,
    )
    assert killed.returncode == -9, killed.stderr
    assert (cv.state / "identity.next.age").exists()
    assert (cv.state / "identity.age").exists()
    with cv.catalog() as cat:  # what was destroyed is recorded, with its destruction record
        (record,) = cat.conn.execute("SELECT record_json FROM purges").fetchall()
    assert '"document_count": 1' in record[0]

    r = cv("purge", "--as-of", AS_OF, "--execute", "--yes")
    if "update_info" in spec or "switch_master" in spec:
        # The rotation was complete but for the switch, which the unlock finished.
        assert r.rc == 3 and "Nothing to destroy" in r.out, r.out + r.err
        assert "NEW RECOVERY KEY" not in killed.stdout.decode()  # killed before showing it
        assert "coldvault key recovery-sheet" in caplog.text  # stderr, from the CLI
        assert not (cv.state / "identity.next.age").exists()
        sheet = cv("key", "recovery-sheet")
        assert sheet.rc == 0 and cv.fingerprint in sheet.out
        new_master = keys.parse_recovery_key(
            "AGE-SECRET-KEY-" + sheet.out.split("AGE-SECRET-KEY-")[1].split()[0]
        )
    else:
        assert r.rc == 0, r.err
        assert "Finishing the master key rotation" in r.out and "Destroyed" not in r.out
        new_master = keys.parse_recovery_key(
            "AGE-SECRET-KEY-"
            + r.out.split("NEW RECOVERY KEY", 1)[1].split("AGE-SECRET-KEY-")[1].split()[0]
        )
    assert str(new_master.recipient()) == cv.vault.info.master_recipient
    assert _opens((cv.vault.spool / obj).read_bytes(), new_master) == scan
    # Every surviving patient key opens with the new master, and their documents come back.
    for pid, data in (("300", keep),):
        out = cv.tmp / f"restored-{pid}"
        assert cv("restore", pid, "--to", str(out)).rc == 0
        assert (out / pid / "recent.pdf").read_bytes() == data
    with cv.catalog() as cat:
        for p in cat.patients():
            if not p.purged:
                keys.open_patient_key(
                    (cv.vault.spool / "keys" / f"{p.key_id}.age").read_bytes(), [new_master]
                )


def test_a_patient_with_a_new_document_since_the_plan_is_kept(cv: Cli) -> None:
    from datetime import date

    from coldvault.purge import execute, make_plan
    from coldvault.retention.rules import settings_from_config
    from tests.helpers import PASSPHRASE

    cv.ingest("100", cv.write("old.pdf", os.urandom(3000)), date="2005-01-10")
    assert cv("patient", "set", "100", "--born", "1950-01-01").rc == 0
    vault = cv.vault
    masters = vault.unlock_all(PASSPHRASE)
    with cv.catalog() as cat:
        plan = make_plan(cat, masters, settings_from_config(None), date(2030, 6, 15))
        assert len(plan.destroy) == 1
        visit = os.urandom(2000)  # the daemon archives a new visit in between
        cv.ingest("100", cv.write("visit.pdf", visit), date="2030-06-01")
        result = execute(vault, cat, masters, plan, passphrase=PASSPHRASE, operator="t")
    assert result.destroyed_patients == 0 and result.record is None
    out = cv.tmp / "restored"
    assert cv("restore", "100", "--to", str(out)).rc == 0
    assert (out / "100" / "visit.pdf").read_bytes() == visit
    assert len(list((out / "100").iterdir())) == 2
