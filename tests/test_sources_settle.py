"""Finished-file detection: deterministic unit tests (fake clock, stat and writer probe), then the
real pieces (read-lease probe against real writer processes, symlink/fifo refusal, safe unlink)."""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest

from coldvault.sources import settle
from coldvault.sources.rules import UnsafePathError
from coldvault.sources.settle import (
    Fingerprint,
    NotRegularFileError,
    Probe,
    Settled,
    Settler,
    already_archived,
    ensure_sigio_ignored,
    lstat_beneath,
    open_beneath,
    probe_writer,
    unlink_beneath,
)

# --- unit: fake clock / stat / probe -----------------------------------------------------------


class FakeFS:
    def __init__(self) -> None:
        self.files: dict[str, tuple[int, int, int]] = {}  # rel -> (size, mtime_ns, mode)
        self.writers: set[str] = set()
        self.probe_result: Probe | None = None  # force a result
        self.probe_calls = 0

    def put(self, rel: str, size: int, mtime: int, mode: int = stat.S_IFREG | 0o644) -> None:
        self.files[rel] = (size, mtime, mode)

    def stat(self, rel: str) -> Any:
        if rel not in self.files:
            raise FileNotFoundError(rel)
        size, mtime, mode = self.files[rel]
        return types.SimpleNamespace(
            st_mode=mode, st_size=size, st_mtime_ns=mtime, st_ino=7, st_dev=1, st_ctime_ns=mtime
        )

    def probe(self, rel: str) -> tuple[Probe, Any]:
        self.probe_calls += 1
        if self.probe_result is not None:
            return self.probe_result, None
        if rel not in self.files:
            return Probe.GONE, None
        return (Probe.BUSY if rel in self.writers else Probe.FREE), self.stat(rel)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(quiet: float = 2.0, empty_quiet: float | None = None) -> tuple[Settler, FakeFS, Clock]:
    fs, clock = FakeFS(), Clock()
    s = Settler(
        "/in", quiet=quiet, empty_quiet=empty_quiet, clock=clock, stat=fs.stat, probe=fs.probe
    )
    return s, fs, clock


def rels(out: list[Settled]) -> list[str]:
    return [r.relpath for r in out]


def test_event_reading_counts_as_first_of_two_readings():
    s, fs, clock = make()
    fs.put("a.pdf", 100, 1)
    assert s.nominate("a.pdf") is True
    assert s.next_due() == 102.0
    clock.t = 101.9
    assert s.poll() == []
    clock.t = 102.0
    out = s.poll()
    assert out == [Settled("a.pdf", Fingerprint(1, 7, 100, 1))]
    assert len(s) == 0 and s.next_due() is None
    clock.t = 110
    assert s.poll() == []  # reported once


def test_growing_file_waits_until_two_equal_readings():
    s, fs, clock = make()
    fs.put("a.pdf", 100, 1)
    s.nominate("a.pdf", activity=False)
    fs.put("a.pdf", 200, 2)  # grows without us seeing an event (events can be lost)
    clock.t = 102
    assert s.poll() == []
    assert s.next_due() == 104
    clock.t = 104
    assert rels(s.poll()) == ["a.pdf"]


def test_activity_restarts_the_quiet_period_but_scans_do_not():
    s, fs, clock = make()
    fs.put("a.pdf", 100, 1)
    s.nominate("a.pdf")
    clock.t = 101.5
    s.nominate("a.pdf", activity=False)  # a rescan: not activity
    assert s.nominate("a.pdf", activity=False) is False
    clock.t = 101.9
    s.nominate("a.pdf")  # an event: restart
    clock.t = 102.0
    assert s.poll() == []
    clock.t = 103.9
    assert rels(s.poll()) == ["a.pdf"]


def test_open_writer_blocks_then_reported_once_closed():
    s, fs, clock = make()
    fs.put("b.pdf", 4096, 5)
    fs.writers.add("b.pdf")
    s.nominate("b.pdf")
    for t in (102, 104, 106, 108):
        clock.t = t
        assert s.poll() == []  # size stable, but a writer holds it
    fs.writers.clear()
    clock.t = 110
    assert rels(s.poll()) == ["b.pdf"]


def test_leases_unsupported_falls_back_to_stat_only():
    s, fs, clock = make()
    fs.put("c.pdf", 10, 1)
    fs.probe_result = Probe.UNSUPPORTED
    s.nominate("c.pdf")
    clock.t = 102
    assert rels(s.poll()) == ["c.pdf"]


