"""A stop request during a batch: the files being written are finished and recorded, the others
are left untouched in their folders for the next start."""

from __future__ import annotations

import os
from pathlib import Path

from coldvault.catalog.db import Catalog
from coldvault.ingest import STOPPING, Ingestor, IngestRequest, clean_spool
from tests.helpers import make_vault


def test_a_stop_request_leaves_the_files_not_started(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    folder = tmp_path / "scans"
    folder.mkdir()
    files = []
    for i in range(40):
        f = folder / f"{i % 7}_{i}.pdf"
        f.write_bytes(os.urandom(200_000 + i))
        files.append(f)

    def should_stop() -> bool:  # asked to stop once three files are being written (or done)
        return len(list((vault.spool / "objects").rglob("*.age"))) >= 3

    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat, workers=2)
        try:
            results = ing.ingest_batch(
                [IngestRequest(f, patient_id=f.name.split("_")[0]) for f in files],
                should_stop=should_stop,
            )
        finally:
            ing.close()
        archived = [r for r in results if r.doc_id]
        left = [r for r in results if r.skipped == STOPPING]
        assert [r.request.path for r in results] == files  # one result each, in order
        # The files being written when the stop came are finished (one per worker, at most one
        # more started between two checks); the others, handed over or not, are left.
        assert 3 <= len(archived) <= 5 and len(archived) + len(left) == len(files)
        assert all(r.error is None for r in results)
        assert cat.counts()["documents"] == len(archived)
        # Nothing unrecorded in the spool: no object nor key file of a file left for later.
        assert clean_spool(vault, cat) == 0
        patients = {r.patient_ref for r in archived}
        assert {p.name[:-4] for p in (vault.spool / "keys").iterdir()} == patients
    assert all(f.exists() for f in files)  # originals untouched
