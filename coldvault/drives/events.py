"""Drive events: which filesystems appear and disappear, from a swappable source.

Sources (all follow :class:`DriveSource`):

* :class:`PyudevDriveSource` — libudev's monitor (udevd's netlink group, so ``ID_FS_*`` are
  filled in by udevd's blkid run) filtered on the ``block`` subsystem: partitions AND whole disks,
  since many sticks carry the filesystem on the whole disk ("superfloppy", no partition table).
  The monitor is bound *before* the start-up scan, so a drive plugged during the scan is not lost.
* :class:`MountinfoDriveSource` — the fallback when no udevd runs (containers, minimal systems):
  libudev's monitor then receives nothing and says nothing. It watches ``/proc/self/mountinfo``
  (poll() reports POLLPRI|POLLERR when the mount table changes) and reports block-backed mounts
  appearing and disappearing, with their mount point. Whether a mount is a vault drive is decided
  later by its marker file, not here.
* :class:`FakeDriveSource` — tests inject events.

:class:`DriveWatcher` runs one source in one thread and hands events to a callback; it is stopped
and joined from the caller's thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import select
import shutil
import stat
import subprocess
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from coldvault.drives.mounts import (
    BY_UUID,
    MOUNTINFO,
    MountInfo,
    iter_drive_mounts,
    parse_mountinfo,
)
from coldvault.errors import NotAvailable

log = logging.getLogger(__name__)

Action = Literal["add", "remove", "change"]
ACTIONS: frozenset[str] = frozenset({"add", "remove", "change"})

UDEV_CONTROL = "/run/udev/control"
BY_LABEL = "/dev/disk/by-label"
SYS_DEV_BLOCK = "/sys/dev/block"


@dataclass(frozen=True)
class DriveEvent:
    """A filesystem that appeared (``add``), changed (``change``) or went away (``remove``).

    ``add`` and ``change`` both mean "this filesystem is there now": udev reports media inserted
    in a card reader, a relabel, or a loop device being set up as ``change``. A drive already
    present when the source starts is reported as ``add`` with ``at_start=True``.
    """

    action: Action
    devnode: str  # /dev/sdb1, /dev/sdc (superfloppy), /dev/loop0
    fs_uuid: str | None  # None only from the mountinfo source when it cannot be known
    fs_label: str | None
    fs_type: str | None  # ext4, vfat, exfat, ntfs, ... (fuseblk from the mountinfo source)
    serial: str | None  # ID_SERIAL_SHORT, else ID_SERIAL, else the USB device's serial
    is_usb: bool
    devtype: str | None  # "disk" or "partition"
    mountpoint: str | None = None  # set by the mountinfo source only
    at_start: bool = False  # found by the start-up scan, not by an event
    source: str = "udev"  # "udev", "mountinfo" or "fake"


def _is_usb_devpath(devpath: str) -> bool:
    # /devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/... ; udevd sets ID_BUS=usb too,
    # but the sysfs path says it even without udevd's rules (umockdev, mountinfo fallback).
    return any(part.startswith("usb") for part in devpath.split("/"))


def event_from_properties(
    props: Mapping[str, str],
    *,
    action: str | None = None,
    at_start: bool = False,
) -> DriveEvent | None:
    """Turn udev properties into a DriveEvent, or None when they are not a filesystem.

    Pure: no I/O. ``props`` are udev's (``ACTION``, ``SUBSYSTEM``, ``DEVNAME``, ``DEVTYPE``,
    ``DEVPATH``, ``ID_FS_*``, ``ID_BUS``, ``ID_SERIAL*``). ``action`` overrides ``ACTION``
    (absent in a start-up scan, where it defaults to ``add``).
    """
    act = action if action is not None else props.get("ACTION", "add")
    if act not in ACTIONS:
        return None  # bind, unbind, move, online, offline
    if props.get("SUBSYSTEM", "block") != "block":
        return None
    devtype = props.get("DEVTYPE") or None
    if devtype not in (None, "disk", "partition"):
        return None
    devnode = props.get("DEVNAME")
    fs_uuid = props.get("ID_FS_UUID") or None
    if not devnode or fs_uuid is None:
        return None
    usage = props.get("ID_FS_USAGE")
    if usage is not None and usage != "filesystem":
        return None  # swap, LUKS container, RAID member: nothing to mount
    if not devnode.startswith("/"):
        devnode = "/dev/" + devnode
    is_usb = props.get("ID_BUS") == "usb" or _is_usb_devpath(props.get("DEVPATH", ""))
    return DriveEvent(
        action=act,  # type: ignore[arg-type]  # checked against ACTIONS above
        devnode=devnode,
        fs_uuid=fs_uuid,
        fs_label=props.get("ID_FS_LABEL") or None,
        fs_type=props.get("ID_FS_TYPE") or None,
        serial=props.get("ID_SERIAL_SHORT") or props.get("ID_SERIAL") or None,
        is_usb=is_usb,
        devtype=devtype,
        at_start=at_start,
        source="udev",
    )


class DriveSource(Protocol):
    """Where drive events come from. Used by one thread at a time (DriveWatcher's)."""

    name: str

    def start(self) -> list[DriveEvent]:
        """Start listening, THEN scan: returns the drives already there (``at_start=True``)."""
        ...

    def wait(self, timeout: float) -> list[DriveEvent]:
        """Block up to ``timeout`` seconds; the events that arrived (empty on timeout)."""
        ...

    def close(self) -> None:
        """Release sockets and files; the source cannot be started again."""
        ...


def detect_udevd(control: str | None = None) -> bool:
    """True when a udev daemon seems to run (its control socket exists).

    Without udevd, libudev's monitor receives nothing and reports no error (containers, CI).
    """
    try:
        return stat.S_ISSOCK(os.stat(control or UDEV_CONTROL).st_mode)
    except OSError:
        return False


# --- pyudev ---------------------------------------------------------------------------------


class PyudevDriveSource:
    """libudev monitor on udevd's netlink group, ``block`` subsystem (disks and partitions)."""

    name = "udev"

    def __init__(self, context: Any = None) -> None:
        self._context = context
        self._monitor: Any = None
        self._closed = False

    def start(self) -> list[DriveEvent]:
        try:
            import pyudev
        except ImportError as exc:  # pragma: no cover - pyudev is a dependency
            raise NotAvailable(
                "pyudev is not installed, so drives cannot be watched through udev."
            ) from exc
        if self._monitor is not None or self._closed:
            raise RuntimeError("PyudevDriveSource.start() called twice")
        ctx = self._context if self._context is not None else pyudev.Context()
        self._context = ctx
        mon = pyudev.Monitor.from_netlink(ctx, source="udev")
        mon.filter_by(subsystem="block")
        mon.start()  # bind before the scan: a drive plugged meanwhile is then not lost
        self._monitor = mon
        present: list[DriveEvent] = []
        for dev in ctx.list_devices(subsystem="block"):
            ev = self._event(dev, action="add", at_start=True)
            if ev is not None:
                present.append(ev)
        return present

    def wait(self, timeout: float) -> list[DriveEvent]:
        mon = self._monitor
        if mon is None:
            raise RuntimeError("PyudevDriveSource.wait() before start()")
        out: list[DriveEvent] = []
        dev = mon.poll(timeout=timeout)
        while dev is not None:
            ev = self._event(dev, action=None, at_start=False)
            if ev is not None:
                out.append(ev)
            if len(out) >= 64:
                break
            dev = mon.poll(timeout=0)
        return out

    def close(self) -> None:
        self._closed = True
        mon, self._monitor = self._monitor, None
        if mon is not None:
            # pyudev has no close(): dropping the monitor frees libudev's socket; stop()
            # only unbinds it, so a late event is not queued for nobody meanwhile.
            with contextlib.suppress(Exception):
                mon.stop()

    @staticmethod
    def _props(dev: Any, action: str | None) -> dict[str, str]:
        props = {str(k): str(v) for k, v in dev.properties.items()}
        node = dev.device_node
        if node:
            props["DEVNAME"] = node
        props.setdefault("SUBSYSTEM", dev.subsystem or "")
        if dev.device_type:
            props.setdefault("DEVTYPE", dev.device_type)
        props.setdefault("DEVPATH", dev.device_path or "")
        if action is None and dev.action:
            props["ACTION"] = dev.action
        return props

    def _event(self, dev: Any, *, action: str | None, at_start: bool) -> DriveEvent | None:
        try:
            props = self._props(dev, action)
        except Exception as exc:  # a device vanishing while read
            log.debug("skipping a udev device that could not be read: %s", exc)
            return None
        ev = event_from_properties(props, action=action, at_start=at_start)
        if ev is not None and ev.serial is None and ev.is_usb:
            serial = self._usb_serial(dev)
            if serial:
                ev = replace(ev, serial=serial)
        return ev

    @staticmethod
    def _usb_serial(dev: Any) -> str | None:
        try:
            usb = dev.find_parent("usb", "usb_device")
            if usb is None:
                return None
            return str(usb.attributes.asstring("serial")) or None
        except Exception:  # no attribute, device gone
            return None


# --- fake -----------------------------------------------------------------------------------


class FakeDriveSource:
    """A source for tests: ``present`` at start, then whatever :meth:`inject` is given."""

    name = "fake"

    def __init__(self, present: Iterable[DriveEvent] = ()) -> None:
        self._present = [replace(e, at_start=True) for e in present]
        self._queue: queue.Queue[DriveEvent | None] = queue.Queue()
        self.started = False
        self.closed = False

    def inject(self, event: DriveEvent) -> None:
        """Deliver ``event`` as if the system had reported it (any thread)."""
        self._queue.put(event)

    def start(self) -> list[DriveEvent]:
        self.started = True
        return list(self._present)

    def wait(self, timeout: float) -> list[DriveEvent]:
        try:
            first = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return []
        out = [first]
        while True:
            try:
                out.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return [e for e in out if e is not None]

    def close(self) -> None:
        self.closed = True
        self._queue.put(None)  # wake a waiter


# --- mountinfo fallback ---------------------------------------------------------------------


def _link_map(directory: str) -> dict[str, str]:
    """{device node: link name} for /dev/disk/by-uuid or by-label (empty without udev)."""
    out: dict[str, str] = {}
    try:
        names = os.listdir(directory)
    except OSError:
        return out
    for name in names:
        with contextlib.suppress(OSError):
            out[os.path.realpath(os.path.join(directory, name), strict=True)] = name
    return out


def _unhex_label(name: str) -> str:
    # udev escapes by-label link names: "\x20" for space, "\x2f" for "/"
    return re.sub(r"\\x([0-9a-fA-F]{2})", lambda m: chr(int(m.group(1), 16)), name)


def probe_filesystem(devnode: str) -> dict[str, str]:
    """ID_FS_* of ``devnode`` from udev's links, else ``blkid`` (root only); empty if unknown."""
    props: dict[str, str] = {}
    real = os.path.realpath(devnode)
    uuid = _link_map(BY_UUID).get(real)
    if uuid:
        props["ID_FS_UUID"] = uuid
        label = _link_map(BY_LABEL).get(real)
        if label:
            props["ID_FS_LABEL"] = _unhex_label(label)
        return props
    blkid = shutil.which("blkid")
    if blkid is None:
        return props
    try:
        # -p: low-level probe of the device itself (no stale cache); needs read access to it
        res = subprocess.run(
            [blkid, "-p", "-o", "export", devnode],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("blkid probe failed: %s", exc)
        return props
    for line in res.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("UUID", "LABEL", "TYPE", "USAGE"):
            props["ID_FS_" + key] = value
    return props


def _sysfs_block_info(major: int, minor: int) -> tuple[str | None, str | None, bool]:
    """(devnode, devtype, is_usb) of block device major:minor from sysfs."""
    base = os.path.join(SYS_DEV_BLOCK, f"{major}:{minor}")
    devname: str | None = None
    devtype: str | None = None
    try:
        with open(os.path.join(base, "uevent"), encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key == "DEVNAME":
                    devname = "/dev/" + value
                elif key == "DEVTYPE":
                    devtype = value
    except OSError:
        pass
    try:
        is_usb = _is_usb_devpath(os.path.realpath(base))
    except OSError:
        is_usb = False
    return devname, devtype, is_usb


def is_drive_mount(m: MountInfo) -> bool:
    """Default filter of MountinfoDriveSource: a whole block-backed filesystem, not virtual."""
    return m.root == "/" and any(True for _ in iter_drive_mounts([m]))


class MountinfoDriveSource:
    """Fallback without udevd: block-backed mounts appearing/disappearing in the mount table.

    ``add``/``remove`` events carry ``mountpoint``; ``fs_uuid`` comes from /dev/disk/by-uuid or
    a blkid probe when they can tell (else None: the marker file on the drive decides).
    """

    name = "mountinfo"

    def __init__(
        self,
        mountinfo_path: str = MOUNTINFO,
        *,
        include: Callable[[MountInfo], bool] = is_drive_mount,
        probe: Callable[[str], Mapping[str, str]] = probe_filesystem,
    ) -> None:
        self._path = mountinfo_path
        self._include = include
        self._probe = probe
        self._file: Any = None
        self._poller: select.poll | None = None
        self._known: dict[int, DriveEvent] = {}  # mount id -> the 'add' event reported

    def start(self) -> list[DriveEvent]:
        if self._file is not None:
            raise RuntimeError("MountinfoDriveSource.start() called twice")
        f = open(self._path, "rb")  # noqa: SIM115 - kept open: poll() needs it
        self._file = f
        poller = select.poll()
        poller.register(f.fileno(), select.POLLPRI | select.POLLERR)
        self._poller = poller
        return self._rescan(at_start=True)

    def wait(self, timeout: float) -> list[DriveEvent]:
        if self._poller is None:
            raise RuntimeError("MountinfoDriveSource.wait() before start()")
        if not self._poller.poll(max(int(timeout * 1000), 0)):
            return []
        return self._rescan(at_start=False)

    def rescan(self) -> list[DriveEvent]:
        """Re-read the mount table now (a periodic safety net; events are only hints)."""
        if self._file is None:
            raise RuntimeError("MountinfoDriveSource.rescan() before start()")
        return self._rescan(at_start=False)

    def close(self) -> None:
        f, self._file = self._file, None
        self._poller = None
        if f is not None:
            f.close()

    def _read(self) -> list[MountInfo]:
        f = self._file
        f.seek(0)
        return parse_mountinfo(f.read())

    def _rescan(self, *, at_start: bool) -> list[DriveEvent]:
        current = {m.mount_id: m for m in self._read() if self._include(m)}
        out: list[DriveEvent] = []
        for mount_id in [k for k in self._known if k not in current]:
            gone = self._known.pop(mount_id)
            out.append(replace(gone, action="remove", at_start=False))
        for mount_id, m in current.items():
            if mount_id not in self._known:
                ev = self._event_for(m, at_start=at_start)
                self._known[mount_id] = ev
                out.append(ev)
        return out

    def _event_for(self, m: MountInfo, *, at_start: bool) -> DriveEvent:
        devnode, devtype, is_usb = _sysfs_block_info(m.major, m.minor)
        if devnode is None:
            devnode = m.source
        props: Mapping[str, str] = {}
        if devnode.startswith("/dev/"):
            try:
                props = self._probe(devnode)
            except Exception as exc:  # a probe must never stop the watcher
                log.debug("probing %s failed: %s", devnode, exc)
        return DriveEvent(
            action="add",
            devnode=devnode,
            fs_uuid=props.get("ID_FS_UUID") or None,
            fs_label=props.get("ID_FS_LABEL") or None,
            fs_type=props.get("ID_FS_TYPE") or m.fstype,
            serial=None,
            is_usb=is_usb,
            devtype=devtype,
            mountpoint=m.mountpoint,
            at_start=at_start,
            source="mountinfo",
        )


def choose_source(prefer: str | None = None) -> DriveSource:
    """The best source here: udev when a udevd runs, else the mount table (with a warning).

    ``prefer`` ("udev" or "mountinfo") forces one; "udev" without udevd still warns.
    """
    if prefer not in (None, "udev", "mountinfo"):
        raise ValueError(f"unknown drive source {prefer!r}")
    if prefer == "mountinfo":
        return MountinfoDriveSource()
    running = detect_udevd()
    if prefer == "udev" or running:
        if not running:
            log.warning(
                "no udev daemon seems to run (%s is missing): udev drive events may never arrive",
                UDEV_CONTROL,
            )
        return PyudevDriveSource()
    log.warning(
        "no udev daemon runs (%s is missing): drives are detected only once mounted "
        "(watching the mount table); mount enrolled drives by hand or with the desktop",
        UDEV_CONTROL,
    )
    return MountinfoDriveSource()


# --- watcher thread -------------------------------------------------------------------------


class DriveWatcher:
    """Runs ``source`` in one thread and calls ``on_event`` for each event, in order.

    ``start()`` starts the source in the caller's thread (so errors surface there and the
    source listens before ``start()`` returns), then the thread delivers the drives already
    present and the events that follow. ``stop()`` joins the thread, then closes the source.
    ``on_event`` runs in the watcher thread; an exception in it is logged, never fatal.
    """

    def __init__(
        self,
        source: DriveSource,
        on_event: Callable[[DriveEvent], None],
        *,
        poll_interval: float = 0.2,
        retry_delay: float = 1.0,
        name: str = "coldvault-drives",
    ) -> None:
        self.source = source
        self._on_event = on_event
        self._interval = poll_interval
        self._retry_delay = retry_delay
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("DriveWatcher.start() called twice")
        present = self.source.start()
        log.info("watching drives through %s (%d present)", self.source.name, len(present))
        self._thread = threading.Thread(
            target=self._run, args=(present,), name=self._name, daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop and join; True when the thread ended within ``timeout`` seconds."""
        self._stop.set()
        ended = True
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            ended = not t.is_alive()
            if not ended:
                log.warning("the drive watcher thread did not stop within %.1f s", timeout)
        if ended:
            self.source.close()
        return ended

    def __enter__(self) -> DriveWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _deliver(self, events: Iterable[DriveEvent]) -> None:
        for ev in events:
            if self._stop.is_set():
                return
            try:
                self._on_event(ev)
            except Exception:
                log.exception("drive event handler failed (%s %s)", ev.action, ev.devnode)

    def _run(self, present: list[DriveEvent]) -> None:
        self._deliver(present)
        while not self._stop.is_set():
            try:
                events = self.source.wait(self._interval)
            except Exception:
                log.exception("the drive event source %s failed; retrying", self.source.name)
                self._stop.wait(self._retry_delay)
                continue
            self._deliver(events)
