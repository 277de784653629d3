"""Finished-file detection, and safe access to files beneath a source folder.

A close-write event does not mean "finished": a Windows client over SMB closes a pre-sized file
full of zeros and then fills it; an FTP upload that was aborted closes normally; a file moved in
gives no close at all. So events only *nominate* a path, and the :class:`Settler` decides:

1. a quiet period with no activity (events) on the path;
2. two identical lstat readings ``(size, mtime_ns, inode, dev, ctime_ns)`` at least one quiet
   period apart (the first one is taken at the last event, or by the scan that found the file);
3. a zero-byte file needs a longer quiet period (``empty_quiet``): it is often a file whose
   writer has not started yet, but it can also be a legitimate (empty) document, so it is taken
   in the end rather than ignored forever;
4. nobody holds the file open for writing: we take a read lease and drop it at once (the kernel
   refuses a read lease with EAGAIN while any process has the file open for writing). Where
   leases are not available (SMB/NFS client mounts: EINVAL; no privilege: EACCES), the stat-only
   checks above decide alone.

What this cannot detect: an upload that was aborted and then abandoned (vsftpd, for one, leaves
the truncated file under its final name and closes it normally). Once it is quiet and nobody
holds it, it *is* finished as far as anyone can tell from the outside, and it is archived; if the
sender uploads it again later, the new version is archived too (a changed fingerprint).

All access goes through :func:`open_beneath` / :func:`lstat_beneath`, which walk the path one
component at a time with ``O_NOFOLLOW``: a symlink, anywhere in the path, is never followed, and
special files (fifo, socket, device) are never opened for reading (``O_NONBLOCK`` + ``S_ISREG``
checked on the opened descriptor). This matters because the daemon runs as root: a symlink planted
in a scanner share must not turn into "archive, then delete, /etc/shadow".
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import heapq
import itertools
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from coldvault.sources.rules import check_relpath

__all__ = [
    "Fingerprint",
    "IsArchived",
    "NotRegularFileError",
    "Probe",
    "Settled",
    "Settler",
    "Signature",
    "already_archived",
    "ensure_sigio_ignored",
    "lstat_beneath",
    "open_beneath",
    "probe_writer",
    "unlink_beneath",
]

log = logging.getLogger(__name__)

F_SETLEASE: int = getattr(fcntl, "F_SETLEASE", 1024)
F_RDLCK: int = getattr(fcntl, "F_RDLCK", 0)
F_UNLCK: int = getattr(fcntl, "F_UNLCK", 2)

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)


# --- fingerprints ----------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Fingerprint:
    """Identifies one *version* of a source file: the ingest layer stores it with the document,
    and a file whose fingerprint changes after it was archived is archived again."""

    dev: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> Fingerprint:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def to_text(self) -> str:
        """Compact text form for storage: ``dev:inode:size:mtime_ns``."""
        return f"{self.dev}:{self.inode}:{self.size}:{self.mtime_ns}"

    @classmethod
    def from_text(cls, text: str) -> Fingerprint:
        parts = text.split(":")
        if len(parts) != 4:
            raise ValueError(f"not a fingerprint: {text!r}")
        dev, ino, size, mtime = (int(p) for p in parts)
        return cls(dev, ino, size, mtime)


#: ``is_archived(source_name, relpath, fingerprint)``: True if this exact version of the file is
#: already archived (so it must not be reported again).
IsArchived = Callable[[str, str, Fingerprint], bool]


def already_archived(
    is_archived: IsArchived | None, source: str, relpath: str, fingerprint: Fingerprint
) -> bool:
    """Ask the callback, if any; a failing callback counts as "not archived" (archiving twice is
    harmless, missing a version is not)."""
    if is_archived is None:
        return False
    try:
        return bool(is_archived(source, relpath, fingerprint))
    except Exception as exc:
        log.error(
            "source %s: the is_archived check failed (%s); the file is treated as new",
            source,
            type(exc).__name__,
        )
        log.debug("is_archived error", exc_info=True)
        return False


@dataclass(frozen=True)
class Signature:
    """What two readings must agree on for a file to count as unchanged."""

    size: int
    mtime_ns: int
    ino: int
    dev: int
    ctime_ns: int

    @classmethod
    def from_stat(cls, st: os.stat_result) -> Signature:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, st.st_ctime_ns)

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.dev, self.ino, self.size, self.mtime_ns)


# --- safe access beneath a source folder -----------------------------------------------------


class NotRegularFileError(OSError):
    """The path names a symlink, folder, fifo, socket or device, not a regular file."""


def _open_parent(root: str | Path, relpath: str) -> tuple[int, str]:
    """A descriptor of the folder holding ``relpath`` (reached without following any symlink
    below ``root``) and the file's name in it. The caller closes the descriptor."""
    parts = check_relpath(relpath).split("/")
    flags = os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC
    fd = os.open(root, flags)  # the root itself is the installer's choice: may be a symlink
    try:
        for part in parts[:-1]:
            nfd = os.open(part, flags | _O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def lstat_beneath(root: str | Path, relpath: str) -> os.stat_result:
    """``lstat`` of ``root/relpath`` without following any symlink below ``root``
    (a symlinked folder in the path gives ``ENOTDIR``/``ELOOP``)."""
    fd, name = _open_parent(root, relpath)
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def open_beneath(root: str | Path, relpath: str) -> int:
    """Open ``root/relpath`` read-only, never following a symlink and never opening anything but a
    regular file (:class:`NotRegularFileError` otherwise). The descriptor is non-blocking only for
    the open itself: if another process holds a write lease (smbd does), the open fails with
    :class:`BlockingIOError` instead of waiting (try again later). The caller closes it."""
    dfd, name = _open_parent(root, relpath)
    try:
        fd = os.open(
            name,
            os.O_RDONLY | os.O_NONBLOCK | _O_NOFOLLOW | _O_NOCTTY | _O_CLOEXEC,
            dir_fd=dfd,
        )
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(errno.EINVAL, "not a regular file")
        fl = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlink_beneath(root: str | Path, relpath: str, fingerprint: Fingerprint) -> bool:
    """Delete ``root/relpath`` only if it is still a regular file with exactly ``fingerprint``
    (a file rewritten since it was archived is a new version: it stays). Returns whether it was
    deleted; a missing file returns False. The folder is fsynced after the unlink."""
    dfd, name = _open_parent(root, relpath)
    try:
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if not stat.S_ISREG(st.st_mode) or Fingerprint.from_stat(st) != fingerprint:
            return False
        os.unlink(name, dir_fd=dfd)
        with contextlib.suppress(OSError):  # some filesystems refuse fsync on a folder
            os.fsync(dfd)
        return True
    finally:
        os.close(dfd)


# --- is anyone still writing? ----------------------------------------------------------------


class Probe(enum.Enum):
    """Result of the writer probe."""

    FREE = "free"
    """Lease granted: nobody has the file open for writing."""
    BUSY = "busy"
    """A process has it open for writing (or holds a write lease): not finished."""
    UNSUPPORTED = "unsupported"
    """Leases are not available here (filesystem, privileges): the stat checks decide alone."""
    GONE = "gone"
    """Vanished, replaced by something that is not a regular file, or unreadable."""


_sigio_warned = False
_unsupported_warned: set[int] = set()
_warn_lock = threading.Lock()


def ensure_sigio_ignored() -> bool:
    """Make lease probing safe for this process; True if it is.

    Taking a lease makes the kernel send SIGIO to this process if another process opens the file
    for writing while we hold it, and SIGIO's default action terminates the process (verified:
    exit status 128+29). We hold the lease for microseconds, but a daemon must not die of it, so
    SIGIO is set to be ignored. Only the main thread may change signal dispositions: call this
    from the main thread before starting watchers (``SourceWatcher.start`` does)."""
    sigio = getattr(signal, "SIGIO", None)
    if sigio is None:
        return False
    handler = signal.getsignal(sigio)
    if handler not in (signal.SIG_DFL, None):
        return True  # already ignored, or handled in Python (a handler never terminates)
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(sigio, signal.SIG_IGN)
    return True


def _lease_probe_fd(fd: int) -> Probe:
    global _sigio_warned
    if not ensure_sigio_ignored():
        with _warn_lock:
            if not _sigio_warned:
                _sigio_warned = True
                log.warning(
                    "SIGIO is not ignored and cannot be from this thread: the open-writer check "
                    "is disabled, files are judged finished on the quiet period alone"
                )
        return Probe.UNSUPPORTED
    try:
        fcntl.fcntl(fd, F_SETLEASE, F_RDLCK)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            return Probe.BUSY
        return Probe.UNSUPPORTED  # EINVAL (fs without leases), EACCES (not owner), ENOLCK...
    # Drop it at once: a held lease would stall the next writer for up to lease-break-time.
    fcntl.fcntl(fd, F_SETLEASE, F_UNLCK)
    return Probe.FREE


def probe_writer(root: str | Path, relpath: str) -> tuple[Probe, os.stat_result | None]:
    """Is anyone still writing ``root/relpath``? Also returns the ``fstat`` of the descriptor
    that was probed (None when GONE), so the caller can check it is still the file it judged."""
    try:
        fd = open_beneath(root, relpath)
    except BlockingIOError:
        return Probe.BUSY, None  # someone holds a write lease (e.g. smbd with kernel oplocks)
    except (FileNotFoundError, NotADirectoryError, NotRegularFileError):
        return Probe.GONE, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink
            return Probe.GONE, None
        log.warning("a file of a source folder cannot be opened (%s)", os.strerror(exc.errno or 0))
        return Probe.GONE, None
    try:
        st = os.fstat(fd)
        result = _lease_probe_fd(fd)
        if result is Probe.UNSUPPORTED:
            with _warn_lock:
                if st.st_dev not in _unsupported_warned:
                    _unsupported_warned.add(st.st_dev)
                    log.info(
                        "file leases are not available on device %d: finished files are "
                        "detected by the quiet period alone there",
                        st.st_dev,
                    )
        return result, st
    finally:
        os.close(fd)


# --- the settler -----------------------------------------------------------------------------


class Settled(NamedTuple):
    """A file the settler judged finished."""

    relpath: str
    fingerprint: Fingerprint


class _Candidate:
    """A pending path. ``due`` is when it may next be checked. The heap holds at most one valid
    entry per candidate (``gen`` matches, ``queued`` is True), whose time is <= ``due``."""

    __slots__ = ("busy", "due", "gen", "queued", "relpath", "sig", "sig_at")

    def __init__(self, relpath: str, due: float, sig: Signature | None, sig_at: float) -> None:
        self.relpath = relpath
        self.due = due
        self.sig = sig
        self.sig_at = sig_at
        self.busy = False
        self.gen = 0
        self.queued = False


StatFn = Callable[[str], os.stat_result]
ProbeFn = Callable[[str], tuple[Probe, os.stat_result | None]]


class Settler:
    """Decides when files nominated under one folder are finished. Thread-safe: events may be
    fed from the observer thread while another thread polls.

    ``stat`` and ``probe`` take a relative path (defaults: :func:`lstat_beneath` and
    :func:`probe_writer` under ``root``); ``clock`` is monotonic seconds. Tests inject all three.
    The settler remembers nothing once it has reported a file: deduplication of versions is the
    caller's business (see :class:`Fingerprint`).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        quiet: float,
        empty_quiet: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        stat: StatFn | None = None,
        probe: ProbeFn | None = None,
    ) -> None:
        if quiet <= 0:
            raise ValueError("quiet must be positive")
        self.root = str(root)
        self.quiet = float(quiet)
        self.empty_quiet = float(empty_quiet) if empty_quiet is not None else 6 * self.quiet
        self.clock = clock
        self._stat: StatFn = stat or (lambda rel: lstat_beneath(self.root, rel))
        self._probe: ProbeFn = probe or (lambda rel: probe_writer(self.root, rel))
        self._lock = threading.Lock()
        self._pending: dict[str, _Candidate] = {}
        self._heap: list[tuple[float, int, int, _Candidate]] = []
        self._seq = itertools.count()

    # feeding

    def nominate(
        self, relpath: str, *, activity: bool = True, st: os.stat_result | None = None
    ) -> bool:
        """Consider ``relpath``. ``activity=True`` (an event: the file is being worked on) restarts
        its quiet period; ``activity=False`` (a scan found it) only adds it if it is not pending.
        ``st`` is an lstat result the caller already has. Returns True if the path was not
        pending before (the caller may want to wake its poller)."""
        now = self.clock()
        with self._lock:
            cand = self._pending.get(relpath)
            if cand is not None and not activity:
                return False
        if st is None:
            try:
                st = self._stat(relpath)
            except FileNotFoundError:
                self.forget(relpath)
                return False
            except OSError:
                st = None
        if st is not None and not stat.S_ISREG(st.st_mode):
            self.forget(relpath)
            return False
        sig = Signature.from_stat(st) if st is not None else None
        with self._lock:
            cand = self._pending.get(relpath)
            if cand is None:
                cand = _Candidate(relpath, now + self.quiet, sig, now)
                self._pending[relpath] = cand
                self._schedule(cand, cand.due)
                return True
            if activity:
                if sig != cand.sig:
                    # a new first reading: check again one quiet period from now, even if an
                    # earlier check had pushed the next one further (zero-size, busy)
                    cand.sig, cand.sig_at = sig, now
                    self._schedule(cand, now + self.quiet, exact=True)
                else:
                    self._schedule(cand, now + self.quiet)
            return False

    def forget(self, relpath: str) -> None:
        """Drop a path (deleted, moved away)."""
        with self._lock:
            self._pending.pop(relpath, None)

    def forget_tree(self, reldir: str) -> None:
        """Drop every pending path under the folder ``reldir`` ("" = everything)."""
        prefix = reldir.rstrip("/") + "/" if reldir else ""
        with self._lock:
            for rel in [r for r in self._pending if r.startswith(prefix)]:
                del self._pending[rel]

    # state

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

    def __contains__(self, relpath: object) -> bool:
        with self._lock:
            return relpath in self._pending

    def next_due(self) -> float | None:
        """The clock time at which :meth:`poll` may have work (a lower bound), or None when
        nothing is pending: the caller then sleeps until its next rescan."""
        with self._lock:
            while self._heap:
                due, _, gen, cand = self._heap[0]
                if not self._valid(gen, cand):
                    heapq.heappop(self._heap)  # forgotten, replaced or rescheduled
                    continue
                return due
            return None

    # deciding

    def poll(self) -> list[Settled]:
        """Check every path whose time has come; return those that are finished (each is then
        forgotten). Cheap when nothing is due."""
        now = self.clock()
        todo: list[_Candidate] = []
        with self._lock:
            while self._heap and self._heap[0][0] <= now:
                _, _, gen, cand = heapq.heappop(self._heap)
                if not self._valid(gen, cand):
                    continue
                cand.queued = False
                if cand.due > now:  # pushed back by activity since it was queued
                    self._schedule(cand, cand.due)
                    continue
                todo.append(cand)
        done: list[Settled] = []
        for cand in todo:
            result = self._check(cand, now)
            if result is not None:
                done.append(result)
        return done

    # the helpers below are called with the lock held

    def _valid(self, gen: int, cand: _Candidate) -> bool:
        return cand.queued and gen == cand.gen and self._pending.get(cand.relpath) is cand

    def _schedule(self, cand: _Candidate, due: float, *, exact: bool = False) -> None:
        """Next check at ``due`` (``exact``) or at ``max(current due, due)``."""
        if exact and due < cand.due:
            cand.due = due
            cand.gen += 1  # invalidates the entry queued for the later time
            cand.queued = False
        else:
            cand.due = max(cand.due, due)
        if not cand.queued:
            cand.queued = True
            heapq.heappush(self._heap, (cand.due, next(self._seq), cand.gen, cand))

    def _requeue(self, cand: _Candidate, due: float) -> None:
        self._schedule(cand, due)

    def _current(self, cand: _Candidate, now: float) -> bool:
        # still pending, and no activity since it was taken off the heap (activity reschedules
        # it by itself)
        return self._pending.get(cand.relpath) is cand and not cand.queued and cand.due <= now

    def _check(self, cand: _Candidate, now: float) -> Settled | None:
        rel = cand.relpath
        try:
            st: os.stat_result | None = self._stat(rel)
        except OSError:
            st = None  # gone, or a symlinked folder in its path (ENOTDIR/ELOOP)
        with self._lock:
            if not self._current(cand, now):
                return None  # re-nominated meanwhile (a new file under the same name?)
            if st is None or not stat.S_ISREG(st.st_mode):
                del self._pending[rel]  # symlink, fifo, socket, device, folder: never taken
                return None
            sig = Signature.from_stat(st)
            if sig != cand.sig:
                cand.sig, cand.sig_at = sig, now
                self._requeue(cand, now + self.quiet)
                return None
            needed = self.empty_quiet if sig.size == 0 else self.quiet
            if now - cand.sig_at < needed:
                self._requeue(cand, cand.sig_at + needed)
                return None
        probe, pst = self._probe(rel)
        with self._lock:
            if not self._current(cand, now):
                return None
            if probe is Probe.GONE:
                del self._pending[rel]
                return None
            if probe is Probe.BUSY:
                if not cand.busy:
                    log.debug("source file still open by a writer: %s", rel)
                cand.busy = True
                self._requeue(cand, now + self.quiet)
                return None
            if pst is not None and Signature.from_stat(pst) != sig:
                # changed between the stat and the probe: start over
                cand.sig, cand.sig_at = Signature.from_stat(pst), now
                self._requeue(cand, now + self.quiet)
                return None
            del self._pending[rel]
        return Settled(rel, sig.fingerprint)
