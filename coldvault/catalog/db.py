"""The catalog: SQLite in WAL mode on the workstation.

It holds no patient identifier or document name in clear: patients are found by a keyed hash
(see :meth:`coldvault.vault.Vault.lookup`), names and facts are sealed (see ``sealing.py``).
Every multi-row change runs in one ``BEGIN IMMEDIATE`` transaction, so a crash leaves either all
of it or none.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from coldvault.catalog.schema import migrate
from coldvault.errors import VaultError


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class PatientRow:
    id: int
    key_id: str
    recipient: str
    sealed_id: bytes
    sealed_facts: bytes | None
    purged: str | None


@dataclass(frozen=True)
class DocumentRow:
    doc_id: str
    patient: int | None
    key_id: str | None
    object_path: str
    source: str
    kind: str
    doc_date: str | None
    archived_at: str
    size: int
    sha256: str
    sealed_name: bytes | None
    purged: str | None


@dataclass(frozen=True)
class DriveRow:
    drive_id: str
    name: str
    fs_uuid: str | None
    label: str | None
    serial: str | None
    path: str | None
    is_directory: bool
    enrolled: str
    last_seen: str | None
    last_sync: str | None
    manifest_seq: int | None
    manifest_digest: str | None
    retired: str | None


_DRIVE_COLUMNS = (
    "drive_id, name, fs_uuid, label, serial, path, is_directory, enrolled, last_seen, "
    "last_sync, manifest_seq, manifest_digest, retired"
)

_DOC_COLUMNS = (
    "d.doc_id, d.patient, p.key_id, d.object_path, d.source, d.kind, d.doc_date, "
    "d.archived_at, d.size, d.sha256, d.sealed_name, d.purged"
)


class Catalog:
    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        try:
            if readonly:
                uri = f"file:{self.path}?mode=ro"
                self.conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30)
            else:
                self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
                self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.execute("PRAGMA secure_delete=ON")
            self.conn.execute("PRAGMA synchronous=FULL")
            if not readonly:
                migrate(self.conn)
        except sqlite3.DatabaseError as exc:
            raise VaultError(f"the catalog {self.path} cannot be opened: {exc}") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- patients ------------------------------------------------------------------------
    def patient_by_lookup(self, lookup: str) -> PatientRow | None:
        row = self.conn.execute(
            "SELECT id, key_id, recipient, sealed_id, sealed_facts, purged FROM patients "
            "WHERE lookup = ?",
            (lookup,),
        ).fetchone()
        return PatientRow(*row) if row else None

    def patient_by_key_id(self, key_id: str) -> PatientRow | None:
        row = self.conn.execute(
            "SELECT id, key_id, recipient, sealed_id, sealed_facts, purged FROM patients "
            "WHERE key_id = ?",
            (key_id,),
        ).fetchone()
        return PatientRow(*row) if row else None

    def patients(self) -> list[PatientRow]:
        rows = self.conn.execute(
            "SELECT id, key_id, recipient, sealed_id, sealed_facts, purged FROM patients "
            "ORDER BY id"
        ).fetchall()
        return [PatientRow(*r) for r in rows]

    def add_patient(
        self,
        lookup: str,
        key_id: str,
        recipient: str,
        sealed_id: bytes,
        key_size: int,
        key_sha256: str,
    ) -> int:
        """Insert a patient and its key file item; call inside :meth:`transaction`."""
        self.add_item(f"keys/{key_id}.age", "key", key_size, key_sha256)
        cur = self.conn.execute(
            "INSERT INTO patients (lookup, key_id, recipient, sealed_id, created) "
            "VALUES (?, ?, ?, ?, ?)",
            (lookup, key_id, recipient, sealed_id, now_iso()),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    # --- items ---------------------------------------------------------------------------
    def add_item(self, path: str, kind: str, size: int, sha256: str) -> None:
        self.conn.execute(
            "INSERT INTO items (path, kind, size, sha256, in_spool, created) "
            "VALUES (?, ?, ?, ?, 1, ?) ON CONFLICT(path) DO UPDATE SET "
            "size = excluded.size, sha256 = excluded.sha256, in_spool = 1",
            (path, kind, size, sha256, now_iso()),
        )

    def item(self, path: str) -> tuple[str, int, str, bool] | None:
        row = self.conn.execute(
            "SELECT kind, size, sha256, in_spool FROM items WHERE path = ?", (path,)
        ).fetchone()
        return (row[0], row[1], row[2], bool(row[3])) if row else None

    # --- documents -----------------------------------------------------------------------
    def is_archived(self, source_key: str, fingerprint: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM documents WHERE source_key = ? AND fingerprint = ? LIMIT 1",
            (source_key, fingerprint),
        ).fetchone()
        return row is not None

    def add_document(
        self,
        *,
        doc_id: str,
        patient: int | None,
        object_path: str,
        object_size: int,
        object_sha256: str,
        source: str,
        kind: str,
        doc_date: str | None,
        size: int,
        sha256: str,
        sealed_name: bytes,
        source_key: str | None,
        fingerprint: str | None,
        delete_source: tuple[str, str] | None = None,
        journaled: bool = False,
    ) -> None:
        """Record a spooled object and its document; call inside :meth:`transaction`.

        The document stays marked unjournaled until :meth:`mark_journaled` (after its 'ingest'
        audit entry is appended), so a crash in between is caught up at the next start."""
        self.add_item(object_path, "object", object_size, object_sha256)
        self.conn.execute(
            "INSERT INTO documents (doc_id, patient, object_path, source, kind, doc_date, "
            "archived_at, size, sha256, sealed_name, source_key, fingerprint, unjournaled) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                doc_id,
                patient,
                object_path,
                source,
                kind,
                doc_date,
                now_iso(),
                size,
                sha256,
                sealed_name,
                source_key,
                fingerprint,
                None if journaled else 1,
            ),
        )
        if delete_source is not None and fingerprint is not None:
            self.conn.execute(
                "INSERT INTO source_files (doc_id, source, relpath, fingerprint) "
                "VALUES (?, ?, ?, ?)",
                (doc_id, delete_source[0], delete_source[1], fingerprint),
            )

    def unjournaled_documents(self) -> list[tuple[str, str]]:
        """(doc_id, source) of documents whose ingest is not in the audit journal yet."""
        return [
            (str(d), str(s))
            for d, s in self.conn.execute(
                "SELECT doc_id, source FROM documents WHERE unjournaled IS NOT NULL ORDER BY id"
            )
        ]

    def mark_journaled(self, doc_ids: list[str]) -> None:
        """The 'ingest' audit entry of these documents is appended."""
        for i in range(0, len(doc_ids), 500):
            chunk = doc_ids[i : i + 500]
            self.conn.execute(
                "UPDATE documents SET unjournaled = NULL WHERE unjournaled IS NOT NULL AND "
                f"doc_id IN ({', '.join('?' * len(chunk))})",
                chunk,
            )

    def documents(
        self,
        patient: int | None = None,
        *,
        unsorted: bool = False,
        since: str | None = None,
        until: str | None = None,
        doc_id: str | None = None,
        include_purged: bool = False,
    ) -> list[DocumentRow]:
        sql = (
            f"SELECT {_DOC_COLUMNS} FROM documents d LEFT JOIN patients p ON p.id = d.patient "
            "WHERE 1=1"
        )
        args: list[object] = []
        if patient is not None:
            sql += " AND d.patient = ?"
            args.append(patient)
        if unsorted:
            sql += " AND d.patient IS NULL"
        if doc_id is not None:
            sql += " AND d.doc_id LIKE ?"
            args.append(doc_id + "%")
        if since is not None:
            sql += " AND COALESCE(d.doc_date, substr(d.archived_at, 1, 10)) >= ?"
            args.append(since)
        if until is not None:
            sql += " AND COALESCE(d.doc_date, substr(d.archived_at, 1, 10)) <= ?"
            args.append(until)
        if not include_purged:
            sql += " AND d.purged IS NULL"
        sql += " ORDER BY d.patient, d.archived_at, d.id"
        return [DocumentRow(*r) for r in self.conn.execute(sql, args)]

    def assign(self, doc_id: str, patient: int) -> None:
        self.conn.execute("UPDATE documents SET patient = ? WHERE doc_id = ?", (patient, doc_id))

    def copies_of(self, path: str) -> list[str]:
        """Names of the drives holding a verified copy of ``path``."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT dr.name FROM copies c JOIN drives dr ON dr.drive_id = c.drive_id "
                "JOIN items i ON i.path = c.path "
                "WHERE c.path = ? AND c.sha256 = i.sha256 ORDER BY dr.name",
                (path,),
            )
        ]

    def counts(self) -> dict[str, int]:
        q = self.conn.execute
        return {
            "patients": q("SELECT COUNT(*) FROM patients WHERE purged IS NULL").fetchone()[0],
            "documents": q("SELECT COUNT(*) FROM documents WHERE purged IS NULL").fetchone()[0],
            "unsorted": q(
                "SELECT COUNT(*) FROM documents WHERE patient IS NULL AND purged IS NULL"
            ).fetchone()[0],
            "spool_items": q("SELECT COUNT(*) FROM items WHERE in_spool = 1").fetchone()[0],
            "spool_bytes": q(
                "SELECT COALESCE(SUM(size), 0) FROM items WHERE in_spool = 1"
            ).fetchone()[0],
        }

    # --- drives --------------------------------------------------------------------------
    def add_drive(
        self,
        drive_id: str,
        name: str,
        *,
        fs_uuid: str | None,
        label: str | None,
        serial: str | None,
        path: str | None,
        is_directory: bool,
    ) -> None:
        self.conn.execute(
            "INSERT INTO drives (drive_id, name, fs_uuid, label, serial, path, is_directory, "
            "enrolled) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (drive_id, name, fs_uuid, label, serial, path, int(is_directory), now_iso()),
        )

    def drives(self, *, include_retired: bool = False) -> list[DriveRow]:
        sql = f"SELECT {_DRIVE_COLUMNS} FROM drives"
        if not include_retired:
            sql += " WHERE retired IS NULL"
        return [self._drive(r) for r in self.conn.execute(sql + " ORDER BY enrolled, name")]

    @staticmethod
    def _drive(row: tuple[object, ...]) -> DriveRow:
        values = list(row)
        values[6] = bool(values[6])
        return DriveRow(*values)  # type: ignore[arg-type]

    def drive(
        self, *, drive_id: str | None = None, name: str | None = None, fs_uuid: str | None = None
    ) -> DriveRow | None:
        if drive_id is not None:
            where, arg = "drive_id = ?", drive_id
        elif name is not None:
            where, arg = "name = ?", name
        elif fs_uuid is not None:
            where, arg = "fs_uuid = ?", fs_uuid
        else:
            return None
        row = self.conn.execute(f"SELECT {_DRIVE_COLUMNS} FROM drives WHERE {where}", (arg,))
        found = row.fetchone()
        return self._drive(found) if found else None

    def touch_drive(self, drive_id: str, *, synced: bool = False, path: str | None = None) -> None:
        now = now_iso()
        self.conn.execute(
            "UPDATE drives SET last_seen = ?, last_sync = CASE WHEN ? THEN ? ELSE last_sync END, "
            "path = COALESCE(?, path) WHERE drive_id = ?",
            (now, synced, now, path, drive_id),
        )

    def set_manifest_head(self, drive_id: str, seq: int, digest: str) -> None:
        self.conn.execute(
            "UPDATE drives SET manifest_seq = ?, manifest_digest = ? WHERE drive_id = ?",
            (seq, digest, drive_id),
        )

    def lacking(self, drive_id: str) -> list[tuple[str, str, int, str]]:
        """Items in the spool this drive has no verified copy of: (path, kind, size, sha256)."""
        return list(
            self.conn.execute(
                "SELECT i.path, i.kind, i.size, i.sha256 FROM items i WHERE i.in_spool = 1 "
                "AND NOT EXISTS (SELECT 1 FROM copies c WHERE c.path = i.path "
                "AND c.drive_id = ? AND c.sha256 = i.sha256) "
                "ORDER BY CASE i.kind WHEN 'key' THEN 0 ELSE 1 END, i.path",
                (drive_id,),
            )
        )

    def lacking_elsewhere(self, drive_id: str) -> list[tuple[str, str, int, str]]:
        """Items this drive lacks that are no longer in the spool (other drives hold them: a
        copy found damaged or missing, or a drive enrolled late): (path, kind, size, sha256)."""
        return list(
            self.conn.execute(
                "SELECT i.path, i.kind, i.size, i.sha256 FROM items i WHERE i.in_spool = 0 "
                "AND NOT EXISTS (SELECT 1 FROM copies c WHERE c.path = i.path "
                "AND c.drive_id = ? AND c.sha256 = i.sha256) ORDER BY i.path",
                (drive_id,),
            )
        )

    def holders(self, path: str, sha256: str) -> list[str]:
        """Drives (ids) holding a verified copy of this version of an item."""
        return [
            str(r[0])
            for r in self.conn.execute(
                "SELECT c.drive_id FROM copies c JOIN drives d ON d.drive_id = c.drive_id "
                "AND d.retired IS NULL WHERE c.path = ? AND c.sha256 = ?",
                (path, sha256),
            )
        ]

    def record_copy(self, path: str, drive_id: str, sha256: str) -> None:
        self.conn.execute(
            "INSERT INTO copies (path, drive_id, sha256, verified_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(path, drive_id) DO UPDATE SET sha256 = excluded.sha256, "
            "verified_at = excluded.verified_at",
            (path, drive_id, sha256, now_iso()),
        )

    def copies_on(
        self, drive_id: str, *, since: datetime | None = None
    ) -> list[tuple[str, int, str]]:
        """Current copies recorded on a drive, verified at ``since`` or later (all if None):
        (path, size, sha256)."""
        sql = (
            "SELECT c.path, i.size, c.sha256 FROM copies c JOIN items i ON i.path = c.path "
            "AND i.sha256 = c.sha256 WHERE c.drive_id = ?"
        )
        args: tuple[object, ...] = (drive_id,)
        if since is not None:
            sql += " AND c.verified_at >= ?"
            args += (since.astimezone(UTC).isoformat(timespec="seconds"),)
        return [(str(p), int(n), str(h)) for p, n, h in self.conn.execute(sql, args)]

    def forget_copy(self, path: str, drive_id: str) -> None:
        self.conn.execute("DELETE FROM copies WHERE path = ? AND drive_id = ?", (path, drive_id))

    def drive_holdings(self, drive_id: str) -> tuple[int, int]:
        """(number of items, bytes) with a verified copy on the drive."""
        row = self.conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(i.size), 0) FROM copies c JOIN items i "
            "ON i.path = c.path AND i.sha256 = c.sha256 WHERE c.drive_id = ?",
            (drive_id,),
        ).fetchone()
        return int(row[0]), int(row[1])

    def fully_copied_spool_objects(self, copies: int) -> list[str]:
        """Spool objects with at least ``copies`` verified copies on enrolled drives."""
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT i.path FROM items i JOIN copies c ON c.path = i.path "
                "AND c.sha256 = i.sha256 JOIN drives d ON d.drive_id = c.drive_id "
                "AND d.retired IS NULL WHERE i.in_spool = 1 AND i.kind = 'object' "
                "GROUP BY i.path HAVING COUNT(*) >= ?",
                (copies,),
            )
        ]

    def verified_copy_count(self, path: str) -> int:
        return int(
            self.conn.execute(
                "SELECT COUNT(*) FROM copies c JOIN items i ON i.path = c.path "
                "AND i.sha256 = c.sha256 JOIN drives d ON d.drive_id = c.drive_id "
                "AND d.retired IS NULL WHERE c.path = ?",
                (path,),
            ).fetchone()[0]
        )

    def set_in_spool(self, path: str, in_spool: bool) -> None:
        self.conn.execute("UPDATE items SET in_spool = ? WHERE path = ?", (int(in_spool), path))

    def source_files_ready(self, copies: int) -> list[tuple[str, str, str, str]]:
        """Originals whose object has ``copies`` verified copies: (doc_id, source, relpath,
        fingerprint)."""
        return list(
            self.conn.execute(
                "SELECT s.doc_id, s.source, s.relpath, s.fingerprint FROM source_files s "
                "JOIN documents d ON d.doc_id = s.doc_id WHERE (SELECT COUNT(*) FROM copies c "
                "JOIN items i ON i.path = c.path AND i.sha256 = c.sha256 JOIN drives dr ON "
                "dr.drive_id = c.drive_id AND dr.retired IS NULL "
                "WHERE c.path = d.object_path) >= ?",
                (copies,),
            )
        )

    def forget_source_file(self, doc_id: str) -> None:
        self.conn.execute("DELETE FROM source_files WHERE doc_id = ?", (doc_id,))

    def has_purges(self) -> bool:
        return self.conn.execute("SELECT 1 FROM purges LIMIT 1").fetchone() is not None

    def pending_deletions(self, drive_id: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT path FROM deletions WHERE drive_id = ? ORDER BY path", (drive_id,)
            )
        ]

    def done_deletion(self, path: str, drive_id: str) -> None:
        self.conn.execute("DELETE FROM deletions WHERE path = ? AND drive_id = ?", (path, drive_id))
        self.forget_copy(path, drive_id)

    def pending_sources(self) -> list[tuple[str, int, int]]:
        """(source, documents, bytes) still in the spool, per source."""
        return list(
            self.conn.execute(
                "SELECT d.source, COUNT(*), COALESCE(SUM(i.size), 0) FROM documents d "
                "JOIN items i ON i.path = d.object_path WHERE i.in_spool = 1 "
                "AND d.purged IS NULL GROUP BY d.source ORDER BY d.source"
            )
        )

    def oldest_pending(self) -> str | None:
        row = self.conn.execute(
            "SELECT MIN(created) FROM items WHERE in_spool = 1 AND kind = 'object'"
        ).fetchone()
        return row[0] if row else None
