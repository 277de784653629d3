"""The post-quantum hybrid recipient type mlkem768x25519 (age1pq1..., AGE-SECRET-KEY-PQ-1...).

HPKE (RFC 9180) base mode with the MLKEM768-X25519 KEM of draft-ietf-hpke-pq, HKDF-SHA256 and
ChaCha20-Poly1305, all from ``cryptography``. The 32-byte identity seed is expanded with
SHAKE256 to 96 bytes: the first 64 are the ML-KEM-768 seed (d || z), the last 32 the X25519
private key; the recipient is the ML-KEM encapsulation key (1184 bytes) followed by the X25519
public key (32 bytes).
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke
from cryptography.hazmat.primitives.asymmetric import mlkem
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from coldvault.age import bech32
from coldvault.age.format import FILE_KEY_SIZE, Stanza, b64decode, b64encode
from coldvault.errors import AgeHeaderError

STANZA_TYPE = "mlkem768x25519"
RECIPIENT_HRP = "age1pq"
IDENTITY_HRP = "AGE-SECRET-KEY-PQ-"
_INFO = b"age-encryption.org/mlkem768x25519"
MLKEM_PUBLIC_SIZE = 1184
RECIPIENT_SIZE = MLKEM_PUBLIC_SIZE + 32
ENC_SIZE = 1088 + 32
_SUITE = hpke.Suite(hpke.KEM.MLKEM768_X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


class HybridRecipient:
    def __init__(self, public: bytes) -> None:
        if len(public) != RECIPIENT_SIZE:
            raise AgeHeaderError("an mlkem768x25519 recipient is 1216 bytes")
        try:
            self._key = hpke.MLKEM768X25519PublicKey(
                mlkem.MLKEM768PublicKey.from_public_bytes(public[:MLKEM_PUBLIC_SIZE]),
                X25519PublicKey.from_public_bytes(public[MLKEM_PUBLIC_SIZE:]),
            )
        except ValueError:
            raise AgeHeaderError("malformed mlkem768x25519 recipient") from None
        self.public = public
        self._text: str | None = None

    @classmethod
    def parse(cls, text: str) -> HybridRecipient:
        hrp, data = bech32.decode(text)
        if hrp != RECIPIENT_HRP or text != text.lower():
            raise bech32.Bech32Error("not an age post-quantum recipient")
        recipient = cls(data)
        recipient._text = text  # a valid lowercase Bech32 string is the only spelling of its data
        return recipient

    def __str__(self) -> str:
        if self._text is None:  # 1,950 characters of pure-Python Bech32: compute once
            self._text = bech32.encode(RECIPIENT_HRP, self.public)
        return self._text

    def wrap(self, file_key: bytes) -> list[Stanza]:
        sealed = _SUITE.encrypt(file_key, self._key, info=_INFO)
        enc, body = sealed[:ENC_SIZE], sealed[ENC_SIZE:]
        return [Stanza(STANZA_TYPE, [b64encode(enc).decode("ascii")], body)]


class HybridIdentity:
    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise AgeHeaderError("an mlkem768x25519 identity is 32 bytes")
        self._seed = seed
        expanded = hashlib.shake_256(seed).digest(96)
        mlkem_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(expanded[:64])
        self._x25519 = X25519PrivateKey.from_private_bytes(expanded[64:])
        self._key = hpke.MLKEM768X25519PrivateKey(mlkem_key, self._x25519)
        self._public = (
            mlkem_key.public_key().public_bytes_raw() + self._x25519.public_key().public_bytes_raw()
        )
        self._recipient: HybridRecipient | None = None
        self._text: str | None = None

    @classmethod
    def generate(cls) -> HybridIdentity:
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> HybridIdentity:
        hrp, data = bech32.decode(text)
        if hrp != IDENTITY_HRP.lower() or text != text.upper():
            raise bech32.Bech32Error("not an age post-quantum identity")
        identity = cls(data)
        identity._text = text  # as for the recipient: the only (uppercase) spelling
        return identity

    def __str__(self) -> str:
        if self._text is None:
            self._text = bech32.encode(IDENTITY_HRP, self._seed, upper=True)
        return self._text

    def recipient(self) -> HybridRecipient:
        if self._recipient is None:
            self._recipient = HybridRecipient(self._public)
        return self._recipient

    def unwrap(self, stanzas: list[Stanza]) -> bytes | None:
        for s in stanzas:
            if s.type != STANZA_TYPE:
                continue
            if len(s.args) != 1:
                raise AgeHeaderError("malformed mlkem768x25519 recipient stanza")
            enc = b64decode(s.args[0])
            if len(enc) != ENC_SIZE:
                raise AgeHeaderError("malformed mlkem768x25519 recipient stanza")
            if len(s.body) != FILE_KEY_SIZE + 16:
                raise AgeHeaderError("malformed mlkem768x25519 recipient stanza")
            try:
                # An all-zero X25519 shared secret must abort, not count as "not for us".
                self._x25519.exchange(X25519PublicKey.from_public_bytes(enc[-32:]))
            except ValueError:
                raise AgeHeaderError(
                    "malformed mlkem768x25519 recipient stanza (low-order share)"
                ) from None
            try:
                return _SUITE.decrypt(enc + s.body, self._key, info=_INFO)
            except (InvalidTag, ValueError):  # not addressed to us
                continue
        return None
