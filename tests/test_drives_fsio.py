"""coldvault.drives.fsio on a temporary directory (the host filesystem): no root needed."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coldvault.drives import fsio
from coldvault.drives.fsio import (
    BatchWriter,
    DriveFull,
    DriveGone,
    DriveIOError,
    DriveReadOnly,
    FileTooLarge,
    ReadBackMismatch,
    SourceChanged,
)
from coldvault.errors import DriveError

ROOT = Path(__file__).resolve().parent.parent


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def temps(d: Path) -> list[str]:
    return sorted(p.name for p in d.rglob(".tmp-*"))


class Unseekable(io.RawIOBase):
    """A pipe-like source: no fileno, no size; records the largest read asked for."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)
        self.max_read = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        self.max_read = max(self.max_read, n)
        return self._b.read(n)


# --- write_file_atomic ----------------------------------------------------------------------


def test_write_file_atomic_writes_verifies_and_leaves_no_temp(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    r = fsio.write_file_atomic(tmp_path, "obj.age", data, sha(data))
    assert (tmp_path / "obj.age").read_bytes() == data
    assert (r.path, r.size, r.sha256, r.parts, r.verified) == (
        tmp_path / "obj.age",
        len(data),
        sha(data),
        (tmp_path / "obj.age",),
        True,
    )
    assert not r.split
    assert temps(tmp_path) == []


def test_streams_in_bounded_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsio, "CHUNK_SIZE", 4096)
    data = os.urandom(4096 * 10 + 7)
    src = Unseekable(data)
    r = fsio.write_file_atomic(tmp_path, "big", src)  # type: ignore[arg-type]
    assert src.max_read == 4096
    assert r.sha256 == sha(data) and (tmp_path / "big").read_bytes() == data


def test_replaces_an_existing_file(tmp_path: Path) -> None:
    fsio.write_file_atomic(tmp_path, "manifest.json", b"v1")
    fsio.write_file_atomic(tmp_path, "manifest.json", io.BytesIO(b"v2"))
    assert (tmp_path / "manifest.json").read_bytes() == b"v2"
    assert sorted(os.listdir(tmp_path)) == ["manifest.json"]


def test_wrong_expected_hash_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "obj").write_bytes(b"old copy")
    with pytest.raises(SourceChanged) as ei:
        fsio.write_file_atomic(tmp_path, "obj", b"new bytes", sha(b"other bytes"))
    assert ei.value.exit_code == 1 and "changed" in ei.value.message
    assert (tmp_path / "obj").read_bytes() == b"old copy"
    assert temps(tmp_path) == []


def test_source_failing_midway_leaves_nothing(tmp_path: Path) -> None:
    class Boom(io.RawIOBase):
        n = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            self.n += 1
            if self.n == 3:
                raise ValueError("source broke")
            return b"x" * 1000

    with pytest.raises(ValueError, match="source broke"):
        fsio.write_file_atomic(tmp_path, "obj", Boom())  # type: ignore[arg-type]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", ".tmp-123", "a\0b"])
