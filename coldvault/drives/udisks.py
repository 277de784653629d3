"""A small udisks2 client over D-Bus (jeepney, pure Python): mount, unmount, power off.

This is how a service that does not run as root mounts a drive: udisksd (root) does the mount
after polkit says yes. A system service user has no seat or session, so the default polkit
policy refuses it; ``examples/polkit/50-coldvault-udisks.rules`` grants the ``coldvault`` user
the few actions needed. Every call passes ``auth.no_user_interaction`` so nothing ever waits for
a password dialog.

If a desktop automounted the drive first, ``Mount`` answers ``AlreadyMounted``; the existing
mount point is then used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from coldvault.errors import DriveError, NotAvailable

log = logging.getLogger(__name__)

UDISKS = "org.freedesktop.UDisks2"
ROOT_PATH = "/org/freedesktop/UDisks2"
MANAGER_PATH = "/org/freedesktop/UDisks2/Manager"
IFACE_BLOCK = "org.freedesktop.UDisks2.Block"
IFACE_FS = "org.freedesktop.UDisks2.Filesystem"
IFACE_DRIVE = "org.freedesktop.UDisks2.Drive"
IFACE_OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"

POLKIT_HINT = (
    "Install examples/polkit/50-coldvault-udisks.rules as "
    "/etc/polkit-1/rules.d/50-coldvault-udisks.rules (it lets the coldvault service user "
    "mount, unmount and power off removable drives), or run the service as root."
)

_NOT_AUTHORIZED = (
    "org.freedesktop.UDisks2.Error.NotAuthorized",
    "org.freedesktop.UDisks2.Error.NotAuthorizedCanObtain",
    "org.freedesktop.UDisks2.Error.NotAuthorizedDismissed",
)
_NOT_RUNNING = (
    "org.freedesktop.DBus.Error.ServiceUnknown",
    "org.freedesktop.DBus.Error.NameHasNoOwner",
    "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
    "org.freedesktop.DBus.Error.Spawn.ChildExited",
)


class UdisksError(DriveError):
    """udisks2 refused or failed an operation on a drive."""

    def __init__(self, message: str, hint: str | None = None, *, dbus_error: str = "") -> None:
        super().__init__(message, hint)
        self.dbus_error = dbus_error


class UdisksNotAuthorized(UdisksError):
    """polkit did not allow this user to mount/unmount/power off the drive."""


class UdisksUnavailable(NotAvailable):
    """No D-Bus system bus, or no udisks2 service on it."""


@dataclass(frozen=True)
class UdisksFilesystem:
    """A block device with a filesystem, as udisks2 sees it."""

    object_path: str
    devnode: str
    fs_uuid: str
    fs_label: str | None
    fs_type: str | None
    mountpoints: tuple[str, ...]
    drive_path: str | None  # the Drive object (the physical stick), None for loop devices


def _variant(props: dict[str, Any], key: str) -> Any:
    v = props.get(key)
    return None if v is None else v[1]


def _bytestring(value: Any) -> str:
    """udisks' 'ay' strings end with a NUL byte."""
    if value is None:
        return ""
    return bytes(value).rstrip(b"\0").decode("utf-8", "surrogateescape")