def test_gone_at_probe_time_is_forgotten():
    s, fs, clock = make()
    fs.put("d.pdf", 10, 1)
    s.nominate("d.pdf")
    fs.probe_result = Probe.GONE
    clock.t = 102
    assert s.poll() == [] and len(s) == 0


def test_deleted_before_check_is_forgotten_and_delete_wins():
    s, fs, clock = make()
    fs.put("e.pdf", 10, 1)
    fs.put("f.pdf", 10, 1)
    s.nominate("e.pdf")
    s.nominate("f.pdf")
    del fs.files["e.pdf"]
    s.forget("f.pdf")
    clock.t = 105
    assert s.poll() == [] and len(s) == 0
    assert s.nominate("missing.pdf") is False and "missing.pdf" not in s


def test_change_between_stat_and_probe_starts_over():
    s, fs, clock = make()
    fs.put("g.pdf", 10, 1)
    s.nominate("g.pdf")
    real_probe = fs.probe

    def probe(rel: str) -> tuple[Probe, Any]:
        fs.put("g.pdf", 20, 2)  # the writer sneaks in just before the lease
        return Probe.FREE, fs.stat(rel)

    s._probe = probe
    clock.t = 102
    assert s.poll() == []
    s._probe = real_probe
    clock.t = 104
    assert [r.fingerprint.size for r in s.poll()] == [20]


def test_zero_byte_file_needs_the_longer_quiet_period():
    s, fs, clock = make(quiet=2.0, empty_quiet=10.0)
    fs.put("empty.pdf", 0, 1)
    s.nominate("empty.pdf")
    for t in (102, 104, 109.9):
        clock.t = t
        assert s.poll() == []
    assert s.next_due() == 110.0
    clock.t = 110
    assert rels(s.poll()) == ["empty.pdf"]


def test_zero_byte_then_filled_is_reported_with_content():
    s, fs, clock = make(quiet=2.0)  # empty_quiet defaults to 6 x quiet
    fs.put("smb.pdf", 0, 1)
    s.nominate("smb.pdf")
    clock.t = 102
    assert s.poll() == []
    fs.put("smb.pdf", 3000, 2)
    s.nominate("smb.pdf")
    clock.t = 104
    assert [r.fingerprint.size for r in s.poll()] == [3000]


@pytest.mark.parametrize(
    "mode", [stat.S_IFLNK | 0o777, stat.S_IFIFO | 0o644, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFDIR]
)
def test_special_files_are_never_taken(mode: int):
    s, fs, clock = make()
    fs.put("x", 0, 1, mode)
    assert s.nominate("x") is False
    fs.put("y", 10, 1)
    s.nominate("y", activity=False)
    fs.put("y", 10, 1, mode)  # replaced by a special file before the check
    clock.t = 102
    assert s.poll() == [] and len(s) == 0
    assert fs.probe_calls == 0  # never opened


def test_forget_tree():
    s, fs, _ = make()
    for rel in ("p1/a", "p1/b/c", "p10/a", "q"):
        fs.put(rel, 1, 1)
        s.nominate(rel)
    s.forget_tree("p1")
    assert sorted(r for r in ("p1/a", "p1/b/c", "p10/a", "q") if r in s) == ["p10/a", "q"]
    s.forget_tree("")
    assert len(s) == 0


def test_settler_is_memoryless_fingerprint_tells_versions_apart():
    s, fs, clock = make()
    fs.put("h.pdf", 10, 1)
    s.nominate("h.pdf")
    clock.t = 102
    (first,) = s.poll()
    fs.put("h.pdf", 12, 3)
    s.nominate("h.pdf")
    clock.t = 104
    (second,) = s.poll()
    assert first.fingerprint != second.fingerprint and second.fingerprint.size == 12


def test_next_due_is_never_in_the_past_after_poll():
    s, fs, clock = make()
    for i in range(20):
        fs.put(f"f{i}", i + 1, 1)
        s.nominate(f"f{i}")
        clock.t += 0.3
        s.nominate(f"f{i // 2}")  # activity on older ones
    while len(s):
        s.poll()
        due = s.next_due()
        if due is None:
            break
        assert due > clock.t
        clock.t = due
    assert len(s) == 0


def test_quiet_must_be_positive():
    with pytest.raises(ValueError):
        Settler("/in", quiet=0)


