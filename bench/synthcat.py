"""A bench-only catalog of millions of documents, written with plain SQL (ingesting that many
would take hours): one real patient whose documents exist in the spool, and synthetic rows for
every other patient, shaped like the ones coldvault writes."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from bench.common import driver, driver_env, measure
from bench.corpus import files_of

TARGET = "P99999"
DOCS_PER_PATIENT = 40


def target_files(corpus: Path) -> list[Path]:
    """A realistic patient file: scans, exports and the largest file of the mix."""
    mix = corpus / "mix"
    scans = files_of(mix / "scans")[:12]
    exports = files_of(mix / "exports")[:12]
    large = max(files_of(mix / "large"), key=lambda p: p.stat().st_size)
    return [*scans, *exports, large]


def build(
    state: Path, template: Path, corpus: Path, docs: int, list_path: Path
) -> dict[str, object]:
    """Create (or reuse) the vault at ``state`` with ``docs`` catalogued documents."""
    info_path = state / "bench-catalog.json"
    if info_path.exists():
        return dict(json.loads(info_path.read_text()))
    import shutil

    if state.exists():
        shutil.rmtree(state)
    shutil.copytree(template, state, symlinks=True)
    files = target_files(corpus)
    list_path.write_text("".join(f"{f}\n" for f in files))
    measure(driver("ingest", str(state), str(list_path), "--patient", TARGET), env=driver_env())
    conn = sqlite3.connect(state / "catalog.sqlite", isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    real = conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
    recipient = conn.execute("SELECT recipient FROM patients LIMIT 1").fetchone()[0]
    synthetic = max(0, docs - real)
    patients = max(1, synthetic // DOCS_PER_PATIENT)
    sealed = os.urandom(120)
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO patients (lookup, key_id, recipient, sealed_id, created) "
        "VALUES (?, ?, ?, ?, ?)",
        (
            (f"{i:064x}", f"{i:032x}", recipient, sealed, "2010-01-01T00:00:00+00:00")
            for i in range(1, patients + 1)
        ),
    )
    first = conn.execute("SELECT MIN(id) FROM patients WHERE key_id = ?", (f"{1:032x}",))
    base = int(first.fetchone()[0])
    conn.executemany(
        "INSERT INTO items (path, kind, size, sha256, in_spool, created) "
        "VALUES (?, 'object', ?, ?, 0, ?)",
        (
            (
                f"objects/{i % 256:02x}/{i:032x}.age",
                100_000 + i % 997,
                f"{i:064x}",
                "2015-06-01T10:00:00+00:00",
            )
            for i in range(synthetic)
        ),
    )
    conn.executemany(
        "INSERT INTO documents (doc_id, patient, object_path, source, kind, doc_date, "
        "archived_at, size, sha256, sealed_name, source_key, fingerprint) "
        "VALUES (?, ?, ?, 'scanner', 'scan', ?, ?, ?, ?, ?, ?, ?)",
        (
            (
                f"{i:016x}",
                base + (i * 7919) % patients,
                f"objects/{i % 256:02x}/{i:032x}.age",
                f"20{10 + i % 15}-{1 + i % 12:02d}-{1 + i % 28:02d}",
                f"20{10 + i % 15}-{1 + i % 12:02d}-{1 + i % 28:02d}T10:00:00+00:00",
                100_000 + i % 997,
                f"{i:064x}",
                sealed,
                f"{i:064x}",
                f"2049:{i}:{100_000 + i % 997}:1600000000000000000",
            )
            for i in range(synthetic)
        ),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    total = conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
    conn.close()
    info: dict[str, object] = {
        "documents": total,
        "patients": patients + 1,
        "target_documents": real,
        "target_bytes": sum(f.stat().st_size for f in files),
    }
    info_path.write_text(json.dumps(info))
    return info
