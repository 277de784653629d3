"""fsio on real filesystems (root): ext4 on a loop device, exFAT through exfat-fuse on a loop
device. Write, sync, unmount, remount, read back; a full drive; a yanked drive; a bit flipped on
the device behind the page cache."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coldvault.drives import fsio, layout
from coldvault.drives.fsio import BatchWriter, DriveFull, DriveGone, ReadBackMismatch
from tests.fs_fixtures import LoopDrive, attach, loop_drive, run

pytestmark = pytest.mark.root

FS = ["ext4", "exfat"]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.rglob(".tmp-*")]


@pytest.fixture(params=FS)
def drive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LoopDrive]:
    with loop_drive(tmp_path, request.param) as d:
        yield d


@pytest.fixture(params=FS)
def small_drive(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LoopDrive]:
    with loop_drive(tmp_path, request.param, size_mib=4) as d:
        yield d


def test_written_objects_survive_unmount_and_remount(drive: LoopDrive) -> None:
    root = drive.mountpoint
    m = layout.Marker("v" * 26, "d" * 26, "Clé 1", "ed25519:xyz", datetime.now(UTC))
    vd = layout.init_drive(root, m)
    single = os.urandom(300_000)
    fsio.write_file_atomic(vd / "catalog", "catalog-20240501-120000.age", single, sha(single))
    objs = {f"{i:02x}" + "0" * 30: os.urandom(20_000 + i) for i in range(0, 256, 37)}
    big_id, big = "ff" + "1" * 30, os.urandom(50_000)
    with BatchWriter(root, split_above=20_000, part_size=16_384) as bw:
        assert bw.sync_mode == ("syncfs" if drive.fs == "ext4" else "fsync")
        for oid, data in [*objs.items(), (big_id, big)]:
            fsio.make_dirs_durable(layout.object_dir(root, oid))
            bw.add(layout.object_dir(root, oid), layout.object_file_name(oid), data, sha(data))
        res = bw.commit()
    assert res.failed == [] and len(res.written) == len(objs) + 1
    drive.remount()
    assert layout.check_marker(root, "v" * 26) == m
    for oid, data in [*objs.items(), (big_id, big)]:
        assert fsio.read_back_object(layout.object_dir(root, oid), oid + ".age") == (
            len(data),
            sha(data),
        )
    assert len(fsio.object_parts(layout.object_dir(root, big_id), big_id + ".age")) == 4
    assert fsio.read_back_sha256(vd / "catalog" / "catalog-20240501-120000.age")[1] == sha(single)
    assert leftovers(root) == []


def test_filesystem_facts(drive: LoopDrive) -> None:
    info = fsio.fs_info(drive.mountpoint)
    assert info is not None and info.mountpoint == str(drive.mountpoint)
    assert info.fs_type == {"ext4": "ext4", "exfat": "fuseblk"}[drive.fs]
    assert info.source == drive.loop
    # the block device whose cache a read-back must drop: only for the FUSE block filesystem
    assert fsio.cache_device(drive.mountpoint) == (drive.loop if drive.fs == "exfat" else None)
    # exfat-fuse shows up as "fuseblk": the boot sector tells it is exFAT (no 4 GiB limit)
    assert fsio.max_file_size(drive.mountpoint) == fsio.NO_LIMIT
    assert 0 < fsio.free_space(drive.mountpoint) < 32 << 20


def test_full_drive_raises_drive_full_and_leaves_nothing_half_visible(
    small_drive: LoopDrive,
) -> None:
    root = small_drive.mountpoint
    fsio.write_file_atomic(root, "keep", b"previous copy")
    with pytest.raises(DriveFull) as ei:
        fsio.write_file_atomic(root, "obj.age", io.BytesIO(os.urandom(8 << 20)))
    assert ei.value.message == "The drive is full." and ei.value.exit_code == 6
    assert sorted(os.listdir(root)) == sorted(
        ["keep"] + (["lost+found"] if small_drive.fs == "ext4" else [])
    )
    # a batch fills the drive: what was added before the failure is still committed
    added: list[str] = []
    with BatchWriter(root) as bw:
        with pytest.raises(DriveFull):
            for i in range(100):
                bw.add(root, f"o{i:02d}", os.urandom(400_000))
                added.append(f"o{i:02d}")
        res = bw.commit()
    assert 0 < len(added) < 100 and [r.path.name for r in res.written] == added
    small_drive.remount()
    assert leftovers(root) == []
    for r in res.written:
        assert fsio.read_back_sha256(r.path)[1] == r.sha256
    assert (root / "keep").read_bytes() == b"previous copy"


class _Yank(io.RawIOBase):
    """A source that yanks the drive after ``after`` chunks have been read."""

    def __init__(self, yank: object, after: int) -> None:
        self._yank, self._after, self._n = yank, after, 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self._n += 1
        if self._n == self._after:
            self._yank()  # type: ignore[operator]
        return os.urandom(64 * 1024) if self._n < 200 else b""


def test_killed_fuse_process_is_drive_gone_and_nothing_is_returned(tmp_path: Path) -> None:
    with loop_drive(tmp_path, "exfat") as d:
        root = d.mountpoint
        with BatchWriter(root) as bw:
            bw.add(root, "first", os.urandom(100_000))
            with pytest.raises(DriveGone) as ei:
                bw.add(root, "second", _Yank(d.kill_fuse, 20))  # type: ignore[arg-type]
            assert "removed or disconnected" in ei.value.message
            with pytest.raises(DriveGone):
                bw.commit()  # nothing can be recorded
        with pytest.raises(DriveGone):
            fsio.write_file_atomic(root, "third", b"x")
        # reading a dead drive is "gone", never a raw OSError nor "no such object"
        with pytest.raises(DriveGone):
            fsio.read_back_object(root, "first")
        with pytest.raises(DriveGone):
            fsio.make_dirs_durable(root / "objects" / "ab")
    # after a real unplug the drive comes back: nothing half-written under a final name
    with attach(d.image, d.mountpoint, "exfat") as d2:
        names = os.listdir(d2.mountpoint)
        assert "second" not in names and "third" not in names


def test_lazy_unmount_mid_write_is_drive_gone(tmp_path: Path) -> None:
    with loop_drive(tmp_path, "ext4") as d:
        root = d.mountpoint

        def yank() -> None:
            run("umount", "-l", str(root))

        with pytest.raises(DriveGone):
            fsio.write_file_atomic(root, "obj", _Yank(yank, 10))  # type: ignore[arg-type]
        assert os.listdir(root) == []  # the path now shows the folder under the mount
        # and a batch whose drive disappears between add() and commit() returns nothing
        d.mount()
        with BatchWriter(root) as bw:
            bw.add(root, "a", os.urandom(10_000))
            yank()
            with pytest.raises(DriveGone):
                bw.commit()


@pytest.mark.parametrize("fs", FS)
def test_bit_flipped_on_the_device_is_seen_by_read_back(tmp_path: Path, fs: str) -> None:
    with loop_drive(tmp_path, fs) as d:
        data = os.urandom(256 * 1024)
        r = fsio.write_file_atomic(d.mountpoint, "obj.age", data, sha(data))
        off = d.find_on_device(data[:4096])
        d.flip_byte(off + 1000, through="device")
        # A plain read is answered by the page cache: the damage is invisible...
        assert sha(r.path.read_bytes()) == sha(data)
        # ...the read-back drops the cached pages and reads the device.
        size, got = fsio.read_back_sha256(r.path)
        assert size == len(data) and got != sha(data)
        flipped = bytearray(data)
        flipped[1000] ^= 1
        assert got == sha(bytes(flipped))


def test_exfat_fuse_needs_the_block_device_cache_dropped_too(tmp_path: Path) -> None:
    """The FUSE daemon reads through the block device's cache: damage below it (on the image,
    i.e. the medium) is only seen once that cache is dropped too."""
    with loop_drive(tmp_path, "exfat") as d:
        data = os.urandom(256 * 1024)
        r = fsio.write_file_atomic(d.mountpoint, "obj.age", data, sha(data), device=d.loop)
        d.flip_byte(d.find_on_device(data[:4096]) + 5, through="image")
        assert fsio.read_back_sha256(r.path)[1] == sha(data)  # stale: the bdev cache answers
        assert fsio.read_back_sha256(r.path, device=d.loop)[1] != sha(data)
        # BatchWriter finds the device of a fuseblk mount itself and drops its cache: damage
        # on the medium between the write and the commit is caught, and not committed.
        good, bad = os.urandom(50_000), os.urandom(50_000)
        with BatchWriter(d.mountpoint) as bw:
            assert (bw.sync_mode, bw.device) == ("fsync", d.loop)
            bw.add(d.mountpoint, "good", good)
            bw.add(d.mountpoint, "bad", bad)  # fsynced: on the image now
            d.flip_byte(d.find_on_device(bad[:4096]) + 7, through="image")
            res = bw.commit()
        assert [r.path.name for r in res.written] == ["good"]
        assert [(f.path.name, type(f.error)) for f in res.failed] == [("bad", ReadBackMismatch)]
        assert not (d.mountpoint / "bad").exists()
