"""The vault's Ed25519 signing key: file format, signatures, fingerprints."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from coldvault.errors import IntegrityError, UsageError, VaultError
from coldvault.signing import (
    KeyFormatError,
    SignatureError,
    SigningKey,
    SigningKeyFileError,
    VerifyKey,
    fingerprints_match,
)

SEED = bytes(range(32))


def test_save_load_round_trip_with_mode_0600(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "signing.key"
    old_umask = os.umask(0)
    try:
        key.save(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = SigningKey.load(path)
    assert loaded.public() == key.public()
    assert loaded.seed() == key.seed()
    # No temporary file left behind.
    assert [p.name for p in tmp_path.iterdir()] == ["signing.key"]


def test_file_format_is_exactly_two_lines() -> None:
    key = SigningKey.from_seed(SEED)
    data = key.to_file_bytes()
    assert data == b"coldvault-signing-key-v1\n" + base64.b64encode(SEED) + b"\n"


def test_save_refuses_to_replace_existing_key_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "signing.key"
    first = SigningKey.generate()
    first.save(path)
    with pytest.raises(UsageError):
        SigningKey.generate().save(path)
    assert SigningKey.load(path).public() == first.public()
    second = SigningKey.generate()
    second.save(path, overwrite=True)
    assert SigningKey.load(path).public() == second.public()


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"coldvault-signing-key-v1\n",
        b"coldvault-signing-key-v2\n" + base64.b64encode(SEED) + b"\n",
        b"coldvault-signing-key-v1\n" + base64.b64encode(SEED),  # no final LF
        b"coldvault-signing-key-v1\n" + base64.b64encode(SEED) + b"\n\n",
        b"coldvault-signing-key-v1\r\n" + base64.b64encode(SEED) + b"\r\n",
        b"coldvault-signing-key-v1\n" + base64.b64encode(SEED[:31]) + b"\n",
        b"coldvault-signing-key-v1\n" + base64.b64encode(SEED).rstrip(b"=") + b"\n",
        b"coldvault-signing-key-v1\n" + b"!" * 44 + b"\n",
        b"\xff\xfe",
    ],
)
def test_malformed_key_file_is_a_vault_error_naming_the_path(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "signing.key"
    path.write_bytes(content)
    with pytest.raises(SigningKeyFileError) as info:
        SigningKey.load(path)
    assert isinstance(info.value, VaultError)
    assert str(path) in info.value.message


def test_missing_key_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(VaultError, match=r"nope\.key"):
        SigningKey.load(path)


def test_signatures_verify_and_reject_changes() -> None:
    key = SigningKey.from_seed(SEED)
    sig = key.sign(b"hello")
    assert len(sig) == 64
    key.public().verify(b"hello", sig)
    # Checked by an independent path: cryptography's own public key from the raw bytes.
    Ed25519PublicKey.from_public_bytes(key.public().raw).verify(sig, b"hello")
    with pytest.raises(SignatureError):
        key.public().verify(b"hellO", sig)
    bad = bytearray(sig)
    bad[10] ^= 1
    with pytest.raises(IntegrityError):
        key.public().verify(b"hello", bytes(bad))
    with pytest.raises(SignatureError):
        key.public().verify(b"hello", sig[:63])
    other = SigningKey.generate()
    with pytest.raises(SignatureError):
        other.public().verify(b"hello", sig)


def test_rfc8032_test_vector_1() -> None:
    # RFC 8032 section 7.1, TEST 1 (empty message).
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    key = SigningKey.from_seed(seed)
    assert key.public().raw.hex() == (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
    )
    assert key.sign(b"").hex() == (
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )


def test_verify_key_text_round_trip() -> None:
    pub = SigningKey.from_seed(SEED).public()
    text = pub.to_text()
    assert text.startswith("ed25519:") and len(text) == len("ed25519:") + 44
    assert VerifyKey.from_text(text) == pub
    assert base64.b64decode(text[8:]) == pub.raw


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ed25519:",
        "x25519:" + base64.b64encode(bytes(32)).decode(),
        "ed25519:" + base64.b64encode(bytes(31)).decode(),
        "ed25519:" + base64.b64encode(bytes(32)).decode().rstrip("="),
        "ed25519:" + base64.b64encode(bytes(32)).decode() + " ",
        "ED25519:" + base64.b64encode(bytes(32)).decode(),
    ],
)
def test_malformed_verify_key_text(text: str) -> None:
    with pytest.raises(KeyFormatError):
        VerifyKey.from_text(text)


def test_fingerprint_shape_and_definition() -> None:
    pub = SigningKey.from_seed(SEED).public()
    fp = pub.fingerprint()
    groups = fp.split("-")
    assert len(groups) == 8 and all(len(g) == 4 for g in groups)
    expected = base64.b32encode(hashlib.sha256(pub.raw).digest()[:20]).decode()
    assert fp.replace("-", "") == expected
    assert SigningKey.generate().public().fingerprint() != fp


def test_fingerprints_match_ignores_case_dashes_and_spaces() -> None:
    fp = SigningKey.from_seed(SEED).public().fingerprint()
    assert fingerprints_match(fp, fp)
    assert fingerprints_match(fp, fp.lower())
    assert fingerprints_match(fp, fp.replace("-", ""))
    assert fingerprints_match(fp, " " + fp.replace("-", " ").lower() + "\n")
    assert SigningKey.from_seed(SEED).public().matches_fingerprint(fp.lower())
    # One wrong character, a truncated or malformed fingerprint never matches.
    wrong = ("B" if fp[0] != "B" else "C") + fp[1:]
    assert not fingerprints_match(fp, wrong)
    assert not fingerprints_match(fp, fp[:-1])
    assert not fingerprints_match("", "")
    assert not fingerprints_match("0" * 32, "0" * 32)
