"""The REAL PyudevDriveSource (libudev + pyudev) inside a DriveWatcher, fed by umockdev.

The testbed lives in a helper process under ``umockdev-wrapper``; the watcher runs in a second
process with the preload and the testbed's UMOCKDEV_DIR, so this pytest process never runs under
LD_PRELOAD (see tests/drives_umockdev_helper.py and testing-notes §1.4).
"""

from __future__ import annotations

import pytest

from tests.drives_fixtures import (  # noqa: F401
    LineProc,
    UmockdevBed,
    no_thread_leak_fixture,
    read_events,
    umockdev_bed_fixture,
)

pytestmark = pytest.mark.usefixtures("no_thread_leak")

QUIET_S = 0.4  # how long "nothing else arrives" is checked


def stop_watcher(w: LineProc) -> dict[str, object]:
    w.close_stdin()
    while True:
        line = w.readline(10)
        if "stopped" in line:
            return line


def test_present_at_start_then_hotplug_add_and_remove(umockdev_bed: UmockdevBed) -> None:
    umockdev_bed.plug_stick(n=1, uuid="AAAA-0001", label="ALREADY")  # plugged before start
    w = umockdev_bed.start_watcher()
    lines = [w.readline(), w.readline()]
    assert {"ready": True} in lines
    (present,) = [ln["event"] for ln in lines if "event" in ln]
    assert present == {
        "action": "add",
        "devnode": "/dev/sdb1",
        "fs_uuid": "AAAA-0001",
        "fs_label": "ALREADY",
        "fs_type": "vfat",
        "serial": "4C530001",
        "is_usb": True,
        "devtype": "partition",
        "mountpoint": None,
        "at_start": True,
        "source": "udev",
    }

    stick = umockdev_bed.plug_stick(n=2, uuid="BBBB-0002", label="COLDVAULT02")
    (added,) = read_events(w, 1)
    assert (added["action"], added["devnode"], added["fs_uuid"], added["at_start"]) == (
        "add",
        "/dev/sdc1",
        "BBBB-0002",
        False,
    )
    assert added["is_usb"] and added["serial"] == "4C530002"
    # the usb, scsi and partition-table disk 'add's of the same plug were not reported
    assert w.no_line(QUIET_S)

    umockdev_bed.cmd(op="uevent", sysfs=stick["sysfs"], action="remove")
    (removed,) = read_events(w, 1)
    assert (removed["action"], removed["devnode"], removed["fs_uuid"]) == (
        "remove",
        "/dev/sdc1",
        "BBBB-0002",
    )
    done = stop_watcher(w)
    assert done["stopped"] is True and done["threads"] == ["MainThread"]


def test_superfloppy_stick_without_partition_table_is_seen(umockdev_bed: UmockdevBed) -> None:
    w = umockdev_bed.start_watcher()
    assert w.readline() == {"ready": True}
    umockdev_bed.plug_stick(n=1, uuid="CCCC-0003", partitioned=False)
    (e,) = read_events(w, 1)
    assert (e["action"], e["devnode"], e["devtype"], e["fs_uuid"]) == (
        "add",
        "/dev/sdb",
        "disk",
        "CCCC-0003",
    )
    assert w.no_line(QUIET_S)


def test_non_block_devices_and_filesystemless_disks_are_ignored(umockdev_bed: UmockdevBed) -> None:
    w = umockdev_bed.start_watcher()
    assert w.readline() == {"ready": True}
    umockdev_bed.cmd(
        op="device",
        subsystem="input",
        name="input5",
        props=["DEVNAME", "/dev/input/event5", "ID_FS_UUID", "NOT-A-DISK"],
    )
    umockdev_bed.plug_stick(n=1, uuid=None)  # partitioned stick, unformatted partition
    umockdev_bed.plug_stick(n=2, uuid="SWAP-0001", usage="other", fstype="swap")
    assert w.no_line(QUIET_S)
    # and the watcher is still alive and listening
    umockdev_bed.plug_stick(n=3, uuid="DDDD-0004")
    (e,) = read_events(w, 1)
    assert e["fs_uuid"] == "DDDD-0004"


def test_change_event_carries_the_new_label_and_non_usb_is_flagged(
    umockdev_bed: UmockdevBed,
) -> None:
    w = umockdev_bed.start_watcher()
    assert w.readline() == {"ready": True}
    stick = umockdev_bed.plug_stick(n=1, uuid="EEEE-0005", usb=False, with_serial=False)
    (e,) = read_events(w, 1)
    assert (e["fs_uuid"], e["is_usb"], e["serial"]) == ("EEEE-0005", False, None)
    umockdev_bed.cmd(op="set_property", sysfs=stick["sysfs"], key="ID_FS_LABEL", value="RELABELED")
    umockdev_bed.cmd(op="uevent", sysfs=stick["sysfs"], action="change")
    (c,) = read_events(w, 1)
    assert (c["action"], c["fs_label"], c["fs_uuid"]) == ("change", "RELABELED", "EEEE-0005")


def test_usb_serial_is_read_from_the_usb_device_when_udev_gave_none(
    umockdev_bed: UmockdevBed,
) -> None:
    w = umockdev_bed.start_watcher()
    assert w.readline() == {"ready": True}
    umockdev_bed.plug_stick(n=1, uuid="FFFF-0006", serial="XYZ987", with_serial=False)
    (e,) = read_events(w, 1)
    assert (e["is_usb"], e["serial"]) == (True, "XYZ987")
