"""Disaster recovery from one drive and the paper recovery key, on a machine with nothing else.

``recover_documents`` writes every document (or one patient's) into a folder; ``rebuild_state``
recreates the state folder and catalog so the daemon can carry on on a new workstation.

Trust: the drive's marker names the vault's verify key; its fingerprint must match the one on
the recovery sheet. Every file used (key files, snapshots, objects) must then be vouched for by
the drive's signed manifests, or it is rejected by name. The newest readable snapshot maps
objects to patients; objects newer than the snapshot are matched by trying the patient keys, so
nothing on the drive is lost because its snapshot is older than its objects.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from coldvault import age, keys, objects
from coldvault import manifest as mf
from coldvault.catalog.sealing import Opener
from coldvault.drives import fsio, layout
from coldvault.errors import (
    AgeNoMatchError,
    AuthenticationError,
    ColdvaultError,
    IntegrityError,
    NotAvailable,
    VaultError,
)
from coldvault.restore import decrypt_to_folder, safe_name
from coldvault.signing import VerifyKey, fingerprints_match
from coldvault.snapshot import read_snapshot

log = logging.getLogger(__name__)

UNSORTED_FOLDER = "_non-classes"


@dataclass
class DriveContents:
    root: Path
    marker: layout.Marker
    verify_key: VerifyKey
    vouched: mf.VouchedSet
    patients: dict[str, keys.PatientKey]  # key id -> key (with identity)
    snapshot_dir: Path | None  # extracted newest readable snapshot
    by_object: dict[str, str | None] = field(default_factory=dict)  # object path -> key id
    names: dict[str, str] = field(default_factory=dict)  # object path -> name
    rejected: list[str] = field(default_factory=list)


def drive_fingerprint(root: Path) -> tuple[layout.Marker, str]:
    marker = layout.read_marker(root)
    return marker, VerifyKey.from_text(marker.verify_key).fingerprint()


def open_drive(
    root: Path, master: keys.AnyIdentity, fingerprint: str, workdir: Path
) -> DriveContents:
    """Check the drive against the recovery sheet and read its keys and newest snapshot."""
    marker, actual = drive_fingerprint(root)
    if not fingerprints_match(actual, fingerprint):
        raise IntegrityError(
            "the signing key on this drive does not match the fingerprint on the recovery sheet",
            hint=f"the drive says {actual}; if the sheet differs, the drive may have been forged",
        )
    verify_key = VerifyKey.from_text(marker.verify_key)
    top = layout.vault_dir(root)
    vouched = mf.load_manifest_folder(
        top / layout.MANIFESTS_DIR,
        verify_key,
        vault_id=marker.vault_id,
        drive_id=marker.drive_id,
    )
    contents = DriveContents(root, marker, verify_key, vouched, {}, None)
    opened_any = False
    for p in sorted((top / layout.KEYS_DIR).glob("*.age")):
        rel = f"{layout.KEYS_DIR}/{p.name}"
        data = p.read_bytes()
        if not vouched.vouches(rel, len(data), hashlib.sha256(data).hexdigest()):
            contents.rejected.append(rel)
            log.error("%s is not vouched for by the drive's signed manifests: ignored", rel)
            continue
        try:
            key = keys.open_patient_key(data, [master])
        except AuthenticationError:
            continue
        opened_any = True
        contents.patients[key.key_id] = key
    snaps = sorted((top / layout.CATALOG_DIR).glob("snapshot-*.age"), reverse=True)
    if not opened_any and not snaps and any(True for _ in (top / layout.KEYS_DIR).glob("*.age")):
        raise AuthenticationError("this recovery key does not open this drive's keys")
    for snap in snaps:
        rel = f"{layout.CATALOG_DIR}/{snap.name}"
        data = snap.read_bytes()
        if not vouched.vouches(rel, len(data), hashlib.sha256(data).hexdigest()):
            contents.rejected.append(rel)
            continue
        dest = workdir / "snapshot"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        try:
            with open(snap, "rb") as f:
                read_snapshot(f, [master], dest)
        except AgeNoMatchError:
            raise AuthenticationError(
                "this recovery key does not open this drive", hint="check the key on the sheet"
            ) from None
        except IntegrityError as exc:
            log.warning("snapshot %s is damaged (%s); trying an older one", snap.name, exc)
            continue
        contents.snapshot_dir = dest
        _read_mapping(contents, master)
        break
    else:
        if snaps:
            log.warning("no readable catalog snapshot: matching every object by its key")
    if not opened_any and contents.snapshot_dir is None:
        raise AuthenticationError("this recovery key does not open this drive")
    return contents


def _read_mapping(contents: DriveContents, master: keys.AnyIdentity) -> None:
    assert contents.snapshot_dir is not None
    conn = sqlite3.connect(f"file:{contents.snapshot_dir / 'catalog.sqlite'}?mode=ro", uri=True)
    try:
        opener = Opener(conn, [master])
        for path, key_id, sealed_name in conn.execute(
            "SELECT d.object_path, p.key_id, d.sealed_name FROM documents d "
            "LEFT JOIN patients p ON p.id = d.patient WHERE d.purged IS NULL"
        ):
            contents.by_object[path] = key_id
            try:
                name = opener.open(sealed_name)
            except ColdvaultError:
                name = None
            if name:
                contents.names[path] = name
    except sqlite3.DatabaseError as exc:
        log.warning("the catalog snapshot cannot be read (%s)", exc)
        contents.by_object.clear()
    finally:
        conn.close()


def drive_objects(top: Path) -> list[str]:
    out: set[str] = set()
    base = top / layout.OBJECTS_DIR
    if base.is_dir():
        for p in base.rglob("*.age*"):
            if p.name.startswith("."):
                continue
            rel = p.relative_to(top).as_posix()
            if not rel.endswith(".age"):
                rel = rel.rsplit(".", 1)[0]
            out.add(rel)
    return sorted(out)


@dataclass
class RecoverReport:
    restored: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    patients: set[str] = field(default_factory=set)


def recover_documents(
    root: Path,
    master: keys.AnyIdentity,
    fingerprint: str,
    dest: Path,
    *,
    patient_id: str | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> RecoverReport:
    report = RecoverReport()
    with tempfile.TemporaryDirectory(prefix="coldvault-recover-") as tmp:
        contents = open_drive(root, master, fingerprint, Path(tmp))
        report.rejected += contents.rejected
        by_patient = {k.key_id: k for k in contents.patients.values()}
        wanted_keys = None
        if patient_id is not None:
            wanted_keys = {k for k, v in by_patient.items() if v.patient_id == patient_id}
            if not wanted_keys:
                raise NotAvailable(f"patient {patient_id} has no key on this drive")
        top = layout.vault_dir(root)
        rels = drive_objects(top)
        all_ids: list[age.Identity] = [
            k.identity for k in by_patient.values() if k.identity is not None
        ]
        for i, rel in enumerate(rels):
            if progress is not None:
                progress("recover", i, len(rels))
            key_id = contents.by_object.get(rel, "?")
            if wanted_keys is not None and key_id != "?" and key_id not in wanted_keys:
                continue
            if key_id == "?":  # newer than the snapshot: try the keys
                candidates: list[age.Identity] = (
                    [by_patient[k].identity for k in wanted_keys]  # type: ignore[misc]
                    if wanted_keys is not None
                    else [*all_ids, master]
                )
            elif key_id is None:
                candidates = [master]
            else:
                key = by_patient.get(key_id)
                if key is None or key.identity is None:
                    report.damaged.append((rel, "its patient key is missing from the drive"))
                    continue
                candidates = [key.identity]
            target = top / rel
            if rel not in contents.vouched:
                report.rejected.append(rel)
                log.error("%s is not vouched for by the drive's signed manifests: rejected", rel)
                continue
            entry = contents.vouched[rel]
            try:
                folder, _ = _decrypt(target, candidates, dest, contents, entry, rel)
            except AgeNoMatchError as exc:
                if key_id == "?":
                    report.unmatched.append(rel)
                else:
                    report.damaged.append((rel, exc.message))
                continue
            except ColdvaultError as exc:
                report.damaged.append((rel, exc.message))
                continue
            report.restored += 1
            report.patients.add(folder)
        if progress is not None:
            progress("recover", len(rels), len(rels))
    return report


def _decrypt(
    target: Path,
    candidates: list[age.Identity],
    dest: Path,
    contents: DriveContents,
    entry: mf.Entry,
    rel: str,
) -> tuple[str, objects.DocumentMeta]:
    # Decrypt into a staging folder first: the patient folder is known from the metadata.
    staging = dest / ".coldvault-staging"
    path, meta = decrypt_to_folder(
        lambda: fsio.open_object(target.parent, target.name),
        candidates,
        staging,
        f"document-{os.path.basename(rel)}",
        expected_size=entry.size,
        expected_sha256=entry.sha256,
    )
    key = contents.patients.get(meta.patient_ref) if meta.patient_ref else None
    folder_name = (
        safe_name(key.patient_id, f"patient-{meta.patient_ref[:8]}")
        if key is not None
        else UNSORTED_FOLDER
    )
    from coldvault.restore import place_file

    final_dir = dest / folder_name
    final_dir.mkdir(parents=True, exist_ok=True)
    place_file(path, final_dir, path.name, meta.mtime)
    with contextlib.suppress(OSError):
        staging.rmdir()
    return folder_name, meta


def rebuild_state(
    root: Path,
    master: keys.AnyIdentity,
    fingerprint: str,
    state_dir: Path,
    passphrase: bytes,
) -> tuple[int, int]:
    """Recreate ``state_dir`` from the drive; returns (documents known, objects added)."""
    from coldvault.catalog.db import Catalog
    from coldvault.fsutil import private_dir, write_atomic
    from coldvault.vault import Vault

    if (state_dir / "vault.json").exists():
        raise VaultError(f"a vault already exists in {state_dir}; coldvault will not overwrite it")
    with tempfile.TemporaryDirectory(prefix="coldvault-rebuild-") as tmp:
        contents = open_drive(root, master, fingerprint, Path(tmp))
        if contents.snapshot_dir is None:
            raise IntegrityError(
                "no readable catalog snapshot on this drive: the state cannot be rebuilt from it",
                hint="use 'coldvault recover --to DIR' to get the documents back, or another drive",
            )
        private_dir(state_dir)
        os.chmod(state_dir, 0o700)
        for sub in ("spool/objects", "spool/keys", "journal", "records"):
            private_dir(state_dir / sub)
        for name in ("catalog.sqlite", "lookup.key", "signing.key", "vault.json"):
            shutil.copyfile(contents.snapshot_dir / name, state_dir / name)
            os.chmod(state_dir / name, 0o600 if name != "vault.json" else 0o644)
        vault_id = contents.marker.vault_id
        write_atomic(state_dir / "identity.age", keys.seal_master(master, vault_id, passphrase))
    # The audit journal goes on from the drive's copy (vouched for by the manifests).
    for seg in sorted((layout.vault_dir(root) / layout.JOURNAL_DIR).glob("*.jsonl")):
        rel = f"{layout.JOURNAL_DIR}/{seg.name}"
        data = seg.read_bytes()
        if contents.vouched.vouches(rel, len(data), hashlib.sha256(data).hexdigest()):
            write_atomic(state_dir / "journal" / seg.name, data)
    vault = Vault(state_dir)
    if str(master.recipient()) != vault.info.master_recipient:
        raise AuthenticationError("the recovery key is not this vault's current master key")
    top = layout.vault_dir(root)
    added = 0
    with Catalog(vault.catalog_path) as cat:
        drive_id = contents.marker.drive_id
        with cat.transaction():
            # The old spool is gone: only what is on drives exists now; keys come back locally.
            cat.conn.execute("UPDATE items SET in_spool = 0")
            for key in contents.patients.values():
                rel = f"{layout.KEYS_DIR}/{key.key_id}.age"
                data = (top / rel).read_bytes()
                write_atomic(vault.spool / rel, data)
                cat.add_item(rel, "key", len(data), hashlib.sha256(data).hexdigest())
            for rel in drive_objects(top):
                if rel not in contents.vouched:
                    continue
                entry = contents.vouched[rel]
                if cat.item(rel) is None:
                    added += _adopt_object(vault, cat, top, rel, entry, contents, master)
                    if cat.item(rel) is None:
                        continue
                cat.conn.execute("UPDATE items SET in_spool = 0 WHERE path = ?", (rel,))
                cat.record_copy(rel, drive_id, entry.sha256)
        docs = cat.counts()["documents"]
    return docs, added


def _adopt_object(
    vault: object,
    cat: object,
    top: Path,
    rel: str,
    entry: mf.Entry,
    contents: DriveContents,
    master: keys.AnyIdentity,
) -> int:
    """Record an object the snapshot did not know (written after it)."""
    from coldvault.catalog.db import Catalog
    from coldvault.catalog.sealing import Sealer
    from coldvault.vault import Vault

    assert isinstance(vault, Vault) and isinstance(cat, Catalog)
    identities: list[age.Identity] = [
        k.identity for k in contents.patients.values() if k.identity is not None
    ]
    target = top / rel
    try:
        with fsio.open_object(target.parent, target.name) as f:
            meta = objects.read_object_meta(f, [*identities, master])
    except ColdvaultError as exc:
        log.error("object %s cannot be read: %s", rel, exc.message)
        return 0
    patient = cat.patient_by_key_id(meta.patient_ref) if meta.patient_ref else None
    sealer = Sealer(cat.conn, vault.master_recipient(), vault.info.master_generation)
    cat.add_document(
        doc_id=meta.document_id,
        patient=patient.id if patient else None,
        object_path=rel,
        object_size=entry.size,
        object_sha256=entry.sha256,
        source=meta.source,
        kind=meta.kind,
        doc_date=meta.document_date,
        size=meta.size,
        sha256=meta.sha256,
        sealed_name=sealer.seal(meta.name),
        source_key=None,
        fingerprint=None,
        journaled=True,  # the journal came from the drive with the objects
    )
    return 1
