"""SourceWatcher with real watchdog (inotify), real writer threads and processes.

Each scenario asserts that every final file is reported exactly once, with its final content
as read (through open_beneath, as ingest reads it) from inside on_ready.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from watchdog.observers import Observer

from coldvault.config import SourceConfig
from coldvault.sources.settle import Fingerprint, open_beneath
from coldvault.sources.watch import ReadyFile, SourceWatcher

pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

QUIET = 0.3
DEADLINE = 15.0
SCAN_RX = re.compile(r"^(?P<patient>[0-9]+)_(?P<date>[0-9]{8})")


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Like watchdog's own conftest: a test that leaves threads running fails."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra:
            return
        time.sleep(0.05)
    pytest.fail(f"threads left running: {extra}")


class Collector:
    """on_ready: reads the file like ingest would and records (ReadyFile, content)."""

    def __init__(self) -> None:
        self.items: list[tuple[ReadyFile, bytes]] = []
        self.cond = threading.Condition()

    def __call__(self, rf: ReadyFile) -> None:
        fd = open_beneath(rf.root, rf.relpath)
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
            assert Fingerprint.from_stat(os.fstat(fd)) == rf.fingerprint
        finally:
            os.close(fd)
        with self.cond:
            self.items.append((rf, b"".join(chunks)))
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[], bool], timeout: float = DEADLINE) -> bool:
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def rels(self) -> list[str]:
        with self.cond:
            return [rf.relpath for rf, _ in self.items]

    def content(self) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        with self.cond:
            for rf, data in self.items:
                out.setdefault(rf.relpath, []).append(data)
        return out

    def has(self, *rels: str) -> bool:
        return set(rels) <= set(self.rels())


@contextmanager
def watching(root: Path, **kw: Any) -> Iterator[tuple[SourceWatcher, Collector]]:
    src = kw.pop("source", None) or SourceConfig(name="scanner", path=root, pattern=SCAN_RX)
    col = Collector()
    w = SourceWatcher(
        [src],
        col,
        quiet_seconds=QUIET,
        rescan_interval=kw.pop("rescan_interval", 60.0),
        root_check_interval=kw.pop("root_check_interval", 0.2),
        **kw,
    )
    w.start()
    try:
        yield w, col
    finally:
        w.stop()


def run(root: Path, writer: Callable[[Path], None], expect: dict[str, bytes], **kw: Any) -> None:
    """Start watching, run the writer in a thread, wait for the expected files, then make sure
    nothing more arrives; each file exactly once with its final content."""
    with watching(root, **kw) as (_, col):
        th = threading.Thread(target=writer, args=(root,))
        th.start()
        th.join(DEADLINE)
        assert col.wait_for(lambda: col.has(*expect)), f"got only {col.rels()}"
        time.sleep(4 * QUIET)  # nothing late, nothing twice
        got = col.content()
    assert got == {rel: [data] for rel, data in expect.items()}


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "inbox"
    r.mkdir()
    return r


def test_slow_chunked_writer(root: Path):
    def w(d: Path) -> None:
        with open(d / "123_20240101.pdf", "wb") as f:
            for _ in range(5):
                f.write(b"x" * 1000)
                f.flush()
                time.sleep(QUIET * 0.8)

    run(root, w, {"123_20240101.pdf": b"x" * 5000})


def test_presized_file_of_zeros_filled_later_like_smb(root: Path):
    """Windows copy engine over SMB: create, set the final size (zeros), close, reopen, fill
    slowly (slower than the quiet period: only the open-writer check holds it back), close."""

    def w(d: Path) -> None:
        p = d / "124_20240102.pdf"
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.ftruncate(fd, 4000)
        os.close(fd)
        fd = os.open(p, os.O_WRONLY)
        for i in range(4):
            time.sleep(QUIET * 1.5)
            os.pwrite(fd, b"y" * 1000, i * 1000)
        os.close(fd)
        os.utime(p, (1_700_000_000, 1_700_000_000))  # SMB sets the times last

    run(root, w, {"124_20240102.pdf": b"y" * 4000})


def test_temp_name_then_rename(root: Path):
    def w(d: Path) -> None:
        (d / ".125_20240103.pdf.tmp").write_bytes(b"z" * 5000)
        (d / "upload.part").write_bytes(b"never")
        os.rename(d / ".125_20240103.pdf.tmp", d / "125_20240103.pdf")

    run(root, w, {"125_20240103.pdf": b"z" * 5000})


def test_tree_copy_per_patient_folders(root: Path, tmp_path: Path):
    src = tmp_path / "src"
    expect = {}
    for sub in ("a", "a/b", "a/b/c"):
        (src / sub).mkdir(parents=True)
        for i in range(3):
            (src / sub / f"f{i}.dcm").write_bytes(sub.encode() * 100 + bytes([i]))
            expect[f"p42/{sub}/f{i}.dcm"] = sub.encode() * 100 + bytes([i])
    cfg = SourceConfig(name="exports", path=root, per_patient_folders=True, kind="export")
    with watching(root, source=cfg) as (_, col):
        shutil.copytree(src, root / "p42")
        assert col.wait_for(lambda: col.has(*expect)), col.rels()
        time.sleep(4 * QUIET)
        assert col.content() == {k: [v] for k, v in expect.items()}
        assert {(rf.patient, rf.kind) for rf, _ in col.items} == {("p42", "export")}


def test_tree_moved_in(root: Path, tmp_path: Path):
    staging = tmp_path / "staging" / "p7"
    staging.mkdir(parents=True)
    (staging / "x.pdf").write_bytes(b"moved")
    (staging / "deep").mkdir()
    (staging / "deep" / "y.pdf").write_bytes(b"deeper")
    run(
        root,
        lambda d: os.rename(staging, d / "p7"),
        {"p7/x.pdf": b"moved", "p7/deep/y.pdf": b"deeper"},
    )


def test_aborted_upload_is_finished_once_quiet_and_a_retry_is_a_new_version(root: Path):
    """An FTP upload cut off halfway closes normally: nothing distinguishes it from a finished
    file, so once quiet it is archived as it is. The sender's retry is a new version."""
    full = bytes(range(256)) * 400
    with watching(root) as (_, col):
        with open(root / "126_20240104.pdf", "wb") as f:
            f.write(full[:40000])  # connection lost here
        assert col.wait_for(lambda: col.has("126_20240104.pdf"))
        with open(root / "126_20240104.pdf", "wb") as f:  # the retry, complete this time
            f.write(full)
        assert col.wait_for(lambda: len(col.items) == 2)
        time.sleep(4 * QUIET)
        (first, d1), (second, d2) = col.items
    assert d1 == full[:40000] and d2 == full
    assert first.fingerprint != second.fingerprint and len(col.items) == 2


