"""Drive events without I/O: udev properties -> DriveEvent, the fake source in the watcher thread,
the mount-table fallback's diffing, and the choice of source."""

from __future__ import annotations

import logging
import os
import queue
import stat
import threading
from pathlib import Path

import pytest

from coldvault.drives import events
from coldvault.drives.events import (
    DriveEvent,
    DriveWatcher,
    FakeDriveSource,
    MountinfoDriveSource,
    PyudevDriveSource,
    choose_source,
    detect_udevd,
    event_from_properties,
)
from tests.drives_fixtures import no_thread_leak_fixture  # noqa: F401

pytestmark = pytest.mark.usefixtures("no_thread_leak")

USB_PART = {
    "ACTION": "add",
    "SUBSYSTEM": "block",
    "DEVNAME": "/dev/sdb1",
    "DEVTYPE": "partition",
    "DEVPATH": "/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0"
    "/block/sdb/sdb1",
    "ID_BUS": "usb",
    "ID_SERIAL": "SanDisk_Ultra_4C530001230-0:0",
    "ID_SERIAL_SHORT": "4C530001230",
    "ID_FS_UUID": "1234-ABCD",
    "ID_FS_LABEL": "COLDVAULT01",
    "ID_FS_TYPE": "vfat",
    "ID_FS_USAGE": "filesystem",
}


def ev(action: str = "add", uuid: str = "1234-ABCD", node: str = "/dev/sdb1") -> DriveEvent:
    return DriveEvent(action, node, uuid, "CV", "vfat", "SER", True, "partition", source="fake")  # type: ignore[arg-type]


# --- event_from_properties ------------------------------------------------------------------


def test_usb_partition_with_filesystem_becomes_an_event() -> None:
    e = event_from_properties(USB_PART)
    assert e == DriveEvent(
        action="add",
        devnode="/dev/sdb1",
        fs_uuid="1234-ABCD",
        fs_label="COLDVAULT01",
        fs_type="vfat",
        serial="4C530001230",
        is_usb=True,
        devtype="partition",
    )


def test_superfloppy_whole_disk_with_filesystem_is_reported() -> None:
    props = dict(USB_PART, DEVNAME="/dev/sdc", DEVTYPE="disk")
    e = event_from_properties(props)
    assert e is not None and (e.devnode, e.devtype) == ("/dev/sdc", "disk")


def test_partitioned_disk_without_filesystem_is_ignored() -> None:
    props = {k: v for k, v in USB_PART.items() if not k.startswith("ID_FS_")}
    props.update(DEVNAME="/dev/sdb", DEVTYPE="disk", ID_PART_TABLE_TYPE="dos")
    assert event_from_properties(props) is None


@pytest.mark.parametrize(
    "change",
    [
        {"SUBSYSTEM": "input"},
        {"ACTION": "bind"},
        {"ACTION": "move"},
        {"ID_FS_UUID": ""},
        {"ID_FS_USAGE": "other"},  # swap
        {"ID_FS_USAGE": "crypto"},  # LUKS container
        {"DEVTYPE": "usb_device"},
        {"DEVNAME": ""},
    ],
)
def test_non_filesystems_and_other_actions_are_ignored(change: dict[str, str]) -> None:
    assert event_from_properties(dict(USB_PART, **change)) is None


def test_action_comes_from_properties_or_the_override() -> None:
    for action in ("add", "change", "remove"):
        e = event_from_properties(dict(USB_PART, ACTION=action))
        assert e is not None and e.action == action
    no_action = {k: v for k, v in USB_PART.items() if k != "ACTION"}
    assert event_from_properties(no_action).action == "add"  # type: ignore[union-attr]
    scanned = event_from_properties(USB_PART, action="add", at_start=True)
    assert scanned is not None and scanned.at_start


