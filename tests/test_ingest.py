"""Ingest: files become objects in the spool and rows in the catalog, exactly once."""

from __future__ import annotations

import io
import os
from pathlib import Path

from coldvault import keys, objects
from coldvault.catalog.db import Catalog
from coldvault.catalog.sealing import Opener
from coldvault.ingest import Ingestor, IngestRequest, clean_spool, fingerprint_of
from tests.helpers import PASSPHRASE, make_vault


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_batch_ingest_creates_patient_keys_once(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    docs = tmp_path / "docs"
    files = [
        _write(docs / f"{pid}_{i}.pdf", os.urandom(1000 + i))
        for pid in ("100", "200")
        for i in range(3)
    ]
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat, workers=2)
        reqs = [IngestRequest(f, patient_id=f.name.split("_")[0], kind="scan") for f in files]
        results = ing.ingest_batch(reqs)
        ing.close()
        assert all(r.doc_id and r.error is None for r in results)
        assert len(cat.patients()) == 2
        assert len(list((vault.spool / "keys").iterdir())) == 2
        master = vault.unlock(PASSPHRASE)
        opener = Opener(cat.conn, [master])
        for r in results:
            doc = cat.documents(doc_id=r.doc_id)[0]
            assert opener.open(doc.sealed_name) == r.request.path.name
            # The object opens with the patient key from the spool, and the content matches.
            key = keys.open_patient_key(
                (vault.spool / "keys" / f"{doc.key_id}.age").read_bytes(), [master]
            )
            assert key.patient_id == r.request.patient_id and key.identity is not None
            out = io.BytesIO()
            with open(vault.spool / doc.object_path, "rb") as f:
                opened = objects.read_object(f, [key.identity], out)
            assert out.getvalue() == r.request.path.read_bytes()
            assert opened.meta.patient_ref == doc.key_id
        # The catalog holds no patient id or file name in clear.
        raw = vault.catalog_path.read_bytes()
        for f in files:
            assert f.name.encode() not in raw


def test_same_version_is_archived_once_new_version_again(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    f = _write(tmp_path / "src" / "12_a.pdf", b"first")
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat)

        def req() -> IngestRequest:
            return IngestRequest(
                f,
                source="scanner",
                relpath="12_a.pdf",
                patient_id="12",
                fingerprint=fingerprint_of(f.stat()),
            )

        assert ing.ingest_batch([req()])[0].doc_id
        assert ing.ingest_batch([req()])[0].skipped == "already archived"
        f.write_bytes(b"second version, longer")
        second = ing.ingest_batch([req()])[0]
        assert second.doc_id
        assert len(cat.documents()) == 2


def test_unsorted_goes_to_master(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    f = _write(tmp_path / "unknown.pdf", b"who is this")
    with Catalog(vault.catalog_path) as cat:
        r = Ingestor(vault, cat).ingest_batch([IngestRequest(f)])[0]
        assert r.doc_id and r.patient_ref is None
        assert len(cat.documents(unsorted=True)) == 1
        out = io.BytesIO()
        with open(vault.spool / str(r.object_path), "rb") as obj:
            objects.read_object(obj, [vault.unlock(PASSPHRASE)], out)
        assert out.getvalue() == b"who is this"


def test_changed_file_and_symlink_are_refused(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    f = _write(tmp_path / "a.pdf", b"data")
    link = tmp_path / "link.pdf"
    link.symlink_to(f)
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat)
        stale = IngestRequest(f, patient_id="1", fingerprint="0:0:4:0")
        r1, r2 = ing.ingest_batch([stale, IngestRequest(link, patient_id="1")])
        assert r1.error is not None and "changed" in r1.error.message
        assert r2.error is not None
        assert cat.documents() == []
        assert list((vault.spool / "objects").rglob("*.age")) == []


def test_clean_spool_removes_unrecorded_objects(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    f = _write(tmp_path / "a.pdf", b"data")
    with Catalog(vault.catalog_path) as cat:
        r = Ingestor(vault, cat).ingest_batch([IngestRequest(f, patient_id="1")])[0]
        orphan = vault.spool / "objects" / "ab" / ("ab" + "0" * 30 + ".age")
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_bytes(b"half written")
        assert clean_spool(vault, cat) == 1
        assert not orphan.exists()
        assert (vault.spool / str(r.object_path)).exists()