def test_fingerprint_text_round_trip_and_order():
    fp = Fingerprint(2049, 1234567, 42, 1_700_000_000_123_456_789)
    assert Fingerprint.from_text(fp.to_text()) == fp
    with pytest.raises(ValueError):
        Fingerprint.from_text("1:2:3")


def test_already_archived_callback(caplog: pytest.LogCaptureFixture):
    fp = Fingerprint(1, 2, 3, 4)
    calls: list[tuple[str, str, Fingerprint]] = []

    def yes(source: str, rel: str, f: Fingerprint) -> bool:
        calls.append((source, rel, f))
        return True

    def boom(source: str, rel: str, f: Fingerprint) -> bool:
        raise RuntimeError("catalog locked")

    assert already_archived(yes, "scanner", "a.pdf", fp) and calls == [("scanner", "a.pdf", fp)]
    assert already_archived(None, "scanner", "a.pdf", fp) is False
    assert already_archived(boom, "scanner", "a.pdf", fp) is False  # archive twice, lose nothing


# --- real filesystem ---------------------------------------------------------------------------


def test_lstat_and_open_beneath_never_follow_symlinks(tmp_path: Path):
    root = tmp_path / "in"
    (root / "p1").mkdir(parents=True)
    (root / "p1" / "ok.pdf").write_bytes(b"ok")
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "shadow").write_bytes(b"root-only")
    (root / "link.pdf").symlink_to(secret / "shadow")
    (root / "evil").symlink_to(secret)

    assert lstat_beneath(root, "p1/ok.pdf").st_size == 2
    fd = open_beneath(root, "p1/ok.pdf")
    try:
        assert os.read(fd, 10) == b"ok"
        assert not (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK)
    finally:
        os.close(fd)
    assert stat.S_ISLNK(lstat_beneath(root, "link.pdf").st_mode)
    with pytest.raises(OSError) as ei:
        open_beneath(root, "link.pdf")
    assert ei.value.errno == errno.ELOOP
    for call in (lstat_beneath, open_beneath):
        with pytest.raises(OSError) as ei2:
            call(root, "evil/shadow")  # symlinked folder in the middle of the path
        assert ei2.value.errno in (errno.ELOOP, errno.ENOTDIR)
    assert probe_writer(root, "link.pdf")[0] is Probe.GONE
    assert probe_writer(root, "evil/shadow")[0] is Probe.GONE
    assert probe_writer(root, "nope.pdf")[0] is Probe.GONE


def test_special_files_are_refused_without_blocking(tmp_path: Path):
    root = tmp_path / "in"
    root.mkdir()
    os.mkfifo(root / "fifo.pdf")  # opening a fifo for reading would block forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock.pdf"))
    (root / "dir.pdf").mkdir()
    try:
        for name in ("fifo.pdf", "dir.pdf"):
            with pytest.raises(NotRegularFileError):
                open_beneath(root, name)
            assert probe_writer(root, name)[0] is Probe.GONE
        with pytest.raises(OSError):  # ENXIO: sockets cannot be opened
            open_beneath(root, "sock.pdf")
        assert probe_writer(root, "sock.pdf")[0] is Probe.GONE
    finally:
        sock.close()


def test_escape_attempts_are_refused(tmp_path: Path):
    for bad in ("../x", "/etc/passwd", "a/../../x"):
        with pytest.raises(UnsafePathError):
            open_beneath(tmp_path, bad)


