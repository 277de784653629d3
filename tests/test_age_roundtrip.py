"""age round trips, header encoding, tampering, truncation, bounded memory and Bech32 keys.

Every recipient type (X25519, mlkem768x25519, scrypt at the test work factor) is exercised at the
STREAM chunk boundaries, with the plaintext handed to the writer in arbitrary pieces.
"""

from __future__ import annotations

import base64
import io
import itertools
import random
import resource
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coldvault import age
from coldvault.age import bech32
from coldvault.age.format import Stanza, encode_header, parse_header, verify_header_mac
from coldvault.age.stream import (
    CHUNK_SIZE,
    ENC_CHUNK_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    EncryptWriter,
    seal_payload,
)
from coldvault.errors import (
    AgeError,
    AgeHeaderError,
    AgeHMACError,
    AgeNoMatchError,
    AgePayloadError,
)

X25519_ID = age.X25519Identity.generate()
HYBRID_ID = age.HybridIdentity.generate()
PASSPHRASE = b"correct horse battery staple"
KINDS = ["x25519", "hybrid", "scrypt"]
C = CHUNK_SIZE
SIZES = [0, 1, C - 1, C, C + 1, 2 * C - 1, 2 * C, 2 * C + 1, 3 * C]
HYPOTHESIS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _keys(kind: str, max_work_factor: int = 22) -> tuple[list[age.Recipient], list[age.Identity]]:
    if kind == "x25519":
        return [X25519_ID.recipient()], [X25519_ID]
    if kind == "hybrid":
        return [HYBRID_ID.recipient()], [HYBRID_ID]
    # Built at call time so that conftest's low DEFAULT_WORK_FACTOR applies.
    return [age.ScryptRecipient(PASSPHRASE)], [age.ScryptIdentity(PASSPHRASE, max_work_factor)]


def _data(size: int, seed: int = 0) -> bytes:
    return random.Random(seed * 1_000_003 + size).randbytes(size)


def _header_len(ct: bytes) -> int:
    src = io.BytesIO(ct)
    parse_header(src)
    return src.tell()


