"""Real mounts (root): loop-mounted ext4 and exfat-fuse found by UUID and device, unmounting,
and the mount-table fallback source seeing a drive mount appear and disappear."""

from __future__ import annotations

import os
import queue
from pathlib import Path

import pytest

from coldvault.drives.events import DriveEvent, DriveWatcher, MountinfoDriveSource
from coldvault.drives.mounts import (
    devnode_for_uuid,
    find_mount,
    is_mountpoint,
    mount_for_path,
    umount,
)
from coldvault.errors import DriveError
from tests.drives_fixtures import (  # noqa: F401
    LoopMounts,
    loops_fixture,
    make_ext4,
    need_tools,
    no_thread_leak_fixture,
    run,
)

pytestmark = [pytest.mark.root, pytest.mark.usefixtures("no_thread_leak")]

ODD_NAME = "Praxis Müller\tback\\slash"


def test_loop_mounted_ext4_is_found_by_uuid_and_devnode(tmp_path: Path, loops: LoopMounts) -> None:
    img = tmp_path / "drive.img"
    uuid = make_ext4(img, label="COLDVAULT01")
    node = loops.attach(img)
    mp = tmp_path / ODD_NAME
    loops.mount(node, mp)

    by_uuid = find_mount(fs_uuid=uuid)  # no udev here in CI: resolved through blkid
    by_node = find_mount(devnode=node)
    assert by_uuid is not None and by_node is not None
    assert by_uuid == by_node
    assert by_uuid.mountpoint == str(mp)  # escapes \040 \011 \134 and raw UTF-8 undone
    assert (by_uuid.fstype, by_uuid.source, by_uuid.root) == ("ext4", node, "/")
    assert devnode_for_uuid(uuid) == node

    (mp / "coldvault").mkdir()
    assert mount_for_path(mp / "coldvault").mount_id == by_uuid.mount_id
    assert is_mountpoint(mp)

    umount(mp)
    assert find_mount(fs_uuid=uuid) is None
    assert not is_mountpoint(mp)


def test_unknown_uuid_is_not_mounted() -> None:
    assert find_mount(fs_uuid="00000000-dead-beef-0000-000000000000") is None


def test_exfat_fuse_mount_is_found_through_its_loop_device(
    tmp_path: Path, loops: LoopMounts
) -> None:
    need_tools("mkfs.exfat", "mount.exfat-fuse")
    img = tmp_path / "exfat.img"
    with open(img, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    run(["mkfs.exfat", "-L", "CVEXFAT", str(img)])
    node = loops.attach(img)
    mp = tmp_path / "ex fat"
    loops.mount_exfat_fuse(node, mp)
    m = find_mount(devnode=node)
    assert m is not None and m.fstype == "fuseblk" and m.mountpoint == str(mp)


def test_umount_of_a_busy_drive_says_so(tmp_path: Path, loops: LoopMounts) -> None:
    img = tmp_path / "drive.img"
    make_ext4(img)
    node = loops.attach(img)
    mp = tmp_path / "busy"
    loops.mount(node, mp)
    with open(mp / "open.bin", "wb") as held, pytest.raises(DriveError) as ei:
        held.write(b"x")
        umount(mp)
    assert "in use" in str(ei.value) and ei.value.hint
    umount(mp)  # closed now: works
    with pytest.raises(DriveError, match="not mounted"):
        umount(mp)


def test_mountinfo_source_sees_a_loop_mount_appear_and_disappear(
    tmp_path: Path, loops: LoopMounts
) -> None:
    img = tmp_path / "drive.img"
    uuid = make_ext4(img, label="COLDVAULT02")
    node = loops.attach(img)
    mp = tmp_path / "vault drive"
    got: queue.Queue[DriveEvent] = queue.Queue()

    def mine(e: DriveEvent) -> None:
        if e.mountpoint == str(mp):
            got.put(e)

    # a wait() that times out does not re-read the table: events come from poll() waking up
    watcher = DriveWatcher(MountinfoDriveSource(), mine)
    watcher.start()
    try:
        loops.mount(node, mp)
        added = got.get(timeout=3)
        assert (added.action, added.devnode, added.fs_uuid, added.fs_label) == (
            "add",
            node,
            uuid,
            "COLDVAULT02",
        )
        assert (added.source, added.devtype, added.is_usb, added.at_start) == (
            "mountinfo",
            "disk",
            False,
            False,
        )
        run(["umount", str(mp)])
        removed = got.get(timeout=3)
        assert (removed.action, removed.fs_uuid, removed.mountpoint) == ("remove", uuid, str(mp))
    finally:
        assert watcher.stop(timeout=10)


def test_mountinfo_source_reports_a_drive_mounted_before_start(
    tmp_path: Path, loops: LoopMounts
) -> None:
    img = tmp_path / "drive.img"
    uuid = make_ext4(img)
    node = loops.attach(img)
    mp = tmp_path / "early"
    loops.mount(node, mp)
    src = MountinfoDriveSource()
    try:
        present = [e for e in src.start() if e.mountpoint == str(mp)]
    finally:
        src.close()
    assert [(e.action, e.fs_uuid, e.at_start, os.path.basename(e.devnode)) for e in present] == [
        ("add", uuid, True, os.path.basename(node))
    ]
