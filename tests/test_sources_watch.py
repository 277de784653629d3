"""SourceWatcher driven by hand (poll_once, fake clock, real files, no observer): scans, rules,
de-duplication of versions, is_archived, retries, root checks, idle scheduling."""

from __future__ import annotations

import datetime
import logging
import os
import re
from pathlib import Path

import pytest

from coldvault.config import SourceConfig, parse_config
from coldvault.sources.settle import Fingerprint, Probe
from coldvault.sources.watch import ReadyFile, SourceWatcher, watcher_from_config

QUIET = 1.0
SCAN_RX = re.compile(r"^(?P<patient>[0-9]+)_(?P<date>[0-9]{8})")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(
    root: Path, *, is_archived=None, on_ready=None, **src: object
) -> tuple[SourceWatcher, list[ReadyFile], Clock]:
    got: list[ReadyFile] = []
    clock = Clock()
    cfg = SourceConfig(name="scanner", path=root, **src)  # type: ignore[arg-type]
    w = SourceWatcher(
        [cfg],
        on_ready or got.append,
        clock=clock,
        quiet_seconds=QUIET,
        rescan_interval=600,
        root_check_interval=30,
        is_archived=is_archived,
    )
    return w, got, clock


def settle(w: SourceWatcher, clock: Clock, rounds: int = 3) -> list[ReadyFile]:
    out = w.poll_once()
    for _ in range(rounds):
        clock.t += QUIET
        out += w.poll_once()
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "scans"
    r.mkdir()
    return r


def test_startup_scan_reports_existing_files_with_rules(root: Path):
    (root / "123_20240102_ordo.pdf").write_bytes(b"a")
    (root / "sub").mkdir()
    (root / "sub" / "lettre.pdf").write_bytes(b"bb")
    (root / "note.tmp").write_bytes(b"t")
    (root / ".cache").mkdir()
    (root / ".cache" / "x.pdf").write_bytes(b"x")
    w, got, clock = make(root, pattern=SCAN_RX, kind="scan")
    assert w.poll_once() == []  # found, not yet settled
    assert w.pending == 2
    clock.t += QUIET
    out = w.poll_once()
    assert sorted(r.relpath for r in out) == ["123_20240102_ordo.pdf", "sub/lettre.pdf"]
    assert out == got
    by = {r.relpath: r for r in out}
    r1 = by["123_20240102_ordo.pdf"]
    assert r1.source == "scanner" and r1.root == root and r1.path == root / r1.relpath
    assert (r1.patient, r1.date, r1.kind) == ("123", datetime.date(2024, 1, 2), "scan")
    assert r1.fingerprint == Fingerprint.from_stat(os.lstat(r1.path))
    assert by["sub/lettre.pdf"].patient is None  # unsorted inbox
    assert settle(w, clock) == []  # once only


def test_symlinks_and_special_files_are_skipped_by_scans(root: Path, tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "shadow.pdf").write_bytes(b"secret")
    (root / "link.pdf").symlink_to(outside / "shadow.pdf")
    (root / "evil").symlink_to(outside)
    os.mkfifo(root / "fifo.pdf")
    (root / "real.pdf").write_bytes(b"r")
    w, _got, clock = make(root)
    assert [r.relpath for r in settle(w, clock)] == ["real.pdf"]


def test_modified_after_report_is_reported_again(root: Path):
    f = root / "a.pdf"
    f.write_bytes(b"v1")
    w, _got, clock = make(root)
    (first,) = settle(w, clock)
    clock.t += 700  # next rescan
    assert settle(w, clock) == []  # same version: not again
    f.write_bytes(b"version 2")
    clock.t += 700
    (second,) = settle(w, clock)
    assert second.fingerprint != first.fingerprint and second.fingerprint.size == 9


def test_is_archived_versions_are_not_reported(root: Path):
    (root / "old.pdf").write_bytes(b"archived already")
    (root / "new.pdf").write_bytes(b"not yet")
    archived = {("scanner", "old.pdf", Fingerprint.from_stat(os.lstat(root / "old.pdf")))}
    calls: list[tuple[str, str, Fingerprint]] = []

    def is_archived(source: str, rel: str, fp: Fingerprint) -> bool:
        calls.append((source, rel, fp))
        return (source, rel, fp) in archived

    w, _got, clock = make(root, is_archived=is_archived)
    assert [r.relpath for r in settle(w, clock)] == ["new.pdf"]
    n = len(calls)
    clock.t += 700
    assert settle(w, clock) == [] and len(calls) == n  # remembered: not asked again
    (root / "old.pdf").write_bytes(b"changed since it was archived")
    clock.t += 700
    assert [r.relpath for r in settle(w, clock)] == ["old.pdf"]


