"""docs/recovery.md works: its shell blocks, run as written with the real age, zstd, tar and
sqlite3, give every document back byte for byte under its name, from a real vault's drive.

The blocks to run are the fenced ``sh`` blocks whose first line is ``# test: <tags>``; a route
runs, in document order, every block carrying its tag. The test provides what a person would
type in step 0 and step 1 (``DRIVE``, ``WORK``, ``MASTER_KEY``, ``PATIENT``).

A classic (X25519) vault is opened with the ``age`` binary (Debian 12's age 1.1 reads only that
type). A post-quantum vault is opened with typage (npm ``age-encryption``, pinned in
tests/interop) behind a tiny ``age -d -i KEY [FILE]`` wrapper, which checks the claim of the doc
that typage opens it with the very same commands.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from coldvault.catalog.db import Catalog
from coldvault.drives import fsio
from coldvault.drives.station import Station, enroll
from coldvault.ingest import Ingestor, IngestRequest
from coldvault.vault import Vault
from tests.helpers import PASSPHRASE

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "recovery.md"
INTEROP = ROOT / "tests" / "interop"
TIMEOUT = 120

_BLOCK = re.compile(r"^```sh\n(# test: ([^\n]*)\n.*?)^```$", re.MULTILINE | re.DOTALL)


def doc_script(tag: str) -> str:
    """The blocks of docs/recovery.md tagged ``tag``, in order, as one script."""
    blocks = [m[1] for m in _BLOCK.finditer(DOC.read_text()) if tag in m[2].split()]
    assert blocks, f"docs/recovery.md has no sh block tagged '# test: ... {tag}'"
    return "\n".join(blocks)


def _need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt install {tool})")


@dataclass(frozen=True)
class Doc:
    patient: str | None
    key_id: str | None
    object_id: str
    name: str
    data: bytes


@dataclass(frozen=True)
class Built:
    drive: Path
    master_key: Path
    fingerprint: str
    docs: list[Doc]


def _build(tmp: Path, monkeypatch: pytest.MonkeyPatch, *, classic: bool) -> Built:
    """A real vault, a few documents for two patients plus one unsorted, synced to a directory
    drive whose file size limit is lowered so that the big document is split into parts."""
    created = Vault.create(tmp / "state", PASSPHRASE, classic=classic)
    vault = created.vault
    src = tmp / "src"
    src.mkdir()
    files = [
        ("0042 B", "compte rendu été.txt", ("Consultation du 3 mars.\n" * 200).encode()),
        ("0042 B", "scan 1.pdf", os.urandom(40_000)),  # incompressible, split into parts
        ("0042 B", "coldvault.json", b'{"not": "the metadata"}\n'),  # renamed in the tar
        ("12345", "lettre.txt", b"Cher confrere,\n" * 50),
        (None, "inconnu.txt", b"no patient found for this one\n"),
    ]
    requests = []
    for i, (patient, name, data) in enumerate(files):
        folder = src / str(i)
        folder.mkdir()
        (folder / name).write_bytes(data)
        requests.append(IngestRequest(folder / name, source="scanner", patient_id=patient))
    drive = tmp / "drive"
    drive.mkdir()
    # Simulate a FAT32-like limit: objects above 16 KiB go as 8 KiB parts.
    monkeypatch.setattr(fsio, "max_file_size", lambda *a, **k: 16 * 1024)
    monkeypatch.setattr(fsio, "BatchWriter", functools.partial(fsio.BatchWriter, part_size=8192))
    with Catalog(vault.catalog_path) as cat:
        ingestor = Ingestor(vault, cat)
        results = ingestor.ingest_batch(requests)
        ingestor.close()
        enroll(vault, cat, drive, "A", is_directory=True)
        report = Station(vault, cat, copies=1).sync(drive)
        assert report.complete, report
    docs = []
    for (patient, name, data), r in zip(files, results, strict=True):
        assert r.object_path is not None, r.error
        docs.append(Doc(patient, r.patient_ref, Path(r.object_path).stem, name, data))
    split = [p.name for p in (drive / "coldvault" / "objects").rglob("*.age.*")]
    assert len(split) >= 2, "the big document should have been split into parts"
    master_key = tmp / "work" / "master.key"
    master_key.parent.mkdir()
    master_key.write_text(created.recovery_key + "\n")
    return Built(drive, master_key, created.fingerprint, docs)


def _typage_age(tmp: Path) -> Path:
    """A folder holding an ``age`` that runs typage: ``age -d -i KEY [-i KEY] [FILE]``."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed (needed for typage, the post-quantum age)")
    if not (INTEROP / "node_modules" / "age-encryption").is_dir():
        pytest.skip("typage is not installed: run 'npm ci' in tests/interop")
    bindir = tmp / "bin"
    bindir.mkdir()
    wrapper = bindir / "age"
    wrapper.write_text(
        "#!/bin/bash\nset -e\nids=()\nfile=\n"
        "while [ $# -gt 0 ]; do case $1 in\n"
        '  -d) shift ;;\n  -i) ids+=(-i "$2"); shift 2 ;;\n  *) file=$1; shift ;;\n'
        "esac; done\n"
        f"script={INTEROP / 'decrypt.mjs'}\n"
        'if [ -n "$file" ]; then exec node "$script" "${ids[@]}" < "$file"; fi\n'
        'exec node "$script" "${ids[@]}"\n'
    )
    wrapper.chmod(0o755)
    return bindir


