"""The vault's Ed25519 signing key: it proves which objects the vault wrote; it opens nothing.

The daemon signs every drive manifest with it while unattended, so the private key is stored
*unencrypted* in the state folder (mode 0600). Stealing it lets a thief forge manifests, never read
a document; its fingerprint is on the paper recovery sheet so that ``recover`` on a new machine can
check that the manifests on a drive were written by this vault.

Signing-key file (``signing.key`` in the state folder; the caller chooses the name)
------------------------------------------------------------------------------------
ASCII text, LF line endings, exactly two lines each ending with LF::

    coldvault-signing-key-v1
    <seed>

``<seed>`` is the 32-byte Ed25519 private seed (RFC 8032 "private key") in standard base64 *with*
padding (RFC 4648 section 4): exactly 44 characters, the last one ``=``. Nothing else is allowed
(no spaces, no CR, no trailing blank line). The file is written atomically (temporary file in the
same folder, fsync, rename, fsync of the folder) with mode 0600.

Verify key text (in drive markers and manifests)
------------------------------------------------
``ed25519:<b64>`` where ``<b64>`` is the 32-byte raw Ed25519 public key (RFC 8032) in standard
base64 with padding (44 characters).

Signatures
----------
Pure Ed25519 (RFC 8032, not Ed25519ph) over the exact bytes given: 64 raw bytes. Any Ed25519
implementation checks them, e.g. ``openssl pkeyutl -verify -rawin``.

Fingerprint (on the recovery sheet)
-----------------------------------
SHA-256 of the 32 raw public-key bytes, first 20 bytes, RFC 4648 base32 (alphabet ``A-Z2-7``,
32 characters, no padding since 20 bytes encode exactly), cut into 8 groups of 4 joined by
``-``: ``ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567``. Compared ignoring case, dashes and spaces
(:func:`fingerprints_match`). 160 bits are far beyond any second-preimage search.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from coldvault.errors import IntegrityError, UsageError, VaultError
from coldvault.fsutil import atomic_writer

log = logging.getLogger(__name__)

KEY_FILE_HEADER = "coldvault-signing-key-v1"
VERIFY_KEY_PREFIX = "ed25519:"
SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
FINGERPRINT_BYTES = 20
_FINGERPRINT_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


class SignatureError(IntegrityError):
    """A signature does not verify: the data was changed or was not signed by this key."""


class KeyFormatError(IntegrityError):
    """A verify key's text form is malformed."""


class SigningKeyFileError(VaultError):
    """The signing-key file in the state folder is missing, unreadable or malformed."""


def _b64_exact(text: str, size: int) -> bytes | None:
    """Decode canonical padded standard base64 of exactly ``size`` bytes, else None."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return None
    if len(raw) != size or base64.b64encode(raw).decode("ascii") != text:
        return None
    return raw


class VerifyKey:
    """The public half: checks signatures, has a text form and a fingerprint."""

    __slots__ = ("_key", "_raw")

    def __init__(self, raw: bytes) -> None:
        if len(raw) != PUBLIC_KEY_SIZE:
            raise KeyFormatError("The signing key's public half has the wrong length.")
        try:
            self._key = Ed25519PublicKey.from_public_bytes(raw)
        except ValueError:
            raise KeyFormatError("The signing key's public half is not a valid key.") from None
        self._raw = bytes(raw)

    @classmethod
    def from_text(cls, text: str) -> VerifyKey:
        """Parse ``ed25519:<base64>``; raise KeyFormatError if malformed."""
        if not isinstance(text, str) or not text.startswith(VERIFY_KEY_PREFIX):
            raise KeyFormatError("The vault's verify key is malformed (expected 'ed25519:...').")
        raw = _b64_exact(text[len(VERIFY_KEY_PREFIX) :], PUBLIC_KEY_SIZE)
        if raw is None:
            raise KeyFormatError("The vault's verify key is malformed (bad base64 or length).")
        return cls(raw)

    def to_text(self) -> str:
        return VERIFY_KEY_PREFIX + base64.b64encode(self._raw).decode("ascii")

    @property
    def raw(self) -> bytes:
        return self._raw

    def verify(self, data: bytes, signature: bytes) -> None:
        """Return if ``signature`` signs ``data`` with this key, else raise SignatureError."""
        if len(signature) != SIGNATURE_SIZE:
            raise SignatureError("The signature is malformed (wrong length).")
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            raise SignatureError(
                "The signature does not match: the data was changed or not signed by this vault."
            ) from None

    def fingerprint(self) -> str:
        """``XXXX-XXXX-...`` (8 groups of 4 base32 characters) for the recovery sheet."""
        digest = hashlib.sha256(self._raw).digest()[:FINGERPRINT_BYTES]
        text = base64.b32encode(digest).decode("ascii")
        return "-".join(text[i : i + 4] for i in range(0, len(text), 4))

    def matches_fingerprint(self, typed: str) -> bool:
        """True if ``typed`` (as read off the recovery sheet) is this key's fingerprint."""
        return fingerprints_match(self.fingerprint(), typed)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifyKey) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __repr__(self) -> str:
        return f"VerifyKey({self.fingerprint()})"


