"""The yearly purge end to end, through the command line: plan, crypto-shredding on the spool and
on directory drives (plugged in or not), master rotation, destruction records, legal holds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from coldvault import keys
from coldvault.errors import AuthenticationError
from tests.test_cli import Cli, assert_one_error, make_cli, tree

AS_OF = "2030-06-15"

# patient -> (birth date or None, document dates, expected action)
PATIENTS: dict[str, tuple[str | None, tuple[str, ...], str]] = {
    # 20 years after the last visit, on both sides of the boundary.
    "100": ("1950-01-01", ("2005-01-10", "2008-03-01"), "destroy"),
    "101": ("1950-01-01", ("2010-06-15",), "keep"),  # kept until 2030-06-15 inclusive
    "102": ("1950-01-01", ("2010-06-14",), "destroy"),  # kept until 2030-06-14
    # The 28th birthday, on both sides.
    "103": ("2002-06-15", ("2008-01-01",), "keep"),  # 28 on 2030-06-15
    "104": ("2002-06-14", ("2008-01-01",), "destroy"),  # 28 on 2030-06-14
    # Unknown birth date: the 28th-birthday rule could apply, or could not.
    "105": (None, ("2009-01-01",), "review"),
    "106": (None, ("1990-01-01", "2005-01-01"), "destroy"),
    # A legal hold on an expired file.
    "107": ("1950-01-01", ("2000-01-01",), "review"),
    # An expired document date, but a recent last visit from the practice software.
    "108": ("1950-01-01", ("2000-01-01",), "keep"),
}
DESTROYED = sorted(p for p, (_, _, a) in PATIENTS.items() if a == "destroy")
SURVIVORS = sorted(p for p in PATIENTS if p not in DESTROYED)


def _new_recovery_key(text: str) -> str:
    after = text.split("NEW RECOVERY KEY", 1)[1]
    m = re.search(r"AGE-SECRET-KEY-[0-9A-Z-]+", after)
    assert m is not None
    return m.group(0)


class Practice:
    """A vault with the patients above, two drives A and B synced, and facts recorded."""

    def __init__(self, cv: Cli) -> None:
        self.cv = cv
        cv.init()
        self.old_recovery_key = cv.recovery_key
        self.files: dict[str, dict[str, bytes]] = {}
        for pid, (_born, dates, _) in PATIENTS.items():
            for i, d in enumerate(dates):
                self.add(pid, f"{pid}-{i}.pdf", d)
        # Facts: most from a CSV export, one by hand, one last visit by hand.
        csv = cv.tmp / "patients.csv"
        lines = ["patient;born;died;last_visit"]
        lines += [
            f"{pid};{born};;" for pid, (born, _, _) in PATIENTS.items() if born and pid != "102"
        ]
        csv.write_text("\n".join(lines) + "\n")
        r = cv("patient", "import", str(csv))
        assert r.rc == 0, r.err
        assert cv("patient", "set", "102", "--born", "1950-01-01").rc == 0
        assert cv("patient", "set", "108", "--last-visit", "2015-01-01").rc == 0
        assert cv("hold", "107", "--reason", "contentieux en cours").rc == 0
        self.drive_a = cv.drive("A")
        self.drive_b = cv.drive("B")
        assert cv("drive", "sync").rc == 0
        # One more (older) document of a patient to destroy, only in the spool at purge time.
        self.add("102", "102-late.pdf", "2010-06-01")

    def add(self, pid: str, name: str, date: str) -> None:
        data = os.urandom(1500 + len(name) * 37)
        self.cv.ingest(pid, self.cv.write(f"{pid}/{name}", data), date=date)
        self.files.setdefault(pid, {})[name] = data

    def ref(self, pid: str) -> str:
        with self.cv.catalog() as cat:
            row = cat.patient_by_lookup(self.cv.vault.lookup("patient", pid))
            assert row is not None
            return row.key_id

    def objects(self, pid: str) -> dict[str, str]:
        """object path -> ciphertext SHA-256, of a patient's live documents."""
        with self.cv.catalog() as cat:
            out = {}
            for _doc, path in self.cv.documents(pid):
                item = cat.item(path)
                assert item is not None
                out[path] = item[2]
            return out

    def purge(self, *extra: str) -> str:
        r = self.cv(
            "purge", "--as-of", AS_OF, "--execute", "--yes", "--operator", "Dr Test", *extra
        )
        assert r.rc == 0, r.err
        return r.out


