"""The audit journal's 'ingest' entries.

The catalog records a batch first (the documents are then archived), the journal entry comes
after. A process killed in between would leave archived documents that no entry records, so the
catalog marks each new document unjournaled in the recording transaction itself;
:func:`journal_ingest` clears the mark once the entry is appended, and :func:`catch_up`, run at
start-up, appends the entry a killed process could not write.
"""

from __future__ import annotations

import logging

from coldvault.catalog.db import Catalog
from coldvault.journal import Journal, JSONValue

log = logging.getLogger(__name__)


def journal_ingest(
    journal: Journal, catalog: Catalog, doc_ids: list[str], **fields: JSONValue
) -> None:
    """Append the 'ingest' entry of documents the catalog has just recorded."""
    journal.append("ingest", documents=list[JSONValue](doc_ids), **fields)
    with catalog.transaction():
        catalog.mark_journaled(doc_ids)


def catch_up(journal: Journal, catalog: Catalog) -> int:
    """Journal the ingest of documents a process recorded but was stopped before journaling;
    returns how many needed an entry."""
    pending = [doc_id for doc_id, _ in catalog.unjournaled_documents()]
    if not pending:
        return 0
    # Killed after the append but before clearing the marks: the entry is among the newest.
    seen: set[str] = set()
    for e in journal.recent_entries():
        if e.event == "ingest":
            seen.update(e.fields.get("documents", []))
        elif e.event == "assign":  # a document filed from the unsorted inbox
            seen.add(e.fields.get("new_document", ""))
    missing = [d for d in pending if d not in seen]
    if missing:
        journal.append(
            "ingest",
            documents=list[JSONValue](missing),
            recovered=True,  # written at the next start: the ingesting process was stopped
        )
        log.warning(
            "journaled the ingest of %d document(s) archived by a process that stopped before "
            "it could",
            len(missing),
        )
    with catalog.transaction():
        catalog.mark_journaled(pending)
    return len(missing)
