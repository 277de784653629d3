"""The yearly purge: plan from the catalog's facts, then crypto-shred what expired.

Execution order (each step durable before the next):
  0. every object of the unsorted inbox (sealed to the master) is located, or nothing is done;
  1. the new master identity is sealed with the passphrase as ``identity.next.age`` (an
     interrupted purge's is taken up again, never replaced);
  2. the catalog records the purge in one transaction: patients marked purged, their documents
     and items forgotten, a deletion queued for every enrolled drive, the batch keys of sealed
     fields re-sealed to the new master, the destruction record;
  3. the destruction record's files are written; the purged key files and objects are removed
     from the spool;
  4. the unsorted inbox objects are re-encrypted to the new master (``coldvault.inbox``);
  5. every surviving patient key file is re-sealed to the new master (atomic per file) and its
     new hash recorded, so every drive "lacks" it until it receives the new version;
  6. ``vault.json`` names the new master, then ``identity.age`` becomes it; the old one is kept
     as ``identity.previous.age`` until every enrolled drive holds the re-sealed keys
     (:func:`finish_rotation`), then overwritten and removed.
While ``identity.next.age`` or ``identity.previous.age`` exist, :meth:`Vault.unlock_all` returns
both masters, so an interruption at any point leaves every key file openable; a purge stopped
before step 6 is finished by running ``purge --execute`` again, and one stopped within step 6
by the next unlock."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

from coldvault import keys
from coldvault.catalog.db import Catalog, now_iso
from coldvault.catalog.sealing import Opener
from coldvault.errors import VaultError
from coldvault.fsutil import fsync_dir, write_atomic
from coldvault.inbox import locate_inbox, reseal_inbox
from coldvault.patients import Facts
from coldvault.retention import record as rec
from coldvault.retention.rules import (
    DocumentFacts,
    PatientFacts,
    PurgePlan,
    RetentionSettings,
    plan,
)
from coldvault.vault import NEXT_MASTER, PREVIOUS_MASTER, Vault

log = logging.getLogger(__name__)


def gather_facts(catalog: Catalog, opener: Opener) -> list[PatientFacts]:
    out: list[PatientFacts] = []
    for p in catalog.patients():
        if p.purged:
            continue
        facts = Facts.from_json(opener.open(p.sealed_facts))
        holds = [
            opener.open(r[0]) or ""
            for r in catalog.conn.execute(
                "SELECT sealed_reason FROM holds WHERE patient = ? AND released IS NULL", (p.id,)
            )
        ]
        docs = [
            DocumentFacts(
                d.doc_id,
                d.object_path,
                d.kind or None,
                date.fromisoformat(d.doc_date or d.archived_at[:10]),
            )
            for d in catalog.documents(p.id)
        ]
        out.append(
            PatientFacts(
                ref=p.key_id,
                born=facts.born,
                died=facts.died,
                last_visit=facts.last_visit,
                held=bool(holds),
                hold_reason="; ".join(holds) or None,
                documents=docs,
            )
        )
    return out


def make_plan(
    catalog: Catalog, master: list[keys.AnyIdentity], settings: RetentionSettings, as_of: date
) -> PurgePlan:
    opener = Opener(catalog.conn, master)
    return plan(gather_facts(catalog, opener), settings.profile, settings.kinds, as_of)


@dataclass
class PurgeResult:
    record: rec.DestructionRecord | None  # None: nothing destroyed (a rotation resumed)
    json_path: Path | None
    html_path: Path | None
    new_recovery_key: str
    destroyed_patients: int
    destroyed_documents: int
    resumed: bool = False  # an interrupted purge's master rotation was finished


def rotation_pending(vault: Vault) -> bool:
    """An earlier purge stopped before it switched to its new master: run it again."""
    return (vault.state_dir / NEXT_MASTER).exists()


def execute(
    vault: Vault,
    catalog: Catalog,
    masters: list[keys.AnyIdentity],
    purge_plan: PurgePlan,
    *,
    passphrase: bytes,
    operator: str,
) -> PurgeResult:
    """Destroy what the plan says, then rotate the master.

    Crash safety: the catalog changes and the destruction record are one transaction; the new
    master is sealed in ``identity.next.age`` before anything is sealed to it, and an
    interrupted rotation is finished by the next ``execute`` with that same master (see
    :func:`rotation_pending`), nothing to destroy needed. It holds the vault's rotation lock,
    so a running daemon's ingest waits, then seals to the new master.
    """
    with vault.rotation_lock(exclusive=True):
        vault.reload_info()
        return _execute(
            vault, catalog, masters, purge_plan, passphrase=passphrase, operator=operator
        )


def _execute(
    vault: Vault,
    catalog: Catalog,
    masters: list[keys.AnyIdentity],
    purge_plan: PurgePlan,
    *,
    passphrase: bytes,
    operator: str,
) -> PurgeResult:
    purge_id = secrets.token_hex(8)
    # The unsorted inbox is sealed to the master: every object of it must be at hand to be
    # carried over to the new master (checked before anything changes).
    inbox = locate_inbox(vault, catalog, masters)
    resumed = rotation_pending(vault)
    new_master = _next_master(vault, passphrase)
    new_recipient = new_master.recipient()
    generation = vault.info.master_generation + 1
    drives = catalog.drives()
    destroyed: list[rec.DestroyedPatient] = []
    paths: list[str] = []
    n_docs = 0
    record: rec.DestructionRecord | None = None
    with catalog.transaction():
        for decision in purge_plan.decisions:
            docs = decision.documents_to_destroy
            if not docs:
                continue
            row = catalog.patient_by_key_id(decision.ref)
            assert row is not None
            if decision.destroy_key and {d.doc_id for d in catalog.documents(row.id)} - {
                d.doc_id for d in docs
            }:
                # A new document since the plan: a new visit restarts the clock. Kept.
                log.warning("patient %s has new documents since the plan: kept", decision.ref)
                continue
            hashes: list[str] = []
            for d in docs:
                obj = str(d.object_id)
                item = catalog.item(obj)
                if item is not None:
                    hashes.append(item[2])
                # The row goes (its item goes too, and documents reference items): the
                # destruction record keeps the count and the object hashes.
                catalog.conn.execute("DELETE FROM source_files WHERE doc_id = ?", (d.doc_id,))
                catalog.conn.execute("DELETE FROM documents WHERE doc_id = ?", (d.doc_id,))
                paths.append(obj)
            n_docs += len(docs)
            if decision.destroy_key:
                catalog.conn.execute(
                    "UPDATE patients SET purged = ?, sealed_facts = NULL, sealed_id = X'', "
                    "lookup = 'purged:' || key_id WHERE id = ?",
                    (now_iso(), row.id),
                )
                catalog.conn.execute("DELETE FROM holds WHERE patient = ?", (row.id,))
                paths.append(f"keys/{row.key_id}.age")
            destroyed.append(
                rec.DestroyedPatient(
                    ref=decision.ref,
                    document_count=len(docs),
                    object_hashes=tuple(sorted(hashes)),
                    drives_pending=tuple(sorted(dr.name for dr in drives)),
                    scope="patient" if decision.destroy_key else "documents",
                    rule=decision.rule,
                )
            )
        for path in paths:
            catalog.conn.execute("DELETE FROM items WHERE path = ?", (path,))
            for dr in drives:
                catalog.conn.execute(
                    "INSERT OR IGNORE INTO deletions (path, drive_id, purge_id) VALUES (?, ?, ?)",
                    (path, dr.drive_id, purge_id),
                )
        # Old snapshots (sealed to the old master, listing the purged) go from every drive too.
        for dr in drives:
            catalog.conn.execute(
                "INSERT OR IGNORE INTO deletions (path, drive_id, purge_id) VALUES (?, ?, ?)",
                ("catalog/*", dr.drive_id, purge_id),
            )
        Opener(catalog.conn, [*masters, new_master]).reseal_all(new_recipient, generation)
        if destroyed:
            record = rec.DestructionRecord(
                vault_id=vault.info.vault_id,
                created=datetime.now(UTC),
                operator=operator,
                profile=purge_plan.profile,
                as_of=purge_plan.as_of,
                patients=tuple(destroyed),
            )
            catalog.conn.execute(
                "INSERT INTO purges (purge_id, executed, record_json) VALUES (?, ?, ?)",
                (purge_id, now_iso(), rec.render_json(record)),
            )
    json_path = html_path = None
    if record is not None:
        json_path, html_path = write_record(vault, record, purge_id)
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(vault.spool / path)
    fsync_dir(vault.spool / "keys")
    reseal_inbox(vault, catalog, inbox, [*masters, new_master], new_recipient)
    # Re-seal every surviving patient key to the new master.
    for p in catalog.patients():
        if p.purged:
            continue
        rel = f"keys/{p.key_id}.age"
        data = (vault.spool / rel).read_bytes()
        resealed = keys.reseal_patient_key(data, [*masters, new_master], new_recipient)
        write_atomic(vault.spool / rel, resealed)
        with catalog.transaction():
            catalog.add_item(rel, "key", len(resealed), hashlib.sha256(resealed).hexdigest())
    # Switch masters: vault.json first (a crash after it is finished by the next unlock, see
    # Vault.unlock); the old master stays sealed until every drive has the new keys.
    vault.update_info(master_recipient=str(new_recipient), master_generation=generation)
    vault.switch_master()
    return PurgeResult(
        record,
        json_path,
        html_path,
        str(new_master),
        len([d for d in destroyed if d.scope == "patient"]),
        n_docs,
        resumed,
    )


def _next_master(vault: Vault, passphrase: bytes) -> keys.AnyIdentity:
    """The master identity the purge rotates to. A purge stopped before it switched masters
    left it in ``identity.next.age``, and what it had already sealed to it: it is taken up
    again, never replaced."""
    path = vault.state_dir / NEXT_MASTER
    if path.exists():
        log.warning("resuming the master rotation of an interrupted purge")
        return keys.unseal_master(path.read_bytes(), passphrase)
    identity = keys.generate_identity(classic=not vault.info.post_quantum)
    write_atomic(path, keys.seal_master(identity, vault.info.vault_id, passphrase))
    return identity


def write_record(vault: Vault, record: rec.DestructionRecord, purge_id: str) -> tuple[Path, Path]:
    vault.records_dir.mkdir(mode=0o700, exist_ok=True)
    stem = f"destruction-{record.created.strftime('%Y%m%d-%H%M%S')}-{purge_id[:6]}"
    json_path = vault.records_dir / f"{stem}.json"
    html_path = vault.records_dir / f"{stem}.html"
    write_atomic(json_path, rec.render_json(record).encode("utf-8"), 0o644)
    write_atomic(html_path, rec.render_html(record).encode("utf-8"), 0o644)
    return json_path, html_path


def update_record_confirmations(vault: Vault, catalog: Catalog) -> None:
    """Refresh each stored destruction record's confirmed / pending drives."""
    names = {d.drive_id: d.name for d in catalog.drives(include_retired=True)}
    for purge_id, record_json in catalog.conn.execute(
        "SELECT purge_id, record_json FROM purges"
    ).fetchall():
        pending = {
            names.get(r[0], r[0])
            for r in catalog.conn.execute(
                "SELECT DISTINCT drive_id FROM deletions WHERE purge_id = ?", (purge_id,)
            )
        }
        record = rec.load_json(record_json)
        patients = []
        for p in record.patients:
            everyone = set(p.drives_pending) | set(p.drives_confirmed)
            patients.append(
                rec.DestroyedPatient(
                    ref=p.ref,
                    document_count=p.document_count,
                    object_hashes=p.object_hashes,
                    drives_confirmed=tuple(sorted(everyone - pending)),
                    drives_pending=tuple(sorted(everyone & pending)),
                    scope=p.scope,
                    rule=p.rule,
                    kept_until=p.kept_until,
                )
            )
        new = rec.DestructionRecord(
            vault_id=record.vault_id,
            created=record.created,
            operator=record.operator,
            profile=record.profile,
            as_of=record.as_of,
            patients=tuple(patients),
        )
        if rec.render_json(new) != record_json:
            with catalog.transaction():
                catalog.conn.execute(
                    "UPDATE purges SET record_json = ? WHERE purge_id = ?",
                    (rec.render_json(new), purge_id),
                )
            write_record(vault, new, purge_id)


def finish_rotation(vault: Vault, catalog: Catalog) -> bool:
    """Destroy the previous master once every enrolled drive holds the re-sealed keys."""
    previous = vault.state_dir / PREVIOUS_MASTER
    if not previous.exists():
        return False
    for d in catalog.drives():
        lacking_keys = [p for p, kind, _, _ in catalog.lacking(d.drive_id) if kind == "key"]
        if lacking_keys or catalog.pending_deletions(d.drive_id):
            return False
    size = previous.stat().st_size
    with open(previous, "r+b") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())
    previous.unlink()
    fsync_dir(vault.state_dir)
    log.info("every drive has the re-sealed keys: the previous master identity was destroyed")
    return True


def plan_summary(purge_plan: PurgePlan) -> dict[str, object]:
    return json.loads(json.dumps(purge_plan.to_dict()))  # type: ignore[no-any-return]


__all__ = ["PurgeResult", "VaultError", "execute", "finish_rotation", "make_plan"]
