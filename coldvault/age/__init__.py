"""age v1 (c2sp.org/age), implemented with ``cryptography``.

The public API streams in bounded memory both ways::

    with encrypt_writer([recipient], dst) as w:   # header + nonce written now
        w.write(data)                              # final chunk written on close
    reader = decrypt_reader([identity], src)       # header parsed and authenticated now
    reader.read(...)

Recipient types: X25519 (``age1...``), mlkem768x25519 (``age1pq1...``), scrypt (passphrase).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import BinaryIO, Protocol

from coldvault.age import bech32
from coldvault.age.armor import AgeArmorError, dearmor, looks_armored
from coldvault.age.format import (
    FILE_KEY_SIZE,
    Header,
    Stanza,
    encode_header,
    parse_header,
    verify_header_mac,
)
from coldvault.age.pq import HybridIdentity, HybridRecipient
from coldvault.age.scrypt import ScryptIdentity, ScryptRecipient
from coldvault.age.stream import (
    NONCE_SIZE,
    DecryptReader,
    EncryptWriter,
    payload_key,
    seal_payload,
)
from coldvault.age.x25519 import X25519Identity, X25519Recipient
from coldvault.errors import AgeHeaderError, AgeNoMatchError

__all__ = [
    "AgeArmorError",
    "DecryptReader",
    "EncryptWriter",
    "HybridIdentity",
    "HybridRecipient",
    "Identity",
    "Recipient",
    "ScryptIdentity",
    "ScryptRecipient",
    "X25519Identity",
    "X25519Recipient",
    "decrypt",
    "decrypt_bytes",
    "decrypt_reader",
    "encrypt",
    "encrypt_bytes",
    "encrypt_writer",
    "parse_identity",
    "parse_identity_file",
    "parse_recipient",
]


class Recipient(Protocol):
    def wrap(self, file_key: bytes) -> list[Stanza]: ...


class Identity(Protocol):
    def unwrap(self, stanzas: list[Stanza]) -> bytes | None: ...


def parse_recipient(text: str) -> X25519Recipient | HybridRecipient:
    """Parse an ``age1...`` or ``age1pq1...`` recipient string."""
    text = text.strip()
    try:
        hrp, _ = bech32.decode(text)
    except bech32.Bech32Error:
        raise bech32.Bech32Error("this is not a valid age recipient") from None
    if hrp == "age1pq":
        return HybridRecipient.parse(text)
    if hrp == "age":
        return X25519Recipient.parse(text)
    raise bech32.Bech32Error("this is not a supported age recipient")


def parse_identity(text: str) -> X25519Identity | HybridIdentity:
    """Parse an ``AGE-SECRET-KEY-1...`` or ``AGE-SECRET-KEY-PQ-1...`` identity string."""
    text = text.strip()
    try:
        hrp, _ = bech32.decode(text)
    except bech32.Bech32Error:
        raise bech32.Bech32Error("this is not a valid age secret key") from None
    if hrp == "age-secret-key-pq-":
        return HybridIdentity.parse(text)
    if hrp == "age-secret-key-":
        return X25519Identity.parse(text)
    raise bech32.Bech32Error("this is not a supported age secret key")


def parse_identity_file(text: str) -> list[X25519Identity | HybridIdentity]:
    """Parse an age identity file: one key per line, ``#`` comments and blank lines ignored."""
    identities = [
        parse_identity(line)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not identities:
        raise bech32.Bech32Error("no secret key found in the identity file")
    return identities


def _stanzas_for(recipients: Sequence[Recipient], file_key: bytes) -> list[Stanza]:
    if not recipients:
        raise ValueError("at least one recipient is required")
    if any(isinstance(r, ScryptRecipient) for r in recipients) and len(recipients) != 1:
        raise ValueError("a passphrase recipient cannot be mixed with other recipients")
    kinds = {isinstance(r, HybridRecipient) for r in recipients}
    if len(kinds) > 1:
        raise ValueError("post-quantum and classic recipients cannot be mixed in one file")
    return [s for r in recipients for s in r.wrap(file_key)]


def encrypt_writer(recipients: Sequence[Recipient], dst: BinaryIO) -> EncryptWriter:
    """Write the header and payload nonce to ``dst``; return the stream to write plaintext to.

    Closing the returned writer writes the final chunk (it does not close ``dst``).
    """
    file_key = os.urandom(FILE_KEY_SIZE)
    dst.write(encode_header(_stanzas_for(recipients, file_key), file_key))
    nonce = os.urandom(NONCE_SIZE)
    dst.write(nonce)
    return EncryptWriter(payload_key(file_key, nonce), dst)


def encrypt(
    recipients: Sequence[Recipient], src: BinaryIO, dst: BinaryIO, bufsize: int = 1 << 20
) -> None:
    with encrypt_writer(recipients, dst) as w:
        while chunk := src.read(bufsize):
            w.write(chunk)


def encrypt_bytes(recipients: Sequence[Recipient], data: bytes | bytearray | memoryview) -> bytes:
    """The age file of ``data``, built at once (the same format as :func:`encrypt_writer`)."""
    file_key = os.urandom(FILE_KEY_SIZE)
    header = encode_header(_stanzas_for(recipients, file_key), file_key)
    nonce = os.urandom(NONCE_SIZE)
    return b"".join((header, nonce, seal_payload(payload_key(file_key, nonce), data)))


def unwrap_file_key(header: Header, identities: Sequence[Identity]) -> bytes:
    """Find the file key for ``identities`` and authenticate the header with it."""
    if any(s.type == "scrypt" for s in header.stanzas) and len(header.stanzas) != 1:
        raise AgeHeaderError("an scrypt stanza must be the only one in the header")
    for identity in identities:
        file_key = identity.unwrap(header.stanzas)
        if file_key is not None:
            verify_header_mac(header, file_key)
            return file_key
    raise AgeNoMatchError("none of the given keys can open this file")


def _peek(src: BinaryIO, n: int) -> bytes:
    """The first ``n`` bytes of ``src`` without consuming them (BytesIO has no ``peek``)."""
    peek = getattr(src, "peek", None)
    if peek is not None:
        return bytes(peek(n)[:n])
    if src.seekable():
        pos = src.tell()
        head = src.read(n)
        src.seek(pos)
        return head
    return b""


def decrypt_reader(
    identities: Sequence[Identity], src: BinaryIO, armored: bool | None = None
) -> DecryptReader:
    """Parse and authenticate the header of ``src``; return a stream of the plaintext.

    ``armored=None`` detects ASCII armor; armored input is read into memory (it is small).
    """
    if not isinstance(src, io.BufferedIOBase | io.BytesIO):
        src = io.BufferedReader(src)  # type: ignore[type-var]
    if armored is None:
        armored = looks_armored(_peek(src, 64))
    if armored:
        src = io.BytesIO(dearmor(src.read()))
    header = parse_header(src)
    file_key = unwrap_file_key(header, identities)
    return DecryptReader(file_key, src)


def decrypt(
    identities: Sequence[Identity], src: BinaryIO, dst: BinaryIO, armored: bool | None = None
) -> None:
    reader = decrypt_reader(identities, src, armored)
    while chunk := reader.read_chunk():
        dst.write(chunk)


def decrypt_bytes(identities: Sequence[Identity], data: bytes) -> bytes:
    out = io.BytesIO()
    decrypt(identities, io.BytesIO(data), out)
    return out.getvalue()