def _writer(path: Path, hold: float) -> subprocess.Popen[bytes]:
    code = (
        "import sys, time\n"
        f"f = open({str(path)!r}, 'ab'); f.write(b'x'); f.flush()\n"
        "sys.stdout.write('open\\n'); sys.stdout.flush()\n"
        f"time.sleep({hold})\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"open\n"
    return p


def test_read_lease_probe_sees_an_open_writer(tmp_path: Path):
    f = tmp_path / "scan.pdf"
    f.write_bytes(b"")
    w = _writer(f, 30)
    try:
        result, st = probe_writer(tmp_path, "scan.pdf")
        assert result is Probe.BUSY and st is not None and st.st_size == 1
    finally:
        w.kill()
        w.wait()
    assert probe_writer(tmp_path, "scan.pdf")[0] is Probe.FREE
    # a reader only does not count
    r = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import sys,time; f=open({str(f)!r},'rb'); print(1, flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert r.stdout is not None and r.stdout.readline()
        assert probe_writer(tmp_path, "scan.pdf")[0] is Probe.FREE
    finally:
        r.kill()
        r.wait()


def test_writer_in_a_thread_of_this_process_is_seen_too(tmp_path: Path):
    f = tmp_path / "t.pdf"
    with open(f, "wb") as fh:
        fh.write(b"abc")
        assert probe_writer(tmp_path, "t.pdf")[0] is Probe.BUSY
    assert probe_writer(tmp_path, "t.pdf")[0] is Probe.FREE


def test_filesystem_without_leases_is_unsupported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "smb.pdf").write_bytes(b"x")
    real = fcntl.fcntl

    def no_leases(fd: int, cmd: int, arg: int = 0) -> Any:
        if cmd == settle.F_SETLEASE:
            raise OSError(errno.EINVAL, "Invalid argument")  # what cifs/nfs client mounts say
        return real(fd, cmd, arg)

    monkeypatch.setattr(settle.fcntl, "fcntl", no_leases)
    result, st = probe_writer(tmp_path, "smb.pdf")
    assert result is Probe.UNSUPPORTED and st is not None


@pytest.fixture
def sigio_default() -> Any:
    old = signal.getsignal(signal.SIGIO)
    signal.signal(signal.SIGIO, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGIO, old)


def test_sigio_guard_makes_a_lease_break_harmless(tmp_path: Path, sigio_default: None):
    """A writer opening the file while we hold the lease makes the kernel send SIGIO, whose
    default action would kill the daemon. ensure_sigio_ignored() must prevent that."""
    assert ensure_sigio_ignored() is True
    assert signal.getsignal(signal.SIGIO) == signal.SIG_IGN
    f = tmp_path / "race.pdf"
    f.write_bytes(b"x")
    fd = os.open(f, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, settle.F_SETLEASE, settle.F_RDLCK)
        w = subprocess.Popen([sys.executable, "-c", f"open({str(f)!r}, 'ab').write(b'y')"])
        time.sleep(0.3)  # the writer is now blocked in open(), and SIGIO was sent to us
        fcntl.fcntl(fd, settle.F_SETLEASE, settle.F_UNLCK)
        assert w.wait(timeout=10) == 0
    finally:
        os.close(fd)
    assert f.read_bytes() == b"xy"


def test_probe_disabled_off_main_thread_when_sigio_not_ignored(tmp_path: Path, sigio_default: None):
    (tmp_path / "a.pdf").write_bytes(b"x")
    out: list[Probe] = []
    t = threading.Thread(target=lambda: out.append(probe_writer(tmp_path, "a.pdf")[0]))
    t.start()
    t.join()
    assert out == [Probe.UNSUPPORTED]
    assert signal.getsignal(signal.SIGIO) == signal.SIG_DFL  # untouched from a thread


def test_unlink_beneath_only_deletes_the_archived_version(tmp_path: Path):
    root = tmp_path / "in"
    (root / "p").mkdir(parents=True)
    f = root / "p" / "a.pdf"
    f.write_bytes(b"v1")
    fp1 = Fingerprint.from_stat(os.lstat(f))
    f.write_bytes(b"v2 longer")  # rewritten after archiving: a new version
    assert unlink_beneath(root, "p/a.pdf", fp1) is False and f.exists()
    fp2 = Fingerprint.from_stat(os.lstat(f))
    assert unlink_beneath(root, "p/a.pdf", fp2) is True and not f.exists()
    assert unlink_beneath(root, "p/a.pdf", fp2) is False
    # a symlink with the fingerprint of its target is not deleted, nor is its target
    target = tmp_path / "keep.pdf"
    target.write_bytes(b"k")
    (root / "l.pdf").symlink_to(target)
    assert unlink_beneath(root, "l.pdf", Fingerprint.from_stat(os.stat(target))) is False
    assert target.exists() and (root / "l.pdf").is_symlink()


def test_real_settler_end_to_end(tmp_path: Path):
    clock = Clock()
    (tmp_path / "r.pdf").write_bytes(b"data")
    s = Settler(tmp_path, quiet=1.0, clock=clock)
    s.nominate("r.pdf")
    clock.t += 1
    with open(tmp_path / "r.pdf", "ab"):
        assert s.poll() == []  # held open for writing
    clock.t += 1
    (out,) = s.poll()
    assert out.relpath == "r.pdf" and out.fingerprint == Fingerprint.from_stat(
        os.lstat(tmp_path / "r.pdf")
    )
