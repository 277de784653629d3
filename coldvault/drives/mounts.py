"""Where is a drive mounted? Read from ``/proc/self/mountinfo``, and unmount it as root.

The mount table is the truth whoever mounted the drive (a desktop automounter, udisks2, an
administrator, our own ``mount``). Devices are matched by ``major:minor`` (field 3), not by the
"source" string: it works through ``/dev/disk/by-*`` symlinks and for ``fuseblk`` (exfat-fuse shows
the loop device's numbers), though not for plain ``fuse`` mounts (anonymous ``0:NN``).

Format (proc(5))::

    36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)         (6)      (7...)    (8)(9)  (10)      (11)

Fields 4, 5 and 10 escape space, tab, newline and backslash as octal (``\\040 \\011 \\012 \\134``);
the rest of the bytes are the path's own bytes (UTF-8 usually), so they are unescaped as bytes,
then decoded with the filesystem encoding (``unicode_escape`` would mangle non-ASCII names).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from coldvault.errors import DriveError

log = logging.getLogger(__name__)

MOUNTINFO = "/proc/self/mountinfo"
BY_UUID = "/dev/disk/by-uuid"

_OCTAL = re.compile(rb"\\([0-7]{3})")

#: Filesystem types that are never a drive (kernel and virtual filesystems).
PSEUDO_FSTYPES = frozenset(
    {
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "overlay",
        "proc",
        "pstore",
        "ramfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
    }
)


@dataclass(frozen=True)
class MountInfo:
    """One line of ``/proc/self/mountinfo``."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str  # the directory of the filesystem mounted here ("/" unless a bind mount of a subdir)
    mountpoint: str
    options: str  # per-mount options (rw, nosuid, ...)
    optional_fields: tuple[str, ...]  # shared:N, master:N, ...
    fstype: str  # "ext4", "vfat", "fuseblk", "fuse.exfat" ...
    source: str  # "/dev/sdb1", "/dev/loop0", or anything a FUSE daemon chose
    super_options: str

    @property
    def major_minor(self) -> str:
        return f"{self.major}:{self.minor}"

    @property
    def read_only(self) -> bool:
        return "ro" in self.options.split(",")


