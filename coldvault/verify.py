"""Verify what an enrolled drive holds against the catalog and the drive's signed manifests.

Without the passphrase: every copy the catalog records is read back from the device and its
ciphertext size and SHA-256 compared; files the signed manifests do not vouch for, and files the
catalog does not know, are reported. With ``deep``: every object is also decrypted and its
plaintext checked against its own SHA-256 (needs the master identity).
A damaged or missing copy is forgotten in the catalog, so the next sync copies it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coldvault import keys
from coldvault import manifest as mf
from coldvault.catalog.db import Catalog, DriveRow
from coldvault.drives import fsio, layout
from coldvault.errors import ColdvaultError, DriveError
from coldvault.vault import Vault

log = logging.getLogger(__name__)


@dataclass
class VerifyReport:
    drive: str
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    not_vouched: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    manifest_problem: str | None = None

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.damaged or self.not_vouched or self.extra or self.manifest_problem
        )


def _drive_files(top: Path) -> set[str]:
    found: set[str] = set()
    for sub in (layout.OBJECTS_DIR, layout.KEYS_DIR):
        base = top / sub
        if not base.is_dir():
            continue
        for p in base.rglob("*"):
            if p.is_file() and not p.name.startswith("."):
                rel = p.relative_to(top).as_posix()
                # Parts of a split object count as the object.
                if rel[-4:-3] == "." and rel[-3:].isdigit():
                    rel = rel[:-4]
                found.add(rel)
    return found


def verify_drive(
    vault: Vault,
    catalog: Catalog,
    row: DriveRow,
    root: Path,
    *,
    deep: bool = False,
    master: keys.AnyIdentity | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> VerifyReport:
    from coldvault.drives.station import Station

    report = VerifyReport(row.name)
    station = Station(vault, catalog)
    station.identify(root)
    top = layout.vault_dir(root)
    vouched: mf.VouchedSet | None = None
    try:
        vouched = station.vouched(root, row)
    except ColdvaultError as exc:
        report.manifest_problem = exc.message
    device = fsio.cache_device(root)
    expected = {
        r[0]: (r[1], r[2])
        for r in catalog.conn.execute(
            "SELECT i.path, i.size, i.sha256 FROM copies c JOIN items i ON i.path = c.path "
            "WHERE c.drive_id = ?",
            (row.drive_id,),
        )
    }
    bad: list[str] = []
    total = len(expected)
    restorer = None
    if deep and master is not None:
        from coldvault.restore import Restorer

        restorer = Restorer(vault, catalog, master)
    key_cache: dict[str, keys.AnyIdentity] = {}
    for i, (rel, (size, sha)) in enumerate(sorted(expected.items())):
        if progress is not None and i % 100 == 0:
            progress("verify", i, total)
        target = top / rel
        try:
            got_size, got_sha = fsio.read_back_object(target.parent, target.name, device=device)
        except FileNotFoundError:
            report.missing.append(rel)
            bad.append(rel)
            continue
        except DriveError:
            raise
        except OSError:
            report.damaged.append(rel)
            bad.append(rel)
            continue
        report.checked += 1
        if (got_size, got_sha) != (size, sha):
            report.damaged.append(rel)
            bad.append(rel)
            continue
        if vouched is not None and not vouched.vouches(rel, got_size, got_sha):
            report.not_vouched.append(rel)
        deep_ok = restorer is None or not rel.startswith("objects/")
        if not deep_ok and not _deep_check(catalog, restorer, rel, target, key_cache, master):
            report.damaged.append(rel)
            bad.append(rel)
    if progress is not None:
        progress("verify", total, total)
    report.extra = sorted(_drive_files(top) - set(expected))
    if vouched is not None:
        # Files present but not vouched for, that the catalog does not list either.
        report.not_vouched += [p for p in report.extra if p not in vouched]
    if bad:
        with catalog.transaction():
            for rel in bad:
                catalog.forget_copy(rel, row.drive_id)
    return report


def _deep_check(
    catalog: Catalog,
    restorer: object,
    rel: str,
    target: Path,
    cache: dict[str, keys.AnyIdentity],
    master: keys.AnyIdentity | None,
) -> bool:
    from coldvault import objects
    from coldvault.restore import Restorer

    assert isinstance(restorer, Restorer) and master is not None
    row = catalog.conn.execute(
        "SELECT p.key_id FROM documents d LEFT JOIN patients p ON p.id = d.patient "
        "WHERE d.object_path = ?",
        (rel,),
    ).fetchone()
    try:
        if row is None or row[0] is None:
            identity: keys.AnyIdentity = master
        else:
            if row[0] not in cache:
                cache[row[0]] = restorer.patient_identity(row[0])
            identity = cache[row[0]]
        with fsio.open_object(target.parent, target.name) as f:
            objects.read_object_meta(f, [identity])
        return True
    except ColdvaultError as exc:
        log.error("object %s: %s", rel, exc.message)
        return False