def test_usb_is_known_from_the_sysfs_path_even_without_id_bus() -> None:
    props = {k: v for k, v in USB_PART.items() if k != "ID_BUS"}
    assert event_from_properties(props).is_usb  # type: ignore[union-attr]
    loop = {
        "DEVNAME": "/dev/loop0",
        "DEVTYPE": "disk",
        "DEVPATH": "/devices/virtual/block/loop0",
        "ID_FS_UUID": "0f5c2a52-1111-4c3e-9a1b-2f1f3a4b5c6d",
        "ID_FS_TYPE": "ext4",
        "ID_FS_USAGE": "filesystem",
        "ACTION": "change",
    }
    e = event_from_properties(loop)
    assert e is not None and not e.is_usb and e.action == "change" and e.serial is None


def test_serial_falls_back_to_id_serial_and_bare_devname_gets_dev() -> None:
    props = {k: v for k, v in USB_PART.items() if k != "ID_SERIAL_SHORT"}
    props["DEVNAME"] = "sdb1"
    e = event_from_properties(props)
    assert e is not None and e.serial == "SanDisk_Ultra_4C530001230-0:0"
    assert e.devnode == "/dev/sdb1"


# --- FakeDriveSource + DriveWatcher ---------------------------------------------------------


def test_watcher_delivers_present_then_injected_events_in_order() -> None:
    src = FakeDriveSource(present=[ev(uuid="PRESENT")])
    got: queue.Queue[DriveEvent] = queue.Queue()
    w = DriveWatcher(src, got.put, poll_interval=0.05)
    w.start()
    try:
        assert src.started
        src.inject(ev("add", uuid="A"))
        src.inject(ev("remove", uuid="A"))
        seen = [got.get(timeout=5) for _ in range(3)]
    finally:
        assert w.stop()
    assert [(e.action, e.fs_uuid, e.at_start) for e in seen] == [
        ("add", "PRESENT", True),
        ("add", "A", False),
        ("remove", "A", False),
    ]
    assert src.closed and not w.running


def test_a_failing_handler_does_not_kill_the_watcher(caplog: pytest.LogCaptureFixture) -> None:
    src = FakeDriveSource()
    got: list[str | None] = []
    done = threading.Event()

    def handler(e: DriveEvent) -> None:
        if e.fs_uuid == "BOOM":
            raise RuntimeError("handler bug")
        got.append(e.fs_uuid)
        done.set()

    with DriveWatcher(src, handler, poll_interval=0.05):
        src.inject(ev(uuid="BOOM"))
        src.inject(ev(uuid="OK"))
        assert done.wait(5)
    assert got == ["OK"]
    assert "drive event handler failed" in caplog.text


def test_a_failing_source_is_retried_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(FakeDriveSource):
        calls = 0

        def wait(self, timeout: float) -> list[DriveEvent]:
            self.calls += 1
            if self.calls == 1:
                raise OSError("netlink hiccup")
            return super().wait(timeout)

    src = Flaky()
    got: queue.Queue[DriveEvent] = queue.Queue()
    with DriveWatcher(src, got.put, poll_interval=0.05, retry_delay=0.05):
        src.inject(ev(uuid="LATER"))
        assert got.get(timeout=5).fs_uuid == "LATER"
    assert "retrying" in caplog.text


def test_stop_is_prompt_and_start_twice_is_refused() -> None:
    w = DriveWatcher(FakeDriveSource(), lambda e: None, poll_interval=0.05)
    w.start()
    with pytest.raises(RuntimeError):
        w.start()
    assert w.running
    assert w.stop(timeout=2)
    assert not any(t.name == "coldvault-drives" for t in threading.enumerate())


def test_stop_timeout_reports_a_stuck_handler() -> None:
    release = threading.Event()
    entered = threading.Event()

    def stuck(e: DriveEvent) -> None:
        entered.set()
        release.wait(10)

    src = FakeDriveSource(present=[ev()])
    w = DriveWatcher(src, stuck, poll_interval=0.05)
    w.start()
    assert entered.wait(5)
    assert w.stop(timeout=0.1) is False
    assert not src.closed  # never closed under a running thread
    release.set()
    assert w.stop(timeout=5) is True and src.closed


