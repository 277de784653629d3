"""fsio and layout against real kernel vfat (FAT32), inside User-Mode Linux."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from coldvault.drives import fsio, layout
from coldvault.drives.fsio import BatchWriter, DriveFull, FileTooLarge

MP = Path(os.environ["COLDVAULT_FAT_MOUNT"])
DEV = os.environ["COLDVAULT_FAT_DEVICE"]
OPTS = os.environ["COLDVAULT_FAT_OPTS"]


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def remount() -> None:
    subprocess.run(["umount", str(MP)], check=True)
    subprocess.run(["mount", "-t", "vfat", "-o", OPTS, DEV, str(MP)], check=True)


@pytest.fixture
def d() -> Iterator[Path]:
    """A fresh folder on the vfat drive, emptied afterwards (the image is shared)."""
    p = MP / "t"
    p.mkdir()
    yield p
    shutil.rmtree(p)


def test_vfat_is_detected_and_has_the_fat32_limit() -> None:
    info = fsio.fs_info(MP)
    assert info is not None and info.fs_type == "vfat" and info.source == DEV
    assert fsio.max_file_size(MP) == 2**32 - 1 == fsio.FAT32_MAX_FILE_SIZE


def test_no_byte_at_or_beyond_4gib_minus_1(d: Path) -> None:
    # The last byte a FAT32 file can hold is at offset 2**32 - 2 (size 2**32 - 1): writing at
    # 2**32 - 1 is refused at once with EFBIG (no data is written, so this is fast).
    fd = os.open(d / "big", os.O_WRONLY | os.O_CREAT)
    try:
        for off in (2**32 - 1, 2**32):
            with pytest.raises(OSError) as ei:
                os.pwrite(fd, b"x", off)
            assert ei.value.errno == errno.EFBIG
        with pytest.raises(OSError) as ei:
            os.ftruncate(fd, 2**32)
        assert ei.value.errno == errno.EFBIG
    finally:
        os.close(fd)
    assert isinstance(fsio.drive_error_from_oserror(ei.value, d), FileTooLarge)


def test_split_object_parts_are_joined_by_cat(d: Path) -> None:
    data = os.urandom(100_000)
    r = fsio.write_file_atomic(d, "ab01.age", data, sha(data), split_above=40_000, part_size=32_768)
    assert [p.name for p in r.parts] == [
        "ab01.age.000",
        "ab01.age.001",
        "ab01.age.002",
        "ab01.age.003",
    ]
    remount()
    joined = subprocess.run("cat ab01.age.*", shell=True, cwd=d, capture_output=True, check=True)
    assert joined.stdout == data
    assert fsio.read_back_object(d, "ab01.age") == (len(data), sha(data))


def test_layout_names_are_kept_exactly(d: Path) -> None:
    m = layout.Marker("v" * 26, "d" * 26, "Clé du mardi", "ed25519:abc", datetime.now(UTC))
    vd = layout.init_drive(d, m)
    ids = ["0f" + "a" * 62, "mzxw6ytboi2dcmrtgq2tmnzy", "ab" * 16]
    for oid in ids:
        od = layout.object_dir(d, oid)
        fsio.make_dirs_durable(od)
        fsio.write_file_atomic(od, layout.object_file_name(oid), oid.encode())
    remount()
    assert sorted(os.listdir(vd)) == sorted(
        ["LISEZMOI.txt", "README.txt", "vault.json", *layout.SUBDIRS]
    )
    for oid in ids:
        assert os.listdir(layout.object_dir(d, oid)) == [oid + ".age"]
        assert layout.object_path(d, oid).read_bytes() == oid.encode()
    assert layout.check_marker(d, "v" * 26) == m


def test_what_the_name_rules_forbid_is_what_vfat_mangles_or_refuses(d: Path) -> None:
    for ch in ':*?"<>|\\':
        with pytest.raises(OSError) as ei:
            open(d / f"a{ch}b", "wb").close()
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(layout.BadName):
            layout.check_name(f"a{ch}b")
    open(d / "trail.", "wb").close()  # accepted, but silently renamed
    assert os.listdir(d) == ["trail"]
    with pytest.raises(layout.BadName):
        layout.check_name("trail.")
    (d / "Obj").write_bytes(b"1")
    (d / "obj").write_bytes(b"2")  # the same file: FAT is case-insensitive
    assert sorted(os.listdir(d)) == ["Obj", "trail"] and (d / "Obj").read_bytes() == b"2"
    with pytest.raises(layout.BadName):
        layout.check_name("Obj")


def test_replace_and_fsync_survive_a_remount(d: Path) -> None:
    for v in (b"manifest v1", b"manifest v2"):
        fsio.write_file_atomic(d, "manifest-000001.json", v)
    with BatchWriter(MP) as bw:
        assert bw.sync_mode == "syncfs" and bw.device is None
        for i in range(20):
            bw.add(d, f"{i:04x}.age", bytes([i]) * 5000)
        res = bw.commit()
    assert len(res.written) == 20 and res.failed == []
    remount()
    assert (d / "manifest-000001.json").read_bytes() == b"manifest v2"
    assert sorted(os.listdir(d)) == sorted(
        ["manifest-000001.json"] + [f"{i:04x}.age" for i in range(20)]
    )
    for r in res.written:
        assert fsio.read_back_sha256(r.path) == (r.size, r.sha256)


def test_full_vfat_drive(d: Path) -> None:
    fsio.write_file_atomic(d, "keep", b"keep")
    with pytest.raises(DriveFull):
        fsio.write_file_atomic(d, "huge", os.urandom(fsio.free_space(MP) + (1 << 20)))
    assert os.listdir(d) == ["keep"]
    remount()
    assert os.listdir(d) == ["keep"] and fsio.free_space(MP) > 0
