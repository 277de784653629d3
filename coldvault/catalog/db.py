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
    ) -> None:
        """Record a spooled object and its document; call inside :meth:`transaction`."""
        self.add_item(object_path, "object", object_size, object_sha256)
        self.conn.execute(
            "INSERT INTO documents (doc_id, patient, object_path, source, kind, doc_date, "
            "archived_at, size, sha256, sealed_name, source_key, fingerprint) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            ),
        )
        if delete_source is not None and fingerprint is not None:
            self.conn.execute(
                "INSERT INTO source_files (doc_id, source, relpath, fingerprint) "
                "VALUES (?, ?, ?, ?)",
                (doc_id, delete_source[0], delete_source[1], fingerprint),
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
