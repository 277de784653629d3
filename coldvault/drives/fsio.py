"""Durable, verified file writes on a mounted drive (the layer a drive sync is built on).

Write order, for one file (``write_file_atomic``) and for a batch (``BatchWriter``)::

    stage   write the bytes to ``.tmp-<random>`` beside the final name, hashing while streaming
    sync    fsync each temp file, or one syncfs(2) for the whole batch on a kernel filesystem
    verify  drop the cached pages, read the temp file back from the device, compare SHA-256
    commit  rename into place (parts ``<name>.000``... for split objects), remove stale forms
    sync    fsync the folder(s), or one more syncfs; check the drive is still where it was

Only then are results returned, so a caller that records what it gets back can never record a
copy that was not on the medium: a crash or a yanked drive before the end leaves at worst temp
files (``clean_temp_files``) or a final file nobody recorded (re-verify it before recording).

Why reading back needs a cache drop: after fsync the written pages stay in the page cache as
clean pages, and a plain read is answered from memory, so a stick that lost or garbled the data
(failing flash, counterfeit capacity that wraps around) would still look perfect.
``posix_fadvise(POSIX_FADV_DONTNEED)`` on the synced file drops those clean pages, and the next
read goes to the device. Measured here (``tests/test_drives_fs_real.py``) with a bit flipped on
the device behind the cache: on ext4 the file's own drop is enough (file data never lives in the
block device's cache). On a FUSE block filesystem (``fuseblk``: exfat-fuse, ntfs-3g) the daemon
does its I/O through the *block device's* page cache, so a file-level drop (and even O_DIRECT on
the FUSE file) is answered from that second cache: the block device's clean pages must be dropped
too (``drop_device_cache``; needs read access to the device node, i.e. root or the ``disk``
group). Kernel exfat and vfat behave like ext4. O_DIRECT is therefore not used: it adds alignment
constraints and does not reach further than the fadvise drop on any filesystem tried.

Why syncfs only on kernel filesystems: FUSE implements syncfs only for virtiofs, so on exfat-fuse
syncfs(2) returns without asking the daemon to flush anything. There each file is fsynced (which
the daemon turns into an fsync of the device) and then each folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import io
import logging
import os
import queue
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from coldvault.errors import DriveError, IntegrityError
from coldvault.fsutil import start_writeback

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
"""Bytes per read/write: memory stays bounded whatever the file size."""

FAT32_MAX_FILE_SIZE = 2**32 - 1
"""FAT32 stores a file's size in 32 bits: 4 GiB - 1 bytes at most (EFBIG beyond)."""

NO_LIMIT = 2**63 - 1
"""``max_file_size`` of a filesystem without a limit that matters here (ext4, exFAT, ...)."""

DEFAULT_PART_SIZE = 1 << 30
"""Size of the parts of a split object: 1 GiB, well under FAT32's limit."""

MAX_PARTS = 1000
"""Parts are numbered with three digits so that ``cat <name>.*`` joins them in order."""

TEMP_PREFIX = ".tmp-"
"""Temp files are ``.tmp-<16 hex>``: ASCII, lowercase, valid on FAT32 and exFAT."""

