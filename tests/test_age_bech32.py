"""The table-driven Bech32 against a straightforward reference implementation (BIP 173's).

The reference below is the bit-by-bit code coldvault shipped first; the fast version must give
the same strings, the same bytes and the same errors (type and message) for any input.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldvault import age
from coldvault.age import bech32

# --- reference implementation -------------------------------------------------------------------

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_CHARSET_REV = {c: i for i, c in enumerate(_CHARSET)}
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def ref_polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = ((chk & 0x1FFFFFF) << 5) ^ v
        for i in range(5):
            if (top >> i) & 1:
                chk ^= _GEN[i]
    return chk


def ref_hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def ref_convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = 0
    bits = 0
    out: list[int] = []
    maxv = (1 << to_bits) - 1
    for value in data:
        if value < 0 or value >> from_bits:
            raise bech32.Bech32Error("invalid Bech32 data")
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & maxv):
        raise bech32.Bech32Error("invalid Bech32 padding")
    return out


def ref_encode(hrp: str, data: bytes, upper: bool = False) -> str:
    hrp = hrp.lower()
    values = ref_convert_bits(data, 8, 5, True)
    checksum = ref_polymod([*ref_hrp_expand(hrp), *values, 0, 0, 0, 0, 0, 0]) ^ 1
    values += [(checksum >> 5 * (5 - i)) & 31 for i in range(6)]
    s = hrp + "1" + "".join(_CHARSET[v] for v in values)
    return s.upper() if upper else s


def ref_decode(s: str) -> tuple[str, bytes]:
    if s.lower() != s and s.upper() != s:
        raise bech32.Bech32Error("mixed-case Bech32 string")
    if any(ord(c) < 33 or ord(c) > 126 for c in s):
        raise bech32.Bech32Error("invalid character in Bech32 string")
    low = s.lower()
    pos = low.rfind("1")
    if pos < 1 or pos + 7 > len(low):
        raise bech32.Bech32Error("malformed Bech32 string")
    hrp = low[:pos]
    try:
        values = [_CHARSET_REV[c] for c in low[pos + 1 :]]
    except KeyError:
        raise bech32.Bech32Error("invalid character in Bech32 string") from None
    if ref_polymod(ref_hrp_expand(hrp) + values) != 1:
        raise bech32.Bech32Error("invalid Bech32 checksum")
    return hrp, bytes(ref_convert_bits(values[:-6], 5, 8, False))


def _outcome(f: object, *args: object) -> tuple[str, object]:
    try:
        return "ok", f(*args)  # type: ignore[operator]
    except bech32.Bech32Error as exc:
        return type(exc).__name__, str(exc)


# --- comparisons -----------------------------------------------------------------------------

ANY_HRP = st.text(min_size=0, max_size=12)
ASCII_HRP = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)


@settings(max_examples=300, deadline=None)
@given(hrp=st.one_of(ASCII_HRP, ANY_HRP), data=st.binary(max_size=300), upper=st.booleans())
def test_encode_matches_reference(hrp: str, data: bytes, upper: bool) -> None:
    assert bech32.encode(hrp, data, upper) == ref_encode(hrp, data, upper)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_bit_regrouping_matches_reference(data: bytes) -> None:
    five = bech32._to_5bit(data)
    assert list(five) == ref_convert_bits(data, 8, 5, True)
    assert bech32._from_5bit(five) == data


@settings(max_examples=500, deadline=None)
@given(values=st.lists(st.integers(0, 31), max_size=80))
def test_5_to_8_matches_reference_including_bad_padding(values: list[int]) -> None:
    assert _outcome(bech32._from_5bit, bytes(values)) == _outcome(
        lambda v: bytes(ref_convert_bits(v, 5, 8, False)), values
    )


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.integers(0, 1 << 40), max_size=40), start=st.integers(0, 1 << 31))
def test_polymod_matches_reference_for_any_values(values: list[int], start: int) -> None:
    assert bech32._polymod(values) == ref_polymod(values)
    # Continuing from a state is the same as one pass over the concatenation.
    cut = len(values) // 2
    assert bech32._polymod(values[cut:], bech32._polymod(values[:cut])) == ref_polymod(values)


def _mutations(s: str) -> st.SearchStrategy[str]:
    alphabet = st.sampled_from(_CHARSET + _CHARSET.upper() + "1bBiIoO \x7f\u00e9\u0130!~")
    return st.one_of(
        st.just(s),
        st.tuples(st.integers(0, len(s)), alphabet).map(lambda t: s[: t[0]] + t[1] + s[t[0] + 1 :]),
        st.tuples(st.integers(0, len(s)), alphabet).map(lambda t: s[: t[0]] + t[1] + s[t[0] :]),
        st.integers(0, len(s)).map(lambda i: s[:i] + s[i + 1 :]),
        st.integers(0, len(s)).map(lambda i: s[:i]),
        st.just(s.upper()),
        st.just(s.swapcase()),
    )


@settings(max_examples=500, deadline=None)
@given(
    s=st.tuples(ASCII_HRP, st.binary(max_size=80), st.booleans())
    .map(lambda t: ref_encode(*t))
    .flatmap(_mutations)
)
def test_decode_matches_reference_on_valid_and_damaged_strings(s: str) -> None:
    assert _outcome(bech32.decode, s) == _outcome(ref_decode, s)


@settings(max_examples=300, deadline=None)
@given(s=st.one_of(st.text(max_size=40), st.text(_CHARSET + "1aAB", max_size=40)))
def test_decode_matches_reference_on_arbitrary_text(s: str) -> None:
    assert _outcome(bech32.decode, s) == _outcome(ref_decode, s)


@pytest.mark.parametrize("kind", ["x25519", "hybrid"])
def test_real_keys_match_reference(kind: str) -> None:
    ident: age.X25519Identity | age.HybridIdentity = (
        age.X25519Identity.generate() if kind == "x25519" else age.HybridIdentity.generate()
    )
    for text in (str(ident), str(ident.recipient())):
        assert bech32.decode(text) == ref_decode(text)
        hrp, data = ref_decode(text)
        assert bech32.encode(hrp, data, upper=text.isupper()) == text
        # Every single-character substitution in the data part fails like the reference.
        start = text.rindex("1") + 1
        for i in range(start, len(text), max(1, (len(text) - start) // 40)):
            c = _CHARSET[(_CHARSET.index(text[i].lower()) + 7) % 32]
            bad = text[:i] + (c.upper() if text.isupper() else c) + text[i + 1 :]
            assert _outcome(bech32.decode, bad) == _outcome(ref_decode, bad)


def test_pq_key_strings_are_cached_and_stable() -> None:
    ident = age.HybridIdentity.generate()
    rec = ident.recipient()
    assert str(rec) is str(rec)
    assert str(ident) is str(ident)
    assert str(age.HybridIdentity.parse(str(ident))) == str(ident)
    assert str(age.HybridRecipient.parse(str(rec))) == str(rec)
    assert str(rec) == ref_encode("age1pq", rec.public)