def test_file_held_open_by_a_writer_is_not_taken(root: Path):
    """All data written, then the writer (another process) keeps the file open, idle: size and
    mtime are stable for many quiet periods, only the read-lease probe sees the writer."""
    p = root / "127_20240105.pdf"
    code = (
        "import sys\n"
        f"f = open({str(p)!r}, 'wb'); f.write(b'a' * 3000); f.flush()\n"
        "sys.stdout.write('written\\n'); sys.stdout.flush()\n"
        "sys.stdin.readline()\n"
        "f.write(b'b' * 1000); f.close()\n"
    )
    with watching(root) as (_, col):
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"written\n"
            time.sleep(6 * QUIET)
            assert col.rels() == []  # still open: not finished
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            assert proc.wait(timeout=10) == 0
        finally:
            proc.kill()
            proc.wait()
        assert col.wait_for(lambda: col.has("127_20240105.pdf"))
        time.sleep(4 * QUIET)
        assert col.content() == {"127_20240105.pdf": [b"a" * 3000 + b"b" * 1000]}


def test_root_deleted_and_recreated(root: Path):
    (root / "128_20240106.pdf").write_bytes(b"before")
    with watching(root) as (_, col):
        assert col.wait_for(lambda: col.has("128_20240106.pdf"))
        shutil.rmtree(root)
        time.sleep(0.5)
        root.mkdir()
        time.sleep(0.5)  # created after the re-watch: an event, or the rescan of the new root
        (root / "129_20240107.pdf").write_bytes(b"after")
        (root / "sub").mkdir()
        (root / "sub" / "130_x.pdf").write_bytes(b"in a new sub-folder")
        assert col.wait_for(lambda: col.has("129_20240107.pdf", "sub/130_x.pdf"))
        time.sleep(4 * QUIET)
        assert col.content() == {
            "128_20240106.pdf": [b"before"],
            "129_20240107.pdf": [b"after"],
            "sub/130_x.pdf": [b"in a new sub-folder"],
        }


def test_root_moved_away_and_replaced(root: Path, tmp_path: Path):
    old = tmp_path / "inbox.old"
    with watching(root) as (_, col):
        time.sleep(0.3)
        root.rename(old)
        (old / "131_20240108.pdf").write_bytes(b"outside the source now")
        root.mkdir()
        time.sleep(0.5)
        (root / "132_20240109.pdf").write_bytes(b"in the new folder")
        assert col.wait_for(lambda: col.has("132_20240109.pdf"))
        time.sleep(4 * QUIET)
        assert col.content() == {"132_20240109.pdf": [b"in the new folder"]}


def test_planted_symlinks_and_fifo_are_never_followed(root: Path, tmp_path: Path):
    outside = tmp_path / "etc"
    outside.mkdir()
    (outside / "shadow").write_bytes(b"root:secret")
    (outside / "133_20240110.pdf").write_bytes(b"outside")

    def w(d: Path) -> None:
        (d / "133_20240110.pdf").symlink_to(outside / "shadow")
        (d / "evil").symlink_to(outside)
        os.mkfifo(d / "134_20240111.pdf")
        time.sleep(QUIET)
        (d / "135_20240112.pdf").write_bytes(b"real")

    run(root, w, {"135_20240112.pdf": b"real"})


