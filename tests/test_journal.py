"""The hash-chained audit journal: appends, tamper detection, crashes, concurrency."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from coldvault import journal as journal_mod
from coldvault.errors import IntegrityError
from coldvault.journal import (
    GENESIS,
    Journal,
    JournalError,
    JournalHead,
    Problem,
    read_entries,
    verify_folder,
)


def fixed_clock(start: datetime = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)) -> Callable[[], datetime]:
    ticks = iter(range(10**9))

    def clock() -> datetime:
        return start + timedelta(seconds=next(ticks))

    return clock


@pytest.fixture
def small_segments(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(journal_mod, "SEGMENT_ENTRIES", 5)
    return 5


def filled(folder: Path, n: int) -> Journal:
    j = Journal(folder, clock=fixed_clock())
    for i in range(n):
        j.append("ingest", document=f"doc-{i}", size=i * 10)
    return j


def kinds(problems: list[Problem]) -> list[str]:
    return [p.kind for p in problems]


def seg(folder: Path, n: int = 1) -> Path:
    return folder / f"{n:06d}.jsonl"


def test_append_writes_canonical_chained_lines(tmp_path: Path) -> None:
    j = Journal(tmp_path / "journal", clock=fixed_clock())
    e1 = j.append("ingest", document="d1", patient_ref="k-7f3a", size=1234)
    e2 = j.append("restore", reason="demande du patient — accès", documents=["d1"], deep=False)
    lines = seg(tmp_path / "journal").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    first = json.loads(lines[0])
    assert lines[0] == (
        b'{"event":"ingest","fields":{"document":"d1","patient_ref":"k-7f3a","size":1234},'
        b'"hash":"' + e1.hash.encode() + b'","prev":"' + GENESIS.encode() + b'","seq":1,'
        b'"time":"2026-03-01T08:00:00Z"}'
    )
    # The hash is SHA-256 of the same line without the "hash" member.
    without = lines[0].replace(b'"hash":"' + e1.hash.encode() + b'",', b"")
    assert hashlib.sha256(without).hexdigest() == first["hash"] == e1.hash
    assert e2.prev == e1.hash and e2.seq == 2
    assert b"\\u2014" in lines[1] and b"\\u00e8" in lines[1]  # ASCII only
    assert json.loads(lines[1])["fields"]["reason"] == "demande du patient — accès"
    assert [e.seq for e in j.entries()] == [1, 2]
    assert list(j.entries())[1].when == datetime(2026, 3, 1, 8, 0, 1, tzinfo=UTC)
    assert j.head() == JournalHead(2, e2.hash)
    assert j.verify() == []
    assert j.verify(expected_head=JournalHead(1, e1.hash)) == []


def test_fields_are_restricted_to_json_without_floats(tmp_path: Path) -> None:
    j = Journal(tmp_path, clock=fixed_clock())
    with pytest.raises(TypeError):
        j.append("ingest", ratio=0.5)
    with pytest.raises(TypeError):
        j.append("ingest", when=datetime.now(UTC))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        j.append("Ingest")
    with pytest.raises(ValueError):
        j.append("ingest", **{"Bad-Key": 1})
    with pytest.raises(ValueError):
        Journal(tmp_path, clock=lambda: datetime(2026, 1, 1)).append("ingest")
    assert list(j.entries()) == []


def test_edited_field_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    filled(folder, 6)
    path = seg(folder)
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b'"size":30', b'"size":31')
    path.write_bytes(b"\n".join(lines))
    problems = verify_folder(folder)
    assert kinds(problems) == ["edited"]
    assert problems[0].seq == 4 and problems[0].line == 4
    assert "entry 4" in problems[0].message and problems[0].tampering


def test_edit_with_recomputed_hash_breaks_the_next_link(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    filled(folder, 6)
    path = seg(folder)
    lines = path.read_bytes().split(b"\n")
    entry = json.loads(lines[2])
    entry["fields"]["size"] = 999
    body = {k: v for k, v in entry.items() if k != "hash"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    entry["hash"] = hashlib.sha256(canon).hexdigest()
    lines[2] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines))
    problems = verify_folder(folder)
    assert kinds(problems) == ["chain"]
    assert problems[0].seq == 4 and "does not follow entry 3" in problems[0].message


def test_non_canonical_rewrite_is_detected(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    filled(folder, 3)
    path = seg(folder)
    lines = path.read_bytes().split(b"\n")
    lines[1] = json.dumps(json.loads(lines[1]), sort_keys=True).encode()  # spaces added
    path.write_bytes(b"\n".join(lines))
    problems = verify_folder(folder)
    assert kinds(problems) == ["edited"] and problems[0].seq == 2


def test_removed_line_is_detected(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    filled(folder, 6)
    path = seg(folder)
    lines = path.read_bytes().split(b"\n")
    del lines[2]
    path.write_bytes(b"\n".join(lines))
    problems = verify_folder(folder)
    assert kinds(problems) == ["chain"]
    assert problems[0].seq == 4 and "entry 3 is missing before entry 4" in problems[0].message


def test_removed_first_line_is_detected(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    filled(folder, 3)
    path = seg(folder)
    path.write_bytes(b"\n".join(path.read_bytes().split(b"\n")[1:]))
    assert kinds(verify_folder(folder)) == ["start"]


def test_swapped_lines_are_detected(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    filled(folder, 6)
    path = seg(folder)
    lines = path.read_bytes().split(b"\n")
    lines[2], lines[3] = lines[3], lines[2]
    path.write_bytes(b"\n".join(lines))
    problems = verify_folder(folder)
    assert kinds(problems) == ["chain", "chain"]
    assert [(p.seq, p.line) for p in problems] == [(4, 3), (3, 4)]
    assert "reordered" in problems[1].message


def test_inserted_line_is_detected(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    filled(folder, 4)
    other = tmp_path / "other"
    Journal(other, clock=fixed_clock()).append("purge", patients=3)
    path = seg(folder)
    lines = path.read_bytes().split(b"\n")
    lines.insert(2, seg(other).read_bytes().rstrip(b"\n"))
    path.write_bytes(b"\n".join(lines))
    problems = verify_folder(folder)
    assert kinds(problems) == ["chain"] and problems[0].line == 3 and problems[0].seq == 1


def test_deleted_middle_segment_is_detected(tmp_path: Path, small_segments: int) -> None:
    folder = tmp_path / "journal"
    j = filled(folder, 3 * small_segments + 2)
    assert [p.name for p in j.segments()] == [
        "000001.jsonl",
        "000002.jsonl",
        "000003.jsonl",
        "000004.jsonl",
    ]
    assert verify_folder(folder) == []
    seg(folder, 2).unlink()
    problems = verify_folder(folder)
    assert kinds(problems) == ["missing-segment"]
    assert "000002.jsonl" in problems[0].message and "6 to 10" in problems[0].message
    # Appending still works and keeps the chain going.
    j.append("sync", drive="drive-A")
    assert kinds(j.verify()) == ["missing-segment"]


def test_entry_moved_to_another_segment_is_detected(tmp_path: Path, small_segments: int) -> None:
    folder = tmp_path / "journal"
    filled(folder, small_segments + 3)
    first, second = seg(folder, 1), seg(folder, 2)
    lines = first.read_bytes().split(b"\n")
    moved = lines[-2]
    first.write_bytes(b"\n".join(lines[:-2]) + b"\n")
    second.write_bytes(moved + b"\n" + second.read_bytes())
    assert "wrong-segment" in kinds(verify_folder(folder))


def test_truncation_is_caught_only_with_an_anchor(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    j = filled(folder, 5)
    head = j.head()
    assert head is not None and head.seq == 5
    path = seg(folder)
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:3]) + b"\n")  # entries 4 and 5 cut off
    assert verify_folder(folder) == []
    problems = verify_folder(folder, expected_head=head)
    assert kinds(problems) == ["anchor"] and "5" in problems[0].message


def test_torn_last_line_is_reported_apart_and_repaired_on_append(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    j = filled(folder, 3)
    path = seg(folder)
    full = path.read_bytes()
    torn = b'{"event":"ingest","fields":{"docu'
    path.write_bytes(full + torn)  # a crash in the middle of a write
    problems = verify_folder(folder)
    assert kinds(problems) == ["torn"] and not problems[0].tampering
    assert [e.seq for e in read_entries(folder)] == [1, 2, 3]
    assert j.head() is not None and j.head() == JournalHead(3, list(j.entries())[-1].hash)

    entry = j.append("ingest", document="d-next")
    assert entry.seq == 5  # entry 4 records the repair
    entries = list(j.entries())
    warning = entries[3]
    assert warning.event == "warning"
    assert warning.fields == {
        "reason": "torn-line",
        "segment": "000001.jsonl",
        "discarded_bytes": len(torn),
        "discarded_sha256": hashlib.sha256(torn).hexdigest(),
    }
    assert j.verify() == []
    assert path.read_bytes().startswith(full)


def test_torn_line_alone_in_a_new_segment(tmp_path: Path, small_segments: int) -> None:
    folder = tmp_path / "journal"
    j = filled(folder, small_segments)
    seg(folder, 2).write_bytes(b'{"ev')
    assert kinds(verify_folder(folder)) == ["torn"]
    e = j.append("sync")
    assert e.seq == small_segments + 2
    assert j.verify() == []


def test_damaged_middle_line_is_malformed_not_torn(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    filled(folder, 4)
    path = seg(folder)
    lines = path.read_bytes().split(b"\n")
    lines[1] = lines[1][:20]
    path.write_bytes(b"\n".join(lines))
    problems = verify_folder(folder)
    assert kinds(problems) == ["malformed"] and problems[0].line == 2
    with pytest.raises(JournalError):
        list(read_entries(folder))


def test_append_refuses_to_chain_to_a_damaged_last_entry(tmp_path: Path) -> None:
    folder = tmp_path / "journal"
    j = filled(folder, 2)
    path = seg(folder)
    path.write_bytes(path.read_bytes().replace(b'"size":10', b'"size":11'))
    with pytest.raises(IntegrityError, match="newest entry"):
        j.append("ingest")


def test_verify_folder_on_a_copy(tmp_path: Path, small_segments: int) -> None:
    folder = tmp_path / "journal"
    j = filled(folder, 12)
    copy = tmp_path / "drive" / "journal"
    copy.parent.mkdir()
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns(".lock"))
    assert verify_folder(copy, expected_head=j.head()) == []
    assert verify_folder(tmp_path / "empty") != []  # unreadable folder


def test_append_many_is_one_batch(tmp_path: Path, small_segments: int) -> None:
    j = Journal(tmp_path / "journal", clock=fixed_clock())
    made = j.append_many([("ingest", {"document": f"d{i}"}) for i in range(12)])
    assert [e.seq for e in made] == list(range(1, 13))
    assert len(j.segments()) == 3
    assert j.verify() == []
    assert j.append_many([]) == []


def _child(folder: str, worker: int, n: int, segment_entries: int) -> None:
    journal_mod.SEGMENT_ENTRIES = segment_entries
    j = Journal(Path(folder))
    for i in range(n):
        j.append("ingest", worker=worker, i=i)


def test_concurrent_appends_from_two_processes(tmp_path: Path, small_segments: int) -> None:
    folder = tmp_path / "journal"
    n = 60
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_child, args=(str(folder), w, n, small_segments)) for w in (1, 2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    j = Journal(folder)
    assert j.verify() == []
    entries = list(j.entries())
    assert [e.seq for e in entries] == list(range(1, 2 * n + 1))
    for w in (1, 2):
        assert [e.fields["i"] for e in entries if e.fields["worker"] == w] == list(range(n))


def test_entries_of_missing_folder_is_empty(tmp_path: Path) -> None:
    assert list(read_entries(tmp_path / "nope")) == []
    j = Journal(tmp_path / "new")
    assert j.verify() == [] and j.segments() == []
    assert j.head() is None and j.verify() == []
