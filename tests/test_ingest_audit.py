"""Every archived document's ingest is in the audit journal, even when the ingesting process
was killed between the catalog commit and the journal append."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coldvault.catalog.db import Catalog
from coldvault.ingest import Ingestor, IngestRequest
from coldvault.ingest_audit import catch_up, journal_ingest
from coldvault.journal import Journal
from tests.helpers import make_vault


def _ingest(tmp_path: Path, cat: Catalog, vault: object, n: int, tag: str) -> list[str]:
    from coldvault.vault import Vault

    assert isinstance(vault, Vault)
    files = []
    for i in range(n):
        f = tmp_path / f"{tag}{i}.pdf"
        f.write_bytes(os.urandom(500 + i))
        files.append(f)
    ing = Ingestor(vault, cat)
    try:
        results = ing.ingest_batch([IngestRequest(f, patient_id="42") for f in files])
    finally:
        ing.close()
    return [r.doc_id for r in results if r.doc_id]


def _ingest_entries(journal: Journal) -> list[dict[str, object]]:
    return [dict(e.fields) for e in journal.entries() if e.event == "ingest"]


def test_a_recorded_batch_is_unjournaled_until_its_entry_is_appended(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    journal = Journal(vault.journal_dir)
    with Catalog(vault.catalog_path) as cat:
        ids = _ingest(tmp_path, cat, vault, 3, "a")
        assert [d for d, _ in cat.unjournaled_documents()] == ids
        journal_ingest(journal, cat, ids, unsorted=0)
        assert cat.unjournaled_documents() == []
        assert catch_up(journal, cat) == 0
    assert _ingest_entries(journal) == [{"documents": ids, "unsorted": 0}]


def test_catch_up_journals_a_batch_whose_process_died_before_the_entry(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    journal = Journal(vault.journal_dir)
    with Catalog(vault.catalog_path) as cat:
        first = _ingest(tmp_path, cat, vault, 2, "a")
        journal_ingest(journal, cat, first)
        lost = _ingest(tmp_path, cat, vault, 3, "b")  # killed here: recorded, no entry
        assert catch_up(journal, cat) == 3
        assert cat.unjournaled_documents() == []
        assert catch_up(journal, cat) == 0  # once only
    entries = _ingest_entries(journal)
    assert entries == [{"documents": first}, {"documents": lost, "recovered": True}]
    assert not [p for p in journal.verify() if p.tampering]


def test_catch_up_does_not_repeat_an_entry_appended_before_the_marks_were_cleared(
    tmp_path: Path,
) -> None:
    vault = make_vault(tmp_path).vault
    journal = Journal(vault.journal_dir)
    with Catalog(vault.catalog_path) as cat:
        ids = _ingest(tmp_path, cat, vault, 2, "a")
        journal.append("ingest", documents=list(ids))  # killed before mark_journaled
        journal.append("sync", drive="x")
        assert catch_up(journal, cat) == 0
        assert cat.unjournaled_documents() == []
    assert len(_ingest_entries(journal)) == 1


def test_manual_ingest_and_assign_leave_nothing_unjournaled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.test_cli import make_cli

    cv = make_cli(tmp_path, capsys, monkeypatch)
    cv.init()
    vault = cv.vault
    with cv.catalog() as cat:
        stale = _ingest(tmp_path, cat, vault, 1, "old")  # an earlier process died unjournaled
        ing = Ingestor(vault, cat)
        try:
            (unsorted,) = ing.ingest_batch(
                [IngestRequest(cv.write("sans nom.pdf", b"%PDF scan"), patient_id=None)]
            )
        finally:
            ing.close()
        journal_ingest(Journal(vault.journal_dir), cat, [str(unsorted.doc_id)])
    r = cv("ingest", str(cv.write("letter.pdf", b"%PDF-1.4 a letter")), "--patient", "7")
    assert r.rc == 0, r.err
    assert cv("assign", str(unsorted.doc_id), "--patient", "7").rc == 0
    with cv.catalog() as cat:
        assert cat.unjournaled_documents() == []
        docs = {d.doc_id for d in cat.documents()}
    journal = Journal(vault.journal_dir)
    entries = _ingest_entries(journal)
    (manual,) = docs - set(stale) - {e["new_document"] for e in _assigns(journal)}
    assert entries == [
        {"documents": [unsorted.doc_id]},
        {"documents": stale, "recovered": True},
        {"documents": [manual], "source": "manual"},
    ]
    with cv.catalog() as cat:
        assert catch_up(journal, cat) == 0


def _assigns(journal: Journal) -> list[dict[str, object]]:
    return [dict(e.fields) for e in journal.entries() if e.event == "assign"]
