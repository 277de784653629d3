"""The key hierarchy and the state folder: init, unlock, passphrase change, patient keys."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from coldvault import age, keys, objects
from coldvault.errors import AuthenticationError, VaultError
from coldvault.vault import Vault
from tests.helpers import PASSPHRASE, make_vault


@pytest.mark.parametrize("classic", [False, True])
def test_create_and_unlock(tmp_path: Path, classic: bool) -> None:
    created = make_vault(tmp_path, classic=classic)
    vault = created.vault
    assert stat.S_IMODE(os.stat(vault.state_dir).st_mode) == 0o700
    assert vault.info.post_quantum is (not classic)
    expected = "AGE-SECRET-KEY-1" if classic else "AGE-SECRET-KEY-PQ-1"
    assert created.recovery_key.startswith(expected)
    master = vault.unlock(PASSPHRASE)
    assert str(master) == created.recovery_key
    assert str(master.recipient()) == vault.info.master_recipient
    # The identity file is a standard age scrypt file holding the recovery key.
    text = age.decrypt_bytes(
        [age.ScryptIdentity(PASSPHRASE)], vault.identity_path.read_bytes()
    ).decode()
    assert created.recovery_key in text


def test_wrong_passphrase_is_authentication_error(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    with pytest.raises(AuthenticationError, match="wrong passphrase"):
        vault.unlock(b"not the passphrase")


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    make_vault(tmp_path)
    with pytest.raises(VaultError, match="already exists"):
        make_vault(tmp_path)


def test_passphrase_change_reencrypts_identity_only(tmp_path: Path) -> None:
    created = make_vault(tmp_path)
    vault = created.vault
    before = {p: p.read_bytes() for p in vault.state_dir.rglob("*") if p.is_file()}
    with pytest.raises(AuthenticationError):
        vault.change_passphrase(b"wrong", b"new passphrase here")
    assert vault.identity_path.read_bytes() == before[vault.identity_path]
    vault.change_passphrase(PASSPHRASE, b"new passphrase here")
    assert str(vault.unlock(b"new passphrase here")) == created.recovery_key
    with pytest.raises(AuthenticationError):
        vault.unlock(PASSPHRASE)
    after = {p: p.read_bytes() for p in vault.state_dir.rglob("*") if p.is_file()}
    changed = {p for p in before if before[p] != after.get(p)}
    assert changed == {vault.identity_path}


def test_damaged_identity_file(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    data = bytearray(vault.identity_path.read_bytes())
    data[-5] ^= 1
    vault.identity_path.write_bytes(bytes(data))
    with pytest.raises(VaultError):
        vault.unlock(PASSPHRASE)
    vault.identity_path.write_bytes(b"garbage\n")
    with pytest.raises(VaultError, match="damaged"):
        vault.unlock(PASSPHRASE)


def test_missing_vault(tmp_path: Path) -> None:
    with pytest.raises(VaultError, match="no vault"):
        Vault(tmp_path / "nothing")


@pytest.mark.parametrize("classic", [False, True])
def test_patient_key_roundtrip_and_object(tmp_path: Path, classic: bool) -> None:
    created = make_vault(tmp_path, classic=classic)
    vault = created.vault
    master = vault.unlock(PASSPHRASE)
    pk, sealed = keys.new_patient_key("k1", "patient-42", vault.master_recipient())
    opened = keys.open_patient_key(sealed, [master])
    assert opened.patient_id == "patient-42" and opened.key_id == "k1"
    assert opened.recipient == pk.recipient
    # A document encrypted to the patient's public recipient opens with the key from the file.
    data = os.urandom(70000)
    meta = objects.DocumentMeta("d1", "k1", "scan.pdf", 0, "")
    buf = io.BytesIO()
    objects.write_object(
        io.BytesIO(data), len(data), meta, [age.parse_recipient(pk.recipient)], buf
    )
    out = io.BytesIO()
    assert opened.identity is not None
    objects.read_object(io.BytesIO(buf.getvalue()), [opened.identity], out)
    assert out.getvalue() == data
    # Another vault's master cannot open this patient's key.
    other = Vault.create(tmp_path / "other", b"another passphrase").vault
    with pytest.raises(AuthenticationError):
        keys.open_patient_key(sealed, [other.unlock(b"another passphrase")])


def test_rotation_reseal(tmp_path: Path) -> None:
    vault = make_vault(tmp_path).vault
    old = vault.unlock(PASSPHRASE)
    _, sealed = keys.new_patient_key("k1", "p", vault.master_recipient())
    new = keys.generate_identity(classic=False)
    resealed = keys.reseal_patient_key(sealed, [old], new.recipient())
    assert keys.open_patient_key(resealed, [new]).patient_id == "p"
    with pytest.raises(AuthenticationError):
        keys.open_patient_key(resealed, [old])


def test_recovery_key_typed_loosely(tmp_path: Path) -> None:
    created = make_vault(tmp_path)
    key = created.recovery_key
    spaced = " ".join(key[i : i + 8] for i in range(0, len(key), 8)).lower()
    assert str(keys.parse_recovery_key(spaced)) == key
    with pytest.raises(AuthenticationError):
        keys.parse_recovery_key(key[:-1] + ("A" if key[-1] != "A" else "C"))
