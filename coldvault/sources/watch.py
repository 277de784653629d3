"""The source watcher: finds finished files in the watched folders and hands them to ingest.

- watchdog (inotify) events are *hints*: they nominate paths to a :class:`Settler` per source,
  which decides when a file is finished (see :mod:`coldvault.sources.settle`);
- a scan at start-up (after the watches are in place, so nothing falls in a gap) and full rescans
  every ``rescan_interval`` seconds are the *truth*: watchdog drops events silently when the
  inotify queue overflows or the watch limit is reached, and never reports files that were there
  before it started;
- each source folder is checked every ``root_check_interval`` seconds (one ``stat``): deleted,
  replaced or moved away, it is re-watched and rescanned once it is back (watchdog's watch
  follows the old inode, or dies with it);
- nothing runs while idle but those timers: the worker thread sleeps until the next file is due,
  the next root check or the next rescan.

Symlinks are never followed (scans walk folders by descriptor with ``O_NOFOLLOW``), ignored names
(temporary files, dotfiles, the source's ``ignore`` globs) are skipped at every level.

A file is reported through ``on_ready`` once per version: the watcher remembers the fingerprint
it last reported for each path during its lifetime, and asks ``is_archived`` (the catalog) for
files it has not reported itself. A file changed after it was reported has a new fingerprint and
is reported again. If ``on_ready`` raises, the file is not remembered and the next rescan offers
it again.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from coldvault.config import Config, SourceConfig
from coldvault.sources.rules import RuleMatch, SourceRules, UnsafePathError, check_relpath
from coldvault.sources.settle import (
    Fingerprint,
    IsArchived,
    Probe,
    Settled,
    Settler,
    already_archived,
    ensure_sigio_ignored,
    lstat_beneath,
    probe_writer,
)

__all__ = ["ReadyFile", "SourceWatcher", "watcher_from_config"]

log = logging.getLogger(__name__)

# Only what can mean "a file appeared, changed, moved or went away". Leaving out opened /
# closed-no-write keeps inotify from waking us for readers (our own lease probes included).
_EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
]

_MAX_SCAN_DEPTH = 64
_MAX_SLEEP = 3600.0
_MIN_SLEEP = 0.01
_WATCHES_LIMIT_FILE = "/proc/sys/fs/inotify/max_user_watches"


@dataclass(frozen=True)
class ReadyFile:
    """A finished file, ready to be archived."""

    source: str
    """The source's name (``[[source]] name``)."""
    root: Path
    """The source folder. Open the file with ``settle.open_beneath(root, relpath)``."""
    path: Path
    """``root / relpath`` (for messages; opening by this path would follow symlinks)."""
    relpath: str
    """Relative to ``root``, ``/`` separators, no ``..``."""
    fingerprint: Fingerprint
    """The version that was judged finished; store it with the document, check it again (fstat)
    after reading, and pass it to ``settle.unlink_beneath`` for ``on_archived = "delete"``."""
    patient: str | None
    """External patient id from the source rule; None: the unsorted inbox."""
    date: datetime.date | None
    kind: str | None
    match: RuleMatch
    """Everything the rule said (all named groups, warnings)."""


ObserverFactory = Callable[[], Any]
ProbeFactory = Callable[[str, str], tuple[Probe, os.stat_result | None]]


@dataclass(eq=False)
class _Source:
    config: SourceConfig
    rules: SourceRules
    settler: Settler
    root: str
    watch_root: str = ""
    """The folder actually watched: ``root`` with symlinks resolved (watchdog would otherwise
    watch a symlinked root itself, and see nothing inside it). Event paths start with it."""
    root_id: tuple[int, int] | None = None
    checked: bool = False
    watch: Any = None
    watch_failed: bool = False
    missing_warned: bool = False
    needs_scan: bool = True
    dir_count: int = 0
    reported: dict[str, Fingerprint] = field(default_factory=dict)
    subtree_scans: set[str] = field(default_factory=set)

    @property
    def name(self) -> str:
        return self.config.name

    def is_root(self, path: str) -> bool:
        path = os.path.normpath(path)
        return path == self.root or path == self.watch_root

    def rel(self, path: str) -> str | None:
        for base in (self.watch_root, self.root):
            if not base:
                continue
            prefix = base if base.endswith("/") else base + "/"
            if path.startswith(prefix):
                try:
                    return check_relpath(path[len(prefix) :])
                except UnsafePathError:
                    return None
        return None


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: SourceWatcher, source: _Source) -> None:
        self.watcher = watcher
        self.source = source

    def on_any_event(self, event: FileSystemEvent) -> None:
        try:
            self.watcher._on_event(self.source, event)
        except Exception as exc:  # never let the observer thread die
            log.error(
                "source %s: %s while handling a file event", self.source.name, type(exc).__name__
            )
            log.debug("event handler error", exc_info=True)


