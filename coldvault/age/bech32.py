"""Bech32 (BIP 173) without the 90-character length limit, as age uses it.

Strings are all lowercase or all uppercase; the checksum is computed over the lowercase form.

A post-quantum recipient is ~1,950 characters, so the per-character work is kept small: the
checksum steps use a 32-entry table of the generator combinations, and the 8-to-5 and 5-to-8
bit regrouping is done in C: base32 (RFC 4648 groups bits the same way, most significant first)
mapped to Bech32's alphabet with ``bytes.translate``, and back through ``int(digits, 32)``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from coldvault.errors import AgeError

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(_CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _gen_table() -> tuple[int, ...]:
    table = []
    for top in range(32):
        x = 0
        for i in range(5):
            if (top >> i) & 1:
                x ^= _GEN[i]
        table.append(x)
    return tuple(table)


#: XOR of the generator entries selected by the five bits shifted out at each step.
_GEN_TABLE = _gen_table()
_B32_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_INVALID = 0xFF
#: base32 character -> 5-bit value; 5-bit value -> Bech32 character.
_B32_TO_VALUE = bytes(
    _B32_ALPHABET.index(b) if b in _B32_ALPHABET else _INVALID for b in range(256)
)
#: 5-bit value -> digit of ``int(..., 32)``.
_VALUE_TO_DIGIT = b"0123456789abcdefghijklmnopqrstuv" + bytes(224)
_VALUE_TO_CHARSET = _CHARSET.encode("ascii") + bytes(224)
#: Bech32 character (lowercase) -> 5-bit value, anything else -> _INVALID.
_CHARSET_TO_VALUE = bytes(_CHARSET_REV.get(chr(b), _INVALID) for b in range(256))
#: Characters a Bech32 string may hold at all (printable US-ASCII, no space).
_PRINTABLE = bytes(range(33, 127))


class Bech32Error(AgeError):
    """A malformed Bech32 key string."""


def _polymod(values: Iterable[int], chk: int = 1) -> int:
    """The BCH checksum state after ``values``, continuing from ``chk``."""
    table = _GEN_TABLE
    for v in values:
        chk = ((chk & 0x1FFFFFF) << 5) ^ v ^ table[(chk >> 25) & 31]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _to_5bit(data: bytes) -> bytes:
    """``data`` regrouped in 5-bit values (one a byte), the last one padded with zero bits."""
    return base64.b32encode(data).rstrip(b"=").translate(_B32_TO_VALUE)


def _from_5bit(values: bytes) -> bytes:
    """The bytes that 5-bit ``values`` spell; the padding must be under 5 bits, all zero."""
    if not values:
        return b""
    bits = 5 * len(values) % 8
    if bits >= 5 or values[-1] & ((1 << bits) - 1):
        raise Bech32Error("invalid Bech32 padding")
    # Base 32 is a power of two: int() parses it in linear time, with no digit limit.
    n = int(values.translate(_VALUE_TO_DIGIT), 32) >> bits
    return n.to_bytes(5 * len(values) // 8, "big")


def encode(hrp: str, data: bytes, upper: bool = False) -> str:
    """Encode ``data`` under the human-readable part ``hrp`` (any case)."""
    hrp = hrp.lower()
    values = _to_5bit(data)
    chk = _polymod((0, 0, 0, 0, 0, 0), _polymod(list(values), _polymod(_hrp_expand(hrp)))) ^ 1
    checksum = bytes((chk >> 5 * (5 - i)) & 31 for i in range(6))
    s = hrp + "1" + (values + checksum).translate(_VALUE_TO_CHARSET).decode("ascii")
    return s.upper() if upper else s


def decode(s: str) -> tuple[str, bytes]:
    """Decode a Bech32 string; returns (lowercase hrp, data)."""
    if s.lower() != s and s.upper() != s:
        raise Bech32Error("mixed-case Bech32 string")
    if not s.isascii() or s.encode("ascii").translate(None, _PRINTABLE):
        raise Bech32Error("invalid character in Bech32 string")
    low = s.lower()
    pos = low.rfind("1")
    if pos < 1 or pos + 7 > len(low):
        raise Bech32Error("malformed Bech32 string")
    hrp = low[:pos]
    values = low[pos + 1 :].encode("ascii").translate(_CHARSET_TO_VALUE)
    if _INVALID in values:
        raise Bech32Error("invalid character in Bech32 string")
    if _polymod(list(values), _polymod(_hrp_expand(hrp))) != 1:
        raise Bech32Error("invalid Bech32 checksum")
    return hrp, _from_5bit(values[:-6])
