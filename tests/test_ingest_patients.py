"""New patients in a batch: the key file is made durable by the batch's syncfs and the patient
is recorded in the batch's own transaction, exactly when documents encrypted to it are."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import pytest

from coldvault import fsutil, ingest, keys, objects
from coldvault.catalog.db import Catalog
from coldvault.ingest import Ingestor, IngestRequest, clean_spool
from coldvault.vault import Vault
from tests.helpers import PASSPHRASE, make_vault


class Crash(BaseException):
    """Stands for a kill -9: nothing after it runs (not even ``except Exception``)."""


def _files(root: Path, patients: list[str], per: int = 2) -> list[Path]:
    out = []
    for pid in patients:
        for i in range(per):
            p = root / f"{pid}_{i}.pdf"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(os.urandom(500 + i))
            out.append(p)
    return out


def _reqs(files: list[Path]) -> list[IngestRequest]:
    return [IngestRequest(f, patient_id=f.name.split("_")[0]) for f in files]


def _key_files(vault: Vault) -> list[str]:
    return sorted(p.name for p in (vault.spool / "keys").iterdir())


def _check_all_readable(vault: Vault, cat: Catalog) -> None:
    """Every recorded document opens with its patient's key file from the spool."""
    master = vault.unlock(PASSPHRASE)
    for doc in cat.documents():
        assert doc.key_id is not None
        key = keys.open_patient_key(
            (vault.spool / "keys" / f"{doc.key_id}.age").read_bytes(), [master]
        )
        assert key.identity is not None
        with open(vault.spool / doc.object_path, "rb") as f:
            objects.read_object(f, [key.identity], io.BytesIO())


def test_new_patients_recorded_in_the_batch_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault = make_vault(tmp_path).vault
    files = _files(tmp_path / "docs", ["10", "20", "30"])
    commits: list[int] = []
    with Catalog(vault.catalog_path) as cat:
        real = cat.transaction

        def counting():  # type: ignore[no-untyped-def]
            commits.append(1)
            return real()

        monkeypatch.setattr(cat, "transaction", counting)
        fsyncs: list[int] = []
        real_fsync = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
        ing = Ingestor(vault, cat)
        results = ing.ingest_batch(_reqs(files))
        ing.close()
        assert all(r.doc_id for r in results)
        assert len(commits) == 1, "patients and documents: one transaction"
        # No fsync of each key file and its folder: the batch's one syncfs covers them.
        if fsutil._SYNCFS is not None:
            assert fsyncs == []
        else:  # each file, then each folder
            folders = {(vault.spool / str(r.object_path)).parent for r in results}
            assert len(fsyncs) == len(results) + 3 + len(folders) + 1
        assert len(cat.patients()) == 3
        assert len(_key_files(vault)) == 3
        assert {r.patient_ref for r in results} == {p.key_id for p in cat.patients()}
        for p in cat.patients():
            assert cat.item(f"keys/{p.key_id}.age") is not None
        _check_all_readable(vault, cat)
        # Seen again: the recorded key, no new one.
        more = _files(tmp_path / "more", ["20"], per=1)
        (again,) = Ingestor(vault, cat).ingest_batch(_reqs(more))
        assert again.patient_ref == next(r.patient_ref for r in results if "20_" in r.request.name)
        assert len(_key_files(vault)) == 3


def test_alone_patient_for_is_durable_and_recorded_at_once(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat)
        pid, key_id, _ = ing.patient_for("77")
        assert cat.patient_by_key_id(key_id) is not None
        assert cat.patient_by_key_id(key_id).id == pid  # type: ignore[union-attr]
        assert _key_files(vault) == [f"{key_id}.age"]
        assert ing.patient_for("77")[1] == key_id


@pytest.mark.parametrize("where", ["sync", "record"])
def test_crash_before_commit_leaves_no_patient_and_a_consistent_key_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    vault = make_vault(tmp_path).vault
    files = _files(tmp_path / "docs", ["10", "20"])
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat)

        def crash(*a: object, **k: object) -> None:
            raise Crash()

        if where == "sync":  # key files and objects written, not durable yet
            monkeypatch.setattr(Ingestor, "_sync_spool", crash)
        else:  # inside the recording transaction, after the patients were inserted
            monkeypatch.setattr(cat, "add_document", crash)
        with pytest.raises(Crash):
            ing.ingest_batch(_reqs(files))
        monkeypatch.undo()
        assert cat.patients() == [] and cat.documents() == []
        assert len(_key_files(vault)) == 2  # written, unrecorded
    # The restart: unrecorded keys and objects go; the sources are archived again, new keys.
    with Catalog(vault.catalog_path) as cat:
        assert clean_spool(vault, cat) == 2 + len(files)
        assert _key_files(vault) == []
        ing = Ingestor(vault, cat)
        assert all(r.doc_id for r in ing.ingest_batch(_reqs(files)))
        assert len(cat.patients()) == 2 and len(cat.documents()) == len(files)
        assert clean_spool(vault, cat) == 0
        _check_all_readable(vault, cat)


