"""coldvault.drives.layout: names, paths, the marker, init_drive and the README texts."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldvault.drives import fsio, layout
from coldvault.drives.layout import (
    BadName,
    ForeignDrive,
    Marker,
    MarkerDamaged,
    NotAVaultDrive,
    UnsupportedFormat,
)
from coldvault.errors import VaultError

HEX = "3f2a" + "0" * 28
B32 = "mzxw6ytboi2dcmrt"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def marker(**kw: object) -> Marker:
    args: dict[str, object] = dict(
        vault_id="v" + "1" * 25,
        drive_id="d" + "2" * 25,
        drive_name="Clé du lundi",
        verify_key="ed25519:" + "A" * 43,
        created=T0,
    )
    args.update(kw)
    return Marker(**args)  # type: ignore[arg-type]


# --- names and paths ----------------------------------------------------------------------


def test_object_and_key_paths() -> None:
    assert layout.object_relpath(HEX) == f"objects/3f/{HEX}.age"
    assert layout.object_relpath(B32) == f"objects/mz/{B32}.age"
    assert layout.key_relpath(B32) == f"keys/{B32}.age"
    root = Path("/media/x")
    assert layout.object_path(root, HEX) == root / "coldvault" / "objects" / "3f" / f"{HEX}.age"
    assert layout.object_dir(root, HEX) == root / "coldvault/objects/3f"
    assert layout.key_path(root, HEX) == root / f"coldvault/keys/{HEX}.age"
    assert (
        layout.vault_relpath("manifests", "manifest-000001.sig") == "manifests/manifest-000001.sig"
    )
    assert (
        layout.catalog_snapshot_name(
            datetime(2024, 5, 1, 14, 3, 4, tzinfo=timezone(timedelta(hours=2)))
        )
        == "catalog-20240501-120304.age"
    )


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        HEX.upper(),
        "../" + HEX,
        HEX + "/x",
        "xyz0189abc",
        "ab cd1234",
        "é" * 10,
        "a" * 101,
    ],
)
def test_ids_must_be_lowercase_hex_or_base32(bad: str) -> None:
    with pytest.raises(BadName):
        layout.object_relpath(bad)


@pytest.mark.parametrize(
    "bad",
    [
        "", "a:b", "a*b", 'a"b', "a<b", "a>b", "a?b", "a\\b", "a|b", "a/b", "trail.", "trail ",
        " lead", ".", "..", "Upper.age", "con", "nul.txt", "lpt1", "ü.age", "tab\tx", "a" * 256,
    ],
)  # fmt: skip
def test_check_name_rejects_what_fat32_exfat_or_windows_refuse(bad: str) -> None:
    with pytest.raises(BadName):
        layout.check_name(bad)


def test_check_name_accepts_portable_names() -> None:
    for ok in ["a", "vault.json", ".tmp-0123abcd", "catalog-20240501-120000.age", "x" * 255]:
        assert layout.check_name(ok) == ok
    assert layout.check_name("README.txt", allow_upper=True) == "README.txt"
    with pytest.raises(BadName):
        layout.vault_relpath("elsewhere", "x")


@given(st.sampled_from("0123456789abcdef"), st.text("0123456789abcdef", min_size=7, max_size=99))
def test_every_valid_id_gives_portable_names(first: str, rest: str) -> None:
    oid = first + rest
    rel = layout.object_relpath(oid)
    for part in rel.split("/"):
        layout.check_name(part)
    layout.check_name(fsio.part_name(rel.rsplit("/", 1)[1], 999))
    assert len("coldvault/" + rel + ".000") < layout.MAX_RELPATH_LENGTH


def test_fat_directory_capacity() -> None:
    assert layout.fat_dir_slots("a" * 13) == 2 and layout.fat_dir_slots("a" * 14) == 3
    assert layout.max_objects_per_shard(32) == 16383
    assert layout.max_objects_per_shard(64) == 9362
    assert layout.max_objects_per_shard(64) * 256 > 2_000_000  # brief: ~2 M documents per vault


# --- marker -------------------------------------------------------------------------------


def test_marker_round_trip_and_exact_json(tmp_path: Path) -> None:
    m = marker()
    layout.write_marker(tmp_path, m)
    raw = (tmp_path / "coldvault" / "vault.json").read_bytes()
    assert raw.isascii() and raw.endswith(b"}\n")
    assert json.loads(raw) == {
        "format": "coldvault-drive",
        "format_version": 1,
        "vault_id": m.vault_id,
        "drive_id": m.drive_id,
        "drive_name": "Clé du lundi",
        "verify_key": m.verify_key,
        "created": "2024-05-01T12:00:00Z",
    }
    assert layout.read_marker(tmp_path) == m
    assert layout.check_marker(tmp_path, m.vault_id) == m


def test_marker_keeps_keys_it_does_not_know(tmp_path: Path) -> None:
    doc = json.loads(marker().to_json())
    doc["added_later"] = {"x": 1}
    m = Marker.from_json(json.dumps(doc).encode())
    assert m.extra == {"added_later": {"x": 1}}
    assert json.loads(m.to_json())["added_later"] == {"x": 1}


def test_marker_from_a_newer_coldvault_is_refused_clearly() -> None:
    doc = json.loads(marker().to_json())
    doc["format_version"] = 2
    with pytest.raises(UnsupportedFormat) as ei:
        Marker.from_json(json.dumps(doc).encode())
    assert "newer version of coldvault" in ei.value.message and ei.value.exit_code == 5


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: "not json{",
        lambda d: [1, 2],
        lambda d: {**d, "format": "something-else"},
        lambda d: {**d, "format_version": "1"},
        lambda d: {**d, "format_version": 0},
        lambda d: {k: v for k, v in d.items() if k != "drive_id"},
        lambda d: {**d, "vault_id": "UPPER"},
        lambda d: {**d, "created": "yesterday"},
        lambda d: {**d, "drive_name": ""},
    ],
)
def test_damaged_markers_are_reported_as_such(tmp_path: Path, mutate: object) -> None:
    doc = json.loads(marker().to_json())
    bad = mutate(doc)  # type: ignore[operator]
    (tmp_path / "coldvault").mkdir()
    (tmp_path / "coldvault" / "vault.json").write_text(
        bad if isinstance(bad, str) else json.dumps(bad)
    )
    with pytest.raises(MarkerDamaged) as ei:
        layout.read_marker(tmp_path)
    assert "damaged" in ei.value.message


def test_huge_marker_is_damaged(tmp_path: Path) -> None:
    (tmp_path / "coldvault").mkdir()
    (tmp_path / "coldvault" / "vault.json").write_bytes(b" " * (layout.MAX_MARKER_SIZE + 1))
    with pytest.raises(MarkerDamaged):
        layout.read_marker(tmp_path)


def test_no_marker_and_foreign_marker(tmp_path: Path) -> None:
    with pytest.raises(NotAVaultDrive) as ei:
        layout.check_marker(tmp_path, "v1")
    assert "not a coldvault drive" in ei.value.message
    layout.write_marker(tmp_path, marker(vault_id="othervault"))
    with pytest.raises(ForeignDrive) as e2:
        layout.check_marker(tmp_path, "myvault")
    assert "belongs to another vault" in e2.value.message and e2.value.exit_code == 5


def test_marker_validation_on_construction() -> None:
    with pytest.raises(ValueError):
        marker(created=datetime(2024, 1, 1))  # naive time
    with pytest.raises(ValueError):
        marker(drive_name="a\nb")
    with pytest.raises(ValueError):
        marker(verify_key="")
    with pytest.raises(ValueError):
        marker(format_version=2)


# --- init_drive and README ----------------------------------------------------------------


def test_init_drive_creates_the_layout(tmp_path: Path) -> None:
    m = marker()
    d = layout.init_drive(tmp_path, m)
    assert d == tmp_path / "coldvault"
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["vault.json", "LISEZMOI.txt", "README.txt", "objects", "keys", "catalog", "journal",
         "manifests"]
    )  # fmt: skip
    en = (d / "README.txt").read_bytes()
    assert (
        en.startswith(b"\xef\xbb\xbf") and b"\r\n" in en and b"\n" not in en.replace(b"\r\n", b"")
    )
    text = en[3:].decode()
    assert m.vault_id in text and "Clé du lundi" in text and "HEALTH DATA" in text
    fr = (d / "LISEZMOI.txt").read_bytes()[3:].decode()
    assert "DONNÉES DE SANTÉ" in fr and m.vault_id in fr
    for t in (text, fr):
        assert "age -d -i master.key keys/" in t
        assert "age -d -i patient.key objects/xx/<id>.age | zstd -d | tar -x" in t
        assert "<id>.age.000" in t and "age 1.3" in t and "AGE-SECRET-KEY-PQ-1" in t
        assert "catalog/" in t and "SQLite" in t
    # idempotent for the same drive, refused for another drive or another vault
    layout.init_drive(tmp_path, m)
    with pytest.raises(VaultError, match="already enrolled"):
        layout.init_drive(tmp_path, marker(drive_id="another"))
    with pytest.raises(ForeignDrive):
        layout.init_drive(tmp_path, marker(vault_id="another"))
    assert not list(tmp_path.rglob(".tmp-*"))


def _run(cmd: str, cwd: Path) -> None:
    subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, check=True, timeout=60)


@pytest.mark.skipif(
    not all(shutil.which(t) for t in ("age", "age-keygen", "zstd", "tar")),
    reason="needs the age, age-keygen, zstd and tar tools",
)
def test_readme_recovery_steps_work_with_standard_tools(tmp_path: Path) -> None:
    """Follow the README's commands literally on a drive built like coldvault builds it."""
    root = tmp_path / "drive"
    vd = layout.init_drive(root, marker())
    work = tmp_path / "work"
    work.mkdir()
    _run("age-keygen -o master.key 2>/dev/null && age-keygen -o p.key 2>/dev/null", work)
    master_r = subprocess.run(
        ["age-keygen", "-y", "master.key"], cwd=work, capture_output=True, text=True, check=True
    ).stdout.strip()
    patient_r = subprocess.run(
        ["age-keygen", "-y", "p.key"], cwd=work, capture_output=True, text=True, check=True
    ).stdout.strip()
    # keys/<key-id>.age: the patient identity encrypted to the master
    kid, oid = "k" + "a" * 25, "ab" + "c" * 30
    key_ct = subprocess.run(
        ["age", "-r", master_r, "p.key"], cwd=work, capture_output=True, check=True
    ).stdout
    fsio.make_dirs_durable(vd / "keys")
    fsio.write_file_atomic(vd / "keys", layout.key_file_name(kid), key_ct)
    # an object: tar (document + coldvault.json) | zstd | age, written split in parts
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("Compte rendu.pdf", b"%PDF-1.4 document"), ("coldvault.json", b"{}")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    plain = subprocess.run(["zstd", "-q", "-c"], input=buf.getvalue(), capture_output=True,
                           check=True).stdout  # fmt: skip
    obj = subprocess.run(["age", "-r", patient_r], input=plain, capture_output=True,
                         check=True).stdout  # fmt: skip
    odir = layout.object_dir(root, oid)
    fsio.make_dirs_durable(odir)
    r = fsio.write_file_atomic(odir, layout.object_file_name(oid), obj, split_above=200,
                               part_size=200)  # fmt: skip
    assert r.split
    shutil.copy(work / "master.key", vd / "master.key")
    out = tmp_path / "out"
    out.mkdir()
    # README step 2 (all keys into one file) and step 4 (cat the parts)
    _run(
        'for k in keys/*.age; do age -d -i master.key "$k"; done > patient.key && '
        f"cat objects/ab/{oid}.age.* | age -d -i patient.key | zstd -d | tar -x -C {out}",
        vd,
    )
    assert (out / "Compte rendu.pdf").read_bytes() == b"%PDF-1.4 document"
