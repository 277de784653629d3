"""Filing a document from the unsorted inbox under a patient (``coldvault assign``)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from coldvault.ingest import Ingestor, IngestRequest
from tests.test_cli import Cli, assert_one_error, make_cli, tree


@pytest.fixture
def cv(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    c = make_cli(tmp_path, capsys, monkeypatch)
    c.init()
    return c


def _ingest_unsorted(cv: Cli, name: str, data: bytes) -> tuple[str, str]:
    """A document whose patient no source rule could tell: (doc id, object path)."""
    path = cv.write(name, data)
    with cv.catalog() as cat:
        ing = Ingestor(cv.vault, cat)
        try:
            res = ing.ingest_batch(
                [IngestRequest(path, source="scanner", patient_id=None, kind="scan")]
            )[0]
        finally:
            ing.close()
    assert res.doc_id is not None and res.object_path is not None and res.patient_ref is None
    return res.doc_id, res.object_path


def _unsorted(cv: Cli) -> list[str]:
    r = cv("ls", "--unsorted", "--json")
    assert r.rc == 0, r.err
    return [d["doc_id"] for d in json.loads(r.out)]


def test_assign_from_drives_then_old_object_removed_on_sync(cv: Cli) -> None:
    data = os.urandom(5000)
    doc_id, old_obj = _ingest_unsorted(cv, "scan sans nom.pdf", data)
    other = os.urandom(3000)
    cv.ingest("1001", cv.write("earlier.pdf", other), date="2020-01-01")
    assert _unsorted(cv) == [doc_id]
    # The unsorted object is encrypted to the master: restoring the patient does not show it.
    assert json.loads(cv("status", "--json").out)["unsorted"] == 1
    a = cv.drive("A")
    b = cv.drive("B")
    assert cv("drive", "sync").rc == 0
    assert not (cv.vault.spool / old_obj).exists()  # on two drives: dropped from the spool
    assert (a / "coldvault" / old_obj).exists() and (b / "coldvault" / old_obj).exists()
    away = cv.tmp / "away-B"
    shutil.move(b, away)

    r = cv("assign", doc_id[:8], "--patient", "1001")
    assert r.rc == 0, r.err
    new_doc = r.out.split(" filed as ")[1].strip()
    assert new_doc != doc_id
    assert _unsorted(cv) == []
    assert json.loads(cv("status", "--json").out)["unsorted"] == 0
    docs = dict(cv.documents("1001"))
    assert new_doc in docs and doc_id not in docs
    new_obj = docs[new_doc]
    assert new_obj != old_obj and (cv.vault.spool / new_obj).exists()

    # The patient's restore now holds it, under its original name, byte for byte.
    out = cv.tmp / "out"
    r = cv("restore", "1001", "--to", str(out))
    assert r.rc == 0, r.err
    assert tree(out / "1001") == {"scan sans nom.pdf": data, "earlier.pdf": other}
    r = cv("ls", "1001", "--unlock", "--json")
    listed = {d["doc_id"]: d for d in json.loads(r.out)}
    assert listed[new_doc]["name"] == "scan sans nom.pdf" and listed[new_doc]["kind"] == "scan"

    # The old object is queued for deletion on the drives that hold it, removed when synced.
    assert (a / "coldvault" / old_obj).exists()
    assert cv("drive", "sync", "A").rc == 0
    assert not (a / "coldvault" / old_obj).exists()
    assert (a / "coldvault" / new_obj).exists()
    assert (away / "coldvault" / old_obj).exists()
    shutil.move(away, b)
    assert cv("drive", "sync", "B").rc == 0
    assert not (b / "coldvault" / old_obj).exists()
    assert (b / "coldvault" / new_obj).exists()
    with cv.catalog() as cat:
        assert cat.item(old_obj) is None
        for row in cat.drives():
            assert cat.pending_deletions(row.drive_id) == []
    assert cv("verify").rc == 0
    assert cv("audit", "--verify").rc == 0


def test_assign_from_the_spool_only(cv: Cli) -> None:
    data = os.urandom(2000)
    doc_id, old_obj = _ingest_unsorted(cv, "lettre.pdf", data)
    assert (cv.vault.spool / old_obj).exists()
    r = cv("assign", doc_id, "--patient", "2002")
    assert r.rc == 0, r.err
    assert not (cv.vault.spool / old_obj).exists()
    with cv.catalog() as cat:
        assert all(cat.pending_deletions(d.drive_id) == [] for d in cat.drives())
    r = cv("restore", "2002", "--to", str(cv.tmp / "out"))
    assert r.rc == 0, r.err
    assert tree(cv.tmp / "out" / "2002") == {"lettre.pdf": data}
    # Now on a drive: the new document is copied, the old one was never there.
    d = cv.drive("A")
    assert cv("drive", "sync").rc == 0
    assert not (d / "coldvault" / old_obj).exists()


def test_assign_errors(cv: Cli) -> None:
    doc_id, old_obj = _ingest_unsorted(cv, "x.pdf", os.urandom(100))
    cv.ingest("1001", cv.write("y.pdf"))
    filed = cv.documents("1001")[0][0]
    assert_one_error(cv("assign", "ffffffffffff", "--patient", "1"), 3, "unsorted")
    assert_one_error(cv("assign", filed, "--patient", "1"), 3, "unsorted")  # already filed
    wrong = cv.tmp / "wrong"
    wrong.write_text("wrong passphrase\n")
    r = cv("assign", doc_id, "--patient", "1", "--passphrase-file", str(wrong))
    assert_one_error(r, 4)
    assert _unsorted(cv) == [doc_id] and (cv.vault.spool / old_obj).exists()
    # Unplugged: the drives that hold it are named.
    a = cv.drive("A")
    b = cv.drive("B")
    assert cv("drive", "sync").rc == 0
    shutil.move(a, cv.tmp / "away-A")
    shutil.move(b, cv.tmp / "away-B")
    r = cv("assign", doc_id, "--patient", "1")
    line = assert_one_error(r, 3, "not plugged in")
    assert "A, B" in r.err, line
    assert _unsorted(cv) == [doc_id]


def test_assigned_document_keeps_its_source_file_link(cv: Cli) -> None:
    """The original in a watched folder is not archived again (it is the same file), and with
    ``on_archived = "delete"`` it goes once the *filed* copy is on enough drives."""
    from coldvault.ingest import fingerprint_of

    scans = cv.tmp / "scans"
    scans.mkdir()
    with open(cv.config, "a") as f:
        f.write(
            f'\n[[source]]\nname = "scanner"\npath = "{scans}"\n'
            "pattern = '^(?P<patient>[0-9]+)_'\non_archived = \"delete\"\n"
        )
    original = scans / "illisible.pdf"  # matches no rule: the unsorted inbox
    data = os.urandom(4000)
    original.write_bytes(data)
    fp = fingerprint_of(original.stat())
    req = IngestRequest(
        original,
        source="scanner",
        relpath=original.name,
        fingerprint=fp,
        delete_source=True,
        root=scans,
    )
    with cv.catalog() as cat:
        ing = Ingestor(cv.vault, cat)
        try:
            (res,) = ing.ingest_batch([req])
        finally:
            ing.close()
    assert res.doc_id is not None and res.patient_ref is None
    r = cv("assign", res.doc_id, "--patient", "3003")
    assert r.rc == 0, r.err
    with cv.catalog() as cat:
        ing = Ingestor(cv.vault, cat)
        try:
            (again,) = ing.ingest_batch([req])  # the daemon's rescan meets the same file
        finally:
            ing.close()
    assert again.skipped == "already archived"
    assert original.exists()
    cv.drive("A")
    cv.drive("B")
    assert cv("drive", "sync").rc == 0
    assert not original.exists()  # the filed document is on two drives
    r = cv("restore", "3003", "--to", str(cv.tmp / "out"))
    assert r.rc == 0, r.err
    assert tree(cv.tmp / "out" / "3003") == {"illisible.pdf": data}
