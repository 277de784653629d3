"""Parallel ingest: files go to the workers biggest first, and are recorded in commit groups
(one syncfs, one transaction each) as they finish; results stay one per request, in order."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from coldvault import ingest, keys, objects
from coldvault.catalog.db import Catalog
from coldvault.ingest import Ingestor, IngestRequest, IngestResult, clean_spool, fingerprint_of
from tests.helpers import PASSPHRASE, make_vault


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("workers", [1, 2])
def test_results_in_request_order_and_commit_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    monkeypatch.setattr(ingest, "GROUP_FILES", 3)
    vault = make_vault(tmp_path).vault
    src = tmp_path / "src"
    # Patient 7's documents span several groups (the biggest goes first, the smallest last).
    sizes = [50_000, 10, 300_000, 20, 4_000, 70_000, 1, 9_000]
    files = [
        _write(src / f"{7 if i % 2 else 8}_{i}.pdf", os.urandom(n)) for i, n in enumerate(sizes)
    ]
    skipped = _write(src / "7_done.pdf", b"archived before")
    missing = src / "7_missing.pdf"
    syncs: list[int] = []
    seen: list[IngestResult] = []
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat, workers=workers)

        def req(p: Path) -> IngestRequest:
            fp = fingerprint_of(p.stat()) if p.exists() else None
            return IngestRequest(p, source="s", relpath=p.name, patient_id="7"
                                 if p.name.startswith("7") else "8", fingerprint=fp)  # fmt: skip

        assert ing.ingest_batch([req(skipped)])[0].doc_id
        real_sync = Ingestor._sync_spool

        def counting_sync(self: Ingestor, written: list[object], *a: object) -> None:
            syncs.append(len(written))
            real_sync(self, written, *a)  # type: ignore[arg-type]

        monkeypatch.setattr(Ingestor, "_sync_spool", counting_sync)
        reqs = [
            req(files[0]),
            req(skipped),
            *map(req, files[1:4]),
            req(missing),
            *map(req, files[4:]),
        ]
        results = ing.ingest_batch(reqs, progress=seen.append)
        ing.close()
        assert [r.request for r in results] == reqs
        assert sorted(map(id, seen)) == sorted(map(id, results))  # once each
        assert results[1].skipped == "already archived"
        assert results[5].error is not None
        archived = [r for r in results if r.doc_id]
        assert len(archived) == len(files)
        assert syncs == [3, 3, 2], "groups of at most GROUP_FILES, each synced once"
        # One key per patient, recorded once, whatever group its documents fell in.
        assert len(cat.patients()) == 2
        assert len(list((vault.spool / "keys").iterdir())) == 2
        assert {r.patient_ref for r in archived} == {p.key_id for p in cat.patients()}
        master = vault.unlock(PASSPHRASE)
        for r in archived:
            doc = cat.documents(doc_id=r.doc_id)[0]
            assert doc.key_id == r.patient_ref
            key = keys.open_patient_key(
                (vault.spool / "keys" / f"{doc.key_id}.age").read_bytes(), [master]
            )
            assert key.identity is not None
            out = io.BytesIO()
            with open(vault.spool / doc.object_path, "rb") as f:
                objects.read_object(f, [key.identity], out)
            assert out.getvalue() == r.request.path.read_bytes()
        assert clean_spool(vault, cat) == 0


def test_biggest_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    vault = make_vault(tmp_path).vault
    files = [_write(tmp_path / f"1_{n}.pdf", os.urandom(n)) for n in (10, 5000, 100, 90_000)]
    order: list[int] = []
    real = Ingestor._write_one

    def recording(self: Ingestor, job: ingest._Job) -> ingest._Written:
        order.append(job.request.path.stat().st_size)
        return real(self, job)

    monkeypatch.setattr(Ingestor, "_write_one", recording)
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat, workers=1)
        assert all(
            r.doc_id for r in ing.ingest_batch([IngestRequest(f, patient_id="1") for f in files])
        )
        ing.close()
    assert order == [90_000, 5000, 100, 10]


class Boom(Exception):
    pass


def test_failed_group_commit_leaves_no_worker_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that fails stops the call: files not started are not written, none is being
    written once it returns, and the next start removes what was not recorded."""
    monkeypatch.setattr(ingest, "GROUP_FILES", 2)
    vault = make_vault(tmp_path).vault
    files = [_write(tmp_path / f"{i % 3}_{i}.pdf", os.urandom(2000 + i)) for i in range(12)]

    def failing_add_document(*a: object, **k: object) -> None:
        raise Boom()

    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat, workers=2)
        monkeypatch.setattr(cat, "add_document", failing_add_document)
        with pytest.raises(Boom):
            ing.ingest_batch([IngestRequest(f, patient_id=f.name[0]) for f in files])
        # Once it returned, no worker is writing: no half-written file, nothing appears later.
        assert not list(vault.spool.rglob(".tmp-*"))
        written = len(list((vault.spool / "objects").rglob("*.age")))
        keys_left = len(list((vault.spool / "keys").iterdir()))
        assert 2 <= written <= len(files) and 1 <= keys_left <= 3
        monkeypatch.undo()
        assert cat.documents() == [] and cat.patients() == []
        assert clean_spool(vault, cat) == written + keys_left
        assert list((vault.spool / "objects").rglob("*.age")) == []
        assert list((vault.spool / "keys").iterdir()) == []
        # Archived again from the untouched sources, each once, with consistent keys.
        results = ing.ingest_batch([IngestRequest(f, patient_id=f.name[0]) for f in files])
        ing.close()
        assert all(r.doc_id for r in results)
        assert len(cat.documents()) == len(files) and len(cat.patients()) == 3
        assert len(list((vault.spool / "keys").iterdir())) == 3


