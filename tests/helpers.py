"""Builders for real vaults in temporary folders (imported by tests)."""

from __future__ import annotations

from pathlib import Path

from coldvault.catalog.db import Catalog
from coldvault.vault import Created, Vault

PASSPHRASE = b"correct horse battery staple"


def make_vault(tmp: Path, *, classic: bool = False) -> Created:
    return Vault.create(tmp / "state", PASSPHRASE, classic=classic)


def open_catalog(vault: Vault) -> Catalog:
    return Catalog(vault.catalog_path)
