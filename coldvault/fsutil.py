"""Durable writes on the workstation's own disk: temporary name, fsync, rename, fsync folder."""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(final: Path) -> Path:
    return final.with_name(f".tmp-{secrets.token_hex(6)}-{final.name}")


@contextlib.contextmanager
def atomic_writer(final: Path, mode: int = 0o600, *, durable: bool = True) -> Iterator[BinaryIO]:
    """Yield a file to write; on success it replaces ``final`` atomically (and durably).

    On error the temporary file is removed and ``final`` is untouched. With ``durable=False``
    the caller takes charge of syncing (batch writers sync once per batch).
    """
    tmp = temp_name(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(final.parent)


@contextlib.contextmanager
def new_file_writer(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """Yield ``path``, created (it must not exist), to write; on error it is removed. Its
    folder is made (mode 0700) if it is missing.

    For files nothing reads until a later step records them (spool objects: the catalog), where
    a temporary name and a rename would only cost: what a crash leaves half-written is unknown
    to that record and removed at the next start. Not durable: the caller syncs."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileNotFoundError:  # the first file of its folder: no mkdir() call per file
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, flags, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def write_atomic(final: Path, data: bytes, mode: int = 0o600) -> None:
    with atomic_writer(final, mode) as f:
        f.write(data)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) if needed, mode 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    return path


def remove_stale_temps(folder: Path) -> int:
    """Remove temporary files left by a crash (never a finished file)."""
    n = 0
    if folder.is_dir():
        for p in folder.rglob(".tmp-*"):
            with contextlib.suppress(OSError):
                p.unlink()
                n += 1
    return n


def _load_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return,unused-ignore]


_SYNCFS = _load_syncfs()


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return,unused-ignore]


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now, without waiting (Linux's
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``); a no-op elsewhere. Durability still comes
    from the batch's ``syncfs``, which then finds most of the work done: the disk writes while
    the next files are compressed instead of all at once at the end of the batch."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # advisory: errors are ignored


def syncfs(path: Path, files: Iterable[Path] = ()) -> None:
    """Make everything written on ``path``'s filesystem durable with one ``syncfs(2)``.

    Where syncfs is unavailable, ``files`` are fsynced one by one instead.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS is not None:
            if _SYNCFS(fd) != 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(path))
            return
    finally:
        os.close(fd)
    for f in files:
        ffd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(ffd)
        finally:
            os.close(ffd)