def _normalize_fingerprint(text: str) -> str | None:
    norm = "".join(c for c in text.upper() if c not in "- \t\n")
    if len(norm) != 32 or not set(norm) <= _FINGERPRINT_CHARS:
        return None
    return norm


def fingerprints_match(a: str, b: str) -> bool:
    """Compare two fingerprints ignoring case, dashes and spaces; malformed never matches."""
    na, nb = _normalize_fingerprint(a), _normalize_fingerprint(b)
    return na is not None and na == nb


class SigningKey:
    """The private half, held by the daemon."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        """Build from a 32-byte seed (tests use fixed seeds: Ed25519 signing is deterministic)."""
        if len(seed) != SEED_SIZE:
            raise ValueError("an Ed25519 seed is 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        return self._key.private_bytes_raw()

    def public(self) -> VerifyKey:
        return VerifyKey(self._key.public_key().public_bytes_raw())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def to_file_bytes(self) -> bytes:
        seed = base64.b64encode(self.seed()).decode("ascii")
        return f"{KEY_FILE_HEADER}\n{seed}\n".encode("ascii")

    @classmethod
    def from_file_bytes(cls, data: bytes, path: Path | str = "the signing-key file") -> SigningKey:
        bad = SigningKeyFileError(
            f"The vault's signing-key file {path} is damaged or not a coldvault signing key.",
            hint="Restore it from a backup of the state folder, or create a new signing key "
            "(the fingerprint on the recovery sheet then changes).",
        )
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise bad from None
        lines = text.split("\n")
        if len(lines) != 3 or lines[0] != KEY_FILE_HEADER or lines[2] != "":
            raise bad
        seed = _b64_exact(lines[1], SEED_SIZE)
        if seed is None:
            raise bad
        return cls.from_seed(seed)

    @classmethod
    def load(cls, path: Path | str) -> SigningKey:
        path = Path(path)
        try:
            with open(path, "rb") as f:
                mode = os.fstat(f.fileno()).st_mode
                data = f.read(4096)
        except FileNotFoundError:
            raise SigningKeyFileError(
                f"The vault's signing-key file {path} is missing.",
                hint="Check the state folder in the configuration.",
            ) from None
        except OSError as e:
            raise SigningKeyFileError(
                f"The vault's signing-key file {path} cannot be read ({e.strerror})."
            ) from None
        if stat.S_IMODE(mode) & 0o077:
            log.warning(
                "signing-key file %s is readable by other users (mode %o); it should be 0600",
                path,
                stat.S_IMODE(mode),
            )
        return cls.from_file_bytes(data, path)

    def save(self, path: Path | str, *, overwrite: bool = False) -> None:
        """Write the key file atomically with mode 0600.

        Refuses to replace an existing key unless ``overwrite``: a replaced signing key changes
        the fingerprint on the recovery sheet.
        """
        path = Path(path)
        if not overwrite and path.exists():
            raise UsageError(f"A signing key already exists at {path}; not replacing it.")
        try:
            with atomic_writer(path, 0o600) as f:
                os.fchmod(f.fileno(), 0o600)  # whatever the umask
                f.write(self.to_file_bytes())
        except OSError as e:
            raise SigningKeyFileError(
                f"Could not write the signing-key file {path} ({e.strerror})."
            ) from None

    def __repr__(self) -> str:
        return f"SigningKey({self.public().fingerprint()})"
