"""Restore, verify and disaster recovery from directory drives."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import pytest

from coldvault import age, objects
from coldvault.catalog.db import Catalog
from coldvault.drives.station import Station, enroll
from coldvault.errors import AuthenticationError, IntegrityError, NotAvailable
from coldvault.ingest import Ingestor, IngestRequest
from coldvault.recover import drive_fingerprint, rebuild_state, recover_documents
from coldvault.restore import restore_patient, safe_name
from coldvault.vault import Created, Vault
from coldvault.verify import verify_drive
from tests.helpers import PASSPHRASE, make_vault

PATIENTS = {"1001": 3, "1002": 2, "2003": 1}


def _archive(created: Created, tmp: Path, drives: int = 2) -> dict[str, dict[str, bytes]]:
    vault = created.vault
    docs: dict[str, dict[str, bytes]] = {}
    src = tmp / "src"
    src.mkdir()
    reqs = []
    for pid, n in PATIENTS.items():
        for i in range(n):
            name = f"compte rendu {i} é.pdf"
            data = os.urandom(3000 + 70000 * i)
            f = src / f"{pid}-{i}.pdf"
            f.write_bytes(data)
            docs.setdefault(pid, {})[name] = data
            reqs.append(IngestRequest(f, patient_id=pid, kind="scan"))
    with Catalog(vault.catalog_path) as cat:
        ing = Ingestor(vault, cat)
        # The names inside objects are the original ones; rename the sources accordingly.
        for r in reqs:
            pid, i = r.path.stem.split("-")
            named = r.path.with_name(f"compte rendu {i} é.pdf")
            sub = src / pid
            sub.mkdir(exist_ok=True)
            r.path.rename(sub / named.name)
        reqs = [
            IngestRequest(src / pid / name, patient_id=pid, kind="scan")
            for pid, files in docs.items()
            for name in files
        ]
        results = ing.ingest_batch(reqs)
        assert all(r.doc_id for r in results)
        for k in range(drives):
            d = tmp / f"drive{k}"
            d.mkdir()
            enroll(vault, cat, d, f"D{k}", is_directory=True)
            Station(vault, cat, copies=drives).sync(d)
    return docs


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_restore_one_patient_from_drives(tmp_path: Path) -> None:
    created = make_vault(tmp_path)
    docs = _archive(created, tmp_path)
    vault = created.vault
    assert not list((vault.spool / "objects").rglob("*.age"))  # all on two drives now
    master = vault.unlock(PASSPHRASE)
    with Catalog(vault.catalog_path) as cat:
        _ref, report = restore_patient(vault, cat, master, "1001", tmp_path / "out")
    assert not report.damaged and not report.unavailable
    assert _tree(tmp_path / "out" / "1001") == docs["1001"]
    # Restoring again never overwrites: it adds a suffix.
    with Catalog(vault.catalog_path) as cat:
        restore_patient(vault, cat, master, "1001", tmp_path / "out")
    names = sorted(p.name for p in (tmp_path / "out" / "1001").iterdir())
    assert "compte rendu 0 é (1).pdf" in names and len(names) == 6


def test_restore_from_spool_only(tmp_path: Path) -> None:
    created = make_vault(tmp_path)
    docs = _archive(created, tmp_path, drives=0)
    vault = created.vault
    with Catalog(vault.catalog_path) as cat:
        _, report = restore_patient(vault, cat, vault.unlock(PASSPHRASE), "1002", tmp_path / "out")
    assert _tree(tmp_path / "out" / "1002") == docs["1002"]
    assert len(report.restored) == 2


def test_unplugged_drives_are_named(tmp_path: Path) -> None:
    created = make_vault(tmp_path)
    _archive(created, tmp_path)
    vault = created.vault
    for k in range(2):
        shutil.move(tmp_path / f"drive{k}", tmp_path / f"away{k}")
    with Catalog(vault.catalog_path) as cat:
        _, report = restore_patient(vault, cat, vault.unlock(PASSPHRASE), "1001", tmp_path / "o")
        assert not report.restored and len(report.unavailable) == 3
        assert all(drives == ["D0", "D1"] for drives in report.unavailable.values())
        with pytest.raises(NotAvailable, match="no documents"):
            restore_patient(vault, cat, vault.unlock(PASSPHRASE), "9999", tmp_path / "o")


def test_damage_is_found_and_the_rest_restored(tmp_path: Path) -> None:
    created = make_vault(tmp_path)
    docs = _archive(created, tmp_path, drives=1)
    vault = created.vault
    drive = tmp_path / "drive0"
    with Catalog(vault.catalog_path) as cat:
        row = cat.drive(name="D0")
        assert row is not None
        objs = [
            d.object_path
            for d in cat.documents(cat.patient_by_lookup(vault.lookup("patient", "1001")).id)
        ]  # type: ignore[union-attr]
        flipped, truncated = drive / "coldvault" / objs[0], drive / "coldvault" / objs[1]
        data = bytearray(flipped.read_bytes())
        data[len(data) // 2] ^= 1
        flipped.write_bytes(bytes(data))
        with open(truncated, "r+b") as f:
            f.truncate(100)
        # Restore still returns the undamaged document and names the damaged ones.
        _, rep = restore_patient(vault, cat, vault.unlock(PASSPHRASE), "1001", tmp_path / "out")
        report = verify_drive(vault, cat, row, drive)
        assert sorted(report.damaged) == sorted([objs[0], objs[1]])
        assert not report.ok
        # The damaged copies are forgotten, so the next sync copies them again.
        assert cat.copies_of(objs[0]) == [] and cat.copies_of(objs[2]) == ["D0"]
    assert len(rep.restored) == 1
    assert sorted(d for d, _ in rep.damaged) == sorted(
        d.doc_id for d in rep_docs(vault, "1001") if d.object_path in objs[:2]
    )
    restored = _tree(tmp_path / "out" / "1001")
    assert len(restored) == 1 and next(iter(restored.values())) in docs["1001"].values()


def rep_docs(vault: Vault, pid: str) -> list:  # type: ignore[type-arg]
    with Catalog(vault.catalog_path) as cat:
        row = cat.patient_by_lookup(vault.lookup("patient", pid))
        assert row is not None
        return cat.documents(row.id)


def test_planted_object_is_rejected(tmp_path: Path) -> None:
    created = make_vault(tmp_path)
    _archive(created, tmp_path, drives=1)
    vault = created.vault
    drive = tmp_path / "drive0"
    with Catalog(vault.catalog_path) as cat:
        row = cat.patient_by_lookup(vault.lookup("patient", "1001"))
        assert row is not None
        target = cat.documents(row.id)[0].object_path
        # An attacker with the public recipient writes a well-formed object in its place.
        fake = io.BytesIO()
        meta = objects.DocumentMeta("evil", row.key_id, "compte rendu 0 é.pdf", 0, "")
        objects.write_object(
            io.BytesIO(b"forged"), 6, meta, [age.parse_recipient(row.recipient)], fake
        )
        (drive / "coldvault" / target).write_bytes(fake.getvalue())
        # Also a new object the vault never wrote.
        planted = drive / "coldvault" / "objects" / "ff" / ("ff" + "1" * 30 + ".age")
        planted.parent.mkdir(exist_ok=True)
        planted.write_bytes(fake.getvalue())
        drow = cat.drive(name="D0")
        assert drow is not None
        report = verify_drive(vault, cat, drow, drive)
        assert target in report.damaged
        assert any("ff111" in p for p in report.not_vouched)
    master_key = created.recovery_key
    _, fp = drive_fingerprint(drive)
    rep = recover_documents(drive, _identity(master_key), fp, tmp_path / "rec")
    assert target in rep.rejected or any(target == r for r, _ in rep.damaged)
    assert any("ff111" in p for p in rep.rejected)
    assert not any(p.read_bytes() == b"forged" for p in (tmp_path / "rec").rglob("*.pdf"))


def _identity(text: str):  # type: ignore[no-untyped-def]
    from coldvault.keys import parse_recovery_key

    return parse_recovery_key(text)


def test_recover_everything_from_one_drive(tmp_path: Path) -> None:
    created = make_vault(tmp_path)
    docs = _archive(created, tmp_path)
    shutil.rmtree(created.vault.state_dir)  # the workstation is lost
    drive = tmp_path / "drive1"
    _, fp = drive_fingerprint(drive)
    master = _identity(created.recovery_key)
    rep = recover_documents(drive, master, fp, tmp_path / "rec")
    assert rep.restored == sum(PATIENTS.values()) and not rep.damaged and not rep.rejected
    for pid, files in docs.items():
        assert _tree(tmp_path / "rec" / pid) == files
    # One patient only.
    rep1 = recover_documents(drive, master, fp, tmp_path / "one", patient_id="1002")
    assert rep1.restored == 2 and list((tmp_path / "one").iterdir()) == [tmp_path / "one" / "1002"]
    # A wrong fingerprint or a wrong recovery key stops before anything is written.
    with pytest.raises(IntegrityError, match="fingerprint"):
        recover_documents(drive, master, "AAAA-BBBB", tmp_path / "x")
    other = Vault.create(tmp_path / "o", b"other passphrase").recovery_key
    with pytest.raises(AuthenticationError):
        recover_documents(drive, _identity(other), fp, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_rebuild_state_then_restore(tmp_path: Path) -> None:
    created = make_vault(tmp_path)
    docs = _archive(created, tmp_path)
    # A document archived after the last snapshot on drive0 (synced to drive0 only later).
    vault = created.vault
    late = tmp_path / "late.pdf"
    late.write_bytes(b"late document")
    with Catalog(vault.catalog_path) as cat:
        Ingestor(vault, cat).ingest_batch([IngestRequest(late, patient_id="2003")])
        st = Station(vault, cat, copies=2)
        st.sync(tmp_path / "drive0")
    # Make the newest snapshot on drive0 unreadable: the older one (without the late doc) is used.
    snaps = sorted((tmp_path / "drive0" / "coldvault" / "catalog").glob("snapshot-*.age"))
    assert len(snaps) == 2
    shutil.rmtree(vault.state_dir)
    drive = tmp_path / "drive0"
    snaps[-1].write_bytes(b"damaged")
    _, fp = drive_fingerprint(drive)
    new_state = tmp_path / "newstate"
    docs_known, added = rebuild_state(
        drive, _identity(created.recovery_key), fp, new_state, b"new passphrase"
    )
    assert added == 1 and docs_known == sum(PATIENTS.values()) + 1
    nv = Vault(new_state)
    with Catalog(nv.catalog_path) as cat:
        _, _rep = restore_patient(nv, cat, nv.unlock(b"new passphrase"), "2003", tmp_path / "out")
    got = _tree(tmp_path / "out" / "2003")
    assert got["late.pdf"] == b"late document"
    assert set(docs["2003"].values()) <= set(got.values())
    h = hashlib.sha256
    assert h(got["late.pdf"]).digest() == h(b"late document").digest()


def test_safe_name() -> None:
    assert safe_name("../../etc/passwd", "x") == "passwd"
    assert safe_name("..", "fallback") == "fallback"
    assert safe_name(".hidden", "x") == "hidden"
    assert safe_name("a\x00b/c\\d", "x") == "d"