def unescape(field: bytes) -> str:
    """Undo mountinfo's octal escapes (``\\040`` -> space) and decode as a file name."""
    return os.fsdecode(_OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def parse_line(line: bytes) -> MountInfo:
    """Parse one mountinfo line; raises ValueError when it is malformed."""
    left, sep, right = line.rstrip(b"\n").partition(b" - ")
    if not sep:
        raise ValueError("mountinfo line has no ' - ' separator")
    f = left.split(b" ")
    r = right.split(b" ")
    if len(f) < 6 or len(r) < 2:
        raise ValueError("mountinfo line has too few fields")
    major, _, minor = f[2].partition(b":")
    return MountInfo(
        mount_id=int(f[0]),
        parent_id=int(f[1]),
        major=int(major),
        minor=int(minor),
        root=unescape(f[3]),
        mountpoint=unescape(f[4]),
        options=f[5].decode("ascii", "replace"),
        optional_fields=tuple(x.decode("ascii", "replace") for x in f[6:] if x),
        fstype=r[0].decode("ascii", "replace"),
        source=unescape(r[1]),
        super_options=r[2].decode("ascii", "replace") if len(r) > 2 else "",
    )


def parse_mountinfo(data: bytes) -> list[MountInfo]:
    """Parse the whole table; malformed lines are logged and skipped."""
    out: list[MountInfo] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            out.append(parse_line(line))
        except ValueError as exc:
            log.warning("skipping a malformed mountinfo line: %s", exc)
    return out


def read_mountinfo(path: str = MOUNTINFO) -> list[MountInfo]:
    """The current mount table of this process's mount namespace."""
    with open(path, "rb") as f:
        return parse_mountinfo(f.read())


def device_numbers(devnode: str) -> tuple[int, int] | None:
    """(major, minor) of a block device node (symlinks followed), or None if it is not one."""
    try:
        st = os.stat(devnode)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def devnode_for_uuid(fs_uuid: str, by_uuid_dir: str = BY_UUID) -> str | None:
    """The device node that carries filesystem ``fs_uuid``.

    Looks at udev's ``/dev/disk/by-uuid`` links first; without udev, asks ``blkid -U`` (which
    probes the devices listed in /proc/partitions; needs root to read them).
    """
    link = os.path.join(by_uuid_dir, fs_uuid)
    if "/" not in fs_uuid and os.path.lexists(link):
        try:
            return os.path.realpath(link, strict=True)
        except OSError:
            pass
    blkid = shutil.which("blkid")
    if blkid is None:
        return None
    try:
        res = subprocess.run(
            # -c /dev/null: probe now, never trust a stale cache (loop devices get reused)
            [blkid, "-c", "/dev/null", "-U", fs_uuid],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("blkid -U failed: %s", exc)
        return None
    node = res.stdout.strip()
    return node if res.returncode == 0 and node.startswith("/") else None


def mounts_of_device(
    major: int, minor: int, mounts: Iterable[MountInfo] | None = None
) -> list[MountInfo]:
    """Mounts of the whole filesystem of device major:minor (bind mounts of subfolders left out)."""
    table = read_mountinfo() if mounts is None else mounts
    return [m for m in table if (m.major, m.minor) == (major, minor) and m.root == "/"]


def find_mount(
    devnode: str | None = None,
    fs_uuid: str | None = None,
    *,
    mountinfo_path: str = MOUNTINFO,
    by_uuid_dir: str = BY_UUID,
) -> MountInfo | None:
    """Where the filesystem on ``devnode`` (or with ``fs_uuid``) is mounted, or None.

    When it is mounted several times, the first mount (the oldest) is returned.
    """
    if devnode is None and fs_uuid is None:
        raise ValueError("find_mount needs a devnode or a fs_uuid")
    node = devnode
    if node is None and fs_uuid is not None:
        node = devnode_for_uuid(fs_uuid, by_uuid_dir)
    if node is None:
        return None
    nums = device_numbers(node)
    if nums is None:
        return None
    found = mounts_of_device(*nums, read_mountinfo(mountinfo_path))
    return found[0] if found else None


def mount_for_path(path: str | os.PathLike[str], *, mountinfo_path: str = MOUNTINFO) -> MountInfo:
    """The mount that holds ``path`` (like ``findmnt --target``): the deepest one above it."""
    real = os.path.realpath(path)
    best: MountInfo | None = None
    for m in read_mountinfo(mountinfo_path):
        mp = m.mountpoint
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        # later lines are mounted over earlier ones at the same place: ">=" keeps the last
        if inside and (best is None or len(mp) >= len(best.mountpoint)):
            best = m
    if best is None:  # pragma: no cover - "/" is always mounted
        raise DriveError(f"No mount holds {real}.")
    return best


def is_mountpoint(path: str | os.PathLike[str], *, mountinfo_path: str = MOUNTINFO) -> bool:
    real = os.path.realpath(path)
    return any(m.mountpoint == real for m in read_mountinfo(mountinfo_path))


def iter_drive_mounts(mounts: Iterable[MountInfo]) -> Iterator[MountInfo]:
    """Mounts that could be a drive: a real block device (or fuseblk), not a virtual filesystem."""
    for m in mounts:
        if m.fstype in PSEUDO_FSTYPES:
            continue
        if m.major == 0 and m.fstype != "fuseblk":
            continue  # anonymous device: not backed by a block device
        yield m


class UnmountError(DriveError):
    """The drive could not be unmounted (busy, not allowed, or already gone)."""


def umount(
    mountpoint: str | os.PathLike[str], *, lazy: bool = False, timeout: float = 60.0
) -> None:
    """Unmount ``mountpoint`` with the ``umount`` command (root only; udisks.py does it for others).

    Raises UnmountError with a sentence a person understands (busy drive, not root, ...).
    """
    mp = os.fspath(mountpoint)
    exe = shutil.which("umount")
    if exe is None:
        raise UnmountError(
            "The umount command is not installed.", hint="Install util-linux (mount)."
        )
    if os.geteuid() != 0:
        raise UnmountError(
            "Only root can unmount the drive with umount.",
            hint="Run the service as root, or let it use udisks2 (see examples/polkit/).",
        )
    cmd = [exe, *(["-l"] if lazy else []), "--", mp]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise UnmountError(
            "Unmounting the drive took too long.",
            hint="Check that the drive is still plugged in, then try again.",
        ) from exc
    if res.returncode == 0:
        log.info("unmounted %s", mp)
        return
    err = (res.stderr or res.stdout).strip()
    log.debug("umount %s failed (%d): %s", mp, res.returncode, err)
    low = err.replace(mp, "").lower()  # the path itself may contain "busy"
    if "busy" in low:
        raise UnmountError(
            "The drive is still in use and cannot be unmounted.",
            hint="Close any window or program that shows files of the drive, then try again.",
        )
    if "not mounted" in low or "no mount point" in low:
        raise UnmountError("The drive is not mounted any more.")
    raise UnmountError(
        f"Unmounting the drive failed: {err or 'umount exited ' + str(res.returncode)}"
    )
