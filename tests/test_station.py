"""Drive sync to directory drives: verified copies, manifests, spool drop, source removal."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coldvault import manifest as mf
from coldvault.catalog.db import Catalog
from coldvault.drives import layout
from coldvault.drives.station import Station, enroll
from coldvault.errors import VaultError
from coldvault.ingest import Ingestor, IngestRequest, fingerprint_of
from coldvault.signing import VerifyKey
from coldvault.vault import Vault
from tests.helpers import make_vault


def _ingest(vault: Vault, cat: Catalog, folder: Path, n: int = 3) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    reqs = []
    for i in range(n):
        f = folder / f"{i}_doc.pdf"
        f.write_bytes(os.urandom(5000 + i))
        reqs.append(
            IngestRequest(
                f,
                source="scanner",
                relpath=f.name,
                patient_id=str(i % 2),
                fingerprint=fingerprint_of(f.stat()),
                delete_source=True,
            )
        )
    res = Ingestor(vault, cat).ingest_batch(reqs)
    return [str(r.object_path) for r in res]


def test_two_drives_then_spool_dropped_and_sources_removed(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    src = tmp_path / "scans"
    with Catalog(vault.catalog_path) as cat:
        paths = _ingest(vault, cat, src)
        a = tmp_path / "driveA"
        b = tmp_path / "driveB"
        a.mkdir()
        b.mkdir()
        enroll(vault, cat, a, "A", is_directory=True)
        enroll(vault, cat, b, "B", is_directory=True)
        st = Station(
            vault, cat, copies=2, source_paths={"scanner": src}, delete_sources={"scanner"}
        )
        r1 = st.sync(a)
        assert r1.complete and r1.copied == len(paths) + 2  # objects + 2 patient keys
        assert r1.spool_dropped == 0 and r1.sources_removed == 0
        for p in paths:
            assert (vault.spool / p).exists()
            assert (a / "coldvault" / p).read_bytes() == (vault.spool / p).read_bytes()
        r2 = st.sync(b)
        assert r2.complete and r2.spool_dropped == len(paths)
        assert r2.sources_removed == len(paths)
        assert not any(src.iterdir())
        for p in paths:
            assert not (vault.spool / p).exists()
            assert cat.copies_of(p) == ["A", "B"]
        # The manifests vouch for every object on each drive.
        key = VerifyKey.from_text(vault.info.verify_key)
        for root in (a, b):
            vouched = mf.load_manifest_folder(root / "coldvault" / "manifests", key)
            for p in paths:
                data = (root / "coldvault" / p).read_bytes()
                import hashlib

                assert vouched.vouches(p, len(data), hashlib.sha256(data).hexdigest())
            assert any(k.startswith("catalog/snapshot-") for k in vouched)
        # A second sync copies nothing new and extends the manifest chain.
        r3 = st.sync(a)
        assert r3.copied == 0 and r3.complete
        assert len(list((a / "coldvault" / "manifests").glob("*.txt"))) == 2
        assert (a / "coldvault" / layout.README_FR).exists()


def test_foreign_drive_is_refused(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    other = Vault.create(tmp_path / "other", b"another passphrase").vault
    d = tmp_path / "drive"
    d.mkdir()
    with Catalog(other.catalog_path) as ocat:
        enroll(other, ocat, d, "theirs", is_directory=True)
    with Catalog(vault.catalog_path) as cat:
        _ingest(vault, cat, tmp_path / "src", 1)
        with pytest.raises(layout.ForeignDrive):
            Station(vault, cat).sync(d)
    assert not list((d / "coldvault" / "objects").rglob("*.age"))


def test_unenrolled_drive_of_this_vault_is_refused(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    d = tmp_path / "drive"
    d.mkdir()
    with Catalog(vault.catalog_path) as cat:
        row = enroll(vault, cat, d, "X", is_directory=True)
        cat.conn.execute("DELETE FROM drives WHERE drive_id = ?", (row.drive_id,))
        with pytest.raises(VaultError, match="not enrolled"):
            Station(vault, cat).sync(d)


def test_damaged_spool_copy_is_not_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    vault = make_vault(tmp_path).vault
    with Catalog(vault.catalog_path) as cat:
        paths = _ingest(vault, cat, tmp_path / "src", 2)
        spool_obj = vault.spool / paths[0]
        data = bytearray(spool_obj.read_bytes())
        data[100] ^= 0xFF
        spool_obj.write_bytes(bytes(data))
        d = tmp_path / "drive"
        d.mkdir()
        enroll(vault, cat, d, "A", is_directory=True)
        r = Station(vault, cat, copies=1).sync(d)
        assert paths[0] in r.failed
        assert cat.copies_of(paths[0]) == []
        assert cat.copies_of(paths[1]) == ["A"]
        assert not r.complete
        # Told apart from a failing drive; nothing of it is left on the drive.
        assert f"spool copy of {paths[0]} does not match the catalog" in caplog.text
        assert not (d / "coldvault" / paths[0]).exists()
        assert not list(d.rglob(".tmp-*"))


def test_damaged_and_missing_copies_are_copied_again_from_another_drive(tmp_path: Path) -> None:
    import shutil

    from coldvault.status import compute_status
    from coldvault.verify import verify_drive

    vault = make_vault(tmp_path).vault
    with Catalog(vault.catalog_path) as cat:
        paths = _ingest(vault, cat, tmp_path / "src", 3)
        a, b = tmp_path / "A", tmp_path / "B"
        a.mkdir()
        b.mkdir()
        row_a = enroll(vault, cat, a, "A", is_directory=True)
        enroll(vault, cat, b, "B", is_directory=True)
        st = Station(vault, cat, copies=2)
        assert st.sync(a).complete and st.sync(b).complete
        assert not any((vault.spool / p).exists() for p in paths)  # only on the drives now
        damaged, lost = a / "coldvault" / paths[0], a / "coldvault" / paths[1]
        data = bytearray(damaged.read_bytes())
        data[-5] ^= 0x01
        damaged.write_bytes(bytes(data))
        lost.unlink()
        v = verify_drive(vault, cat, row_a, a)
        assert v.damaged == [paths[0]] and v.missing == [paths[1]]

        # B is away: nothing to copy them from; the sync and status say so.
        shutil.move(b, tmp_path / "away")
        r = st.sync(a)
        assert r.copied == 0 and r.elsewhere == 2
        status = compute_status(cat, overdue_days=7, copies=2)
        assert any("'A' lacks 2 file(s)" in w for w in status.warnings), status.warnings
        assert {d.name: d.lacking for d in status.drives}["A"] == 2

        # B back: the next sync of A copies them from B, verified, and vouched for.
        shutil.move(tmp_path / "away", b)
        r = st.sync(a)
        assert r.copied == 2 and r.elsewhere == 0 and r.complete
        for p in paths:
            assert (a / "coldvault" / p).read_bytes() == (b / "coldvault" / p).read_bytes()
        assert verify_drive(vault, cat, row_a, a).ok
        assert sorted(cat.copies_of(paths[0])) == ["A", "B"]