def test_new_patient_whose_documents_all_fail_leaves_nothing(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    (ok,) = _files(tmp_path / "docs", ["10"], per=1)
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat)
        stale = IngestRequest(
            tmp_path / "docs" / "10_0.pdf", patient_id="99", fingerprint="0:0:1:0"
        )
        r_stale, r_ok = ing.ingest_batch([stale, IngestRequest(ok, patient_id="10")])
        assert r_stale.error is not None and r_ok.doc_id
        assert len(cat.patients()) == 1
        assert _key_files(vault) == [f"{r_ok.patient_ref}.age"]
        # Only failures: no commit at all, and no key left behind.
        (r,) = ing.ingest_batch([stale])
        assert r.error is not None
        assert len(cat.patients()) == 1 and len(_key_files(vault)) == 1
        assert clean_spool(vault, cat) == 0


def test_purged_patient_gets_a_new_key_in_the_batch(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    (first,) = _files(tmp_path / "a", ["42"], per=1)
    (later,) = _files(tmp_path / "b", ["42"], per=1)
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat)
        (r1,) = ing.ingest_batch(_reqs([first]))
        cat.conn.execute("UPDATE patients SET purged = 1")
        (r2,) = ing.ingest_batch(_reqs([later]))
        assert r2.doc_id and r2.patient_ref != r1.patient_ref
        rows = cat.patients()
        assert len(rows) == 2
        current = cat.patient_by_lookup(vault.lookup("patient", "42"))
        assert current is not None and current.key_id == r2.patient_ref and not current.purged


def test_clean_spool_waits_for_a_batch_in_flight(tmp_path: Path) -> None:
    """A daemon starting while another process's batch has written a new patient's key (not
    recorded yet) must not take that key for a crash's leftover."""
    vault = make_vault(tmp_path).vault
    removed: list[int] = []

    def starting_daemon() -> None:
        with Catalog(vault.catalog_path) as other:
            removed.append(clean_spool(vault, other))

    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat)
        pending: dict[str, ingest._NewPatient] = {}
        with vault.rotation_lock(exclusive=False):  # what ingest_batch holds
            _, key_id, _ = ing.patient_for("5", pending)
            t = threading.Thread(target=starting_daemon)
            t.start()
            t.join(0.5)
            assert t.is_alive(), "clean_spool did not wait for the batch"
            assert _key_files(vault) == [f"{key_id}.age"]
            with cat.transaction():  # the batch records its patient with its documents
                (new,) = pending.values()
                ing._record_patient(new)
        t.join(10)
        ing.close()
    assert removed == [0]
    assert _key_files(vault) == [f"{key_id}.age"]


def test_a_new_patients_recipient_is_never_parsed_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key made by the batch is used as made: its recipient (1,950 characters of Bech32 for
    a post-quantum vault) is not parsed from its own text for each document."""
    vault = make_vault(tmp_path).vault
    files = _files(tmp_path / "docs", ["41", "42"], per=3)
    parsed: list[str] = []
    real = ingest.age.parse_recipient

    def counting(text: str) -> object:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(ingest.age, "parse_recipient", counting)
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat, workers=2)
        assert all(r.doc_id for r in ing.ingest_batch(_reqs(files)))
        ing.close()
        recipients = {p.recipient for p in cat.patients()}
        assert len(recipients) == 2 and not recipients & set(parsed)
        _check_all_readable(vault, cat)


def test_a_batch_makes_its_new_patients_keys_before_writing_any_document(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making a key holds the GIL for most of its ~0.6 ms (post-quantum): made while workers
    write, it kept them waiting far longer. The batch makes every new key first."""
    vault = make_vault(tmp_path).vault
    docs = tmp_path / "docs"
    docs.mkdir()
    files = []
    for i in range(6):  # each big enough to go to a worker alone, at once
        f = docs / f"{51 + i % 3}_{i}.pdf"
        f.write_bytes(os.urandom(ingest.CHUNK_BYTES + 1000 * i))
        files.append(f)
    objects_at_key: list[int] = []
    real = keys.new_patient_key

    def recording(*a: object, **k: object) -> object:
        objects_at_key.append(len(list((vault.spool / "objects").rglob("*.age"))))
        time.sleep(0.05)  # time enough for a worker given a file to start writing it
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(keys, "new_patient_key", recording)
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat, workers=2)
        assert all(r.doc_id for r in ing.ingest_batch(_reqs(files)))
        ing.close()
        assert objects_at_key == [0, 0, 0] and len(cat.documents()) == len(files)
