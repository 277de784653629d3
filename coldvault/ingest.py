"""Finished file -> object in the spool -> rows in the catalog.

Write order (crash safety, principle 5):
  1. each object is written under a temporary name and renamed into ``spool/objects/``;
  2. one ``syncfs`` makes the whole batch durable (cheaper than an fsync per file);
  3. one catalog transaction records the batch.
A crash before 3 leaves objects the catalog does not know: :func:`clean_spool` removes them at
start-up, and their sources, untouched, are archived again. A crash after 3 leaves everything
recorded. Nothing is ever recorded that is not durable, and a source file is never touched here.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import overload

from coldvault import age, keys, objects
from coldvault.catalog.db import Catalog
from coldvault.catalog.sealing import Sealer
from coldvault.errors import ColdvaultError, UsageError
from coldvault.fsutil import atomic_writer, fsync_dir, private_dir, syncfs, write_atomic
from coldvault.sources.settle import open_beneath
from coldvault.vault import Vault

log = logging.getLogger(__name__)


# Parsing a post-quantum recipient (1,950 characters of Bech32) costs milliseconds: once each.
_recipient = functools.lru_cache(maxsize=4096)(age.parse_recipient)


def object_path(object_id: str) -> str:
    return f"objects/{object_id[:2]}/{object_id}.age"


def fingerprint_of(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


@dataclass(frozen=True)
class IngestRequest:
    path: Path
    source: str = "manual"
    relpath: str | None = None
    patient_id: str | None = None  # None: the unsorted inbox
    doc_date: date | None = None
    kind: str = ""
    fingerprint: str | None = None  # as settled; the file must still match it
    delete_source: bool = False
    root: Path | None = None  # the source folder: open relpath beneath it, never via a symlink

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class IngestResult:
    request: IngestRequest
    doc_id: str | None = None
    object_path: str | None = None
    patient_ref: str | None = None
    size: int = 0
    stored_size: int = 0
    compressed: bool = False
    skipped: str | None = None  # why nothing was archived ("already archived", ...)
    error: ColdvaultError | None = None


@dataclass
class _Written:
    request: IngestRequest
    doc_id: str
    object_path: str
    patient: int | None
    patient_ref: str | None
    result: objects.ObjectResult
    fingerprint: str


@dataclass(frozen=True)
class _NewPatient:
    """A patient key written to the spool in a batch, recorded by the batch's transaction."""

    lookup: str
    patient_id: str
    key_id: str
    recipient: str
    key_size: int
    key_sha256: str
    retire: int | None  # the row of the purged patient this one replaces

    @property
    def path(self) -> str:
        return f"keys/{self.key_id}.age"