class UdisksClient:
    """A connection to udisksd. ``bus_address`` None means the system bus
    (``DBUS_SYSTEM_BUS_ADDRESS`` if set); tests pass a private bus address."""

    def __init__(self, bus_address: str | None = None, *, timeout: float = 60.0) -> None:
        from jeepney.io.blocking import open_dbus_connection

        self._timeout = timeout
        where = bus_address or "SYSTEM"
        try:
            self._conn: Any = open_dbus_connection(bus=where)
        except Exception as exc:  # no socket, refused, auth failure
            log.debug("cannot connect to D-Bus %s: %s", where, exc)
            raise UdisksUnavailable(
                "Cannot reach the system's D-Bus, so udisks2 cannot mount the drive.",
                hint="Check that dbus and udisks2 are installed and running.",
            ) from exc

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> UdisksClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- D-Bus plumbing ------------------------------------------------------------------

    def _call(
        self,
        path: str,
        iface: str,
        method: str,
        signature: str | None = None,
        body: tuple[Any, ...] = (),
    ) -> tuple[Any, ...]:
        from jeepney import DBusAddress, MessageType, new_method_call
        from jeepney.low_level import HeaderFields

        msg = new_method_call(
            DBusAddress(path, bus_name=UDISKS, interface=iface), method, signature, body
        )
        try:
            reply = self._conn.send_and_get_reply(msg, timeout=self._timeout)
        except TimeoutError as exc:
            raise UdisksError(
                f"udisks2 did not answer within {self._timeout:.0f} seconds.",
                hint="Check that the drive is still plugged in, then try again.",
            ) from exc
        except OSError as exc:
            raise UdisksUnavailable(
                "The connection to udisks2 was lost.",
                hint="Check that dbus and udisks2 are running.",
            ) from exc
        if reply.header.message_type == MessageType.error:
            name = str(reply.header.fields.get(HeaderFields.error_name, ""))
            text = str(reply.body[0]) if reply.body else ""
            raise self._error(method, name, text)
        return tuple(reply.body)

    @staticmethod
    def _error(method: str, name: str, text: str) -> Exception:
        log.debug("udisks2 %s failed: %s: %s", method, name, text)
        if name in _NOT_AUTHORIZED:
            return UdisksNotAuthorized(
                "This user is not allowed to mount or unmount the drive through udisks2.",
                hint=POLKIT_HINT,
                dbus_error=name,
            )
        if name in _NOT_RUNNING:
            return UdisksUnavailable(
                "The udisks2 service is not running, so the drive cannot be mounted.",
                hint="Install udisks2 (apt install udisks2) and make sure its service can start.",
            )
        if name == "org.freedesktop.UDisks2.Error.DeviceBusy":
            return UdisksError(
                "The drive is still in use.",
                hint="Close any window or program that shows files of the drive, then try again.",
                dbus_error=name,
            )
        return UdisksError(
            f"udisks2 could not {method.lower()} the drive: {text or name}", dbus_error=name
        )

    # -- queries -------------------------------------------------------------------------

    def filesystems(self) -> list[UdisksFilesystem]:
        """Every block device with a filesystem interface (mountable), in udisks' order."""
        (objects,) = self._call(ROOT_PATH, IFACE_OBJECT_MANAGER, "GetManagedObjects")
        out: list[UdisksFilesystem] = []
        for path, ifaces in objects.items():
            blk = ifaces.get(IFACE_BLOCK)
            fs = ifaces.get(IFACE_FS)
            if blk is None or fs is None:
                continue
            drive = _variant(blk, "Drive")
            out.append(
                UdisksFilesystem(
                    object_path=str(path),
                    devnode=_bytestring(_variant(blk, "Device")),
                    fs_uuid=str(_variant(blk, "IdUUID") or ""),
                    fs_label=str(_variant(blk, "IdLabel") or "") or None,
                    fs_type=str(_variant(blk, "IdType") or "") or None,
                    mountpoints=tuple(_bytestring(m) for m in (_variant(fs, "MountPoints") or [])),
                    drive_path=None if drive in (None, "/") else str(drive),
                )
            )
        return out

    def find_filesystem(self, fs_uuid: str) -> UdisksFilesystem | None:
        """The filesystem with this UUID (case-insensitive, like FAT's "1234-ABCD"), or None."""
        want = fs_uuid.lower()
        for fs in self.filesystems():
            if fs.fs_uuid.lower() == want:
                return fs
        return None

    def _require(self, fs_uuid: str) -> UdisksFilesystem:
        fs = self.find_filesystem(fs_uuid)
        if fs is None:
            raise UdisksError(
                "The drive is not known to udisks2 (not plugged in, or not recognised yet).",
                hint="Plug the drive in again and wait a few seconds.",
            )
        return fs

    # -- operations ----------------------------------------------------------------------

    def mount(self, fs_uuid: str, *, options: str | None = "nosuid,nodev,noexec") -> str:
        """Mount the filesystem with ``fs_uuid``; returns the mount point.

        Already mounted (by a desktop automounter or earlier by us): returns that mount point.
        """
        fs = self._require(fs_uuid)
        if fs.mountpoints:
            return fs.mountpoints[0]
        opts: dict[str, tuple[str, Any]] = {"auth.no_user_interaction": ("b", True)}
        if options:
            opts["options"] = ("s", options)
        try:
            (mountpoint,) = self._call(fs.object_path, IFACE_FS, "Mount", "a{sv}", (opts,))
        except UdisksError as exc:
            if exc.dbus_error != "org.freedesktop.UDisks2.Error.AlreadyMounted":
                raise
            again = self._require(fs_uuid)
            if not again.mountpoints:
                raise
            log.info("drive was already mounted elsewhere; using that mount")
            return again.mountpoints[0]
        log.info("mounted the drive through udisks2")
        return str(mountpoint)

    def unmount(self, fs_uuid: str, *, force: bool = False) -> None:
        """Unmount every mount of the filesystem; nothing to do if it is not mounted."""
        fs = self._require(fs_uuid)
        if not fs.mountpoints:
            return
        opts: dict[str, tuple[str, Any]] = {"auth.no_user_interaction": ("b", True)}
        if force:
            opts["force"] = ("b", True)
        try:
            self._call(fs.object_path, IFACE_FS, "Unmount", "a{sv}", (opts,))
        except UdisksError as exc:
            if exc.dbus_error != "org.freedesktop.UDisks2.Error.NotMounted":
                raise
        log.info("unmounted the drive through udisks2")

    def power_off(self, fs_uuid: str) -> bool:
        """Power the drive off so it can be pulled out safely (unmount first).

        Returns False when the device has no drive that can be powered off (loop devices, some
        card readers); raises on refusal.
        """
        fs = self._require(fs_uuid)
        if fs.drive_path is None:
            return False
        (can,) = self._call(
            fs.drive_path,
            "org.freedesktop.DBus.Properties",
            "Get",
            "ss",
            (IFACE_DRIVE, "CanPowerOff"),
        )
        if not bool(can[1]):
            return False
        self._call(
            fs.drive_path,
            IFACE_DRIVE,
            "PowerOff",
            "a{sv}",
            ({"auth.no_user_interaction": ("b", True)},),
        )
        log.info("powered the drive off through udisks2")
        return True

    def safely_remove(self, fs_uuid: str) -> bool:
        """Unmount, then power off when possible; True if powered off."""
        self.unmount(fs_uuid)
        return self.power_off(fs_uuid)


def udisks_running(bus_address: str | None = None) -> bool:
    """True when udisks2 answers on the bus (a cheap probe for choosing how to mount)."""
    try:
        with UdisksClient(bus_address, timeout=5.0) as client:
            client.filesystems()
    except (UdisksUnavailable, UdisksError):
        return False
    return True