@pytest.fixture
def cv(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return make_cli(tmp_path, capsys, monkeypatch)


@pytest.fixture
def practice(cv: Cli) -> Practice:
    return Practice(cv)


def _plan(cv: Cli) -> dict[str, dict[str, object]]:
    r = cv("purge", "--as-of", AS_OF, "--json")
    assert r.rc == 0, r.err
    plan = json.loads(r.out)  # stdout holds the JSON plan alone
    assert plan["as_of"] == AS_OF and plan["profile"] == "cnil-2020"
    return {p["ref"]: p for p in plan["patients"]}


def test_dry_run_lists_exactly_the_expected_patients(practice: Practice) -> None:
    cv = practice.cv
    before = tree(cv.state / "spool")
    plan = _plan(cv)
    refs = {pid: practice.ref(pid) for pid in PATIENTS}
    assert set(plan) == set(refs.values())
    got = {pid: plan[ref]["action"] for pid, ref in refs.items()}
    assert got == {pid: action for pid, (_, _, action) in PATIENTS.items()}
    assert plan[refs["101"]]["kept_until"] == "2030-06-15"
    assert plan[refs["102"]]["kept_until"] == "2030-06-14"
    assert plan[refs["103"]]["kept_until"] == "2030-06-15"
    assert "28th birthday" in str(plan[refs["103"]]["rule"])
    assert plan[refs["108"]]["last_visit"] == "2015-01-01"
    assert plan[refs["108"]]["kept_until"] == "2035-01-01"
    assert plan[refs["107"]]["reasons"] == ["legal hold: contentieux en cours"]
    reasons_105 = plan[refs["105"]]["reasons"]
    assert isinstance(reasons_105, list) and len(reasons_105) == 1
    assert "birth date unknown" in reasons_105[0] and "28th-birthday" in reasons_105[0]
    for pid in ("100", "101", "102", "103", "104", "106", "108"):
        assert plan[refs[pid]]["reasons"] == [], pid
    # Every document of a destroyed file is listed for destruction, none of the others.
    for pid, ref in refs.items():
        docs = plan[ref]["documents"]
        assert isinstance(docs, list)
        assert {d["doc_id"] for d in docs} == {d for d, _ in cv.documents(pid)}
        assert all((d["action"] == "destroy") == (pid in DESTROYED) for d in docs)
    # The human-readable dry run names the review reasons and changes nothing.
    r = cv("purge", "--as-of", AS_OF)
    assert r.rc == 0
    assert "To destroy (4 patient file(s))" in r.out and "dry run" in r.out
    assert "legal hold: contentieux en cours" in r.out
    assert "Kept (not expired): 3" in r.out
    assert tree(cv.state / "spool") == before
    for pid in PATIENTS:
        assert len(cv.documents(pid)) == len(practice.files[pid])


def test_execute_shreds_rotates_and_records(practice: Practice) -> None:
    cv = practice.cv
    vault = cv.vault
    destroyed = {pid: (practice.ref(pid), practice.objects(pid)) for pid in DESTROYED}
    survivors = {pid: practice.ref(pid) for pid in SURVIVORS}
    late = [p for p in destroyed["102"][1] if (vault.spool / p).exists()]
    assert len(late) == 1  # the late document is still in the spool
    # Drive B is away during the purge.
    away = cv.tmp / "away-B"
    shutil.move(practice.drive_b, away)

    out = practice.purge()
    new_key = _new_recovery_key(out)
    assert "Drive 'A': " in out and "Plug in every other drive" in out and ": B " in out
    assert new_key != practice.old_recovery_key

    # Spool and drive A: objects and key files of the destroyed patients are gone.
    top_a = practice.drive_a / "coldvault"
    for _pid, (ref, objs) in destroyed.items():
        for path in objs:
            assert not (vault.spool / path).exists()
            assert not (top_a / path).exists(), path
        assert not (vault.spool / "keys" / f"{ref}.age").exists()
        assert not (top_a / "keys" / f"{ref}.age").exists()
        # Drive B was away: it still holds them until it is synced.
        assert (away / "coldvault" / "keys" / f"{ref}.age").exists()
    for ref in survivors.values():
        assert (top_a / "keys" / f"{ref}.age").exists()
    assert (cv.state / "identity.previous.age").exists()  # B lacks the re-sealed keys

    # The destruction record: JSON and HTML in the state folder and on drive A.
    jsons = sorted((cv.state / "records").glob("destruction-*.json"))
    htmls = sorted((cv.state / "records").glob("destruction-*.html"))
    assert len(jsons) == 1 and len(htmls) == 1
    rec = json.loads(jsons[0].read_text())
    assert rec["operator"] == "Dr Test" and rec["as_of"] == AS_OF
    assert rec["profile"] == "cnil-2020"
    by_ref = {p["ref"]: p for p in rec["patients"]}
    assert set(by_ref) == {ref for ref, _ in destroyed.values()}
    for _pid, (ref, objs) in destroyed.items():
        entry = by_ref[ref]
        assert entry["scope"] == "patient"
        assert entry["document_count"] == len(objs)
        assert sorted(entry["object_hashes"]) == sorted(objs.values())
        assert entry["drives_confirmed"] == ["A"] and entry["drives_pending"] == ["B"]
    assert rec["totals"]["documents"] == sum(len(o) for _, o in destroyed.values())
    assert (top_a / "records" / jsons[0].name).exists()
    assert (top_a / "records" / htmls[0].name).exists()
    html = htmls[0].read_text()
    for _ref, objs in destroyed.values():
        for h in objs.values():
            assert h in html

    # Restore: a destroyed patient is reported plainly; the others come back byte for byte.
    for pid in DESTROYED:
        r = cv("restore", pid, "--to", str(cv.tmp / "out"))
        assert_one_error(r, 3, f"patient {pid}", "destroyed by a purge")
    for pid in SURVIVORS:
        r = cv("restore", pid, "--to", str(cv.tmp / "out"))
        assert r.rc == 0, r.err
        assert tree(cv.tmp / "out" / pid) == practice.files[pid]
    # A stolen copy of the old paper sheet does not open the key files once they are re-sealed.
    old = keys.parse_recovery_key(practice.old_recovery_key)
    new = keys.parse_recovery_key(new_key)
    for ref in survivors.values():
        data = (top_a / "keys" / f"{ref}.age").read_bytes()
        with pytest.raises(AuthenticationError):
            keys.open_patient_key(data, [old])
        assert keys.open_patient_key(data, [new]).key_id == ref

    # Drive B comes back and is synced: the destruction reaches it, the record says so.
    shutil.move(away, practice.drive_b)
    r = cv("drive", "sync", "B")
    assert r.rc == 0, r.err
    top_b = practice.drive_b / "coldvault"
    for _pid, (ref, objs) in destroyed.items():
        assert not (top_b / "keys" / f"{ref}.age").exists()
        for path in objs:
            assert not (top_b / path).exists()
    rec = json.loads(jsons[0].read_text())
    for p in rec["patients"]:
        assert p["drives_confirmed"] == ["A", "B"] and p["drives_pending"] == []
    assert cv("drive", "sync").rc == 0  # the updated record reaches every drive
    for top in (top_a, top_b):
        assert json.loads((top / "records" / jsons[0].name).read_text()) == rec

    # Every drive has the re-sealed keys: the previous master is destroyed, and the old
    # recovery key opens no surviving key file on any drive; the new one opens them all.
    assert not (cv.state / "identity.previous.age").exists()
    assert not (cv.state / "identity.next.age").exists()
    for top in (top_a, top_b):
        files = sorted((top / "keys").glob("*.age"))
        assert {f.stem for f in files} == set(survivors.values())
        for f in files:
            with pytest.raises(AuthenticationError):
                keys.open_patient_key(f.read_bytes(), [old])
            keys.open_patient_key(f.read_bytes(), [new])
    spool_keys = sorted((vault.spool / "keys").glob("*.age"))
    assert {f.stem for f in spool_keys} == set(survivors.values())
    # The new recovery key recovers every surviving patient from drive B alone.
    keyfile = cv.tmp / "new-key.txt"
    keyfile.write_text(new_key + "\n")
    r = cv(
        "recover",
        "--drive",
        str(practice.drive_b),
        "--to",
        str(cv.tmp / "recovered"),
        "--recovery-key-file",
        str(keyfile),
        "--fingerprint",
        cv.fingerprint,
    )
    assert r.rc == 0, r.err
    recovered = tree(cv.tmp / "recovered")
    assert sorted({k.split("/")[0] for k in recovered}) == SURVIVORS
    assert sorted(recovered.values()) == sorted(
        d for pid in SURVIVORS for d in practice.files[pid].values()
    )
    oldfile = cv.tmp / "old-key.txt"
    oldfile.write_text(practice.old_recovery_key + "\n")
    r = cv(
        "recover",
        "--drive",
        str(practice.drive_b),
        "--to",
        str(cv.tmp / "recovered-old"),
        "--recovery-key-file",
        str(oldfile),
        "--fingerprint",
        cv.fingerprint,
    )
    assert_one_error(r, 4)
    assert cv("audit", "--verify").rc == 0
    assert cv("verify").rc == 0


def test_held_patient_is_never_purged_until_released(practice: Practice) -> None:
    cv = practice.cv
    ref = practice.ref("107")
    practice.purge()
    assert len(cv.documents("107")) == 1
    assert (practice.drive_a / "coldvault" / "keys" / f"{ref}.age").exists()
    # A second purge with nothing expired: nothing to do.
    r = cv("purge", "--as-of", AS_OF, "--execute", "--yes")
    assert r.rc == 3 and "Nothing to destroy" in r.out
    assert cv("release", "107").rc == 0
    assert_one_error(cv("release", "107"), 3, "no legal hold")
    assert _plan(cv)[ref]["action"] == "destroy"
    out = practice.purge()
    assert "Destroyed 1 document(s) of 1 patient(s)" in out
    assert_one_error(cv("restore", "107", "--to", str(cv.tmp / "o")), 3, "destroyed by a purge")
    for top in (practice.drive_a, practice.drive_b):
        assert not (top / "coldvault" / "keys" / f"{ref}.age").exists()
    assert len(list((cv.state / "records").glob("destruction-*.json"))) == 2
    # Holds and facts on an unknown or destroyed patient are refused plainly.
    assert_one_error(cv("hold", "107", "--reason", "x"), 3)
    assert_one_error(cv("hold", "555", "--reason", "x"), 3)


def test_purge_with_a_new_passphrase(practice: Practice) -> None:
    cv = practice.cv
    new_pass = cv.tmp / "new-pass"
    new_pass.write_text("the passphrase after the purge\n")
    practice.purge("--new-passphrase-file", str(new_pass))
    out = cv.tmp / "out"
    assert_one_error(cv("restore", "101", "--to", str(out)), 4)
    r = cv("restore", "101", "--to", str(out), "--passphrase-file", str(new_pass))
    assert r.rc == 0, r.err
    assert tree(out / "101") == practice.files["101"]


def test_purge_refuses_without_confirmation_and_bad_dates(practice: Practice) -> None:
    cv = practice.cv
    before = tree(cv.state / "spool")
    identity = hashlib.sha256((cv.state / "identity.age").read_bytes()).hexdigest()
    r = cv("purge", "--as-of", AS_OF, "--execute")
    assert_one_error(r, 2, "confirmation")
    assert_one_error(cv("purge", "--as-of", "someday"), 2, "not a date")
    wrong = cv.tmp / "wrong"
    wrong.write_text("wrong passphrase\n")
    r = cv("purge", "--as-of", AS_OF, "--execute", "--yes", "--passphrase-file", str(wrong))
    assert_one_error(r, 4)
    assert tree(cv.state / "spool") == before
    assert not list((cv.state / "records").iterdir())
    assert hashlib.sha256((cv.state / "identity.age").read_bytes()).hexdigest() == identity
