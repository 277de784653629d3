"""The service loop: watch sources, ingest finished files, sync enrolled drives when plugged in.

One main thread owns the catalog; the source watcher and the drive watcher run in their own
threads and only put work on a queue. There is no polling loop: the main thread sleeps on the
queue until a file is ready, a drive appears, a periodic check is due, or a signal asks it to
stop. SIGTERM and SIGINT finish the current batch and exit cleanly (status 0).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from coldvault import ingest_audit, sdnotify
from coldvault.catalog.db import Catalog
from coldvault.config import Config
from coldvault.drives import layout
from coldvault.drives.events import DriveEvent, DriveSource, DriveWatcher, choose_source
from coldvault.drives.station import Station
from coldvault.errors import ColdvaultError
from coldvault.ingest import STOPPING, Ingestor, IngestRequest, clean_spool
from coldvault.journal import Journal, JSONValue
from coldvault.sources.settle import Fingerprint
from coldvault.sources.watch import ReadyFile, watcher_from_config
from coldvault.status import compute_status
from coldvault.vault import Vault

log = logging.getLogger(__name__)

BATCH_MAX = 256  # ready files handed to one ingest call (a backlog keeps the workers busy)
CHECK_INTERVAL = 3600.0
ALERT_REPEAT = 24 * 3600.0  # an unchanged alert is repeated once a day
RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class _Stop:
    signum: int


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        drive_source: DriveSource | None = None,
        watch_drives: bool = True,
        notify: Callable[[str, str], Any] | None = None,
        unmount: bool = True,
    ) -> None:
        self.config = config
        self.vault = Vault(Path(config.vault.state_dir))
        self.journal = Journal(self.vault.journal_dir)
        self._queue: queue.Queue[object] = queue.Queue()
        self._stop = threading.Event()
        self._drive_source = drive_source
        self._watch_drives = watch_drives
        self._notify = notify
        self._unmount = unmount
        self._local = threading.local()
        self._done: dict[str, float] = {}
        self._alerts: tuple[str, ...] = ()
        self._alerted = 0.0
        self.ingested = 0

    # --- control -------------------------------------------------------------------------
    def request_stop(self, signum: int = 0) -> None:
        if not self._stop.is_set():
            self._stop.set()
            self._queue.put(_Stop(signum))

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("signal %d received: finishing the current work", signum)
        self.request_stop(signum)

    def inject_drive_event(self, event: DriveEvent) -> None:
        self._queue.put(event)

    # --- callbacks from other threads ----------------------------------------------------
    def _is_archived(self, source: str, relpath: str, fp: Fingerprint) -> bool:
        cat = getattr(self._local, "catalog", None)
        if cat is None:
            cat = Catalog(self.vault.catalog_path, readonly=True)
            self._local.catalog = cat
        key = self.vault.lookup("source", f"{source}\0{relpath}")
        return cat.is_archived(key, fp.to_text())

    # --- main loop -----------------------------------------------------------------------
    def run(self, install_signals: bool = True) -> int:
        if install_signals:
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        catalog = Catalog(self.vault.catalog_path)
        removed = clean_spool(self.vault, catalog)
        if removed:
            log.warning("removed %d unrecorded object(s) left in the spool by a crash", removed)
        ingest_audit.catch_up(self.journal, catalog)
        ingestor = Ingestor(self.vault, catalog, workers=self.config.vault.workers)
        station = Station(
            self.vault,
            catalog,
            copies=self.config.vault.copies,
            source_paths={s.name: Path(s.path) for s in self.config.sources},
            delete_sources={s.name for s in self.config.sources if s.on_archived == "delete"},
            journal=self.journal.append,
        )
        watcher = watcher_from_config(
            self.config, lambda rf: self._queue.put(rf), is_archived=self._is_archived
        )
        drives: DriveWatcher | None = None
        try:
            watcher.start()
            if self._watch_drives:
                source = self._drive_source or choose_source()
                drives = DriveWatcher(source, self._queue.put)
                drives.start()
            self.journal.append("daemon-start", sources=len(self.config.sources))
            sdnotify.notify("READY=1\nSTATUS=watching")
            log.info("coldvault daemon ready: %d source(s)", len(self.config.sources))
            next_check = time.monotonic()
            while not self._stop.is_set():
                if time.monotonic() >= next_check:
                    self._periodic(catalog)
                    next_check = time.monotonic() + CHECK_INTERVAL
                try:
                    item = self._queue.get(timeout=max(0.0, next_check - time.monotonic()))
                except queue.Empty:
                    continue
                if isinstance(item, _Stop):
                    break
                if isinstance(item, ReadyFile):
                    self._ingest(ingestor, [item], watcher)
                elif isinstance(item, DriveEvent):
                    self._on_drive(catalog, station, item)
        finally:
            sdnotify.notify("STOPPING=1")
            watcher.stop()
            if drives is not None:
                drives.stop()
            ingestor.close()
            catalog.close()
            cat = getattr(self._local, "catalog", None)
            if cat is not None:
                cat.close()
        log.info("coldvault daemon stopped")
        return 0

    def _ingest(self, ingestor: Ingestor, first: list[ReadyFile], watcher: object) -> None:
        batch = list(first)
        deferred: list[object] = []
        while len(batch) < BATCH_MAX:  # whatever else is ready joins the batch
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, ReadyFile):
                batch.append(item)
            else:
                deferred.append(item)
        for item in deferred:
            self._queue.put(item)
        requests = []
        for rf in batch:
            cfg = self.config.source(rf.source)
            requests.append(
                IngestRequest(
                    path=rf.path,
                    source=rf.source,
                    relpath=rf.relpath,
                    patient_id=rf.patient,
                    doc_date=rf.date,
                    kind=rf.kind or cfg.kind or "",
                    fingerprint=rf.fingerprint.to_text(),
                    delete_source=cfg.on_archived == "delete",
                    root=Path(rf.root),
                )
            )
        # A stop request (SIGTERM, SIGINT) lets the files being written finish; the others
        # stay in their folders for the next start.
        results = ingestor.ingest_batch(requests, should_stop=self._stop.is_set)
        left = sum(1 for r in results if r.skipped == STOPPING)
        if left:
            log.info("stopping: %d file(s) left for the next start", left)
        archived = [r for r in results if r.doc_id]
        by_path = {rf.path: rf for rf in batch}
        for r in results:
            if r.error is not None:
                failed = by_path.get(r.request.path)
                if failed is not None:  # offered again later (busy, changed while read, ...)
                    watcher.unreport(failed.source, failed.relpath, retry_in=RETRY_SECONDS)  # type: ignore[attr-defined]
                # No file name at INFO or above: names are health data.
                log.warning(
                    "source %s: a file was not archived: %s", r.request.source, r.error.message
                )
        if archived:
            self.ingested += len(archived)
            ingest_audit.journal_ingest(
                self.journal,
                ingestor.catalog,
                [r.doc_id for r in archived if r.doc_id],
                unsorted=sum(1 for r in archived if r.patient_ref is None),
            )
            log.info("archived %d document(s) into the spool", len(archived))
            sdnotify.notify(f"STATUS=archived {self.ingested} document(s) since start")

    def _periodic(self, catalog: Catalog) -> None:
        status = compute_status(
            catalog,
            overdue_days=self.config.vault.drive_overdue_days,
            copies=self.config.vault.copies,
        )
        for w in status.warnings:
            log.warning("%s", w)
        # What needs someone to act is journaled and shown when it changes, and once a day
        # while it lasts (not at every hourly check).
        alerts = tuple(status.alerts)
        now = time.monotonic()
        if alerts and (alerts != self._alerts or now - self._alerted >= ALERT_REPEAT):
            self.journal.append("warning", warnings=list[JSONValue](alerts))
            self._tell("coldvault: attention", "\n".join(alerts))
            self._alerted = now
        self._alerts = alerts

    def _tell(self, summary: str, body: str) -> None:
        if self._notify is not None:
            self._notify(summary, body)
            return
        from coldvault.drives.notify import notify

        notify(summary, body)

    # --- drives --------------------------------------------------------------------------
    def _on_drive(self, catalog: Catalog, station: Station, ev: DriveEvent) -> None:
        if ev.action == "remove":
            log.info("a drive was removed (%s)", ev.devnode)
            self._done.pop(ev.fs_uuid or ev.devnode, None)
            return
        # A drive we just synced and ejected raises "change" events (unmount, power-off): they
        # must not start another sync. Only a new "add" (plugged in again) does.
        key = ev.fs_uuid or ev.devnode
        if ev.action == "change" and key in self._done:
            return
        row = catalog.drive(fs_uuid=ev.fs_uuid) if ev.fs_uuid else None
        root: Path | None = Path(ev.mountpoint) if ev.mountpoint else None
        if row is None and root is not None:
            try:
                marker = layout.check_marker(root, self.vault.info.vault_id)
                row = catalog.drive(drive_id=marker.drive_id)
            except ColdvaultError:
                row = None
        if row is None:
            log.debug("ignoring a drive that is not enrolled (%s)", ev.devnode)
            return
        mounted_by_us = False
        try:
            if root is None:
                from coldvault.drives.mounts import find_mount

                m = find_mount(devnode=ev.devnode)
                if m is not None:
                    root = Path(m.mountpoint)
            if root is None and row.fs_uuid:
                from coldvault.drives.udisks import UdisksClient

                client = UdisksClient()
                try:
                    root = Path(client.mount(row.fs_uuid))
                    mounted_by_us = True
                finally:
                    client.close()
            if root is None:
                raise ColdvaultError(f"the drive {row.name!r} could not be mounted")
            log.info("drive %s plugged in: syncing", row.name)
            sdnotify.notify(f"STATUS=syncing to drive {row.name}")
            report = station.sync(root)
        except ColdvaultError as exc:
            log.error("drive %s: %s", row.name, exc.message)
            self.journal.append("sync-failed", drive=row.drive_id, error=exc.message)
            self._tell(f"coldvault: drive {row.name}", f"Problem: {exc.message}")
            return
        if report.stopped:
            msg = f"The copy stopped: {report.stopped}. Nothing is lost; plug it in again later."
            self._tell(f"coldvault: drive {row.name}", msg)
            return
        ejected = self._eject(row.fs_uuid, root, mounted_by_us) if self._unmount else False
        self._done[key] = time.monotonic()
        text = f"{report.copied} file(s) copied and verified." + (
            " You can remove the drive." if ejected or not row.fs_uuid else ""
        )
        log.info("drive %s: %s", row.name, text)
        self.journal.append("drive-done", drive=row.drive_id, copied=report.copied, ejected=ejected)
        self._tell(f"coldvault: drive {row.name}", text)

    def _eject(self, fs_uuid: str | None, root: Path, mounted_by_us: bool) -> bool:
        if not fs_uuid:
            return False
        from coldvault.drives.station import eject

        try:
            eject(fs_uuid, root)
            return True
        except ColdvaultError as exc:
            log.warning("the drive could not be unmounted: %s", exc.message)
            return False
