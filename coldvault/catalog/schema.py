"""The catalog's SQLite schema and its forward migrations.

``PRAGMA user_version`` holds the schema version; each migration moves it up by one, in a
transaction. A catalog newer than this code is refused rather than misread.
"""

from __future__ import annotations

import sqlite3

from coldvault.errors import VaultError

# Each entry migrates from version i to i + 1.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE seal_keys (          -- batch keys for names and facts, sealed to the master
        id INTEGER PRIMARY KEY,
        generation INTEGER NOT NULL,  -- master generation they are sealed to
        sealed BLOB NOT NULL,
        created TEXT NOT NULL
    );
    CREATE TABLE patients (
        id INTEGER PRIMARY KEY,
        lookup TEXT UNIQUE NOT NULL,  -- keyed hash of the external patient id
        key_id TEXT UNIQUE NOT NULL,  -- random; also the pseudonymous patient reference
        recipient TEXT NOT NULL,
        sealed_id BLOB NOT NULL,      -- external id, sealed (see sealing.py)
        sealed_facts BLOB,            -- birth, death, last visit, sealed
        created TEXT NOT NULL,
        purged TEXT                   -- set when crypto-shredded
    );
    CREATE TABLE items (              -- everything that goes to drives, by drive-relative path
        path TEXT PRIMARY KEY,        -- objects/ab/<id>.age | keys/<key-id>.age
        kind TEXT NOT NULL,           -- 'object' | 'key'
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        in_spool INTEGER NOT NULL DEFAULT 1,
        created TEXT NOT NULL
    );
    CREATE TABLE documents (
        id INTEGER PRIMARY KEY,
        doc_id TEXT UNIQUE NOT NULL,
        patient INTEGER REFERENCES patients(id),   -- NULL: unsorted inbox
        object_path TEXT UNIQUE NOT NULL REFERENCES items(path),
        source TEXT NOT NULL,
        kind TEXT NOT NULL DEFAULT '',
        doc_date TEXT,
        archived_at TEXT NOT NULL,
        size INTEGER NOT NULL,
        sha256 TEXT NOT NULL,         -- plaintext SHA-256 (of a document, not identifying)
        sealed_name BLOB,
        source_key TEXT,              -- keyed hash of source + relative path
        fingerprint TEXT,             -- dev:inode:size:mtime_ns of the source file when read
        purged TEXT
    );
    CREATE INDEX documents_patient ON documents(patient, archived_at);
    CREATE INDEX documents_source ON documents(source_key, fingerprint);
    CREATE TABLE source_files (       -- originals waiting to be removed once on enough drives
        doc_id TEXT PRIMARY KEY REFERENCES documents(doc_id),
        source TEXT NOT NULL,
        relpath TEXT NOT NULL,
        fingerprint TEXT NOT NULL
    );
    CREATE TABLE drives (
        drive_id TEXT PRIMARY KEY,
        name TEXT UNIQUE NOT NULL,
        fs_uuid TEXT,
        label TEXT,
        serial TEXT,
        path TEXT,                    -- for directory drives and last known mount point
        is_directory INTEGER NOT NULL DEFAULT 0,
        enrolled TEXT NOT NULL,
        manifest_seq INTEGER,         -- head of the drive's signed manifest chain
        manifest_digest TEXT,
        last_seen TEXT,
        last_sync TEXT,
        retired TEXT
    );
    CREATE TABLE copies (
        path TEXT NOT NULL,
        drive_id TEXT NOT NULL REFERENCES drives(drive_id),
        sha256 TEXT NOT NULL,
        verified_at TEXT NOT NULL,
        PRIMARY KEY (path, drive_id)
    );
    CREATE INDEX copies_drive ON copies(drive_id);
    CREATE TABLE holds (
        patient INTEGER NOT NULL REFERENCES patients(id),
        sealed_reason BLOB NOT NULL,
        placed TEXT NOT NULL,
        released TEXT
    );
    CREATE TABLE deletions (          -- purge deletions still to do on drives not yet plugged in
        path TEXT NOT NULL,
        drive_id TEXT NOT NULL,
        purge_id TEXT NOT NULL,
        PRIMARY KEY (path, drive_id)
    );
    CREATE TABLE purges (
        purge_id TEXT PRIMARY KEY,
        executed TEXT NOT NULL,
        record_json TEXT NOT NULL
    );
    """,
    # 2: documents recorded but not yet in the audit journal (a crash between the catalog
    # commit and the journal append); NULL once journaled.
    """
    ALTER TABLE documents ADD COLUMN unjournaled INTEGER;
    CREATE INDEX documents_unjournaled ON documents(unjournaled) WHERE unjournaled IS NOT NULL;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the catalog up to :data:`SCHEMA_VERSION`; returns the version found."""
    found = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if found > SCHEMA_VERSION:
        raise VaultError(
            f"the catalog has schema version {found}, newer than this coldvault ({SCHEMA_VERSION})",
            hint="upgrade coldvault",
        )
    for version in range(found, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _split(MIGRATIONS[version]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    return found


def _split(script: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return [s for s in out if s]