class Ingestor:
    """Archives files into the spool and catalog. The catalog is used from one thread only."""

    def __init__(self, vault: Vault, catalog: Catalog, workers: int = 1) -> None:
        self.vault = vault
        self.catalog = catalog
        self.workers = max(1, workers)
        self._master = vault.master_recipient()
        self._sealer = Sealer(catalog.conn, self._master, vault.info.master_generation)
        self._pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        self._lock = threading.Lock()
        private_dir(vault.spool / "objects")
        private_dir(vault.spool / "keys")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # --- patients ------------------------------------------------------------------------
    @overload
    def patient_for(self, patient_id: str) -> tuple[int, str, str]: ...

    @overload
    def patient_for(
        self, patient_id: str, pending: dict[str, _NewPatient]
    ) -> tuple[int | None, str, str]: ...

    def patient_for(
        self, patient_id: str, pending: dict[str, _NewPatient] | None = None
    ) -> tuple[int | None, str, str]:
        """(row id, key id, recipient) of a patient, creating the patient key on first sight.

        Alone, a new patient's key file is made durable and the patient recorded in its own
        transaction. With ``pending`` (a batch), the key file is only written: the batch's
        ``syncfs`` makes it durable and the batch's transaction records the patient with the
        batch's first document of it (row id None until then); a crash before that leaves an
        unrecorded key file that :func:`clean_spool` removes, with the documents encrypted to it.
        """
        lookup = self.vault.lookup("patient", patient_id)
        if pending is not None and lookup in pending:
            new = pending[lookup]
            return None, new.key_id, new.recipient
        row = self.catalog.patient_by_lookup(lookup)
        if row is not None:
            if row.purged:
                log.warning("a document arrived for a purged patient; a new key is made")
            else:
                return row.id, row.key_id, row.recipient
        key_id = objects.new_id()
        key, sealed = keys.new_patient_key(key_id, patient_id, self._master)
        new = _NewPatient(
            lookup,
            patient_id,
            key_id,
            key.recipient,
            len(sealed),
            hashlib.sha256(sealed).hexdigest(),
            row.id if row is not None else None,
        )
        final = self.vault.spool / new.path
        if pending is not None:
            with atomic_writer(final, durable=False) as f:
                f.write(sealed)
            pending[lookup] = new
            log.info("new patient key %s (recorded with its first document)", key_id)
            return None, key_id, key.recipient
        write_atomic(final, sealed)
        with self.catalog.transaction():
            pid = self._record_patient(new)
        log.info("new patient key %s", key_id)
        return pid, key_id, key.recipient

    def _record_patient(self, new: _NewPatient) -> int:
        """Insert a new patient (its key file durable already); inside a transaction."""
        if new.retire is not None:  # purged patient: retire the old lookup
            self.catalog.conn.execute(
                "UPDATE patients SET lookup = lookup || ':purged:' || key_id WHERE id = ?",
                (new.retire,),
            )
        return self.catalog.add_patient(
            new.lookup,
            new.key_id,
            new.recipient,
            self._sealer.seal(new.patient_id),
            new.key_size,
            new.key_sha256,
        )

    # --- documents -----------------------------------------------------------------------
    def _write_one(
        self, req: IngestRequest, recipient: str, patient: int | None, ref: str | None
    ) -> _Written:
        try:
            if req.root is not None and req.relpath is not None:
                fd = open_beneath(req.root, req.relpath)
            else:
                fd = os.open(req.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except BlockingIOError:
            raise UsageError("the file is still in use by another program") from None
        except OSError as exc:
            raise UsageError(f"cannot read the file: {exc.strerror or exc}") from None
        with os.fdopen(fd, "rb", buffering=0) as src:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UsageError("not a regular file; it is skipped")
            fp = fingerprint_of(st)
            if req.fingerprint is not None and req.fingerprint != fp:
                raise UsageError("the file changed after it was seen as finished")
            doc_id = objects.new_id()[:16]
            object_id = objects.new_id()
            rel = object_path(object_id)
            meta = objects.DocumentMeta(
                document_id=doc_id,
                patient_ref=ref or "",
                name=req.path.name,
                size=st.st_size,
                sha256="",
                source=req.source,
                kind=req.kind,
                document_date=req.doc_date.isoformat() if req.doc_date else None,
                mtime=st.st_mtime,
                archived_at=datetime.now(UTC).isoformat(timespec="seconds"),
            )
            final = self.vault.spool / rel
            final.parent.mkdir(mode=0o700, exist_ok=True)
            with atomic_writer(final, durable=False) as dst:
                result = objects.write_object(
                    src,
                    st.st_size,
                    meta,
                    [_recipient(recipient)],
                    dst,
                )
            # Changed while read (same size, new mtime)? Then this copy is not trustworthy.
            if fingerprint_of(os.fstat(fd)) != fp:
                os.unlink(final)
                raise UsageError("the file changed while it was being archived")
        return _Written(req, doc_id, rel, patient, ref, result, fp)

    def ingest_batch(
        self,
        requests: Sequence[IngestRequest],
        progress: Callable[[IngestResult], None] | None = None,
    ) -> list[IngestResult]:
        """Archive a batch; every request gets a result (archived, skipped or error).

        The batch holds the vault's rotation lock (shared) and follows a master rotated by a
        purge since the last batch, so nothing is ever sealed to a master being replaced."""
        with self.vault.rotation_lock(exclusive=False):
            if self.vault.reload_info():
                log.info("the vault's master key was rotated: new keys are sealed to the new one")
                self._master = self.vault.master_recipient()
                self._sealer = Sealer(
                    self.catalog.conn, self._master, self.vault.info.master_generation
                )
            return self._ingest_batch(requests, progress)

    def _ingest_batch(
        self,
        requests: Sequence[IngestRequest],
        progress: Callable[[IngestResult], None] | None,
    ) -> list[IngestResult]:
        results: list[IngestResult] = []
        jobs: list[tuple[IngestRequest, str, int | None, str | None]] = []
        pending: dict[str, _NewPatient] = {}
        for req in requests:
            try:
                if req.relpath is not None and req.fingerprint is not None:
                    skey = self.vault.lookup("source", f"{req.source}\0{req.relpath}")
                    if self.catalog.is_archived(skey, req.fingerprint):
                        results.append(IngestResult(req, skipped="already archived"))
                        continue
                if req.patient_id is not None:
                    pid, ref, recipient = self.patient_for(req.patient_id, pending)
                    jobs.append((req, recipient, pid, ref))
                else:
                    jobs.append((req, self.vault.info.master_recipient, None, None))
            except ColdvaultError as exc:
                results.append(IngestResult(req, error=exc))
        written: list[_Written] = []

        def run(job: tuple[IngestRequest, str, int | None, str | None]) -> _Written | IngestResult:
            try:
                return self._write_one(*job)
            except ColdvaultError as exc:
                return IngestResult(job[0], error=exc)
            except OSError as exc:
                return IngestResult(
                    job[0], error=UsageError(f"cannot archive: {exc.strerror or exc}")
                )

        outcomes = list(self._pool.map(run, jobs)) if self._pool else [run(j) for j in jobs]
        for out in outcomes:
            if isinstance(out, IngestResult):
                results.append(out)
            else:
                written.append(out)
        new_keys = {p.key_id: p for p in pending.values()}
        used = {w.patient_ref for w in written if w.patient is None and w.patient_ref}
        for p in new_keys.values():
            if p.key_id not in used:  # no document of it was archived: never recorded
                (self.vault.spool / p.path).unlink(missing_ok=True)
        if written:
            self._sync_spool(written, [new_keys[k].path for k in used])
            with self.catalog.transaction():
                # New patients first, in the same transaction as their documents: a key is
                # recorded exactly when documents encrypted to it are.
                rows = {k: self._record_patient(new_keys[k]) for k in sorted(used)}
                for w in written:
                    req = w.request
                    skey2: str | None = (
                        self.vault.lookup("source", f"{req.source}\0{req.relpath}")
                        if req.relpath is not None
                        else None
                    )
                    self.catalog.add_document(
                        doc_id=w.doc_id,
                        patient=rows[w.patient_ref]
                        if w.patient is None and w.patient_ref
                        else w.patient,
                        object_path=w.object_path,
                        object_size=w.result.size,
                        object_sha256=w.result.sha256,
                        source=req.source,
                        kind=req.kind,
                        doc_date=req.doc_date.isoformat() if req.doc_date else None,
                        size=w.result.meta.size,
                        sha256=w.result.meta.sha256,
                        sealed_name=self._sealer.seal(req.path.name),
                        source_key=skey2,
                        fingerprint=w.fingerprint,
                        delete_source=(req.source, req.relpath)
                        if req.delete_source and req.relpath is not None
                        else None,
                    )
            for w in written:
                results.append(
                    IngestResult(
                        w.request,
                        w.doc_id,
                        w.object_path,
                        w.patient_ref,
                        w.result.meta.size,
                        w.result.size,
                        w.result.compressed,
                    )
                )
        if progress is not None:
            for r in results:
                progress(r)
        return results

    def _sync_spool(self, written: Sequence[_Written], new_keys: Sequence[str] = ()) -> None:
        """Make the batch's objects and new patient key files durable (one ``syncfs``)."""
        paths = [self.vault.spool / rel for rel in new_keys]
        paths += [self.vault.spool / w.object_path for w in written]
        syncfs(self.vault.spool, paths)
        for folder in {p.parent for p in paths}:
            fsync_dir(folder)


def clean_spool(vault: Vault, catalog: Catalog) -> int:
    """Remove spool files the catalog does not know (left by a crash before recording)."""
    removed = 0
    keys_dir = vault.spool / "keys"
    if keys_dir.is_dir():
        for f in keys_dir.iterdir():
            if f.name.startswith(".tmp-") or catalog.item(f"keys/{f.name}") is None:
                f.unlink(missing_ok=True)
                removed += 1
    objects_dir = vault.spool / "objects"
    if not objects_dir.is_dir():
        return 0
    for sub in objects_dir.iterdir():
        if not sub.is_dir():
            continue
        for f in sub.iterdir():
            rel = f"objects/{sub.name}/{f.name}"
            if f.name.startswith(".tmp-") or catalog.item(rel) is None:
                f.unlink(missing_ok=True)
                removed += 1
    return removed
