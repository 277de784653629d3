"""Every released format version must stay readable forever (brief §5).

``tests/fixtures/format-v1`` is a vault written by format version 1 (state folder and one drive),
committed once and never regenerated. This code must still restore it, verify it and recover it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from coldvault.catalog.db import Catalog
from coldvault.keys import parse_recovery_key
from coldvault.recover import recover_documents
from coldvault.restore import restore_patient
from coldvault.vault import Vault
from coldvault.verify import verify_drive

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("format-v*"))


def _copy(fixture: Path, tmp: Path) -> tuple[Path, dict]:  # type: ignore[type-arg]
    dest = tmp / fixture.name
    shutil.copytree(fixture, dest)
    # The drive folder moved: point the catalog at its new place.
    with Catalog(dest / "state" / "catalog.sqlite") as cat:
        cat.conn.execute("UPDATE drives SET path = ?", (str(dest / "drive"),))
    return dest, json.loads((fixture / "expected.json").read_text())


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_restore_and_verify_frozen_vault(fixture: Path, tmp_path: Path) -> None:
    root, expected = _copy(fixture, tmp_path)
    vault = Vault(root / "state")
    master = vault.unlock(expected["passphrase"].encode())
    with Catalog(vault.catalog_path) as cat:
        for pid, docs in expected["documents"].items():
            _, report = restore_patient(vault, cat, master, pid, tmp_path / "out")
            assert not report.damaged and not report.unavailable
            assert _hashes(tmp_path / "out" / pid) == docs
        row = cat.drives()[0]
        assert verify_drive(vault, cat, row, root / "drive").ok


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_recover_frozen_drive(fixture: Path, tmp_path: Path) -> None:
    root, expected = _copy(fixture, tmp_path)
    report = recover_documents(
        root / "drive",
        parse_recovery_key(expected["recovery_key"]),
        expected["fingerprint"],
        tmp_path / "rec",
    )
    assert not report.damaged and not report.rejected
    for pid, docs in expected["documents"].items():
        assert _hashes(tmp_path / "rec" / pid) == docs
