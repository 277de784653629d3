"""Patient facts (birth, death, last visit) and legal holds, sealed in the catalog.

Facts identify a patient, so they are sealed to the master (see ``catalog/sealing.py``); writing
them needs no passphrase, reading them (for a purge) does.
"""

from __future__ import annotations

from collections.abc import Sequence

from coldvault.catalog.db import Catalog, now_iso
from coldvault.catalog.sealing import Opener, Sealer
from coldvault.errors import NotAvailable
from coldvault.ingest import Ingestor
from coldvault.retention.facts import Facts, fact_problems
from coldvault.vault import Vault

__all__ = ["Facts", "fact_problems", "place_hold", "release_hold", "set_facts"]


def set_facts(
    vault: Vault,
    catalog: Catalog,
    rows: Sequence[tuple[str, Facts]],
    opener: Opener | None = None,
) -> int:
    """Record facts for patients (created if new), all in one transaction; returns the count.

    Given facts replace earlier ones field by field; without ``opener`` (no passphrase) the
    earlier facts cannot be read, so only the given fields are kept.
    """
    ingestor = Ingestor(vault, catalog)
    sealer = Sealer(catalog.conn, vault.master_recipient(), vault.info.master_generation)
    ids = [ingestor.patient_for(pid)[0] for pid, _ in rows]  # keys created first (own commits)
    with catalog.transaction():
        for pid_row, (_, facts) in zip(ids, rows, strict=True):
            old = catalog.conn.execute(
                "SELECT sealed_facts FROM patients WHERE id = ?", (pid_row,)
            ).fetchone()[0]
            current = Facts.from_json(opener.open(old)) if (opener and old) else Facts()
            catalog.conn.execute(
                "UPDATE patients SET sealed_facts = ? WHERE id = ?",
                (sealer.seal(current.merged(facts).to_json()), pid_row),
            )
    ingestor.close()
    return len(rows)


def _patient(vault: Vault, catalog: Catalog, patient_id: str) -> int:
    row = catalog.patient_by_lookup(vault.lookup("patient", patient_id))
    if row is None or row.purged:
        raise NotAvailable(f"no patient {patient_id} in the vault")
    return row.id


def place_hold(vault: Vault, catalog: Catalog, patient_id: str, reason: str) -> str:
    pid = _patient(vault, catalog, patient_id)
    sealer = Sealer(catalog.conn, vault.master_recipient(), vault.info.master_generation)
    with catalog.transaction():
        catalog.conn.execute(
            "INSERT INTO holds (patient, sealed_reason, placed) VALUES (?, ?, ?)",
            (pid, sealer.seal(reason), now_iso()),
        )
    key_id: str = catalog.conn.execute(
        "SELECT key_id FROM patients WHERE id = ?", (pid,)
    ).fetchone()[0]
    return key_id


def release_hold(vault: Vault, catalog: Catalog, patient_id: str) -> tuple[str, int]:
    pid = _patient(vault, catalog, patient_id)
    with catalog.transaction():
        cur = catalog.conn.execute(
            "UPDATE holds SET released = ? WHERE patient = ? AND released IS NULL",
            (now_iso(), pid),
        )
    if not cur.rowcount:
        raise NotAvailable(f"patient {patient_id} has no legal hold to release")
    key_id: str = catalog.conn.execute(
        "SELECT key_id FROM patients WHERE id = ?", (pid,)
    ).fetchone()[0]
    return key_id, cur.rowcount
