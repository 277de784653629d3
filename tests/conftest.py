"""Shared test fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def age_vectors_dir() -> Path | None:
    env = os.environ.get("COLDVAULT_AGE_VECTORS")
    for cand in ([Path(env)] if env else []) + [ROOT.parent / "shared" / "testvectors" / "age"]:
        if cand.is_dir():
            return cand
    return None


@pytest.fixture(autouse=True)
def _fast_scrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests use a low scrypt cost for passphrase-protected files (borg's habit)."""
    import coldvault.age.scrypt as scrypt

    monkeypatch.setattr(scrypt, "DEFAULT_WORK_FACTOR", 10)
