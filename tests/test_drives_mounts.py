"""Parsing /proc/self/mountinfo (escapes, optional fields, fuseblk) and finding mounts, no root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coldvault.drives.mounts import (
    MountInfo,
    find_mount,
    is_mountpoint,
    iter_drive_mounts,
    mount_for_path,
    parse_line,
    parse_mountinfo,
    read_mountinfo,
    umount,
    unescape,
)
from coldvault.errors import DriveError

# A table as the kernel writes it: a stick automounted by a desktop at a path with a space, a
# tab, a backslash and an "ü" (raw UTF-8 bytes, not escaped), an exfat-fuse mount, a bind mount.
TABLE = (
    b"22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
    b"23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw\n"
    b"60 22 8:17 / /media/doc/Praxis\\040M\xc3\xbcller\\011x\\134y rw,nosuid,nodev,relatime "
    b"shared:301 master:7 - vfat /dev/sdb1 rw,fmask=0022,dmask=0022,utf8,flush\n"
    b"61 22 7:0 / /mnt/ex\\040fat rw,nosuid,nodev,relatime - fuseblk /dev/loop0 "
    b"rw,user_id=0,group_id=0,allow_other,blksize=4096\n"
    b"62 22 8:17 /sub /srv/bind rw,relatime - vfat /dev/sdb1 rw\n"
    b"63 22 0:40 / /mnt/fusefat rw - fuse.fusefat /tmp/fat.img rw\n"
)


def test_unescape_handles_octal_escapes_and_raw_utf8() -> None:
    assert unescape(b"a\\040b\\011c\\012d\\134e") == "a b\tc\nd\\e"
    assert unescape("Müller".encode()) == "Müller"
    assert unescape(b"no\\escape\\99") == "no\\escape\\99"  # not 3 octal digits: left alone


def test_parse_full_table() -> None:
    mounts = parse_mountinfo(TABLE)
    assert [m.mount_id for m in mounts] == [22, 23, 60, 61, 62, 63]
    stick = mounts[2]
    assert stick == MountInfo(
        mount_id=60,
        parent_id=22,
        major=8,
        minor=17,
        root="/",
        mountpoint="/media/doc/Praxis Müller\tx\\y",
        options="rw,nosuid,nodev,relatime",
        optional_fields=("shared:301", "master:7"),
        fstype="vfat",
        source="/dev/sdb1",
        super_options="rw,fmask=0022,dmask=0022,utf8,flush",
    )
    assert stick.major_minor == "8:17" and not stick.read_only
    fuse = mounts[3]
    assert (fuse.fstype, fuse.mountpoint, fuse.major_minor, fuse.optional_fields) == (
        "fuseblk",
        "/mnt/ex fat",
        "7:0",
        (),
    )
    assert mounts[4].root == "/sub"


def test_drive_mounts_are_block_backed_and_not_virtual() -> None:
    picked = [m.mountpoint for m in iter_drive_mounts(parse_mountinfo(TABLE))]
    assert picked == ["/", "/media/doc/Praxis Müller\tx\\y", "/mnt/ex fat", "/srv/bind"]


def test_malformed_lines_are_skipped(caplog: pytest.LogCaptureFixture) -> None:
    mounts = parse_mountinfo(b"garbage line\n\n" + TABLE.splitlines(keepends=True)[0])
    assert [m.mount_id for m in mounts] == [22]
    assert "malformed" in caplog.text
    with pytest.raises(ValueError):
        parse_line(b"1 2 3 - ext4")


def test_the_real_table_parses_and_root_is_there() -> None:
    mounts = read_mountinfo()
    assert any(m.mountpoint == "/" for m in mounts)
    assert all(m.mount_id > 0 for m in mounts)


def test_mount_for_path_picks_the_deepest_mount(tmp_path: Path) -> None:
    assert mount_for_path("/").mountpoint == "/"
    assert mount_for_path("/proc/self/status").fstype == "proc"
    table = tmp_path / "mi"
    table.write_bytes(TABLE)
    m = mount_for_path("/media/doc/Praxis Müller\tx\\y/coldvault", mountinfo_path=str(table))
    assert m.mount_id == 60
    assert mount_for_path("/media/doc/other", mountinfo_path=str(table)).mount_id == 22
    assert mount_for_path("/mnt/ex fatter", mountinfo_path=str(table)).mount_id == 22


def test_mount_over_mount_the_last_one_wins(tmp_path: Path) -> None:
    table = tmp_path / "mi"
    table.write_bytes(
        TABLE
        + b"70 60 7:1 / /media/doc/Praxis\\040M\xc3\xbcller\\011x\\134y rw - ext4 /dev/loop1 rw\n"
    )
    assert (
        mount_for_path("/media/doc/Praxis Müller\tx\\y", mountinfo_path=str(table)).mount_id == 70
    )
    assert is_mountpoint("/media/doc/Praxis Müller\tx\\y", mountinfo_path=str(table))
    assert not is_mountpoint("/media/doc", mountinfo_path=str(table))


def test_find_mount_matches_device_numbers_not_source_strings(tmp_path: Path) -> None:
    node = "/dev/loop0"
    if not os.path.exists(node):
        pytest.skip("needs a /dev/loop0 node (loop driver)")
    st = os.stat(node)
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    table = tmp_path / "mi"
    # the source string says something else entirely: only major:minor counts (fuseblk)
    table.write_bytes(
        TABLE.replace(b" 7:0 ", f" {major}:{minor} ".encode()).replace(b"/dev/loop0", b"exfat")
    )
    m = find_mount(devnode=node, mountinfo_path=str(table))
    assert m is not None and m.mountpoint == "/mnt/ex fat"
    assert find_mount(devnode=str(tmp_path), mountinfo_path=str(table)) is None  # not a device
    assert find_mount(devnode="/dev/does-not-exist", mountinfo_path=str(table)) is None


def test_find_mount_by_uuid_follows_by_uuid_links(tmp_path: Path) -> None:
    node = "/dev/loop0"
    if not os.path.exists(node):
        pytest.skip("needs a /dev/loop0 node (loop driver)")
    st = os.stat(node)
    table = tmp_path / "mi"
    table.write_bytes(
        TABLE.replace(b" 7:0 ", f" {os.major(st.st_rdev)}:{os.minor(st.st_rdev)} ".encode())
    )
    by_uuid = tmp_path / "by-uuid"
    by_uuid.mkdir()
    (by_uuid / "0F5C-2A52").symlink_to(node)
    m = find_mount(fs_uuid="0F5C-2A52", mountinfo_path=str(table), by_uuid_dir=str(by_uuid))
    assert m is not None and m.fstype == "fuseblk"
    with pytest.raises(ValueError):
        find_mount()


def test_umount_refuses_clearly_when_not_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)  # the service user, whoever runs the tests
    with pytest.raises(DriveError) as ei:
        umount(tmp_path)
    assert "root" in str(ei.value) and ei.value.hint
