"""The X25519 recipient type (age1..., AGE-SECRET-KEY-1...)."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from coldvault.age import bech32
from coldvault.age.format import FILE_KEY_SIZE, Stanza, b64decode, b64encode, hkdf
from coldvault.errors import AgeHeaderError

STANZA_TYPE = "X25519"
RECIPIENT_HRP = "age"
IDENTITY_HRP = "AGE-SECRET-KEY-"
_INFO = b"age-encryption.org/v1/X25519"
_ZERO_NONCE = bytes(12)


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        # cryptography refuses an all-zero shared secret; the spec says to abort.
        raise AgeHeaderError("malformed X25519 recipient stanza (low-order share)") from None


class X25519Recipient:
    def __init__(self, public: bytes) -> None:
        if len(public) != 32:
            raise AgeHeaderError("an X25519 recipient is 32 bytes")
        self.public = public

    @classmethod
    def parse(cls, text: str) -> X25519Recipient:
        hrp, data = bech32.decode(text)
        if hrp != RECIPIENT_HRP or text != text.lower():
            raise bech32.Bech32Error("not an age X25519 recipient")
        return cls(data)

    def __str__(self) -> str:
        return bech32.encode(RECIPIENT_HRP, self.public)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        secret = _dh(ephemeral, self.public)
        key = hkdf(secret, share + self.public, _INFO)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza(STANZA_TYPE, [b64encode(share).decode("ascii")], body)]


class X25519Identity:
    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise AgeHeaderError("an X25519 identity is 32 bytes")
        self._secret = secret
        self._key = X25519PrivateKey.from_private_bytes(secret)
        self._public = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> X25519Identity:
        return cls(os.urandom(32))

    @classmethod
    def parse(cls, text: str) -> X25519Identity:
        hrp, data = bech32.decode(text)
        if hrp != IDENTITY_HRP.lower() or text != text.upper():
            raise bech32.Bech32Error("not an age X25519 identity")
        return cls(data)

    def __str__(self) -> str:
        return bech32.encode(IDENTITY_HRP, self._secret, upper=True)

    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self._public)

    def unwrap(self, stanzas: list[Stanza]) -> bytes | None:
        for s in stanzas:
            if s.type != STANZA_TYPE:
                continue
            if len(s.args) != 1:
                raise AgeHeaderError("malformed X25519 recipient stanza")
            share = b64decode(s.args[0])
            if len(share) != 32:
                raise AgeHeaderError("malformed X25519 recipient stanza")
            if len(s.body) != FILE_KEY_SIZE + 16:
                raise AgeHeaderError("malformed X25519 recipient stanza")
            secret = _dh(self._key, share)
            key = hkdf(secret, share + self._public, _INFO)
            try:
                return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, s.body, None)
            except InvalidTag:
                continue
        return None