def test_failed_ingest_is_retried_at_next_rescan(root: Path, caplog: pytest.LogCaptureFixture):
    (root / "123_20240101.pdf").write_bytes(b"x")
    attempts: list[str] = []

    def on_ready(rf: ReadyFile) -> None:
        attempts.append(rf.relpath)
        if len(attempts) == 1:
            raise OSError("disk full")

    w, _, clock = make(root, on_ready=on_ready, pattern=SCAN_RX)
    with caplog.at_level(logging.INFO):
        assert settle(w, clock) == []
    assert attempts == ["123_20240101.pdf"]
    assert "retried" in caplog.text and "123_20240101" not in caplog.text  # no names in logs
    clock.t += 700
    assert [r.relpath for r in settle(w, clock)] == ["123_20240101.pdf"]
    clock.t += 700
    assert settle(w, clock) == [] and len(attempts) == 2


def test_files_found_by_rescan_when_events_are_lost(root: Path):
    w, _got, clock = make(root)
    assert settle(w, clock) == []
    (root / "late.pdf").write_bytes(b"no event ever came")
    assert settle(w, clock) == []  # no observer here: only a rescan can find it
    clock.t += 600
    assert [r.relpath for r in settle(w, clock)] == ["late.pdf"]


def test_deleted_files_are_forgotten(root: Path):
    (root / "a.pdf").write_bytes(b"x")
    w, _got, clock = make(root)
    w.poll_once()
    (root / "a.pdf").unlink()
    assert settle(w, clock) == [] and w.pending == 0


def test_missing_root_waits_and_comes_back(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = tmp_path / "later"
    w, _got, clock = make(root)
    with caplog.at_level(logging.WARNING):
        assert settle(w, clock) == []
    assert "is missing" in caplog.text
    root.mkdir()
    (root / "a.pdf").write_bytes(b"x")
    clock.t += 30  # next root check
    assert [r.relpath for r in settle(w, clock)] == ["a.pdf"]
    assert "is back" in caplog.text


def test_root_replaced_is_rescanned(root: Path, tmp_path: Path):
    (root / "a.pdf").write_bytes(b"x")
    w, _got, clock = make(root)
    assert len(settle(w, clock)) == 1
    root.rename(tmp_path / "scans.old")
    root.mkdir()
    (root / "b.pdf").write_bytes(b"y")
    clock.t += 30  # root check: new inode -> rescan at once
    assert [r.relpath for r in settle(w, clock)] == ["b.pdf"]


def test_idle_watcher_sleeps_until_next_root_check_or_rescan(root: Path):
    w, _got, clock = make(root)
    w.poll_once()
    assert w.next_deadline() == clock.t + 30  # nothing pending: the root check is next
    (root / "a.pdf").write_bytes(b"x")
    clock.t += 600
    w.poll_once()
    assert w.next_deadline() == clock.t + QUIET  # a file is settling


def test_busy_file_waits_for_writer(root: Path):
    (root / "a.pdf").write_bytes(b"x")
    state = {"busy": True}

    def probe(r: str, rel: str) -> tuple[Probe, os.stat_result | None]:
        return (Probe.BUSY if state["busy"] else Probe.FREE), None

    got: list[ReadyFile] = []
    clock = Clock()
    w = SourceWatcher(
        [SourceConfig(name="s", path=root)],
        got.append,
        clock=clock,
        quiet_seconds=QUIET,
        probe=probe,
    )
    assert settle(w, clock, rounds=5) == []
    state["busy"] = False
    assert len(settle(w, clock)) == 1


def test_per_source_quiet_override(root: Path, tmp_path: Path):
    other = tmp_path / "smb"
    other.mkdir()
    (root / "a.pdf").write_bytes(b"x")
    (other / "b.pdf").write_bytes(b"y")
    clock = Clock()
    got: list[ReadyFile] = []
    w = SourceWatcher(
        [
            SourceConfig(name="local", path=root),
            SourceConfig(name="smb", path=other, quiet_seconds=5.0),
        ],
        got.append,
        clock=clock,
        quiet_seconds=QUIET,
    )
    w.poll_once()
    clock.t += QUIET
    assert [r.source for r in w.poll_once()] == ["local"]
    clock.t += 4
    assert [r.source for r in w.poll_once()] == ["smb"]


def test_watcher_from_config(root: Path):
    cfg = parse_config(
        f"""
[vault]
state_dir = "/var/lib/coldvault"
rescan_interval = 42
quiet_seconds = 0.5
[[source]]
name = "scanner"
path = "{root}"
"""
    )
    w = watcher_from_config(cfg, lambda rf: None)
    assert w.rescan_interval == 42 and w.quiet_seconds == 0.5
    assert w.pending == 0


def test_unreport_offers_a_file_again(root: Path):
    """For a daemon whose on_ready only queues: a later ingest failure un-reports the file."""
    (root / "a.pdf").write_bytes(b"x")
    w, got, clock = make(root)
    assert len(settle(w, clock)) == 1
    clock.t += 700
    assert settle(w, clock) == []
    w.unreport("scanner", "a.pdf", retry_in=5)
    assert w.next_deadline() <= clock.t + 5
    clock.t += 5
    assert [r.relpath for r in settle(w, clock)] == ["a.pdf"]
    assert len(got) == 2