_FAT_TYPES = frozenset({"vfat", "msdos", "fat", "umsdos", "fuse.fusefat", "fusefat"})
_UNLIMITED_TYPES = frozenset(
    {
        "ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "exfat", "ntfs", "ntfs3", "zfs",
        "tmpfs", "fuse.exfat", "fuseblk.exfat", "fuse.ntfs-3g", "fuseblk.ntfs-3g", "nilfs2",
    }
)  # fmt: skip
_SYNCFS_TYPES = frozenset(
    {"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "vfat", "msdos", "exfat", "ntfs3", "tmpfs"}
)

# --- errors ---------------------------------------------------------------------------------


class DriveFull(DriveError):
    """The drive has no room left (ENOSPC, EDQUOT) or refuses a file that big (EFBIG)."""


class FileTooLarge(DriveFull):
    """The filesystem cannot hold a file this large (FAT32: 4 GiB - 1 bytes)."""


class DriveGone(DriveError):
    """The drive was removed, unmounted or its filesystem process died while in use."""


class DriveReadOnly(DriveError):
    """The drive is mounted read-only (write-protect switch, or errors made the system stop)."""


class DriveIOError(DriveError):
    """The drive reported a read or write error (or refused the operation)."""


class ReadBackMismatch(DriveIOError):
    """What was read back from the device is not what was written."""


class SourceChanged(IntegrityError):
    """The bytes streamed from the source do not have the SHA-256 the caller expected."""


def _errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


def drive_error_from_oserror(
    exc: OSError, where: str | os.PathLike[str], dev: int | None = None
) -> DriveError:
    """Turn an OSError met on a drive into the DriveError a user can understand.

    ``where`` is a path on the drive (used to tell a removed drive from a failing one);
    ``dev`` the st_dev the drive had when the operation started, if known.
    """
    code = exc.errno
    detail = f"{_errname(exc)}: {exc.strerror or exc}"
    err: DriveError
    if code == errno.EFBIG:
        err = FileTooLarge(
            "A file is too large for this drive's file system (FAT32 holds at most 4 GB per file).",
            hint="Format the drive as exFAT, or let coldvault split large files. " + detail,
        )
    elif code in (errno.ENOSPC, errno.EDQUOT):
        err = DriveFull(
            "The drive is full.",
            hint="Plug in another enrolled drive, or enroll a larger one. " + detail,
        )
    elif code in (errno.ENODEV, errno.ENXIO, errno.ENOTCONN, errno.ESHUTDOWN, errno.ENOMEDIUM):
        err = _gone(detail)
    elif code == errno.EROFS:
        err = DriveReadOnly(
            "The drive is read-only: nothing can be written on it.",
            hint="Check its write-protect switch; if it has none, the drive may be damaged. "
            + detail,
        )
    elif code in (errno.EIO, errno.ENOENT, errno.ESTALE, errno.EBADF) and _is_gone(where, dev):
        err = _gone(detail)
    elif code in (errno.EACCES, errno.EPERM):
        err = DriveIOError(
            "coldvault is not allowed to write on the drive.",
            hint="Check how the drive is mounted and who owns it. " + detail,
        )
    else:
        err = DriveIOError(
            "The drive reported a read or write error; it may be failing.",
            hint="Unplug it, plug it in again and retry; if this repeats, replace the drive. "
            + detail,
        )
    err.__cause__ = exc
    return err


def _gone(detail: str) -> DriveGone:
    return DriveGone(
        "The drive was removed or disconnected while coldvault was using it.",
        hint="Plug it in again and keep it plugged in until coldvault says it can be removed. "
        + detail,
    )


def _is_gone(where: str | os.PathLike[str], dev: int | None) -> bool:
    """Best guess whether the drive holding ``where`` went away (vs. failed in place)."""
    p = Path(where)
    probe = p if os.path.isdir(p) else p.parent  # os.path: never raises (ENOTCONN, EIO)
    try:
        st = os.stat(probe)
    except OSError:
        return True  # ENOTCONN (dead FUSE daemon), EIO, ENOENT: the folder is not there
    if dev is not None and st.st_dev != dev:
        return True  # lazily unmounted: the path now resolves to the folder under the mount
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    return major != 0 and not os.path.exists(f"/sys/dev/block/{major}:{minor}")


# --- filesystem facts -------------------------------------------------------------------


@dataclass(frozen=True)
class FsInfo:
    """One line of /proc/self/mountinfo, the one that holds a path."""

    fs_type: str
    mountpoint: str
    source: str
    dev: int


def _unescape(b: bytes) -> str:
    out = bytearray()
    i = 0
    while i < len(b):
        if b[i] == 0x5C and b[i + 1 : i + 4].isdigit() and len(b[i + 1 : i + 4]) == 3:
            out.append(int(b[i + 1 : i + 4], 8))
            i += 4
        else:
            out.append(b[i])
            i += 1
    return os.fsdecode(bytes(out))


def fs_info(path: str | os.PathLike[str], mountinfo: str = "/proc/self/mountinfo") -> FsInfo | None:
    """Small fallback detector (the drives' mount module knows more): the mount holding
    ``path``, matched by st_dev and the longest mount point that contains the real path."""
    try:
        real = os.path.realpath(path)
        dev = os.stat(real).st_dev
        with open(mountinfo, "rb") as f:
            data = f.read()
    except OSError:
        return None
    want = f"{os.major(dev)}:{os.minor(dev)}"
    best: FsInfo | None = None
    for line in data.splitlines():
        left, sep, right = line.partition(b" - ")
        if not sep:
            continue
        fields, rest = left.split(b" "), right.split(b" ")
        if len(fields) < 5 or len(rest) < 2 or fields[2].decode() != want:
            continue
        mp = _unescape(fields[4])
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        if inside and (best is None or len(mp) >= len(best.mountpoint)):
            best = FsInfo(rest[0].decode(), mp, _unescape(rest[1]), dev)
    return best


def _probe_fuseblk(source: str) -> str | None:
    """The filesystem behind a fuseblk mount, from its boot sector's OEM name."""
    try:
        with open(source, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[3:11] == b"EXFAT   ":
        return "exfat"
    if head[3:11] == b"NTFS    ":
        return "ntfs"
    return None


def max_file_size(path: str | os.PathLike[str], fs_type: str | None = None) -> int:
    """Largest single file the filesystem at ``path`` holds: FAT32 -> 4 GiB - 1, ext4/exFAT/...
    -> ``NO_LIMIT``. ``fs_type`` as in /proc/self/mountinfo (e.g. from the mounts module); when
    omitted it is detected. Unknown filesystems get the FAT32 limit: splitting is harmless."""
    source = ""
    if fs_type is None:
        info = fs_info(path)
        if info is None:
            return FAT32_MAX_FILE_SIZE
        fs_type, source = info.fs_type, info.source
    if fs_type in _FAT_TYPES:
        return FAT32_MAX_FILE_SIZE
    if fs_type in _UNLIMITED_TYPES:
        return NO_LIMIT
    if fs_type == "fuseblk" and source and _probe_fuseblk(source) in ("exfat", "ntfs"):
        return NO_LIMIT
    return FAT32_MAX_FILE_SIZE


def free_space(path: str | os.PathLike[str]) -> int:
    """Bytes an unprivileged writer can still put on the filesystem holding ``path``."""
    try:
        st = os.statvfs(path)
    except OSError as e:
        raise drive_error_from_oserror(e, path) from e
    return st.f_bavail * st.f_frsize


# --- small durable operations ------------------------------------------------------------


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a folder, so that names created, renamed or removed in it are on the medium."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise drive_error_from_oserror(e, path) from e


def make_dirs_durable(*paths: str | os.PathLike[str]) -> None:
    """``mkdir -p`` of each path, then one fsync of each folder a new folder was made in."""
    parents: set[Path] = set()
    for path in paths:
        p = Path(path)
        missing: list[Path] = []
        while not _is_dir(p):
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                os.mkdir(d, 0o755)
            except FileExistsError:
                pass
            except OSError as e:
                raise drive_error_from_oserror(e, d.parent) from e
            parents.add(d.parent)
    # Parents before children: a child's name is durable only once its parent's is.
    for d in sorted(parents, key=lambda q: len(q.parts)):
        fsync_dir(d)


def _is_dir(p: Path) -> bool:
    try:
        return stat.S_ISDIR(os.stat(p).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise drive_error_from_oserror(e, p) from e


def _is_file(p: Path) -> bool:
    """Like Path.is_file, but a drive that fails or went away raises a DriveError instead of
    looking like a missing file."""
    try:
        return stat.S_ISREG(os.stat(p).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise drive_error_from_oserror(e, p) from e


def remove_file_durable(path: str | os.PathLike[str]) -> bool:
    """Unlink ``path`` and fsync its folder. Returns False if it did not exist."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise drive_error_from_oserror(e, path) from e
    fsync_dir(Path(path).parent)
    return True


def part_name(name: str, index: int) -> str:
    """Name of part ``index`` of a split object: ``<name>.000``, ``<name>.001``, ..."""
    if not 0 <= index < MAX_PARTS:
        raise ValueError(f"part index {index} out of range")
    return f"{name}.{index:03d}"


def object_parts(dst_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """The files holding object ``name`` in ``dst_dir``, in order: ``[name]`` if the whole file
    exists, else the contiguous parts ``name.000``, ``name.001``, ...; ``[]`` if none."""
    d = Path(dst_dir)
    if _is_file(d / name):
        return [d / name]
    parts: list[Path] = []
    for i in range(MAX_PARTS):
        p = d / part_name(name, i)
        if not _is_file(p):
            break
        parts.append(p)
    return parts


def remove_object_durable(dst_dir: str | os.PathLike[str], name: str) -> int:
    """Remove object ``name`` (whole file and every part) and fsync the folder. Returns the
    number of files removed."""
    d = Path(dst_dir)
    removed = 0
    for p in [d / name] + [d / part_name(name, i) for i in range(MAX_PARTS)]:
        try:
            os.unlink(p)
            removed += 1
        except FileNotFoundError:
            if p.name != name:
                break
        except OSError as e:
            raise drive_error_from_oserror(e, p) from e
    if removed:
        fsync_dir(d)
    return removed


def clean_temp_files(dst_dir: str | os.PathLike[str]) -> int:
    """Remove temp files a crashed or interrupted write left in ``dst_dir``. Call it before a
    sync starts writing in a folder (one sync per drive at a time). Returns how many."""
    n = 0
    try:
        with os.scandir(dst_dir) as it:
            names = [e.name for e in it if e.name.startswith(TEMP_PREFIX)]
        for nm in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(dst_dir, nm))
                n += 1
        if n:
            fsync_dir(dst_dir)
    except OSError as e:
        raise drive_error_from_oserror(e, dst_dir) from e
    return n


def cache_device(path: str | os.PathLike[str]) -> str | None:
    """The block device whose cache must be dropped before reading back files under ``path``:
    the source of a ``fuseblk`` mount (exfat-fuse, ntfs-3g), else None. Look it up once per
    drive and pass it as ``device=`` to the read-back functions."""
    info = fs_info(path)
    if info is not None and info.fs_type.startswith("fuseblk") and info.source.startswith("/"):
        return info.source
    return None


def drop_device_cache(device: str | os.PathLike[str]) -> bool:
    """Drop the clean cached pages of a block device (needed before a read-back on FUSE block
    filesystems, see the module doc). Returns False when the device cannot be opened."""
    try:
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


# --- reading back -----------------------------------------------------------------------


def _hash_fd_from_device(fd: int, h: hashlib._Hash) -> int:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    size = 0
    while True:
        chunk = os.read(fd, CHUNK_SIZE)
        if not chunk:
            return size
        h.update(chunk)
        size += len(chunk)


def read_back_sha256(
    path: str | os.PathLike[str], *, device: str | os.PathLike[str] | None = None
) -> tuple[int, str]:
    """(size, SHA-256 hex) of a file as the DEVICE holds it, not the page cache.

    The file must already be synced (DONTNEED does not drop dirty pages; this function fsyncs
    first anyway). ``device``: the block device of a FUSE block filesystem, whose cache is
    dropped too (see the module doc)."""
    return _read_back([Path(path)], device, fsync=True)


def read_back_object(
    dst_dir: str | os.PathLike[str], name: str, *, device: str | os.PathLike[str] | None = None
) -> tuple[int, str]:
    """(size, SHA-256 hex) of object ``name`` read from the device, over the joined parts if it
    is split. Raises FileNotFoundError if neither the file nor its first part exists."""
    parts = object_parts(dst_dir, name)
    if not parts:
        raise FileNotFoundError(errno.ENOENT, "no such object", str(Path(dst_dir) / name))
    return _read_back(parts, device, fsync=True)


def _read_back(
    parts: list[Path], device: str | os.PathLike[str] | None, *, fsync: bool
) -> tuple[int, str]:
    if device is not None:
        drop_device_cache(device)
    h = hashlib.sha256()
    size = 0
    for p in parts:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as e:
            raise drive_error_from_oserror(e, p) from e
        try:
            if fsync:
                os.fsync(fd)  # DONTNEED keeps dirty pages: they must be written first
            size += _hash_fd_from_device(fd, h)
        except OSError as e:
            raise drive_error_from_oserror(e, p) from e
        finally:
            os.close(fd)
    return size, h.hexdigest()


class JoinedReader(io.RawIOBase):
    """Reads a split object's parts as one stream (what ``cat name.000 name.001 ...`` gives)."""

    def __init__(self, parts: list[Path]) -> None:
        super().__init__()
        self._parts = list(parts)
        self._f: io.BufferedReader | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview | bytearray) -> int:  # type: ignore[override]
        while True:
            if self._f is None:
                if not self._parts:
                    return 0
                self._f = open(self._parts.pop(0), "rb")  # noqa: SIM115
            n = self._f.readinto(b)
            if n:
                return n
            self._f.close()
            self._f = None

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        super().close()


def open_object(dst_dir: str | os.PathLike[str], name: str) -> BinaryIO:
    """Open object ``name`` for reading, joining its parts if it is split."""
    parts = object_parts(dst_dir, name)
    if not parts:
        raise FileNotFoundError(errno.ENOENT, "no such object", str(Path(dst_dir) / name))
    return io.BufferedReader(JoinedReader(parts), CHUNK_SIZE)


# --- writing ------------------------------------------------------------------------------

Source = BinaryIO | bytes | bytearray | memoryview


@dataclass(frozen=True)
class WriteResult:
    """A file (or split object) that is on the medium, read back and verified."""

    path: Path
    """Logical path ``dst_dir/name``; for a split object this name itself does not exist."""
    size: int
    sha256: str
    """SHA-256 hex of all the bytes (of the joined parts for a split object)."""
    parts: tuple[Path, ...]
    """The files written, in order: ``(path,)``, or ``(name.000, name.001, ...)``."""
    verified: bool
    """True when the bytes were read back from the device and matched."""

    @property
    def split(self) -> bool:
        return self.parts != (self.path,)


@dataclass
class _Staged:
    dst_dir: Path
    name: str
    tmps: list[Path] = field(default_factory=list)
    size: int = 0
    sha256: str = ""
    hashed: bool = True  # sha256 computed from the bytes written (else: the expected hash)


def _check_name(name: str) -> None:
    if (
        not name
        or name in (".", "..")
        or "/" in name
        or "\0" in name
        or name.startswith(TEMP_PREFIX)
    ):
        raise ValueError(f"not a valid file name for a drive: {name!r}")


def _source_size(src: Source) -> int | None:
    if isinstance(src, bytes | bytearray | memoryview):
        return len(src)
    try:
        st = os.fstat(src.fileno())
        if stat.S_ISREG(st.st_mode):
            return max(0, st.st_size - src.tell())
    except (OSError, AttributeError, ValueError, io.UnsupportedOperation):
        pass
    return None


def _chunks(src: Source) -> Iterator[bytes | memoryview]:
    if isinstance(src, bytes | bytearray | memoryview):
        mv = memoryview(src).cast("B")
        for i in range(0, len(mv), CHUNK_SIZE):
            yield mv[i : i + CHUNK_SIZE]
        return
    while True:
        chunk = src.read(CHUNK_SIZE)
        if not chunk:
            return
        yield chunk


def _file_fd(src: Source) -> int | None:
    """The descriptor of a regular file source not yet read from, else None."""
    if isinstance(src, bytes | bytearray | memoryview):
        return None
    try:
        fd = src.fileno()
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or src.tell() != 0 or os.lseek(fd, 0, os.SEEK_CUR):
            return None
    except (OSError, ValueError, io.UnsupportedOperation):
        return None
    return fd


def _kernel_copy(src_fd: int) -> Iterator[int]:
    """Sizes to copy from ``src_fd`` with :func:`_copy_range`, up to its size when opened."""
    left = os.fstat(src_fd).st_size
    while left > 0:
        n = min(left, 1 << 30)
        yield n
        left -= n


def _copy_range(src_fd: int, dst_fd: int, count: int) -> None:
    """Copy ``count`` bytes at the current offsets, in the kernel where it can: copy_file_range,
    else sendfile, else read and write."""
    while count > 0:
        try:
            n = os.copy_file_range(src_fd, dst_fd, count)
        except OSError as e:
            if e.errno not in _NO_KERNEL_COPY:
                raise
            try:
                n = os.sendfile(dst_fd, src_fd, None, count)
            except OSError as e2:
                if e2.errno not in _NO_KERNEL_COPY:
                    raise
                data = os.read(src_fd, min(count, CHUNK_SIZE))
                n = len(data)
                if n:
                    _write_all(dst_fd, data)
        if n == 0:
            raise SourceChanged(
                "A file to copy to the drive is shorter than when the copy began.",
                hint="it changed while being copied",
            )
        count -= n


_NO_KERNEL_COPY = frozenset(
    {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EBADF}
)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    mv = memoryview(data)
    while mv:
        n = os.write(fd, mv)
        mv = mv[n:]


def _new_temp(dst_dir: Path) -> tuple[int, Path]:
    while True:
        p = dst_dir / (TEMP_PREFIX + secrets.token_hex(8))
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            continue
        return fd, p


def _discard(paths: list[Path]) -> None:
    for p in paths:
        with contextlib.suppress(OSError):
            os.unlink(p)


def _stage(
    dst_dir: Path,
    name: str,
    src: Source,
    expected_sha256: str | None,
    *,
    split_above: int | None,
    part_size: int,
    fsync_each: bool,
    dev: int | None,
    hash_source: bool = True,
) -> _Staged:
    """Write ``src`` to temp files in ``dst_dir``. On error the temp files are removed."""
    _check_name(name)
    if split_above is not None and not 0 < part_size <= split_above:
        raise ValueError("part_size must be positive and at most split_above")
    total = _source_size(src)
    # Split when the object is (or, size unknown, may be) larger than the filesystem allows.
    if split_above is None or (total is not None and total <= split_above):
        limit = NO_LIMIT
    else:
        limit = part_size
    st = _Staged(dst_dir, name)
    # With a known hash and a read-back to come, a file source is copied in the kernel and not
    # hashed here: the read-back compares with the known hash (a damaged source then shows as
    # a mismatch, which the caller tells apart by checking its source).
    src_fd = _file_fd(src) if (expected_sha256 is not None and not hash_source) else None
    h = hashlib.sha256() if src_fd is None else None
    fd = -1
    in_part = 0
    try:
        fd, p = _new_temp(dst_dir)
        st.tmps.append(p)
        pieces = _chunks(src) if src_fd is None else _kernel_copy(src_fd)
        for chunk in pieces:
            mv = memoryview(chunk) if not isinstance(chunk, int) else None
            if h is not None and mv is not None:
                h.update(mv)
            left = len(mv) if mv is not None else int(chunk)
            while left:
                if in_part == limit:
                    _written(fd, in_part, fsync_each)
                    os.close(fd)
                    fd = -1
                    if len(st.tmps) >= MAX_PARTS:
                        raise ValueError(f"object too large for {MAX_PARTS} parts of {limit}")
                    fd, p = _new_temp(dst_dir)
                    st.tmps.append(p)
                    in_part = 0
                take = min(left, limit - in_part)
                if mv is not None:
                    _write_all(fd, mv[:take])
                    mv = mv[take:]
                else:
                    assert src_fd is not None
                    _copy_range(src_fd, fd, take)
                in_part += take
                st.size += take
                left -= take
        _written(fd, in_part, fsync_each)
        os.close(fd)
        fd = -1
    except BaseException as e:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
        _discard(st.tmps)
        if isinstance(e, OSError):
            raise drive_error_from_oserror(e, dst_dir, dev) from e
        raise
    if h is None:
        assert expected_sha256 is not None
        st.sha256 = expected_sha256.lower()
        st.hashed = False
        return st
    st.sha256 = h.hexdigest()
    if expected_sha256 is not None and st.sha256 != expected_sha256.lower():
        _discard(st.tmps)
        raise SourceChanged(
            "A file to copy to the drive is not what was recorded: it changed or is damaged.",
            hint=f"expected SHA-256 {expected_sha256}, read {st.sha256}",
        )
    return st


#: Files (or parts) at least this large start their writeback as soon as they are written, so
#: the drive writes while the next ones are copied; the batch's syncfs still makes them durable.
WRITEBACK_MIN_SIZE = 1024 * 1024


def _written(fd: int, size: int, fsync_each: bool) -> None:
    """A staged file (or part) is complete: fsync it (FUSE), or start its writeback."""
    if fsync_each:
        os.fsync(fd)
    elif size >= WRITEBACK_MIN_SIZE:
        start_writeback(fd)


def _verify(st: _Staged, dev: int | None, device: str | None) -> None:
    _check_read_back(st, dev, lambda: _read_back(st.tmps, device, fsync=False))  # synced


class _ReadBackAhead:
    """Reads a batch's files back from the drive, in order, on one thread, while the caller
    hashes them: the drive still sees a single sequential reader, and reading the next chunk
    overlaps hashing the last one (the read-back took as long as both, one after the other).
    At most DEPTH chunks of CHUNK_SIZE wait between the two. An error reading a file is raised
    by :meth:`next_file` for that file, in order."""

    DEPTH = 8
    _END = object()

    def __init__(self, files: list[list[Path]]) -> None:
        self._files = files
        self._queue: queue.Queue[object] = queue.Queue(maxsize=self.DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="coldvault-read-back", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        for parts in self._files:
            item: object = self._END
            try:
                for p in parts:
                    fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
                    try:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                        while chunk := os.read(fd, CHUNK_SIZE):
                            if not self._put(chunk):
                                return
                    finally:
                        os.close(fd)
            except OSError as e:
                item = e
            if not self._put(item):
                return

    def next_file(self) -> tuple[int, str]:
        """(size, SHA-256 hex) of the next file as read back from the drive."""
        h = hashlib.sha256()
        size = 0
        while (item := self._queue.get()) is not self._END:
            if isinstance(item, OSError):
                raise item
            assert isinstance(item, bytes)
            h.update(item)
            size += len(item)
        return size, h.hexdigest()

    def close(self) -> None:
        """Stop the reader (it may be ahead of what was consumed) and wait for it."""
        self._stop.set()
        self._thread.join()


def _check_read_back(
    st: _Staged, dev: int | None, read_back: Callable[[], tuple[int, str]]
) -> None:
    try:
        size, sha = read_back()
    except FileNotFoundError as e:
        raise drive_error_from_oserror(e, st.dst_dir, dev) from e
    except OSError as e:
        raise drive_error_from_oserror(e, st.dst_dir / st.name) from e
    if size != st.size or sha != st.sha256:
        raise ReadBackMismatch(
            "What was read back from the drive differs from what was written: "
            "the drive may be failing or counterfeit."
            if st.hashed
            else "What was read back from the drive differs from the recorded hash: the drive "
            "may be failing or counterfeit, or the file copied to it is damaged.",
            hint=f"object {st.name}: wrote {st.size} bytes sha256 {st.sha256[:16]}..., "
            f"read {size} bytes sha256 {sha[:16]}...",
        )


def _commit(st: _Staged, dev: int | None) -> tuple[Path, ...]:
    """Rename the verified temp files into place and remove the other form of the object."""
    d = st.dst_dir
    finals: tuple[Path, ...]
    try:
        if len(st.tmps) == 1:
            finals = (d / st.name,)
            os.replace(st.tmps[0], finals[0])
            first_stale = 0
        else:
            finals = tuple(d / part_name(st.name, i) for i in range(len(st.tmps)))
            for tmp, final in zip(st.tmps, finals, strict=True):
                os.replace(tmp, final)
            first_stale = len(finals)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(d / st.name)
        for i in range(first_stale, MAX_PARTS):  # parts left by an earlier, longer copy
            try:
                os.unlink(d / part_name(st.name, i))
            except FileNotFoundError:
                break
    except OSError as e:
        raise drive_error_from_oserror(e, d, dev) from e
    return finals


def _dir_dev(path: Path) -> int:
    try:
        return os.stat(path).st_dev
    except OSError as e:
        raise drive_error_from_oserror(e, path) from e


def _check_still_there(path: Path, dev: int) -> None:
    try:
        now = os.stat(path).st_dev
    except OSError as e:
        raise drive_error_from_oserror(e, path, dev) from e
    if now != dev:
        raise _gone(f"{path} is no longer on the drive's filesystem")


def write_file_atomic(
    dst_dir: str | os.PathLike[str],
    name: str,
    src: Source,
    expected_sha256: str | None = None,
    *,
    verify: bool = True,
    split_above: int | None = None,
    part_size: int = DEFAULT_PART_SIZE,
    device: str | None = None,
) -> WriteResult:
    """Write ``src`` as ``dst_dir/name`` durably: temp file, fsync, read back from the device,
    rename, fsync the folder. Either the complete, verified file is under ``name`` or (after any
    error) the previous state is unchanged and no temp file remains (best effort).

    ``expected_sha256``: the source's known hash; a mismatch raises SourceChanged and nothing is
    written. ``split_above``: the filesystem's ``max_file_size``; a larger source is written as
    parts ``name.000``, ``name.001``... of ``part_size`` bytes (``None``: never split).
    ``device``: block device whose cache to drop before the read-back; None: found with
    ``cache_device(dst_dir)`` (only fuseblk mounts have one, see the module doc).
    Raises DriveFull / FileTooLarge / DriveGone / DriveReadOnly / DriveIOError / ReadBackMismatch.
    """
    d = Path(dst_dir)
    dev = _dir_dev(d)
    if verify and device is None:
        device = cache_device(d)
    st = _stage(
        d,
        name,
        src,
        expected_sha256,
        split_above=split_above,
        part_size=part_size,
        fsync_each=True,
        dev=dev,
    )
    try:
        if verify:
            _verify(st, dev, device)
        finals = _commit(st, dev)
    except BaseException:
        _discard(st.tmps)
        raise
    fsync_dir(d)
    _check_still_there(d, dev)
    return WriteResult(d / name, st.size, st.sha256, finals, verify)


_libc: ctypes.CDLL | None = None


def _syncfs(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@dataclass(frozen=True)
class FailedWrite:
    """An item of a batch that was not committed (its temp files were removed)."""

    path: Path
    error: DriveError


@dataclass(frozen=True)
class BatchResult:
    written: list[WriteResult]
    """Synced, read back, verified and in place: safe to record."""
    failed: list[FailedWrite]
    """Read back wrong (ReadBackMismatch): not in place, not to be recorded."""


SyncMode = Literal["auto", "syncfs", "fsync"]


class BatchWriter:
    """Write many files to one drive with one flush per batch (brief §8) instead of one per file.

    ``add()`` streams each source to a temp file at once (the caller may close the source);
    ``commit()`` syncs (one syncfs(2) on a kernel filesystem; on FUSE each file was fsynced as it
    was written), reads every file back from the device, renames the good ones into place, syncs
    the folders and only then returns what may be recorded. Leaving the ``with`` block without
    ``commit()`` (or after an error) removes the temp files. After ``add()`` raised (DriveFull
    when the drive fills up, say), ``commit()`` still commits the items added before.

    The syncfs fd is opened in ``__init__``, before any write, so that a writeback error during
    the batch is reported by syncfs (Linux >= 5.8 reports errors since the fd was opened).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        fs_type: str | None = None,
        split_above: int | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        verify: bool = True,
        sync: SyncMode = "auto",
    ) -> None:
        self.root = Path(root)
        self._dev = _dir_dev(self.root)
        info = fs_info(self.root)
        if fs_type is None and info is not None:
            fs_type = info.fs_type
        self.fs_type = fs_type
        self.device: str | None = None
        """Block device whose cache is dropped before reading back (fuseblk mounts only)."""
        if info is not None and info.fs_type.startswith("fuseblk") and info.source.startswith("/"):
            self.device = info.source  # same rule as cache_device()
        if sync == "auto":
            sync = "syncfs" if fs_type in _SYNCFS_TYPES else "fsync"
        self.sync_mode: SyncMode = sync
        self.split_above = split_above
        self.part_size = part_size
        self.verify = verify
        self._staged: list[_Staged] = []
        self._committed = False
        try:
            self._fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise drive_error_from_oserror(e, self.root) from e

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._staged)

    def add(
        self,
        dst_dir: str | os.PathLike[str],
        name: str,
        src: Source,
        expected_sha256: str | None = None,
    ) -> None:
        """Stage one file (written now, committed by ``commit()``). ``dst_dir`` must exist and
        be on the same filesystem as ``root``."""
        if self._committed:
            raise RuntimeError("batch already committed")
        d = Path(dst_dir)
        if _dir_dev(d) != self._dev:
            raise ValueError(f"{d} is not on the same filesystem as {self.root}")
        self._staged.append(
            _stage(
                d,
                name,
                src,
                expected_sha256,
                split_above=self.split_above,
                part_size=self.part_size,
                fsync_each=self.sync_mode == "fsync",
                dev=self._dev,
                hash_source=not self.verify,
            )
        )

    def _sync(self, dirs: list[Path]) -> None:
        if self.sync_mode == "syncfs":
            try:
                _syncfs(self._fd)
            except OSError as e:
                raise drive_error_from_oserror(e, self.root, self._dev) from e
        else:
            for d in dirs:
                fsync_dir(d)

    def commit(self) -> BatchResult:
        """Sync, verify, rename into place, sync again. Returns what may now be recorded."""
        if self._committed:
            raise RuntimeError("batch already committed")
        self._committed = True
        staged, self._staged = self._staged, []
        written: list[WriteResult] = []
        failed: list[FailedWrite] = []
        try:
            if not staged:
                return BatchResult([], [])
            self._sync([])  # data (fsync mode: each file was fsynced when written)
            if self.device is not None and self.verify:
                drop_device_cache(self.device)
            good: list[_Staged] = []
            ahead = _ReadBackAhead([st.tmps for st in staged]) if self.verify else None
            try:
                for st in staged:
                    if ahead is not None:
                        try:
                            _check_read_back(st, self._dev, ahead.next_file)
                        except ReadBackMismatch as e:
                            _discard(st.tmps)
                            st.tmps = []
                            failed.append(FailedWrite(st.dst_dir / st.name, e))
                            log.warning("read-back mismatch on the drive for object %s", st.name)
                            continue
                    good.append(st)
            finally:
                if ahead is not None:
                    ahead.close()
            pending = [(st, _commit(st, self._dev)) for st in good]
            for st, _ in pending:
                st.tmps = []
            self._sync(sorted({st.dst_dir for st in good}))  # the renames
            _check_still_there(self.root, self._dev)
            written = [
                WriteResult(st.dst_dir / st.name, st.size, st.sha256, finals, self.verify)
                for st, finals in pending
            ]
        except BaseException:
            for st in staged:
                _discard(st.tmps)
            raise
        return BatchResult(written, failed)

    def abort(self) -> None:
        """Remove the temp files of everything staged and not committed."""
        for st in self._staged:
            _discard(st.tmps)
        self._staged = []

    def close(self) -> None:
        self.abort()
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