# --- mountinfo fallback, diffing on a fake table --------------------------------------------

ROOT_LINE = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
PROC_LINE = "23 22 0:21 / /proc rw,relatime - proc proc rw\n"
STICK_LINE = (
    "40 22 8:17 / /media/doc/COLD\\040VAULT rw,nosuid,nodev shared:9 - vfat /dev/sdb1 rw,utf8\n"
)
BIND_LINE = "41 22 8:17 /sub /mnt/bind rw - vfat /dev/sdb1 rw\n"
FUSE_LINE = "42 22 7:3 / /media/ex rw,nosuid - fuseblk /dev/loop3 rw,user_id=0\n"


def test_mountinfo_source_reports_block_mounts_appearing_and_going(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(ROOT_LINE + PROC_LINE)
    probed: list[str] = []

    def probe(node: str) -> dict[str, str]:
        probed.append(node)
        return {"ID_FS_UUID": "1234-ABCD", "ID_FS_LABEL": "COLDVAULT01"} if "sdb" in node else {}

    src = MountinfoDriveSource(str(table), probe=probe)
    present = src.start()
    try:
        assert [(e.action, e.mountpoint, e.at_start) for e in present] == [("add", "/", True)]
        table.write_text(ROOT_LINE + PROC_LINE + STICK_LINE + BIND_LINE + FUSE_LINE)
        added = src.rescan()
        assert [(e.action, e.mountpoint, e.fs_uuid, e.source) for e in added] == [
            ("add", "/media/doc/COLD VAULT", "1234-ABCD", "mountinfo"),
            ("add", "/media/ex", None, "mountinfo"),  # fuseblk counts; the bind mount does not
        ]
        assert added[0].fs_label == "COLDVAULT01" and not added[0].at_start
        assert src.rescan() == []  # nothing changed: nothing reported, nothing probed again
        table.write_text(ROOT_LINE + PROC_LINE + FUSE_LINE)
        removed = src.rescan()
        assert [(e.action, e.mountpoint, e.fs_uuid) for e in removed] == [
            ("remove", "/media/doc/COLD VAULT", "1234-ABCD")
        ]
        assert probed.count("/dev/sdb1") == 1
    finally:
        src.close()


def test_mountinfo_source_survives_a_failing_probe(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(ROOT_LINE + STICK_LINE)

    def probe(node: str) -> dict[str, str]:
        raise OSError("permission denied")

    src = MountinfoDriveSource(str(table), probe=probe)
    try:
        present = src.start()
    finally:
        src.close()
    assert {e.mountpoint: e.fs_uuid for e in present} == {"/": None, "/media/doc/COLD VAULT": None}


def test_mountinfo_wait_times_out_quietly_without_changes() -> None:
    src = MountinfoDriveSource()
    try:
        src.start()
        assert src.wait(0.05) == []
    finally:
        src.close()


# --- choosing a source ------------------------------------------------------------------


def test_detect_udevd_wants_a_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl = tmp_path / "control"
    monkeypatch.setattr(events, "UDEV_CONTROL", str(ctl))
    assert not detect_udevd()
    ctl.write_text("")
    assert not detect_udevd()  # a stale regular file is not a daemon
    ctl.unlink()
    os.mknod(ctl, stat.S_IFSOCK | 0o600)
    assert detect_udevd()


def test_choose_source_falls_back_to_mountinfo_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(events, "UDEV_CONTROL", str(tmp_path / "absent"))
    with caplog.at_level(logging.WARNING, logger="coldvault.drives.events"):
        src = choose_source()
    assert isinstance(src, MountinfoDriveSource)
    assert "no udev daemon" in caplog.text
    ctl = tmp_path / "control"
    os.mknod(ctl, stat.S_IFSOCK | 0o600)
    monkeypatch.setattr(events, "UDEV_CONTROL", str(ctl))
    assert isinstance(choose_source(), PyudevDriveSource)
    assert isinstance(choose_source("mountinfo"), MountinfoDriveSource)
    with pytest.raises(ValueError):
        choose_source("hal")