def _expected_ct_len(header_len: int, size: int) -> int:
    chunks = max(1, -(-size // C))
    return header_len + NONCE_SIZE + size + chunks * TAG_SIZE


def _decrypt_prefix(identities: list[age.Identity], ct: bytes) -> tuple[bytes, AgeError | None]:
    """Decrypt as a streaming consumer would: what was released before the error, and the error."""
    released = bytearray()
    try:
        reader = age.decrypt_reader(identities, io.BytesIO(ct))
        while chunk := reader.read_chunk():
            released += chunk
    except AgeError as e:
        return bytes(released), e
    return bytes(released), None


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_at_chunk_boundaries(kind: str, size: int) -> None:
    recipients, identities = _keys(kind)
    data = _data(size)
    ct = age.encrypt_bytes(recipients, data)
    assert len(ct) == _expected_ct_len(_header_len(ct), size)
    assert age.decrypt_bytes(identities, ct) == data
    # Small reads go through readinto and cross chunk edges at odd offsets.
    reader = age.decrypt_reader(identities, io.BytesIO(ct))
    got = bytearray()
    while piece := reader.read(9_999):
        got += piece
    assert got == data


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_through_unbuffered_file(kind: str, tmp_path: Path) -> None:
    recipients, identities = _keys(kind)
    data = _data(2 * C + 5)
    path = tmp_path / "f.age"
    with open(path, "wb") as f:
        age.encrypt(recipients, io.BytesIO(data), f, bufsize=7_777)
    out = io.BytesIO()
    with open(path, "rb", buffering=0) as raw:  # a FileIO: decrypt_reader must buffer it
        age.decrypt(identities, raw, out)
    assert out.getvalue() == data


def test_scrypt_recipient_uses_the_module_default_work_factor() -> None:
    ct = age.encrypt_bytes([age.ScryptRecipient(PASSPHRASE)], b"x")
    (stanza,) = parse_header(io.BytesIO(ct)).stanzas
    assert stanza.type == "scrypt"
    assert stanza.args[1] == "10"  # conftest lowers DEFAULT_WORK_FACTOR from 18


def _splits(size: int, cuts: list[int]) -> list[bytes]:
    data = _data(size, seed=1)
    points = [0, *sorted(c % (size + 1) for c in cuts), size]
    return [data[a:b] for a, b in itertools.pairwise(points)]


@HYPOTHESIS
@given(
    size=st.one_of(st.sampled_from(SIZES), st.integers(0, 3 * C + 17)),
    cuts=st.lists(st.integers(0, 4 * C), max_size=12),
    kind=st.sampled_from(KINDS),
)
def test_any_write_split_gives_the_same_ciphertext(size: int, cuts: list[int], kind: str) -> None:
    pieces = _splits(size, cuts)
    data = b"".join(pieces)
    key = bytes(range(32))
    whole, split = io.BytesIO(), io.BytesIO()
    with EncryptWriter(key, whole) as w:
        w.write(data)
    with EncryptWriter(key, split) as w:
        for i, p in enumerate(pieces):
            # bytes, bytearray and memoryview pieces, empty ones included
            w.write(p if i % 3 == 0 else bytearray(p) if i % 3 == 1 else memoryview(p))
    assert split.getvalue() == whole.getvalue()
    # The payload sealed at once (encrypt_bytes, small objects) is the same bytes.
    assert seal_payload(key, data) == whole.getvalue()
    assert seal_payload(key, memoryview(bytearray(data))) == whole.getvalue()
    # And through the public API, with a fresh file key and nonce.
    recipients, identities = _keys(kind)
    out = io.BytesIO()
    with age.encrypt_writer(recipients, out) as w:
        for p in pieces:
            w.write(p)
    assert age.decrypt_bytes(identities, out.getvalue()) == data


def test_multiple_recipients_each_open_the_file() -> None:
    others = [age.X25519Identity.generate() for _ in range(3)]
    ct = age.encrypt_bytes([i.recipient() for i in others], b"shared")
    for ident in others:
        assert age.decrypt_bytes([ident], ct) == b"shared"
    with pytest.raises(AgeNoMatchError):
        age.decrypt_bytes([X25519_ID, HYBRID_ID], ct)
    pq = [age.HybridIdentity.generate() for _ in range(2)]
    ct = age.encrypt_bytes([i.recipient() for i in pq], b"pq")
    assert age.decrypt_bytes([X25519_ID, pq[1]], ct) == b"pq"


def test_recipient_mixing_rules() -> None:
    with pytest.raises(ValueError):
        age.encrypt_bytes([X25519_ID.recipient(), HYBRID_ID.recipient()], b"")
    with pytest.raises(ValueError):
        age.encrypt_bytes([age.ScryptRecipient(PASSPHRASE), X25519_ID.recipient()], b"")
    with pytest.raises(ValueError):
        age.encrypt_bytes([], b"")


def test_scrypt_wrong_passphrase_and_work_factor_limit() -> None:
    ct = age.encrypt_bytes([age.ScryptRecipient(PASSPHRASE, 13)], b"secret")
    with pytest.raises(AgeNoMatchError):
        age.decrypt_bytes([age.ScryptIdentity(b"wrong")], ct)
    with pytest.raises(AgeHeaderError, match="work factor 13"):
        age.decrypt_bytes([age.ScryptIdentity(PASSPHRASE, max_work_factor=12)], ct)
    assert age.decrypt_bytes([age.ScryptIdentity(PASSPHRASE, max_work_factor=13)], ct) == b"secret"


def test_an_exception_inside_the_writer_leaves_an_unfinished_file() -> None:
    out = io.BytesIO()
    with pytest.raises(RuntimeError), age.encrypt_writer([X25519_ID.recipient()], out) as w:
        w.write(_data(3 * C))
        raise RuntimeError("source failed")
    released, err = _decrypt_prefix([X25519_ID], out.getvalue())
    assert isinstance(err, AgePayloadError)
    assert released == _data(3 * C)[: len(released)] and len(released) < 3 * C

    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.calls = 0

        def readable(self) -> bool:
            return True

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            self.calls += 1
            if self.calls > 3:
                raise OSError("disk went away")
            b[:] = bytes(len(b))
            return len(b)

    out = io.BytesIO()
    with pytest.raises(OSError):
        age.encrypt([X25519_ID.recipient()], Failing(), out, bufsize=C)  # type: ignore[arg-type]
    with pytest.raises(AgePayloadError):
        age.decrypt_bytes([X25519_ID], out.getvalue())


# --- header encoding ------------------------------------------------------------------------

VCHAR = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)


@pytest.mark.parametrize(
    ("length", "lines"),
    [(0, [b""]), (47, [63]), (48, [64, b""]), (49, [64, 2]), (96, [64, 64, b""]), (1, [2])],
)
def test_stanza_body_line_wrapping(length: int, lines: list[int | bytes]) -> None:
    body = _data(length, seed=2)
    encoded = Stanza("t", ["a", "b"], body).encode()
    first, *rest = encoded.split(b"\n")
    assert first == b"-> t a b"
    assert rest[-1] == b""  # the encoding ends with a newline
    assert [len(x) for x in rest[:-1]] == [x if isinstance(x, int) else 0 for x in lines]
    header = encode_header([Stanza("t", ["a", "b"], body)], bytes(16))
    assert parse_header(io.BytesIO(header)).stanzas == [Stanza("t", ["a", "b"], body)]


@HYPOTHESIS
@given(
    stanzas=st.lists(
        st.tuples(
            VCHAR,
            st.lists(VCHAR, max_size=4),
            st.one_of(st.sampled_from([0, 47, 48, 49, 96, 97]), st.integers(0, 300)),
        ),
        min_size=1,
        max_size=5,
    ),
    file_key=st.binary(min_size=16, max_size=16),
)
def test_header_encode_parse_round_trip(
    stanzas: list[tuple[str, list[str], int]], file_key: bytes
) -> None:
    objs = [Stanza(t, args, _data(n, seed=3)) for t, args, n in stanzas]
    header = encode_header(objs, file_key)
    src = io.BytesIO(header + b"PAYLOAD")
    parsed = parse_header(src)
    assert src.tell() == len(header)  # left at the start of the payload
    assert parsed.stanzas == objs
    assert parsed.mac_input == header[: header.rindex(b"---") + 3]
    verify_header_mac(parsed, file_key)
    with pytest.raises(AgeHMACError):
        verify_header_mac(parsed, bytes(b ^ 1 for b in file_key))


def test_full_last_body_line_requires_the_empty_line() -> None:
    header = encode_header([Stanza("t", [], bytes(48))], bytes(16))
    assert b"\n\n---" in header
    with pytest.raises(AgeHeaderError):
        parse_header(io.BytesIO(header.replace(b"\n\n---", b"\n---")))


def test_header_rejects_padding_and_crlf() -> None:
    header = encode_header([Stanza("t", [], bytes(10))], bytes(16))
    padded = header.replace(b"AAAAAAAAAAAAAA\n", b"AAAAAAAAAAAAAA==\n")
    assert padded != header
    with pytest.raises(AgeHeaderError):
        parse_header(io.BytesIO(padded))
    with pytest.raises(AgeHeaderError):
        parse_header(io.BytesIO(header.replace(b"\n", b"\r\n")))


# --- tampering, truncation, extension -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_every_single_byte_flip_of_a_small_file_fails(kind: str) -> None:
    # A low work factor ceiling: a flipped digit must not make the test derive a 4 GiB scrypt key.
    recipients, identities = _keys(kind, max_work_factor=12)
    data = _data(100)
    ct = age.encrypt_bytes(recipients, data)
    assert age.decrypt_bytes(identities, ct) == data
    for i in range(len(ct)):
        for mask in (0x01, 0x80):
            bad = bytearray(ct)
            bad[i] ^= mask
            released, err = _decrypt_prefix(identities, bytes(bad))
            assert err is not None, f"flipping byte {i} with {mask:#x} went unnoticed"
            assert released == b""


@HYPOTHESIS
@given(pos=st.integers(0, 10**9), mask=st.integers(1, 255), kind=st.sampled_from(KINDS))
def test_a_flip_in_a_large_file_releases_only_a_true_prefix(pos: int, mask: int, kind: str) -> None:
    recipients, identities = _keys(kind, max_work_factor=12)
    data = _data(2 * C + 100)
    ct = _cached_ct(kind, data, recipients)
    bad = bytearray(ct)
    bad[pos % len(ct)] ^= mask
    released, err = _decrypt_prefix(identities, bytes(bad))
    assert err is not None
    assert released == data[: len(released)] and len(released) % C == 0
    if pos % len(ct) >= _header_len(ct) + NONCE_SIZE:
        assert isinstance(err, AgePayloadError)


_CT_CACHE: dict[tuple[str, int], bytes] = {}


def _cached_ct(kind: str, data: bytes, recipients: list[age.Recipient]) -> bytes:
    key = (kind, len(data))
    if key not in _CT_CACHE:
        _CT_CACHE[key] = age.encrypt_bytes(recipients, data)
    return _CT_CACHE[key]


@pytest.mark.parametrize("size", [0, 1, C, 2 * C, 3 * C - 100, 3 * C])
def test_truncation_around_every_chunk_boundary_fails(size: int) -> None:
    data = _data(size)
    ct = age.encrypt_bytes([X25519_ID.recipient()], data)
    start = _header_len(ct) + NONCE_SIZE
    chunks = max(1, -(-size // C))
    cuts = {start + k * ENC_CHUNK_SIZE + d for k in range(chunks + 1) for d in (-1, 0, 1)}
    cuts |= {len(ct) - 1, len(ct) - TAG_SIZE, len(ct) - TAG_SIZE - 1, 0, 10, start - NONCE_SIZE}
    for cut in sorted(c for c in cuts if 0 <= c < len(ct)):
        released, err = _decrypt_prefix([X25519_ID], ct[:cut])
        assert err is not None, f"truncation to {cut} of {len(ct)} bytes went unnoticed"
        if cut >= start:
            assert isinstance(err, AgePayloadError), (cut, err)
        assert released == data[: len(released)] and len(released) < max(size, 1)
        assert len(released) % C == 0


@pytest.mark.parametrize("size", [0, 1, C - 1, C, 2 * C + 1])
@pytest.mark.parametrize(
    "extra",
    [
        lambda ct: b"\x00",
        lambda ct: bytes(TAG_SIZE),
        lambda ct: ct[-ENC_CHUNK_SIZE:],  # a replayed chunk (or the whole tail)
        lambda ct: bytes(ENC_CHUNK_SIZE + 1),
    ],
)
def test_appended_bytes_fail(size: int, extra: Callable[[bytes], bytes]) -> None:
    data = _data(size)
    ct = age.encrypt_bytes([HYBRID_ID.recipient()], data)
    released, err = _decrypt_prefix([HYBRID_ID], ct + extra(ct))
    assert isinstance(err, AgePayloadError)
    assert released == data[: len(released)]
    with pytest.raises(AgePayloadError):
        age.decrypt_bytes([HYBRID_ID], ct + extra(ct))


def test_a_file_for_someone_else_is_no_match() -> None:
    ct = age.encrypt_bytes([age.X25519Identity.generate().recipient()], b"x")
    with pytest.raises(AgeNoMatchError):
        age.decrypt_bytes([X25519_ID], ct)
    ct = age.encrypt_bytes([age.HybridIdentity.generate().recipient()], b"x")
    with pytest.raises(AgeNoMatchError):
        age.decrypt_bytes([HYBRID_ID, X25519_ID], ct)


# --- bounded memory -----------------------------------------------------------------------

_PERIOD = (1 << 20) + 13  # not a multiple of the chunk size: every chunk's plaintext differs


class _PipedCiphertext(io.RawIOBase):
    """Ciphertext of ``total`` pattern bytes, produced on demand as the reader pulls it."""

    def __init__(self, recipient: age.Recipient, total: int, pattern: memoryview) -> None:
        super().__init__()
        self._pending = bytearray()
        self._pattern = pattern
        self._total = total
        self._made = 0
        self._writer = age.encrypt_writer([recipient], self)  # type: ignore[arg-type]

    def readable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]  # the writer's dst
        self._pending += b
        return len(b)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        while len(self._pending) < len(b) and not self._writer.closed:
            n = min(100_003, self._total - self._made)
            off = self._made % _PERIOD
            self._writer.write(self._pattern[off : off + n])
            self._made += n
            if self._made == self._total:
                self._writer.close()
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        del self._pending[:n]
        return n


def test_300_mb_streams_in_bounded_memory() -> None:
    total = 300 * 1000 * 1000 + 12_345
    pattern = random.Random(5).randbytes(_PERIOD)
    doubled = memoryview(pattern + pattern)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    try:
        src = _PipedCiphertext(X25519_ID.recipient(), total, doubled)
        reader = age.decrypt_reader([X25519_ID], io.BufferedReader(src))
        seen = 0
        while chunk := reader.read_chunk():
            off = seen % _PERIOD
            assert doubled[off : off + len(chunk)] == chunk, f"wrong plaintext at {seen}"
            seen += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == total
    assert peak < 4 * 1024 * 1024, f"peak traced allocation {peak} bytes"
    rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    assert rss_growth < 64 * 1024, f"peak RSS grew by {rss_growth} KiB"


# --- Bech32 and key strings -------------------------------------------------------------------

HRP = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(hrp=HRP, data=st.binary(max_size=120), upper=st.booleans())
def test_bech32_round_trip(hrp: str, data: bytes, upper: bool) -> None:
    s = bech32.encode(hrp, data, upper=upper)
    assert s == (s.upper() if upper else s.lower())
    assert bech32.decode(s) == (hrp.lower(), data)


def test_bech32_known_vectors() -> None:
    # BIP 173's valid strings with empty data, and one age recipient spelled out.
    assert bech32.decode("A12UEL5L") == ("a", b"")
    assert bech32.decode("a12uel5l") == ("a", b"")
    for bad in ["A12UeL5L", "a12uel5m", "12uel5l", "a1", "a12uel5\x7f", "a1b2uel5l"]:
        with pytest.raises(bech32.Bech32Error):
            bech32.decode(bad)


@settings(max_examples=100, deadline=None)
@given(pos=st.integers(0, 10**6), which=st.sampled_from(["recipient", "identity", "pq"]))
def test_bech32_mixed_case_is_rejected(pos: int, which: str) -> None:
    s = {
        "recipient": str(X25519_ID.recipient()),
        "identity": str(X25519_ID),
        "pq": str(HYBRID_ID),
    }[which]
    letters = [i for i, c in enumerate(s) if c.isalpha()]
    i = letters[pos % len(letters)]
    mixed = s[:i] + s[i].swapcase() + s[i + 1 :]
    with pytest.raises(bech32.Bech32Error):
        bech32.decode(mixed)
    with pytest.raises(bech32.Bech32Error):
        (age.parse_recipient if which == "recipient" else age.parse_identity)(mixed)


@settings(max_examples=200, deadline=None)
@given(pos=st.integers(0, 10**6), repl=st.integers(1, 31))
def test_bech32_any_single_substitution_breaks_the_checksum(pos: int, repl: int) -> None:
    charset = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
    s = str(X25519_ID.recipient())
    data_start = s.rindex("1") + 1
    i = data_start + pos % (len(s) - data_start)
    c = charset[(charset.index(s[i]) + repl) % 32]
    with pytest.raises(bech32.Bech32Error, match="checksum"):
        bech32.decode(s[:i] + c + s[i + 1 :])


def test_key_string_case_rules() -> None:
    for ident in (X25519_ID, HYBRID_ID):
        text = str(ident)
        assert text == text.upper()
        assert str(age.parse_identity(text)) == text
        with pytest.raises(bech32.Bech32Error):
            age.parse_identity(text.lower())
        rec = str(ident.recipient())
        assert rec == rec.lower()
        assert str(age.parse_recipient(rec)) == rec
        with pytest.raises(bech32.Bech32Error):
            age.parse_recipient(rec.upper())
        # A key is not a recipient and vice versa.
        with pytest.raises(bech32.Bech32Error):
            age.parse_recipient(text)
        with pytest.raises(bech32.Bech32Error):
            age.parse_identity(rec)
    with pytest.raises(bech32.Bech32Error):
        age.X25519Identity.parse(str(X25519_ID).lower())
    with pytest.raises(bech32.Bech32Error):
        age.HybridRecipient.parse(str(HYBRID_ID.recipient()).upper())
    assert str(age.X25519Identity(bytes(32)).recipient()).startswith("age1")
    assert str(HYBRID_ID.recipient()).startswith("age1pq1")
    assert str(HYBRID_ID).startswith("AGE-SECRET-KEY-PQ-1")


def test_parse_identity_file_with_comments() -> None:
    other = age.X25519Identity.generate()
    text = (
        "# created: 2024-01-01T00:00:00Z\n"
        f"# public key: {X25519_ID.recipient()}\n"
        f"{X25519_ID}\n"
        "\n"
        "   # an indented comment\n"
        f"  {HYBRID_ID}  \r\n"
        f"{other}"  # no final newline
    )
    ids = age.parse_identity_file(text)
    assert [str(i) for i in ids] == [str(X25519_ID), str(HYBRID_ID), str(other)]
    assert isinstance(ids[1], age.HybridIdentity)
    ct = age.encrypt_bytes([other.recipient()], b"k")
    assert age.decrypt_bytes(list(ids), ct) == b"k"
    for bad in ["", "# only a comment\n\n", f"{X25519_ID}\nnot a key\n", str(X25519_ID).lower()]:
        with pytest.raises(bech32.Bech32Error):
            age.parse_identity_file(bad)


def test_armored_input_is_detected_on_any_stream(tmp_path: Path) -> None:
    data = _data(C + 1)
    ct = age.encrypt_bytes([X25519_ID.recipient()], data)
    b64 = base64.b64encode(ct)
    lines = [b64[i : i + 64] for i in range(0, len(b64), 64)]
    armored = b"\n".join([b"-----BEGIN AGE ENCRYPTED FILE-----", *lines, b""])
    armored += b"-----END AGE ENCRYPTED FILE-----\n"
    assert age.decrypt_bytes([X25519_ID], armored) == data  # a BytesIO: no peek()
    path = tmp_path / "f.age.txt"
    path.write_bytes(b"\n  " + armored)
    for buffering in (0, -1):
        with open(path, "rb", buffering=buffering) as f:
            assert age.decrypt_reader([X25519_ID], f).read() == data