def test_modified_after_report_is_reported_again(root: Path):
    with watching(root) as (_, col):
        (root / "136_20240113.pdf").write_bytes(b"v1")
        assert col.wait_for(lambda: len(col.items) == 1)
        with open(root / "136_20240113.pdf", "ab") as f:
            f.write(b" + addendum")
        assert col.wait_for(lambda: len(col.items) == 2)
        time.sleep(4 * QUIET)
        assert col.content() == {"136_20240113.pdf": [b"v1", b"v1 + addendum"]}
        assert col.items[0][0].fingerprint != col.items[1][0].fingerprint


def test_startup_scan_with_is_archived(root: Path):
    (root / "137_20240114.pdf").write_bytes(b"done")
    (root / "138_20240115.pdf").write_bytes(b"todo")
    done = Fingerprint.from_stat(os.lstat(root / "137_20240114.pdf"))

    def is_archived(source: str, rel: str, fp: Fingerprint) -> bool:
        return (source, rel, fp) == ("scanner", "137_20240114.pdf", done)

    run(root, lambda d: None, {"138_20240115.pdf": b"todo"}, is_archived=is_archived)


class _NoWatchObserver(Observer):  # type: ignore[misc,valid-type]
    """Behaves like a full inotify watch table: every watch fails with ENOSPC."""

    def schedule(self, *a: Any, **kw: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_watch_failure_is_logged_and_rescans_find_files(
    root: Path, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.WARNING, logger="coldvault"):
        run(
            root,
            lambda d: (d / "139_20240116.pdf").write_bytes(b"found by rescan"),
            {"139_20240116.pdf": b"found by rescan"},
            observer_factory=_NoWatchObserver,
            rescan_interval=0.5,
        )
    warnings = [r for r in caplog.records if "cannot be watched" in r.getMessage()]
    assert len(warnings) == 1  # once, not at every retry


def test_inotify_overflow_triggers_an_early_rescan(root: Path):
    with watching(root, observer_factory=_NoWatchObserver, rescan_interval=600) as (_, col):
        time.sleep(0.3)
        (root / "140_20240117.pdf").write_bytes(b"lost event")
        time.sleep(3 * QUIET)
        assert col.rels() == []  # no event, no rescan yet
        logging.getLogger("watchdog.observers.inotify_c").warning(
            "Inotify queue overflowed; filesystem events were lost"
        )
        assert col.wait_for(lambda: col.has("140_20240117.pdf"), timeout=5)


def test_idle_watcher_does_not_spin(root: Path):
    with watching(root, root_check_interval=30) as (w, _col):
        calls = []
        real = w.poll_once

        def counting() -> list[ReadyFile]:
            calls.append(time.monotonic())
            return real()

        w.poll_once = counting  # type: ignore[method-assign]
        time.sleep(0.2)
        w._wake.set()  # let the worker pick up the counting wrapper
        time.sleep(1.0)
        assert len(calls) <= 2, calls


def test_no_file_names_in_logs_at_info(root: Path, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.DEBUG):
        run(
            root,
            lambda d: (d / "141_DUPONT_19991231.pdf").write_bytes(b"x"),
            {"141_DUPONT_19991231.pdf": b"x"},
        )
    for rec in caplog.records:
        if rec.levelno >= logging.INFO:
            assert "DUPONT" not in rec.getMessage(), rec.getMessage()


def test_stop_is_idempotent_and_joins_threads(root: Path):
    w = SourceWatcher([SourceConfig(name="s", path=root)], lambda rf: None, quiet_seconds=QUIET)
    w.start()
    with pytest.raises(RuntimeError):
        w.start()
    w.stop()
    w.stop()
    assert not any(t.name == "coldvault-sources" for t in threading.enumerate())


def test_source_root_may_itself_be_a_symlink(tmp_path: Path):
    """The configured folder is the installer's choice (e.g. /srv/scans -> /data/scans); only
    symlinks *below* it are refused."""
    real = tmp_path / "data"
    real.mkdir()
    link = tmp_path / "scans"
    link.symlink_to(real)
    (real / "142_20240118.pdf").write_bytes(b"pre")
    with watching(link) as (_, col):
        time.sleep(0.2)
        (real / "143_20240119.pdf").write_bytes(b"new")
        assert col.wait_for(lambda: col.has("142_20240118.pdf", "143_20240119.pdf"))
        time.sleep(4 * QUIET)
        assert col.content() == {"142_20240118.pdf": [b"pre"], "143_20240119.pdf": [b"new"]}
        assert {rf.path for rf, _ in col.items} == {
            link / "142_20240118.pdf",
            link / "143_20240119.pdf",
        }
