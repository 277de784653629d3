"""``coldvault audit``: the hash-chained journal after real activity, tampering detected, and no
patient id or document name ever written in clear (in the journal, or anywhere on a drive)."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from coldvault.ingest import Ingestor, IngestRequest
from tests.test_cli import Cli, Result, make_cli

KEPT = "PATIENT-QW-9902"
PURGED = "PATIENT-ZX-4417"
NAMES = ("bilan-sanguin-dupont.pdf", "courrier-cardiologue-martin.pdf", "scan-illisible-durand.pdf")
SECRETS = (KEPT, PURGED, *NAMES, "dupont", "martin", "durand")


@pytest.fixture(scope="module")
def active(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A vault with every kind of activity; built once, copied by each test."""
    base = tmp_path_factory.mktemp("active")
    mp = pytest.MonkeyPatch()
    try:
        import coldvault.age.scrypt as scrypt

        mp.setattr(scrypt, "DEFAULT_WORK_FACTOR", 10)
        _build(base, mp)
    finally:
        mp.undo()
    return base


class _Capture:
    """capsys for a module-scoped fixture: sys.stdout and sys.stderr into buffers."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.out, self.err = io.StringIO(), io.StringIO()
        mp.setattr(sys, "stdout", self.out)
        mp.setattr(sys, "stderr", self.err)

    def readouterr(self) -> tuple[str, str]:
        got = self.out.getvalue(), self.err.getvalue()
        for buf in (self.out, self.err):
            buf.seek(0)
            buf.truncate()
        return got


def _build(base: Path, mp: pytest.MonkeyPatch) -> None:
    cv = make_cli(base, _Capture(mp), mp)  # type: ignore[arg-type]
    cv.init()
    cv.ingest(KEPT, cv.write(NAMES[0]), date="2020-02-02")
    cv.ingest(PURGED, cv.write(NAMES[1]), date="2000-01-01")
    unsorted = cv.write(NAMES[2])
    with cv.catalog() as cat:
        ing = Ingestor(cv.vault, cat)
        (res,) = ing.ingest_batch([IngestRequest(unsorted, patient_id=None)])
        ing.close()
    assert res.doc_id is not None
    for args in (
        ("patient", "set", PURGED, "--born", "1950-01-01"),
        ("patient", "set", KEPT, "--born", "1960-01-01"),
        ("assign", res.doc_id, "--patient", KEPT),
        ("hold", KEPT, "--reason", "litige"),
        ("release", KEPT),
        ("drive", "enroll", str(_mkdir(base / "drive-A")), "--name", "A"),
        ("drive", "sync"),
        ("restore", KEPT, "--to", str(base / "out"), "--reason", "demande du patient"),
        ("verify",),
        ("purge", "--as-of", "2030-06-15", "--execute", "--yes", "--operator", "Dr X"),
        ("restore", KEPT, "--to", str(base / "out2"), "--reason", "confrère"),
        ("drive", "sync"),
    ):
        assert cv(*args).rc == 0, args


def _mkdir(p: Path) -> Path:
    p.mkdir()
    return p


@pytest.fixture
def cv(
    active: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Cli:
    for name in ("state", "drive-A", "passphrase", "coldvault.toml"):
        src = active / name
        if src.is_dir():
            shutil.copytree(src, tmp_path / name, symlinks=True)
        else:
            shutil.copy2(src, tmp_path / name)
    c = make_cli(tmp_path, capsys, monkeypatch)
    text = c.config.read_text().replace(str(active), str(tmp_path))
    c.config.write_text(text)
    with c.catalog() as cat:  # the directory drive moved with the copy
        cat.conn.execute("UPDATE drives SET path = ?", (str(tmp_path / "drive-A"),))
    return c


def _segment(cv: Cli) -> Path:
    (seg,) = sorted((cv.state / "journal").glob("*.jsonl"))
    return seg


def _edit(cv: Cli, change: Callable[[list[bytes]], list[bytes]]) -> Result:
    seg = _segment(cv)
    lines = seg.read_bytes().splitlines(keepends=True)
    seg.write_bytes(b"".join(change(lines)))
    return cv("audit", "--verify")


def _tampered(r: Result) -> None:
    assert r.rc == 1, r.err
    assert r.error_lines() and all(
        ln.startswith("coldvault: error: journal: ") for ln in r.error_lines()
    )
    assert "entries were edited, removed or reordered" in r.out


def test_verify_ok_after_activity(cv: Cli) -> None:
    r = cv("audit", "--verify")
    assert r.rc == 0, r.err
    assert "chain intact" in r.out and "signed manifest of drive 'A'" in r.out
    r = cv("audit", "--json")
    entries = [json.loads(ln) for ln in r.out.splitlines()]
    events = {e["event"] for e in entries}
    assert {"ingest", "restore", "purge", "hold", "release", "key-change", "sync"} <= events
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    restores = [e for e in entries if e["event"] == "restore"]
    assert [e["fields"]["reason"] for e in restores] == ["demande du patient", "confrère"]
    r = cv("audit", "--last", "2")
    assert r.rc == 0 and len(r.out.splitlines()) == 2


def test_an_edited_field_is_detected(cv: Cli) -> None:
    def change(lines: list[bytes]) -> list[bytes]:
        i = next(i for i, ln in enumerate(lines) if b'"reason":"demande du patient"' in ln)
        lines[i] = lines[i].replace(b"demande du patient", b"demande du juge...")
        return lines

    r = _edit(cv, change)
    _tampered(r)
    assert "was edited" in r.err


def test_a_removed_line_is_detected(cv: Cli) -> None:
    r = _edit(cv, lambda lines: lines[:3] + lines[4:])
    _tampered(r)
    assert "entry 4 is missing" in r.err


def test_reordered_lines_are_detected(cv: Cli) -> None:
    r = _edit(cv, lambda lines: [*lines[:3], lines[4], lines[3], *lines[5:]])
    _tampered(r)


def test_cut_off_newest_entries_are_detected_against_the_drive(cv: Cli) -> None:
    n = len(_segment(cv).read_bytes().splitlines())
    r = _edit(cv, lambda lines: lines[: n // 2])
    _tampered(r)
    assert "recorded elsewhere" in r.err
    # Without a drive plugged in, a consistent shorter chain cannot be told apart: say so.
    shutil.move(cv.tmp / "drive-A", cv.tmp / "away")
    r = cv("audit", "--verify")
    assert r.rc == 0 and "plug in a drive" in r.out


def test_a_torn_last_line_is_reported_but_not_tampering(cv: Cli) -> None:
    with open(_segment(cv), "ab") as f:
        f.write(b'{"event":"ingest","fie')
    r = cv("audit", "--verify")
    assert r.rc == 0
    assert "incomplete" in r.err
    # The next entry repairs it, with a warning entry recording what was cut off.
    cv.ingest(KEPT, cv.write("later.pdf"))
    r = cv("audit", "--verify")
    assert r.rc == 0 and not r.err


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


def test_no_patient_id_or_document_name_in_clear(cv: Cli) -> None:
    journal_files = _files(cv.state / "journal", cv.tmp / "drive-A" / "coldvault" / "journal")
    assert len(journal_files) >= 2
    # Everything on the drive and in the state folder: journal, records, manifests, catalog,
    # snapshots, objects, keys, README files.
    everything = _files(cv.state, cv.tmp / "drive-A")
    assert any(p.suffix == ".sqlite" for p in everything)
    for path in everything:
        data = path.read_bytes()
        for secret in SECRETS:
            for form in (secret.encode(), json.dumps(secret).encode()):
                assert form.lower() not in data.lower(), (secret, path)
    entries = [json.loads(ln) for ln in _segment(cv).read_bytes().splitlines() if ln.strip()]
    flat = json.dumps(entries)
    for secret in SECRETS:
        assert secret.lower() not in flat.lower()
    assert os.path.getsize(_segment(cv)) > 0