def _run(tag: str, built: Built, patient: str, bindir: Path | None = None) -> str:
    work = built.master_key.parent
    env = {
        "PATH": (f"{bindir}:" if bindir else "") + os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work),
        "LC_ALL": "C.UTF-8",
        "DRIVE": str(built.drive),
        "WORK": str(work),
        "MASTER_KEY": str(built.master_key),
        "PATIENT": patient,
    }
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", doc_script(tag)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, f"{tag} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "could not open" not in proc.stderr, proc.stderr
    return proc.stdout


def _expected_name(name: str) -> str:
    return "document-coldvault.json" if name == "coldvault.json" else name


def _check_folder(folder: Path, docs: list[Doc]) -> None:
    """``folder/<object-id>/`` holds exactly each document (and its coldvault.json)."""
    assert folder.is_dir(), f"{folder} was not created"
    assert sorted(p.name for p in folder.iterdir()) == sorted(d.object_id for d in docs)
    for d in docs:
        got = sorted(p.name for p in (folder / d.object_id).iterdir())
        assert got == sorted([_expected_name(d.name), "coldvault.json"])
        assert (folder / d.object_id / _expected_name(d.name)).read_bytes() == d.data


@pytest.fixture(params=["classic", "post-quantum"])
def built(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Built, Path | None]:
    _need("zstd", "tar", "sqlite3")
    if request.param == "classic":
        _need("age")
        bindir = None
    else:
        bindir = _typage_age(tmp_path)
    return _build(tmp_path, monkeypatch, classic=request.param == "classic"), bindir


def test_doc_blocks_are_tagged() -> None:
    for tag in ("catalog", "nocatalog", "everything", "verify"):
        assert doc_script(tag)


def test_recovery_with_the_catalog(built: tuple[Built, Path | None]) -> None:
    b, bindir = built
    out = _run("catalog", b, "0042 B", bindir)
    mine = [d for d in b.docs if d.patient == "0042 B"]
    _check_folder(b.master_key.parent / "out" / "0042 B", mine)
    # Step 5's checksum loop says OK for each document and never BAD.
    assert out.count("OK  ") == len(mine) and "BAD" not in out


def test_recovery_without_the_catalog(built: tuple[Built, Path | None]) -> None:
    b, bindir = built
    _run("nocatalog", b, "12345", bindir)
    _check_folder(
        b.master_key.parent / "out" / "12345", [d for d in b.docs if d.patient == "12345"]
    )
    assert not (b.master_key.parent / "catalog").exists()


def test_recovery_of_everything(built: tuple[Built, Path | None]) -> None:
    b, bindir = built
    _run("everything", b, "", bindir)
    out = b.master_key.parent / "out"
    groups: dict[str, list[Doc]] = {}
    for d in b.docs:
        groups.setdefault(d.key_id or "unsorted", []).append(d)
    assert sorted(p.name for p in out.iterdir()) == sorted(groups)
    for key_id, docs in groups.items():
        _check_folder(out / key_id, docs)


def test_manifest_signatures_and_fingerprint_by_hand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _need("openssl", "base32", "sha256sum")
    b = _build(tmp_path, monkeypatch, classic=True)
    out = _run("verify", b, "")
    assert "Signature Verified Successfully" in out
    assert out.strip().splitlines()[-1] == b.fingerprint
    # A manifest changed by one byte no longer verifies.
    m = next((b.drive / "coldvault" / "manifests").glob("*.txt"))
    m.write_bytes(m.read_bytes().replace(b"added ", b"added  ", 1))
    with pytest.raises(AssertionError, match="verify failed"):
        _run("verify", b, "")
