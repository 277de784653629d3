"""File a document from the unsorted inbox under a patient.

An unsorted document was encrypted to the master recipient (its patient was unknown). Assigning
it decrypts it with the master (passphrase needed), archives it again for the patient as a new
document, and retires the unsorted object: removed from the spool, and queued for deletion on
every drive that holds a copy.
"""

from __future__ import annotations

import os
import tempfile
from datetime import date
from pathlib import Path

from coldvault import keys
from coldvault.catalog.db import Catalog
from coldvault.errors import IntegrityError, NotAvailable, UsageError
from coldvault.ingest import Ingestor, IngestRequest
from coldvault.restore import Restorer, decrypt_to_folder
from coldvault.vault import Vault


def assign_document(
    vault: Vault, catalog: Catalog, master: keys.AnyIdentity, doc_id: str, patient_id: str
) -> str:
    docs = catalog.documents(unsorted=True, doc_id=doc_id)
    if not docs:
        raise NotAvailable(f"no document {doc_id} in the unsorted inbox")
    if len(docs) > 1:
        raise UsageError(f"{doc_id} matches several documents: give more of its id")
    doc = docs[0]
    restorer = Restorer(vault, catalog, master)
    loc = restorer.locate(doc.object_path)
    if loc is None:
        raise NotAvailable(
            f"document {doc.doc_id} is on drives that are not plugged in",
            hint="plug in one of: " + (", ".join(restorer.holders(doc.object_path)) or "?"),
        )
    item = catalog.item(doc.object_path)
    with tempfile.TemporaryDirectory(dir=vault.state_dir, prefix=".assign-") as tmp:
        path, meta = decrypt_to_folder(
            loc.open,
            [master],
            Path(tmp),
            f"document-{doc.doc_id}",
            expected_size=item[1] if item else None,
            expected_sha256=item[2] if item else None,
            vouched=loc.vouched,
            relpath=doc.object_path,
        )
        ingestor = Ingestor(vault, catalog)
        try:
            result = ingestor.ingest_batch(
                [
                    IngestRequest(
                        path,
                        source=doc.source,
                        patient_id=patient_id,
                        doc_date=date.fromisoformat(doc.doc_date) if doc.doc_date else None,
                        kind=doc.kind,
                    )
                ]
            )[0]
        finally:
            ingestor.close()
        if result.error is not None or result.doc_id is None:
            raise IntegrityError(
                f"document {doc.doc_id} could not be filed: "
                f"{result.error.message if result.error else 'unknown error'}"
            )
        del meta
    holders = [
        r[0]
        for r in catalog.conn.execute(
            "SELECT drive_id FROM copies WHERE path = ?", (doc.object_path,)
        )
    ]
    with catalog.transaction():
        # The new document inherits what ties it to its source file (so a kept original is
        # not archived again, and a deleted one goes once the new object is on enough drives);
        # the old row goes before its item, which it references.
        catalog.conn.execute(
            "UPDATE documents SET (source_key, fingerprint) = (SELECT source_key, fingerprint "
            "FROM documents WHERE doc_id = ?) WHERE doc_id = ?",
            (doc.doc_id, result.doc_id),
        )
        catalog.conn.execute(
            "UPDATE source_files SET doc_id = ? WHERE doc_id = ?", (result.doc_id, doc.doc_id)
        )
        catalog.conn.execute("DELETE FROM documents WHERE doc_id = ?", (doc.doc_id,))
        catalog.conn.execute("DELETE FROM items WHERE path = ?", (doc.object_path,))
        for drive_id in holders:
            catalog.conn.execute(
                "INSERT OR IGNORE INTO deletions (path, drive_id, purge_id) VALUES (?, ?, ?)",
                (doc.object_path, drive_id, "assign"),
            )
    spool = vault.spool / doc.object_path
    if spool.exists():
        os.unlink(spool)
    return result.doc_id
