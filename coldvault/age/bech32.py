"""Bech32 (BIP 173) without the 90-character length limit, as age uses it.

Strings are all lowercase or all uppercase; the checksum is computed over the lowercase form.
"""

from __future__ import annotations

from coldvault.errors import AgeError

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(_CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class Bech32Error(AgeError):
    """A malformed Bech32 key string."""


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        if value < 0 or value >> from_bits:
            raise Bech32Error("invalid Bech32 data")
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & maxv):
        raise Bech32Error("invalid Bech32 padding")
    return out


def encode(hrp: str, data: bytes, upper: bool = False) -> str:
    """Encode ``data`` under the human-readable part ``hrp`` (any case)."""
    hrp = hrp.lower()
    values = _convert_bits(data, 8, 5, True)
    checksum = _polymod([*_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    values += [(checksum >> 5 * (5 - i)) & 31 for i in range(6)]
    s = hrp + "1" + "".join(_CHARSET[v] for v in values)
    return s.upper() if upper else s


def decode(s: str) -> tuple[str, bytes]:
    """Decode a Bech32 string; returns (lowercase hrp, data)."""
    if s.lower() != s and s.upper() != s:
        raise Bech32Error("mixed-case Bech32 string")
    if any(ord(c) < 33 or ord(c) > 126 for c in s):
        raise Bech32Error("invalid character in Bech32 string")
    low = s.lower()
    pos = low.rfind("1")
    if pos < 1 or pos + 7 > len(low):
        raise Bech32Error("malformed Bech32 string")
    hrp = low[:pos]
    try:
        values = [_CHARSET_REV[c] for c in low[pos + 1 :]]
    except KeyError:
        raise Bech32Error("invalid character in Bech32 string") from None
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise Bech32Error("invalid Bech32 checksum")
    return hrp, bytes(_convert_bits(values[:-6], 5, 8, False))