def test_rejects_names_that_are_not_plain_file_names(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        fsio.write_file_atomic(tmp_path, bad, b"x")


def test_missing_folder_is_a_drive_error_not_a_traceback(tmp_path: Path) -> None:
    with pytest.raises(DriveError):
        fsio.write_file_atomic(tmp_path / "nope", "x", b"x")


# --- split objects ------------------------------------------------------------------------


def test_object_at_the_limit_is_one_file(tmp_path: Path) -> None:
    r = fsio.write_file_atomic(tmp_path, "o.age", b"0123456789", split_above=10, part_size=4)
    assert r.parts == (tmp_path / "o.age",) and not r.split


def test_object_over_the_limit_is_split_into_parts_cat_joins(tmp_path: Path) -> None:
    data = b"0123456789A"
    r = fsio.write_file_atomic(tmp_path, "o.age", data, sha(data), split_above=10, part_size=4)
    assert r.split and r.sha256 == sha(data) and r.size == 11
    assert [p.name for p in r.parts] == ["o.age.000", "o.age.001", "o.age.002"]
    assert [p.read_bytes() for p in r.parts] == [b"0123", b"4567", b"89A"]
    assert not (tmp_path / "o.age").exists()
    joined = subprocess.run(
        "cat o.age.*", shell=True, cwd=tmp_path, capture_output=True, check=True
    ).stdout
    assert joined == data
    assert fsio.read_back_object(tmp_path, "o.age") == (11, sha(data))
    with fsio.open_object(tmp_path, "o.age") as f:
        assert f.read() == data


def test_unknown_size_stream_is_split_at_part_size(tmp_path: Path) -> None:
    data = os.urandom(10)
    r = fsio.write_file_atomic(
        tmp_path,
        "o.age",
        Unseekable(data),  # type: ignore[arg-type]
        split_above=100,
        part_size=4,
    )
    assert [p.name for p in r.parts] == ["o.age.000", "o.age.001", "o.age.002"]
    assert fsio.read_back_object(tmp_path, "o.age") == (10, sha(data))


def test_rewrite_removes_the_other_form_and_stale_parts(tmp_path: Path) -> None:
    fsio.write_file_atomic(tmp_path, "o", b"x" * 20, split_above=5, part_size=5)  # 4 parts
    assert len(fsio.object_parts(tmp_path, "o")) == 4
    fsio.write_file_atomic(tmp_path, "o", b"y" * 9, split_above=5, part_size=5)  # 2 parts
    assert sorted(os.listdir(tmp_path)) == ["o.000", "o.001"]
    assert fsio.read_back_object(tmp_path, "o") == (9, sha(b"y" * 9))
    fsio.write_file_atomic(tmp_path, "o", b"z")  # whole file again
    assert sorted(os.listdir(tmp_path)) == ["o"]
    fsio.write_file_atomic(tmp_path, "o", b"w" * 8, split_above=5, part_size=5)
    assert sorted(os.listdir(tmp_path)) == ["o.000", "o.001"]


def test_part_names_and_limits(tmp_path: Path) -> None:
    assert fsio.part_name("x.age", 0) == "x.age.000"
    assert fsio.part_name("x.age", 999) == "x.age.999"
    with pytest.raises(ValueError):
        fsio.part_name("x", 1000)
    with pytest.raises(ValueError):
        fsio.write_file_atomic(tmp_path, "o", b"x" * 10, split_above=4, part_size=5)
    assert fsio.object_parts(tmp_path, "missing") == []
    with pytest.raises(FileNotFoundError):
        fsio.read_back_object(tmp_path, "missing")


def test_remove_object_durable_removes_every_part(tmp_path: Path) -> None:
    fsio.write_file_atomic(tmp_path, "o", b"x" * 12, split_above=4, part_size=4)
    (tmp_path / "other").write_bytes(b"keep")
    assert fsio.remove_object_durable(tmp_path, "o") == 3
    assert os.listdir(tmp_path) == ["other"]
    assert fsio.remove_object_durable(tmp_path, "o") == 0


# --- error mapping ------------------------------------------------------------------------


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (errno.ENOSPC, DriveFull),
        (errno.EDQUOT, DriveFull),
        (errno.EFBIG, FileTooLarge),
        (errno.ENODEV, DriveGone),
        (errno.ENXIO, DriveGone),
        (errno.ENOTCONN, DriveGone),
        (errno.ESHUTDOWN, DriveGone),
        (errno.EROFS, DriveReadOnly),
        (errno.EIO, DriveIOError),
        (errno.EACCES, DriveIOError),
        (errno.EINVAL, DriveIOError),
    ],
)
def test_oserror_mapping_on_a_present_drive(tmp_path: Path, code: int, cls: type) -> None:
    e = fsio.drive_error_from_oserror(_err(code), tmp_path, os.stat(tmp_path).st_dev)
    assert type(e) is cls
    assert e.exit_code == 6 and e.message.endswith(".") and e.hint
    assert errno.errorcode[code] in e.hint  # the technical detail is kept for the log
    assert isinstance(FileTooLarge("x"), DriveFull)


def test_eio_on_a_vanished_folder_or_changed_device_means_gone(tmp_path: Path) -> None:
    e = fsio.drive_error_from_oserror(_err(errno.EIO), tmp_path / "gone" / "x")
    assert isinstance(e, DriveGone)
    e = fsio.drive_error_from_oserror(_err(errno.EIO), tmp_path, os.stat(tmp_path).st_dev + 1)
    assert isinstance(e, DriveGone)
    assert "removed" in e.message


