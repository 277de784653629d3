"""The age v1 header: parsing and encoding exactly as c2sp.org/age specifies.

Parsing is strict (canonical unpadded base64, 64-column stanza bodies ending with a short line,
arguments of visible ASCII, LF only) so that the bytes we authenticate are the bytes we parsed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import BinaryIO

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from coldvault.errors import AgeHeaderError, AgeHMACError

VERSION_LINE = b"age-encryption.org/v1\n"
VERSION_PREFIX = b"age-encryption.org/"
COLUMNS = 64
FILE_KEY_SIZE = 16
MAC_SIZE = 32

# Explicit limits: a header is small; anything beyond these is hostile or broken.
MAX_LINE = 16 * 1024
MAX_HEADER = 1024 * 1024
MAX_STANZAS = 1024

_B64_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def b64encode(data: bytes) -> bytes:
    """Canonical unpadded standard base64."""
    return base64.b64encode(data).rstrip(b"=")


def b64decode(text: bytes | str) -> bytes:
    """Decode canonical unpadded base64; reject padding and non-canonical encodings."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    if not all(c in _B64_CHARS for c in raw) or len(raw) % 4 == 1:
        raise AgeHeaderError("malformed base64 in the age header")
    try:
        data = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise AgeHeaderError("malformed base64 in the age header") from None
    if b64encode(data) != raw:
        raise AgeHeaderError("non-canonical base64 in the age header")
    return data


@dataclass
class Stanza:
    """One recipient stanza: a type, more arguments, and a binary body."""

    type: str
    args: list[str] = field(default_factory=list)
    body: bytes = b""

    def encode(self) -> bytes:
        line = b"-> " + " ".join([self.type, *self.args]).encode("ascii") + b"\n"
        b64 = b64encode(self.body)
        lines = [b64[i : i + COLUMNS] for i in range(0, len(b64), COLUMNS)]
        if not lines or len(lines[-1]) == COLUMNS:
            lines.append(b"")
        return line + b"".join(chunk + b"\n" for chunk in lines)


@dataclass
class Header:
    stanzas: list[Stanza]
    mac: bytes = b""
    # The exact bytes from the version line up to and including "---", as read or encoded.
    mac_input: bytes = b""


def hkdf(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def header_mac(file_key: bytes, mac_input: bytes) -> bytes:
    key = hkdf(file_key, b"", b"header")
    return hmac.new(key, mac_input, hashlib.sha256).digest()


def encode_header(stanzas: list[Stanza], file_key: bytes) -> bytes:
    """The full header, version line to MAC line, authenticated with ``file_key``."""
    mac_input = VERSION_LINE + b"".join(s.encode() for s in stanzas) + b"---"
    mac = header_mac(file_key, mac_input)
    return mac_input + b" " + b64encode(mac) + b"\n"


def _is_vchar_arg(arg: bytes) -> bool:
    return len(arg) > 0 and all(0x21 <= c <= 0x7E for c in arg)


def _readline(src: BinaryIO, total: list[int]) -> bytes:
    line = src.readline(MAX_LINE + 1)
    total[0] += len(line)
    if total[0] > MAX_HEADER:
        raise AgeHeaderError("the age header is too large")
    if not line:
        raise AgeHeaderError("the file ends inside the age header")
    if not line.endswith(b"\n"):
        if len(line) > MAX_LINE:
            raise AgeHeaderError("a line of the age header is too long")
        raise AgeHeaderError("the file ends inside the age header")
    return line


def parse_header(src: BinaryIO) -> Header:
    """Read and parse a v1 header from ``src``, leaving ``src`` at the start of the payload.

    ``src`` must support ``readline(limit)`` (any buffered binary stream does).
    """
    total = [0]
    first = src.readline(MAX_LINE + 1)
    total[0] += len(first)
    if first != VERSION_LINE:
        if first.startswith(VERSION_PREFIX):
            raise AgeHeaderError("unsupported age format version")
        raise AgeHeaderError("not an age file (no age version line)")
    raw = bytearray(first)
    stanzas: list[Stanza] = []
    line = _readline(src, total)
    while True:
        if line.startswith(b"-> "):
            if len(stanzas) >= MAX_STANZAS:
                raise AgeHeaderError("too many recipient stanzas in the age header")
            raw += line
            args = line[3:-1].split(b" ")
            if not all(_is_vchar_arg(a) for a in args):
                raise AgeHeaderError("malformed recipient stanza arguments")
            body = bytearray()
            while True:
                bline = _readline(src, total)
                raw += bline
                content = bline[:-1]
                if len(content) > COLUMNS or not all(c in _B64_CHARS for c in content):
                    raise AgeHeaderError("malformed recipient stanza body")
                body += content
                if len(content) < COLUMNS:
                    break
            decoded = b64decode(bytes(body))
            text_args = [a.decode("ascii") for a in args]
            stanzas.append(Stanza(text_args[0], text_args[1:], decoded))
            line = _readline(src, total)
        elif line.startswith(b"---"):
            if not stanzas:
                raise AgeHeaderError("the age header has no recipient stanza")
            if not line.startswith(b"--- ") or len(line) != 4 + 43 + 1:
                raise AgeHeaderError("malformed age header MAC line")
            mac = b64decode(line[4:-1])
            if len(mac) != MAC_SIZE:
                raise AgeHeaderError("malformed age header MAC line")
            raw += b"---"
            return Header(stanzas, mac, bytes(raw))
        else:
            raise AgeHeaderError("malformed age header line")


def verify_header_mac(header: Header, file_key: bytes) -> None:
    expected = header_mac(file_key, header.mac_input)
    if not hmac.compare_digest(expected, header.mac):
        raise AgeHMACError("the age header MAC does not match: the file is damaged or was altered")