class _OverflowLogHandler(logging.Handler):
    """watchdog only *logs* an inotify queue overflow: turn it into an early rescan."""

    def __init__(self, watcher: SourceWatcher) -> None:
        super().__init__(logging.WARNING)
        self.watcher = watcher

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            if "overflow" in record.getMessage().lower():
                self.watcher.request_rescan()


class SourceWatcher:
    """Watches the source folders and calls ``on_ready`` (from the watcher's own thread, one file
    at a time) for every finished file.

    ``start()`` / ``stop()`` run it with real threads; ``poll_once()`` does one round of work
    synchronously (scans, root checks, settling) for tests, without the observer unless started.
    ``clock`` must be monotonic seconds (a fake one only makes sense with ``poll_once``).
    ``probe`` replaces the writer check (``probe(root, relpath)``), for tests.
    """

    def __init__(
        self,
        sources: Sequence[SourceConfig],
        on_ready: Callable[[ReadyFile], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        quiet_seconds: float = 5.0,
        rescan_interval: float = 600.0,
        is_archived: IsArchived | None = None,
        empty_quiet: float | None = None,
        root_check_interval: float = 30.0,
        probe: ProbeFactory | None = None,
        observer_factory: ObserverFactory = Observer,
    ) -> None:
        if rescan_interval <= 0 or root_check_interval <= 0:
            raise ValueError("intervals must be positive")
        self.on_ready = on_ready
        self.clock = clock
        self.quiet_seconds = float(quiet_seconds)
        self.rescan_interval = float(rescan_interval)
        self.root_check_interval = float(root_check_interval)
        self.is_archived = is_archived
        self._observer_factory = observer_factory
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self._overflow_handler: _OverflowLogHandler | None = None
        self._next_rescan = float("-inf")
        self._next_root_check = float("-inf")
        self._limit_warned = False
        self._sources: list[_Source] = []
        for cfg in sources:
            root = os.path.normpath(str(cfg.path))
            quiet = cfg.quiet_seconds if cfg.quiet_seconds is not None else self.quiet_seconds
            settler = Settler(
                root,
                quiet=quiet,
                empty_quiet=empty_quiet,
                clock=clock,
                stat=_bind_stat(root),
                probe=_bind_probe(probe or probe_writer, root),
            )
            self._sources.append(_Source(cfg, SourceRules(cfg), settler, root))

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start watching (call from the main thread: it also makes the writer probe safe, see
        :func:`~coldvault.sources.settle.ensure_sigio_ignored`). Returns at once; the start-up
        scan runs in the watcher's thread."""
        if self._thread is not None:
            raise RuntimeError("SourceWatcher already started")
        if not ensure_sigio_ignored():
            log.warning("SIGIO could not be ignored: open writers will not be detected")
        self._stopping.clear()
        observer = self._observer_factory()
        observer.start()
        self._observer = observer
        self._overflow_handler = _OverflowLogHandler(self)
        logging.getLogger("watchdog.observers").addHandler(self._overflow_handler)
        with self._lock:
            self._next_root_check = float("-inf")
            self._next_rescan = float("-inf")
        self._thread = threading.Thread(target=self._run, name="coldvault-sources", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the worker and the observer threads and join them (from the calling thread).
        If ``on_ready`` is running, it is waited for. Idempotent."""
        self._stopping.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout)
        if self._overflow_handler is not None:
            logging.getLogger("watchdog.observers").removeHandler(self._overflow_handler)
            self._overflow_handler = None
        for src in self._sources:
            src.watch = None
            src.root_id = None
            src.checked = False

    def __enter__(self) -> SourceWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def request_rescan(self, delay: float | None = None) -> None:
        """Rescan every source soon (default: after one quiet period, to let a burst pass)."""
        when = self.clock() + (self.quiet_seconds if delay is None else delay)
        with self._lock:
            self._next_rescan = min(self._next_rescan, when)
        self._wake.set()

    def unreport(self, source: str, relpath: str, *, retry_in: float | None = None) -> None:
        """Forget that ``relpath`` of ``source`` was reported, so that it is offered again: for
        callers whose ``on_ready`` only queues the file and whose ingest failed later. The next
        rescan offers it (or sooner: ``retry_in`` seconds asks for an early rescan).
        Thread-safe."""
        for src in self._sources:
            if src.name == source:
                with self._lock:
                    src.reported.pop(relpath, None)
        if retry_in is not None:
            self.request_rescan(retry_in)

    @property
    def pending(self) -> int:
        """How many files are waiting to settle."""
        return sum(len(s.settler) for s in self._sources)

    # --- the worker ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # tracebacks may name files: DEBUG only
                log.error("source watcher: unexpected %s (continuing)", type(exc).__name__)
                log.debug("source watcher error", exc_info=True)
                self._stopping.wait(min(self.quiet_seconds, 5.0))
            deadline = self.next_deadline()
            timeout = max(_MIN_SLEEP, min(_MAX_SLEEP, deadline - self.clock()))
            self._wake.wait(timeout)
            self._wake.clear()

    def next_deadline(self) -> float:
        """Clock time of the next piece of work (a settling file, a root check, a rescan)."""
        with self._lock:
            deadline = min(self._next_rescan, self._next_root_check)
            for src in self._sources:
                if src.needs_scan or src.subtree_scans:
                    return self.clock()
        for src in self._sources:
            due = src.settler.next_due()
            if due is not None:
                deadline = min(deadline, due)
        return deadline

    def poll_once(self) -> list[ReadyFile]:
        """One round: root checks and scans that are due, then settle and report. Returns the
        files reported (``on_ready`` has been called for each)."""
        now = self.clock()
        with self._lock:
            check_roots = now >= self._next_root_check
            if check_roots:
                self._next_root_check = now + self.root_check_interval
            full = now >= self._next_rescan
            if full:
                self._next_rescan = now + self.rescan_interval
        if check_roots:
            for src in self._sources:
                self._check_root(src)
        for src in self._sources:
            with self._lock:
                scan_all = full or src.needs_scan
                src.needs_scan = False
                subtrees = set() if scan_all else set(src.subtree_scans)
                src.subtree_scans.clear()
            if src.root_id is None:
                continue
            if scan_all:
                self._scan(src, "")
            for reldir in sorted(subtrees):
                self._scan(src, reldir)
        if full:
            self._check_watch_limit()
        delivered: list[ReadyFile] = []
        for src in self._sources:
            for settled in src.settler.poll():
                if self._stopping.is_set():
                    break
                ready = self._deliver(src, settled)
                if ready is not None:
                    delivered.append(ready)
        return delivered

    def _deliver(self, src: _Source, settled: Settled) -> ReadyFile | None:
        rel, fp = settled
        with self._lock:
            if src.reported.get(rel) == fp:
                return None
        if already_archived(self.is_archived, src.name, rel, fp):
            with self._lock:
                src.reported[rel] = fp
            return None
        try:
            match = src.rules.match(rel)
        except UnsafePathError:
            return None
        ready = ReadyFile(
            source=src.name,
            root=Path(src.root),
            path=Path(src.root) / rel,
            relpath=rel,
            fingerprint=fp,
            patient=match.patient,
            date=match.date,
            kind=match.kind,
            match=match,
        )
        try:
            self.on_ready(ready)
        except Exception as exc:
            log.error(
                "source %s: archiving a finished file failed (%s); it will be retried at the "
                "next rescan",
                src.name,
                type(exc).__name__,
            )
            log.debug("on_ready failed for %s", rel, exc_info=True)
            return None
        with self._lock:
            src.reported[rel] = fp
        return ready

    # --- source folders ------------------------------------------------------------------------

    def _check_root(self, src: _Source) -> None:
        try:
            st = os.stat(src.root)
            ident: tuple[int, int] | None = (
                (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
            )
        except OSError:
            ident = None
        observer = self._observer
        first, src.checked = not src.checked, True
        if ident == src.root_id and not first:
            if ident is not None and observer is not None and src.watch is None:
                self._watch(src, observer)  # retry a watch that failed (e.g. the watch limit)
                if src.watch is not None:
                    with self._lock:
                        src.needs_scan = True  # events were not seen meanwhile
                    self._wake.set()
            return
        if src.root_id is not None and ident != src.root_id:
            log.warning(
                "source %s: its folder was removed or replaced; watching it again", src.name
            )
        self._unwatch(src)
        src.settler.forget_tree("")
        src.root_id = ident
        if ident is None:
            if not src.missing_warned:
                src.missing_warned = True
                log.warning(
                    "source %s: the folder %s is missing; waiting for it to come back",
                    src.name,
                    src.root,
                )
            return
        if src.missing_warned:
            log.warning("source %s: the folder is back", src.name)
            src.missing_warned = False
        if observer is not None:
            self._watch(src, observer)
        with self._lock:
            src.needs_scan = True
        self._wake.set()

    def _watch(self, src: _Source, observer: Any) -> None:
        src.watch_root = os.path.realpath(src.root)
        try:
            src.watch = observer.schedule(
                _Handler(self, src), src.watch_root, recursive=True, event_filter=_EVENT_FILTER
            )
        except OSError as exc:
            src.watch = None
            if not src.watch_failed:
                src.watch_failed = True
                log.warning(
                    "source %s: the folder cannot be watched (%s); new files will be found by the "
                    "rescans every %d s only. If the inotify watch limit is reached, raise "
                    "fs.inotify.max_user_watches.",
                    src.name,
                    os.strerror(exc.errno) if exc.errno else exc,
                    int(self.rescan_interval),
                )
            return
        if src.watch_failed:
            log.warning("source %s: the folder is watched again", src.name)
        src.watch_failed = False

    def _unwatch(self, src: _Source) -> None:
        watch, src.watch = src.watch, None
        observer = self._observer
        if watch is not None and observer is not None:
            with contextlib.suppress(Exception):  # the emitter may have stopped by itself
                observer.unschedule(watch)

    def _check_watch_limit(self) -> None:
        if self._observer is None or self._limit_warned:
            return
        dirs = sum(s.dir_count for s in self._sources if s.watch is not None)
        try:
            with open(_WATCHES_LIMIT_FILE) as f:
                limit = int(f.read().strip())
        except (OSError, ValueError):
            return
        if dirs > 0.8 * limit:
            self._limit_warned = True
            log.warning(
                "the source folders hold %d sub-folders, close to or above the inotify watch "
                "limit (%d): some new files will only be found by the periodic rescans. Raise "
                "fs.inotify.max_user_watches or keep the source trees smaller.",
                dirs,
                limit,
            )

    # --- events ----------------------------------------------------------------------------------

    def _on_event(self, src: _Source, event: FileSystemEvent) -> None:
        etype = event.event_type
        path = os.fsdecode(event.src_path)
        if event.is_directory:
            if etype == "deleted":
                if src.is_root(path):
                    with self._lock:
                        self._next_root_check = self.clock()
                    self._wake.set()
                    return
                rel = src.rel(path)
                if rel is not None:
                    self._drop_tree(src, rel)
            elif etype == "moved":
                rel = src.rel(path)
                if rel is not None:
                    self._drop_tree(src, rel)
                self._request_subtree(src, src.rel(os.fsdecode(event.dest_path)))
            elif etype == "created":
                self._request_subtree(src, src.rel(path))
            return
        rel = src.rel(path)
        if etype == "moved":
            if rel is not None:
                src.settler.forget(rel)
                with self._lock:
                    src.reported.pop(rel, None)
            self._nominate(src, src.rel(os.fsdecode(event.dest_path)))
        elif etype == "deleted":
            if rel is not None:
                src.settler.forget(rel)
                with self._lock:
                    src.reported.pop(rel, None)
        elif etype in ("created", "modified", "closed", "attrib"):
            self._nominate(src, rel)

    def _nominate(self, src: _Source, rel: str | None) -> None:
        if rel is None or src.rules.ignored(rel):
            return
        if src.settler.nominate(rel, activity=True):
            self._wake.set()

    def _request_subtree(self, src: _Source, rel: str | None) -> None:
        if rel is None or src.rules.ignored(rel):
            return
        with self._lock:
            src.subtree_scans.add(rel)
        self._wake.set()

    def _drop_tree(self, src: _Source, rel: str) -> None:
        src.settler.forget_tree(rel)
        prefix = rel + "/"
        with self._lock:
            for key in [k for k in src.reported if k.startswith(prefix)]:
                del src.reported[key]

    # --- scanning --------------------------------------------------------------------------------

    def _scan(self, src: _Source, reldir: str) -> None:
        """Walk ``reldir`` (``""``: the whole source) by descriptor, never following symlinks,
        and nominate every regular file that is not the version already reported/archived."""
        full = reldir == ""
        with self._lock:
            before = set(src.reported) if full else set()
        seen: set[str] = set()
        counter = [0]
        try:
            fd = os.open(src.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            if reldir:
                for part in reldir.split("/"):
                    nfd = os.open(
                        part,
                        os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=fd,
                    )
                    os.close(fd)
                    fd = nfd
            self._walk(src, fd, reldir, 0, seen, counter)
        except OSError:
            return  # gone meanwhile, or a symlink: nothing to scan
        finally:
            os.close(fd)
        if full:
            src.dir_count = counter[0]
            with self._lock:
                for rel in before - seen:
                    src.reported.pop(rel, None)

    def _walk(
        self,
        src: _Source,
        dfd: int,
        reldir: str,
        depth: int,
        seen: set[str],
        counter: list[int],
    ) -> None:
        if self._stopping.is_set():
            return
        counter[0] += 1
        subdirs: list[str] = []
        try:
            with os.scandir(dfd) as it:
                entries = list(it)
        except OSError:
            return
        for entry in entries:
            name = entry.name
            if src.rules.ignored_name(name):
                continue
            rel = f"{reldir}/{name}" if reldir else name
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(name)
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue  # symlink, fifo, socket, device
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            seen.add(rel)
            self._offer(src, rel, st)
        if depth >= _MAX_SCAN_DEPTH:
            if subdirs:
                log.warning(
                    "source %s: folders nested deeper than %d levels are not scanned",
                    src.name,
                    _MAX_SCAN_DEPTH,
                )
            return
        for name in subdirs:
            rel = f"{reldir}/{name}" if reldir else name
            try:
                sfd = os.open(
                    name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd
                )
            except OSError:
                continue
            try:
                self._walk(src, sfd, rel, depth + 1, seen, counter)
            finally:
                os.close(sfd)

    def _offer(self, src: _Source, rel: str, st: os.stat_result) -> None:
        fp = Fingerprint.from_stat(st)
        with self._lock:
            if src.reported.get(rel) == fp:
                return
        if rel not in src.settler and already_archived(self.is_archived, src.name, rel, fp):
            with self._lock:
                src.reported[rel] = fp
            return
        src.settler.nominate(rel, activity=False, st=st)


def _bind_stat(root: str) -> Callable[[str], os.stat_result]:
    return lambda rel: lstat_beneath(root, rel)


def _bind_probe(
    probe: ProbeFactory, root: str
) -> Callable[[str], tuple[Probe, os.stat_result | None]]:
    return lambda rel: probe(root, rel)


def watcher_from_config(
    config: Config,
    on_ready: Callable[[ReadyFile], None],
    *,
    is_archived: IsArchived | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> SourceWatcher:
    """A :class:`SourceWatcher` for every source of ``config`` with its timing settings."""
    return SourceWatcher(
        config.sources,
        on_ready,
        clock=clock,
        quiet_seconds=config.vault.quiet_seconds,
        rescan_interval=config.vault.rescan_interval,
        is_archived=is_archived,
    )