_EFBIG_SCRIPT = textwrap.dedent(
    """
    import os, resource, signal, sys
    from coldvault.drives import fsio
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
    d = sys.argv[1]
    try:
        fsio.write_file_atomic(d, "obj", os.urandom(300_000))
    except fsio.DriveError as e:
        print(type(e).__name__, sorted(os.listdir(d)))
    """
)


def test_real_efbig_becomes_file_too_large_and_leaves_nothing(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes the kernel answer EFBIG exactly like FAT32 at 4 GiB.
    out = subprocess.run(
        [sys.executable, "-c", _EFBIG_SCRIPT, str(tmp_path)],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert out.stdout.strip() == "FileTooLarge []", out.stderr


# --- batches ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["syncfs", "fsync", "auto"])
def test_batch_commits_everything_after_one_sync(tmp_path: Path, mode: fsio.SyncMode) -> None:
    files = {f"{i:02x}{'ab' * 10}.age": os.urandom(1000 + i) for i in range(40)}
    for sub in ("aa", "bb"):
        (tmp_path / sub).mkdir()
    with BatchWriter(tmp_path, sync=mode) as bw:
        for i, (name, data) in enumerate(files.items()):
            bw.add(tmp_path / ("aa" if i % 2 else "bb"), name, data, sha(data))
        assert len(bw) == 40
        # nothing visible under a final name before commit
        assert {p.name for p in tmp_path.rglob("*.age")} == set()
        res = bw.commit()
    assert res.failed == []
    assert {r.path.name for r in res.written} == set(files)
    for r in res.written:
        assert r.verified and r.path.read_bytes() == files[r.path.name]
        assert r.sha256 == sha(files[r.path.name])
    assert temps(tmp_path) == []
    assert bw.sync_mode == ("fsync" if mode == "fsync" else "syncfs")  # /tmp is ext4 here


def test_batch_left_without_commit_removes_its_temp_files(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), BatchWriter(tmp_path) as bw:
        bw.add(tmp_path, "a", b"1")
        bw.add(tmp_path, "b", b"2")
        raise RuntimeError("caller failed")
    assert os.listdir(tmp_path) == []


def test_batch_can_commit_what_was_added_before_a_failure(tmp_path: Path) -> None:
    with BatchWriter(tmp_path) as bw:
        bw.add(tmp_path, "a", b"1")
        with pytest.raises(SourceChanged):
            bw.add(tmp_path, "b", b"2", sha(b"not 2"))
        res = bw.commit()
    assert [r.path.name for r in res.written] == ["a"]
    assert os.listdir(tmp_path) == ["a"]


def test_batch_reports_a_read_back_mismatch_and_does_not_commit_it(tmp_path: Path) -> None:
    with BatchWriter(tmp_path) as bw:
        bw.add(tmp_path, "good", b"good bytes")
        before = set(os.listdir(tmp_path))
        bw.add(tmp_path, "bad", b"original bytes")
        (tmp_tmp,) = set(os.listdir(tmp_path)) - before
        # What the device will return differs from what was written (a failing stick).
        with open(tmp_path / tmp_tmp, "r+b") as f:
            f.write(b"X")
        res = bw.commit()
    assert [r.path.name for r in res.written] == ["good"]
    assert [(f.path.name, type(f.error)) for f in res.failed] == [("bad", ReadBackMismatch)]
    assert sorted(os.listdir(tmp_path)) == ["good"]


def test_batch_refuses_a_folder_on_another_filesystem(tmp_path: Path) -> None:
    with BatchWriter(tmp_path) as bw, pytest.raises(ValueError):
        bw.add("/proc", "x", b"1")


def test_batch_splits_big_objects(tmp_path: Path) -> None:
    data = os.urandom(25)
    with BatchWriter(tmp_path, split_above=10, part_size=10) as bw:
        bw.add(tmp_path, "o.age", data)
        (r,) = bw.commit().written
    assert [p.name for p in r.parts] == ["o.age.000", "o.age.001", "o.age.002"]
    assert fsio.read_back_object(tmp_path, "o.age") == (25, sha(data))


_CRASH_SCRIPT = textwrap.dedent(
    """
    import os, sys
    from coldvault.drives import fsio
    bw = fsio.BatchWriter(sys.argv[1])
    for i in range(5):
        bw.add(sys.argv[1], f"obj{i}", os.urandom(5000))
    os._exit(9)  # killed between the writes and the sync
    """
)


def test_crash_before_commit_leaves_only_temp_files_that_are_cleaned(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, str(tmp_path)], cwd=ROOT, timeout=60)
    assert p.returncode == 9
    names = os.listdir(tmp_path)
    assert len(names) == 5 and all(n.startswith(".tmp-") for n in names)
    assert fsio.clean_temp_files(tmp_path) == 5
    assert os.listdir(tmp_path) == []


# --- small helpers ------------------------------------------------------------------------


def test_read_back_sha256(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    assert fsio.read_back_sha256(tmp_path / "f") == (3, sha(b"abc"))


def test_remove_file_durable_and_make_dirs_durable(tmp_path: Path) -> None:
    fsio.make_dirs_durable(tmp_path / "a" / "b" / "c")
    fsio.make_dirs_durable(tmp_path / "a" / "b" / "c")
    assert (tmp_path / "a" / "b" / "c").is_dir()
    (tmp_path / "a" / "f").write_bytes(b"x")
    assert fsio.remove_file_durable(tmp_path / "a" / "f") is True
    assert fsio.remove_file_durable(tmp_path / "a" / "f") is False


def test_free_space(tmp_path: Path) -> None:
    st = os.statvfs(tmp_path)
    assert fsio.free_space(tmp_path) == st.f_bavail * st.f_frsize > 0
    with pytest.raises(DriveError):
        fsio.free_space(tmp_path / "missing")


def test_max_file_size_by_filesystem_type(tmp_path: Path) -> None:
    assert fsio.max_file_size(tmp_path, "vfat") == 2**32 - 1
    assert fsio.max_file_size(tmp_path, "msdos") == fsio.FAT32_MAX_FILE_SIZE
    assert fsio.max_file_size(tmp_path, "ext4") == fsio.NO_LIMIT
    assert fsio.max_file_size(tmp_path, "exfat") == fsio.NO_LIMIT
    assert fsio.max_file_size(tmp_path, "fuse.sshfs") == fsio.FAT32_MAX_FILE_SIZE  # unknown
    assert fsio.max_file_size(tmp_path) == fsio.NO_LIMIT  # the host's ext4, detected


def test_fs_info_parses_mountinfo_with_escapes(tmp_path: Path) -> None:
    d = tmp_path / "my drive"
    d.mkdir()
    dev = os.stat(d).st_dev
    mm = f"{os.major(dev)}:{os.minor(dev)}"
    esc = str(d).replace(" ", "\\040")
    fake = tmp_path / "mountinfo"
    fake.write_text(
        f"22 1 {mm} / / rw - ext4 /dev/root rw\n"
        f"40 22 {mm} / {esc} rw,relatime - vfat /dev/sdb1 rw,fmask=0022\n"
        f"41 22 0:99 / {esc}/other rw - fuse.x x rw\n"
    )
    info = fsio.fs_info(d / "sub" / "..", str(fake))
    assert info == fsio.FsInfo("vfat", str(d), "/dev/sdb1", dev)
    assert fsio.fs_info(tmp_path, str(fake)) == fsio.FsInfo("ext4", "/", "/dev/root", dev)
    assert fsio.fs_info(tmp_path / "missing", str(fake)) is None


def test_clean_temp_files_keeps_other_files(tmp_path: Path) -> None:
    (tmp_path / ".tmp-0123").write_bytes(b"x")
    (tmp_path / "obj.age").write_bytes(b"y")
    assert fsio.clean_temp_files(tmp_path) == 1
    assert os.listdir(tmp_path) == ["obj.age"]


@pytest.mark.parametrize("split", [None, 1000])
def test_batch_copies_file_sources_in_the_kernel_and_checks_them_on_read_back(
    tmp_path: Path, split: int | None
) -> None:
    """A file source with a known hash is copied without being hashed (copy_file_range):
    the read-back against the known hash is what vouches for it, split or not."""
    src_dir = tmp_path / "spool"
    src_dir.mkdir()
    drive = tmp_path / "drive"
    drive.mkdir()
    good = os.urandom(4321)
    damaged = os.urandom(2500)
    (src_dir / "good").write_bytes(good)
    (src_dir / "bad").write_bytes(damaged)
    with BatchWriter(drive, split_above=split, part_size=split or 1) as bw:
        with open(src_dir / "good", "rb") as f:
            bw.add(drive, "good.age", f, sha(good))
        with open(src_dir / "bad", "rb") as f:  # the recorded hash is of other bytes
            bw.add(drive, "bad.age", f, sha(b"what was recorded"))
        res = bw.commit()
    assert [w.path.name for w in res.written] == ["good.age"]
    assert res.written[0].sha256 == sha(good) and res.written[0].size == len(good)
    (failed,) = res.failed
    assert failed.path.name == "bad.age" and isinstance(failed.error, fsio.ReadBackMismatch)
    assert "recorded hash" in failed.error.message
    parts = fsio.object_parts(drive, "good.age")
    assert b"".join(p.read_bytes() for p in parts) == good
    assert len(parts) == (1 if split is None else 5)
    assert not fsio.object_parts(drive, "bad.age") and temps(drive) == []


def test_big_staged_files_start_their_writeback_small_ones_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a syncfs drive, a file of WRITEBACK_MIN_SIZE or more starts its writeback once
    copied (the drive writes while the next ones are copied); small ones wait for syncfs."""
    started: list[int] = []
    monkeypatch.setattr(fsio, "start_writeback", lambda fd: started.append(os.fstat(fd).st_size))
    root = tmp_path / "drive"
    (root / "objects").mkdir(parents=True)
    big = os.urandom(fsio.WRITEBACK_MIN_SIZE + 5)
    with fsio.BatchWriter(root, sync="syncfs", verify=True) as batch:
        batch.add(root / "objects", "big.age", io.BytesIO(big), hashlib.sha256(big).hexdigest())
        batch.add(root / "objects", "small.age", io.BytesIO(b"x" * 100))
        result = batch.commit()
    assert started == [len(big)]
    assert (root / "objects" / "big.age").read_bytes() == big and len(result.written) == 2


def _read_back_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name == "coldvault-read-back"]


def test_read_back_ahead_checks_each_file_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch's read-back runs on a reader thread, chunk by chunk, across files and parts:
    each file is still compared with its own hash, a damaged one among many is the only one
    refused, and no reader thread is left once the batch is committed."""
    monkeypatch.setattr(fsio, "CHUNK_SIZE", 1000)
    monkeypatch.setattr(fsio._ReadBackAhead, "DEPTH", 2)  # the reader waits for the hasher
    datas = {f"o{i}": os.urandom(n) for i, n in enumerate([0, 999, 1000, 4321, 25_000, 7])}
    with BatchWriter(tmp_path, split_above=10_000, part_size=10_000) as bw:
        for name, data in datas.items():
            before = set(os.listdir(tmp_path))
            bw.add(tmp_path, name, data)
            if name == "o3":  # the drive returns something else for this one
                (tmp,) = set(os.listdir(tmp_path)) - before
                with open(tmp_path / tmp, "r+b") as f:
                    f.seek(2500)
                    f.write(b"X")
        res = bw.commit()
    assert [f.path.name for f in res.failed] == ["o3"]
    assert [r.path.name for r in res.written] == [n for n in datas if n != "o3"]
    for name, data in datas.items():
        if name != "o3":
            assert fsio.read_back_object(tmp_path, name) == (len(data), sha(data))
    assert _read_back_threads() == []


def test_a_file_gone_during_read_back_fails_the_batch_and_stops_the_reader(
    tmp_path: Path,
) -> None:
    with BatchWriter(tmp_path) as bw:
        bw.add(tmp_path, "a", os.urandom(3000))
        before = set(os.listdir(tmp_path))
        bw.add(tmp_path, "b", os.urandom(3000))
        bw.add(tmp_path, "c", os.urandom(3000))
        (tmp_b,) = sorted(set(os.listdir(tmp_path)) - before)[:1]
        os.unlink(tmp_path / tmp_b)
        with pytest.raises(DriveError):
            bw.commit()
    assert _read_back_threads() == []
    assert temps(tmp_path) == []  # nothing half-committed is left either
