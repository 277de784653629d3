"""Finished file -> object in the spool -> rows in the catalog.

Write order (crash safety, principle 5):
  1. each object is written straight to its final name in ``spool/objects/`` (nothing reads a
     spool object the catalog does not record, so a temporary name would only cost a rename);
  2. one ``syncfs`` makes the whole batch durable (cheaper than an fsync per file);
  3. one catalog transaction records the batch.
A crash before 3 leaves objects the catalog does not know: :func:`clean_spool` removes them at
start-up, and their sources, untouched, are archived again. A crash after 3 leaves everything
recorded. Nothing is ever recorded that is not durable, and a source file is never touched here.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import overload

from coldvault import age, fsutil, keys, objects
from coldvault.catalog.db import Catalog
from coldvault.catalog.sealing import Sealer
from coldvault.errors import ColdvaultError, UsageError
from coldvault.fsutil import (
    atomic_writer,
    fsync_dir,
    new_file_writer,
    private_dir,
    start_writeback,
    syncfs,
    write_atomic,
)
from coldvault.sources.settle import open_beneath
from coldvault.vault import Vault

log = logging.getLogger(__name__)


# syncfs(2) commits the whole filesystem, folder entries included: fsyncing each folder after it
# (one per object folder touched, ~one per file in a batch) only costs. Without syncfs, files
# are fsynced one by one and their folders must be too.
_SYNCFS_COVERS_FOLDERS = fsutil._SYNCFS is not None

# Parsing a post-quantum recipient (1,950 characters of Bech32) costs: once each, and never for
# a key made here (its parsed form is kept when it is made).
_RECIPIENTS: dict[str, age.Recipient] = {}
_RECIPIENTS_MAX = 4096


def _recipient(text: str) -> age.Recipient:
    parsed = _RECIPIENTS.get(text)
    if parsed is None:
        parsed = _remember_recipient(text, age.parse_recipient(text))
    return parsed


def _remember_recipient(text: str, parsed: age.Recipient) -> age.Recipient:
    if len(_RECIPIENTS) >= _RECIPIENTS_MAX:
        _RECIPIENTS.clear()
    _RECIPIENTS[text] = parsed
    return parsed


#: The result of a file not started because the daemon is stopping.
STOPPING = "stopping"
#: How often a batch checks ``should_stop`` while it waits for its workers (seconds).
STOP_POLL = 0.2


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


#: Objects at least this large are handed to the disk as soon as they are written (see
#: :func:`fsutil.start_writeback`); smaller ones wait for the group's ``syncfs``, which writes
#: them together.
WRITEBACK_MIN_SIZE = 1024 * 1024

#: Files are handed to a worker a few at a time, up to this many files and this many bytes: a
#: file as big as CHUNK_BYTES (or bigger) goes alone.
CHUNK_FILES = 16
CHUNK_BYTES = 1024 * 1024

#: A commit group (one syncfs, one catalog transaction) holds at most this many files...
GROUP_FILES = 64
#: ... and this many bytes of objects (a crash loses at most this much work).
GROUP_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class _Job:
    index: int  # in the caller's requests
    request: IngestRequest
    recipient: str
    patient: int | None  # None: unsorted, or a patient new in this batch (see patient_ref)
    patient_ref: str | None
    source_key: str | None


@dataclass
class _Written:
    index: int
    request: IngestRequest
    doc_id: str
    object_path: str
    patient: int | None
    patient_ref: str | None
    source_key: str | None
    result: objects.ObjectResult
    fingerprint: str


@dataclass
class _Batch:
    """New patients of one :meth:`Ingestor.ingest_batch` call: written, and once recorded, their
    row ids."""

    pending: dict[str, _NewPatient] = field(default_factory=dict)  # by lookup
    recorded: dict[str, int] = field(default_factory=dict)  # key id -> patient row id
    # Patients already in the catalog, by patient id: one catalog query per patient per batch.
    known: dict[str, tuple[int, str, str]] = field(default_factory=dict)


def _size_hint(req: IngestRequest) -> int:
    try:
        return os.stat(req.path, follow_symlinks=False).st_size
    except OSError:
        return 0


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
        # Even with one worker, the calling thread prepares and records while it writes.
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="coldvault-ingest")
        private_dir(vault.spool / "objects")
        private_dir(vault.spool / "keys")

    def close(self) -> None:
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
        if key.recipient_key is not None:
            _remember_recipient(key.recipient, key.recipient_key)
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
    def _write_one(self, job: _Job) -> _Written:
        req, ref = job.request, job.patient_ref
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
            with new_file_writer(final) as dst:
                result = objects.write_object(
                    src,
                    st.st_size,
                    meta,
                    [_recipient(job.recipient)],
                    dst,
                )
                if result.size >= WRITEBACK_MIN_SIZE:
                    dst.flush()
                    start_writeback(dst.fileno())
            # Changed while read (same size, new mtime)? Then this copy is not trustworthy.
            if fingerprint_of(os.fstat(fd)) != fp:
                os.unlink(final)
                raise UsageError("the file changed while it was being archived")
        return _Written(job.index, req, doc_id, rel, job.patient, ref, job.source_key, result, fp)

    def ingest_batch(
        self,
        requests: Sequence[IngestRequest],
        progress: Callable[[IngestResult], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[IngestResult]:
        """Archive files; every request gets a result (archived, skipped or error), in order.

        Once ``should_stop()`` is true (the daemon was asked to stop), files not started yet are
        skipped ("stopping": still in their source folder, taken at the next start); the files
        being written are finished and recorded.

        Files are recorded in commit groups of at most :data:`GROUP_FILES` files and
        :data:`GROUP_BYTES` bytes, in the order they finish: one ``syncfs`` then one catalog
        transaction per group, while the workers go on with the next files (a big file does not
        hold back the small ones, nor leave the other workers idle while a group is recorded).
        ``progress`` is called for each result once it is final.

        The batch holds the vault's rotation lock (shared) and follows a master rotated by a
        purge since the last batch, so nothing is ever sealed to a master being replaced."""
        with self.vault.rotation_lock(exclusive=False):
            if self.vault.reload_info():
                log.info("the vault's master key was rotated: new keys are sealed to the new one")
                self._master = self.vault.master_recipient()
                self._sealer = Sealer(
                    self.catalog.conn, self._master, self.vault.info.master_generation
                )
            return self._ingest_batch(requests, progress, should_stop)

    def _ingest_batch(
        self,
        requests: Sequence[IngestRequest],
        progress: Callable[[IngestResult], None] | None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[IngestResult]:
        results: list[IngestResult | None] = [None] * len(requests)

        def done(i: int, r: IngestResult) -> None:
            results[i] = r
            if progress is not None:
                progress(r)

        batch = _Batch()
        group: list[_Written] = []
        group_bytes = 0

        def commit() -> None:
            nonlocal group_bytes
            if group:
                for w, r in self._commit_group(group, batch):
                    done(w.index, r)
            group.clear()
            group_bytes = 0

        def finished(out: _Written | IngestResult, index: int) -> None:
            nonlocal group_bytes
            if isinstance(out, IngestResult):
                done(index, out)
                return
            group.append(out)
            group_bytes += out.result.size
            if len(group) >= GROUP_FILES or group_bytes >= GROUP_BYTES:
                commit()

        # Biggest first: a big file started last would keep one worker busy while the others
        # wait for it. Files go to the workers as soon as their patients are known, small ones
        # a few at a time (handing a file to a thread and its result back costs more than
        # writing a small document); the calling thread then records groups as they finish,
        # while the workers go on.
        order = list(range(len(requests)))
        sizes = [_size_hint(r) for r in requests] if len(order) > 1 else [0] * len(order)
        order.sort(key=sizes.__getitem__, reverse=True)
        futures: dict[Future[list[_Written | IngestResult]], list[int]] = {}
        # Finished futures arrive here, in the order they finish: one hand-over per job, where
        # waiting on the set of pending futures would cost the calling thread (and, through the
        # GIL, the workers) time proportional to the batch for every file.
        arrived: queue.SimpleQueue[Future[list[_Written | IngestResult]]] = queue.SimpleQueue()
        # On an error, unrecorded key files and objects stay: clean_spool removes them at the
        # next start (after a failed commit only the catalog, read again, says what it holds).
        stopping = should_stop or (lambda: False)
        chunk: list[_Job] = []
        chunk_bytes = 0

        def submit() -> None:
            nonlocal chunk, chunk_bytes
            if chunk:
                fut = self._pool.submit(self._run_all, chunk, stopping)
                futures[fut] = [job.index for job in chunk]
                fut.add_done_callback(arrived.put)
                chunk, chunk_bytes = [], 0

        try:
            # Every file's patient first (new patients' keys are made here, a post-quantum one
            # in ~0.6 ms of mostly GIL-holding work), then the workers: making keys while they
            # write would have them wait for the GIL far longer than the keys take.
            jobs: list[_Job] = []
            for i in order:
                job = self._prepare(i, requests[i], batch)
                if isinstance(job, IngestResult):
                    done(i, job)
                else:
                    jobs.append(job)
            for job in jobs:
                i = job.index
                if stopping():
                    done(i, IngestResult(requests[i], skipped=STOPPING))
                    continue
                chunk.append(job)
                chunk_bytes += sizes[i]
                if len(chunk) >= CHUNK_FILES or chunk_bytes >= CHUNK_BYTES:
                    submit()
            submit()
            left = len(futures)
            cancelled = False
            while left:
                try:
                    ready = [arrived.get(timeout=STOP_POLL)]
                except queue.Empty:
                    ready = []
                while not arrived.empty():
                    ready.append(arrived.get_nowait())
                for fut in sorted(ready, key=lambda f: futures[f][0]):
                    left -= 1
                    if fut.cancelled():  # not started: the daemon is stopping
                        for i in futures[fut]:
                            done(i, IngestResult(requests[i], skipped=STOPPING))
                    else:
                        for i, out in zip(futures[fut], fut.result(), strict=True):
                            finished(out, i)
                if left and not cancelled and stopping():
                    cancelled = True
                    for fut in futures:
                        fut.cancel()  # only those not started yet
        finally:  # on an error, no worker goes on writing once this returns
            for fut in futures:
                fut.cancel()
            wait(futures)
        commit()
        for new in batch.pending.values():
            if new.key_id not in batch.recorded:  # no document of it was archived
                (self.vault.spool / new.path).unlink(missing_ok=True)
        return [r for r in results if r is not None]

    def _prepare(self, index: int, req: IngestRequest, batch: _Batch) -> _Job | IngestResult:
        """The job of a request, or its result if there is nothing to write."""
        try:
            skey: str | None = None
            pid: int | None
            if req.relpath is not None:
                skey = self.vault.lookup("source", f"{req.source}\0{req.relpath}")
                if req.fingerprint is not None and self.catalog.is_archived(skey, req.fingerprint):
                    return IngestResult(req, skipped="already archived")
            if req.patient_id is not None:
                known = batch.known.get(req.patient_id)
                if known is not None:
                    pid, ref, recipient = known
                else:
                    pid, ref, recipient = self.patient_for(req.patient_id, batch.pending)
                    if pid is not None:
                        batch.known[req.patient_id] = (pid, ref, recipient)
            else:
                pid, ref, recipient = None, None, self.vault.info.master_recipient
        except ColdvaultError as exc:
            return IngestResult(req, error=exc)
        return _Job(index, req, recipient, pid, ref, skey)

    def _run_all(
        self, jobs: list[_Job], stopping: Callable[[], bool]
    ) -> list[_Written | IngestResult]:
        """Write the files of one hand-over, in order; once a stop is asked, the ones not
        started yet are left (skipped, "stopping"), as when their turn has not come."""
        return [
            IngestResult(job.request, skipped=STOPPING) if stopping() else self._run(job)
            for job in jobs
        ]

    def _run(self, job: _Job) -> _Written | IngestResult:
        try:
            return self._write_one(job)
        except ColdvaultError as exc:
            return IngestResult(job.request, error=exc)
        except OSError as exc:
            return IngestResult(
                job.request, error=UsageError(f"cannot archive: {exc.strerror or exc}")
            )

    def _commit_group(
        self, group: Sequence[_Written], batch: _Batch
    ) -> list[tuple[_Written, IngestResult]]:
        """One syncfs, then one transaction: the group's objects, and the new patients whose
        first documents are in it (a key is recorded with the documents encrypted to it).
        Documents are recorded in the order of the requests."""
        group = sorted(group, key=lambda w: w.index)
        new_keys = sorted(
            {w.patient_ref for w in group if w.patient is None and w.patient_ref}
            - batch.recorded.keys()
        )
        by_key = {p.key_id: p for p in batch.pending.values()}
        self._sync_spool(group, [by_key[k].path for k in new_keys])
        with self.catalog.transaction():
            rows = {k: self._record_patient(by_key[k]) for k in new_keys}
            for w in group:
                req = w.request
                patient = w.patient
                if patient is None and w.patient_ref is not None:
                    ref = w.patient_ref
                    patient = rows[ref] if ref in rows else batch.recorded[ref]
                self.catalog.add_document(
                    doc_id=w.doc_id,
                    patient=patient,
                    object_path=w.object_path,
                    object_size=w.result.size,
                    object_sha256=w.result.sha256,
                    source=req.source,
                    kind=req.kind,
                    doc_date=req.doc_date.isoformat() if req.doc_date else None,
                    size=w.result.meta.size,
                    sha256=w.result.meta.sha256,
                    sealed_name=self._sealer.seal(req.path.name),
                    source_key=w.source_key,
                    fingerprint=w.fingerprint,
                    delete_source=(req.source, req.relpath)
                    if req.delete_source and req.relpath is not None
                    else None,
                )
        batch.recorded.update(rows)
        return [
            (
                w,
                IngestResult(
                    w.request,
                    w.doc_id,
                    w.object_path,
                    w.patient_ref,
                    w.result.meta.size,
                    w.result.size,
                    w.result.compressed,
                ),
            )
            for w in group
        ]

    def _sync_spool(self, written: Sequence[_Written], new_keys: Sequence[str] = ()) -> None:
        """Make the batch's objects and new patient key files durable (one ``syncfs``)."""
        paths = [self.vault.spool / rel for rel in new_keys]
        paths += [self.vault.spool / w.object_path for w in written]
        syncfs(self.vault.spool, paths)
        if not _SYNCFS_COVERS_FOLDERS:
            for folder in {p.parent for p in paths}:
                fsync_dir(folder)


def clean_spool(vault: Vault, catalog: Catalog) -> int:
    """Remove spool files the catalog does not know (left by a crash before recording).

    An ingest batch of another process holds the rotation lock (shared) from its first key
    file to its last commit: taken exclusively here, no file of a batch in flight is mistaken
    for a crash's leftover (a new patient's key file is recorded only with the batch)."""
    with vault.rotation_lock(exclusive=True):
        return _clean_spool(vault, catalog)


def _clean_spool(vault: Vault, catalog: Catalog) -> int:
    removed = 0
    keys_dir = vault.spool / "keys"
    if keys_dir.is_dir():
        for f in keys_dir.iterdir():
            if f.name.startswith(".tmp-") or catalog.item(f"keys/{f.name}") is None:
                f.unlink(missing_ok=True)
                removed += 1
    objects_dir = vault.spool / "objects"
    if not objects_dir.is_dir():
        return removed
    for sub in objects_dir.iterdir():
        if not sub.is_dir():
            continue
        for f in sub.iterdir():
            rel = f"objects/{sub.name}/{f.name}"
            if f.name.startswith(".tmp-") or catalog.item(rel) is None:
                f.unlink(missing_ok=True)
                removed += 1
    return removed