def test_objects_go_straight_to_their_name_and_a_failure_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects are written under their final name (no temporary name, no rename): an object
    whose writing fails is removed at once, and an object folder removed by hand is made again."""
    vault = make_vault(tmp_path).vault
    files = [_write(tmp_path / "src" / f"9_{i}.pdf", os.urandom(5000 + i)) for i in range(6)]
    real = objects.write_object
    calls = 0

    def fail_third(*a: object, **k: object) -> objects.ObjectResult:
        nonlocal calls
        calls += 1
        if calls == 3:
            dst = a[4]
            dst.write(b"half an object")  # type: ignore[attr-defined]
            raise OSError(28, "No space left on device")
        return real(*a, **k)  # type: ignore[arg-type]

    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat)
        monkeypatch.setattr(objects, "write_object", fail_third)
        results = ing.ingest_batch([IngestRequest(f, patient_id="9") for f in files])
        monkeypatch.undo()
        assert [r.error is not None for r in results].count(True) == 1
        failed = next(r for r in results if r.error is not None)
        assert "No space left" in failed.error.message  # type: ignore[union-attr]
        on_disk = sorted(p.relative_to(vault.spool).as_posix()
                         for p in (vault.spool / "objects").rglob("*") if p.is_file())  # fmt: skip
        assert on_disk == sorted(r.object_path for r in results if r.doc_id)  # type: ignore[type-var]
        # Every object folder removed by hand: the next objects make theirs again.
        for sub in (vault.spool / "objects").iterdir():
            for f in sub.iterdir():
                f.unlink()
            sub.rmdir()
        again = ing.ingest_batch([IngestRequest(files[0], patient_id="9")])
        assert again[0].doc_id and (vault.spool / again[0].object_path).is_file()  # type: ignore[operator]
        ing.close()


def test_big_objects_are_handed_to_the_disk_as_soon_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects of WRITEBACK_MIN_SIZE or more start their writeback at once (the group's syncfs
    then finds it done); small ones are left to the syncfs, which writes them together."""
    vault = make_vault(tmp_path).vault
    big = _write(tmp_path / "src" / "big.pdf", os.urandom(ingest.WRITEBACK_MIN_SIZE + 1))
    small = _write(tmp_path / "src" / "small.pdf", os.urandom(1000))
    started: list[int] = []
    real = ingest.start_writeback

    def recording(fd: int) -> None:
        started.append(os.fstat(fd).st_size)
        real(fd)  # the real call must accept the spool file

    monkeypatch.setattr(ingest, "start_writeback", recording)
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat)
        results = ing.ingest_batch([IngestRequest(p, patient_id="1") for p in (big, small)])
        ing.close()
    assert all(r.doc_id for r in results)
    # Called once, on the complete big object (flushed first: fstat sees all of it).
    assert started == [results[0].stored_size]
    r, w = os.pipe()  # advisory: an fd it cannot apply to is ignored, never an error
    try:
        real(w)
    finally:
        os.close(r)
        os.close(w)


def test_small_files_are_handed_to_the_workers_a_few_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One hand-over per small file cost more than writing it: small files go to the workers
    in chunks (CHUNK_FILES files or CHUNK_BYTES bytes), big ones alone, biggest first."""
    vault = make_vault(tmp_path).vault
    small = [_write(tmp_path / "src" / f"3_{i}.txt", os.urandom(1000 + i)) for i in range(40)]
    big = _write(tmp_path / "src" / "3_big.pdf", os.urandom(ingest.CHUNK_BYTES + 1))
    handed: list[list[str]] = []
    real = Ingestor._run_all

    def recording(self: Ingestor, jobs: list[object], stopping: object) -> object:
        handed.append([j.request.path.name for j in jobs])  # type: ignore[attr-defined]
        return real(self, jobs, stopping)  # type: ignore[arg-type]

    monkeypatch.setattr(Ingestor, "_run_all", recording)
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat, workers=2)
        results = ing.ingest_batch([IngestRequest(p, patient_id="3") for p in [*small, big]])
        ing.close()
    assert [r.request.path for r in results] == [*small, big] and all(r.doc_id for r in results)
    assert handed[0] == ["3_big.pdf"]
    assert sorted(len(h) for h in handed[1:]) == [8] + [ingest.CHUNK_FILES] * 2
    assert sorted(n for h in handed for n in h) == sorted(p.name for p in [*small, big])
