"""Reading objects with decryption on a second thread: same documents, same failures.

Once ``objects.READ_AHEAD_AFTER`` bytes have been decompressed, a worker thread decrypts ahead
while the caller decompresses. Every damaged, truncated or extended object must fail exactly as
on the caller-only path (same exception type and message), and no thread may outlive the call.
No timing is asserted here.
"""

from __future__ import annotations

import errno
import hashlib
import io
import random
import tarfile
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, cast

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from coldvault import age, objects, restore
from coldvault.age.stream import ReadAhead
from coldvault.errors import AgeError, ColdvaultError, IntegrityError

IDENT = age.X25519Identity.generate()
RNG = random.Random(5)
# Incompressible, so the ciphertext is about as long as the document: many STREAM chunks.
DOC = RNG.randbytes(700_000)
TEXT = b"".join(b"line %d of a lab export\n" % i for i in range(60_000))


def _object(data: bytes, name: str = "scan.pdf") -> bytes:
    meta = objects.DocumentMeta(document_id="d1", patient_ref="p1", name=name, size=0, sha256="")
    out = io.BytesIO()
    objects.write_object(io.BytesIO(data), len(data), meta, [IDENT.recipient()], out)
    return out.getvalue()


CT = _object(DOC)
CT_TEXT = _object(TEXT, "export.hl7")


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("coldvault-")]


def _set_ahead(after: int, depth: int = 2, batch: int = 65536, piece: int = 131072) -> None:
    objects.READ_AHEAD_AFTER = after
    objects.READ_AHEAD_DEPTH = depth
    objects.READ_AHEAD_BATCH = batch
    objects.READ_AHEAD_PIECE = piece


@pytest.fixture(autouse=True)
def _restore_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("READ_AHEAD_AFTER", "READ_AHEAD_DEPTH", "READ_AHEAD_BATCH", "READ_AHEAD_PIECE"):
        monkeypatch.setattr(objects, name, getattr(objects, name))
    before = _workers()
    yield
    assert _workers() == before, "a worker thread was left behind"


class _Src(io.RawIOBase):
    """Ciphertext that may fail with an I/O error at some offset; counts what was read."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        super().__init__()
        self._f = io.BytesIO(data)
        self._fail_at = fail_at

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        pos = self._f.tell()
        if self._fail_at is not None and pos + len(b) > self._fail_at:
            if pos >= self._fail_at:
                raise OSError(errno.EIO, "Input/output error")
            b = memoryview(b)[: self._fail_at - pos]
        return self._f.readinto(b)


def _reference_read_object(
    src: BinaryIO, identities: list[age.X25519Identity], dst: BinaryIO
) -> objects.OpenedDocument:
    """objects.read_object as it was before the read-ahead thread (one thread, kept verbatim)."""
    reader = age.decrypt_reader(identities, src)
    plain = hashlib.sha256()
    written = 0
    member_name = ""
    meta: objects.DocumentMeta | None = None
    try:
        z = zstandard.ZstdDecompressor().stream_reader(cast(BinaryIO, reader), closefd=False)
        with z, tarfile.open(fileobj=z, mode="r|", format=tarfile.PAX_FORMAT) as tar:
            for info in tar:
                if not info.isreg():
                    raise IntegrityError("the object holds an unexpected tar entry")
                f = tar.extractfile(info)
                assert f is not None
                if info.name == objects.META_NAME:
                    meta = objects.DocumentMeta.from_json(f.read(1 << 20))
                    continue
                if member_name:
                    raise IntegrityError("the object holds more than one document")
                member_name = info.name
                while chunk := f.read(objects.READ_SIZE):
                    plain.update(chunk)
                    dst.write(chunk)
                    written += len(chunk)
    except AgeError:
        raise
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise IntegrityError("the object is damaged (its content cannot be unpacked)") from None
    if meta is None or not member_name:
        raise IntegrityError("the object is incomplete (document or coldvault.json missing)")
    if written != meta.size or plain.hexdigest() != meta.sha256:
        raise IntegrityError(
            f"document {meta.document_id} does not match its checksum: the object is damaged"
        )
    return objects.OpenedDocument(meta, member_name)


def _outcome(ct: bytes, fail_at: int | None = None, reference: bool = False) -> tuple[str, object]:
    out = io.BytesIO()
    src = io.BufferedReader(_Src(ct, fail_at))
    read = _reference_read_object if reference else objects.read_object
    try:
        opened = read(cast(BinaryIO, src), [IDENT], out)
    except (ColdvaultError, OSError) as exc:
        return type(exc).__name__, str(exc)
    return "ok", (opened, hashlib.sha256(out.getvalue()).hexdigest())


def _both(ct: bytes, fail_at: int | None = None) -> tuple[tuple[str, object], tuple[str, object]]:
    """(the old one-thread outcome, the new outcome with the worker), checking the new code's
    own thread-free path against the old one on the way."""
    reference = _outcome(ct, fail_at, reference=True)
    _set_ahead(1 << 62)
    assert _outcome(ct, fail_at) == reference
    _set_ahead(65536, depth=1, batch=65536)
    ahead = _outcome(ct, fail_at)
    return reference, ahead


@pytest.mark.parametrize("ct", [CT, CT_TEXT], ids=["scan", "export"])
@pytest.mark.parametrize("after", [0, 1, 65536, 300_000])
@pytest.mark.parametrize(("batch", "piece"), [(1, 1000), (65536, 131072), (200_000, 7)])
def test_documents_read_back_identically(ct: bytes, after: int, batch: int, piece: int) -> None:
    _set_ahead(after, depth=2, batch=batch, piece=piece)
    kind, value = _outcome(ct)
    assert kind == "ok"
    opened, digest = value  # type: ignore[misc]
    expected = DOC if ct is CT else TEXT
    assert digest == hashlib.sha256(expected).hexdigest()
    assert opened.meta.size == len(expected)


def test_a_big_object_does_use_the_second_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_ahead(100_000)
    started: list[str] = []
    real = objects.ReadAhead

    def spy(*a: object) -> object:
        started.append("yes")
        return real(*a)  # type: ignore[arg-type]

    monkeypatch.setattr(objects, "ReadAhead", spy)
    assert _outcome(CT)[0] == "ok"
    assert started == ["yes"]
    started.clear()
    _set_ahead(1 << 62)
    assert _outcome(CT)[0] == "ok"
    assert started == []
    assert _outcome(_object(b"small"))[0] == "ok"
    assert started == []


def _payload_start(ct: bytes) -> int:
    from coldvault.age.format import parse_header

    src = io.BytesIO(ct)
    parse_header(src)
    return src.tell() + 16  # after the payload nonce


@settings(max_examples=60, deadline=None)
@given(pos=st.integers(0, len(CT) - 1), bit=st.integers(0, 7))
def test_a_flipped_bit_fails_the_same_way(pos: int, bit: int) -> None:
    bad = bytearray(CT)
    bad[pos] ^= 1 << bit
    plain, ahead = _both(bytes(bad))
    assert plain == ahead
    assert plain[0] != "ok"


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(0, len(CT) - 1))
def test_a_truncated_object_fails_the_same_way(cut: int) -> None:
    plain, ahead = _both(CT[:cut])
    assert plain == ahead


def test_truncation_at_every_chunk_boundary_fails_the_same_way() -> None:
    start = _payload_start(CT)
    for k in range(0, (len(CT) - start) // 65552 + 1):
        for delta in (-1, 0, 1, 16):
            cut = start + k * 65552 + delta
            if 0 <= cut < len(CT):
                plain, ahead = _both(CT[:cut])
                assert plain == ahead, cut


@pytest.mark.parametrize("extra", [b"x", b"\0" * 16, bytes(70_000)])
def test_trailing_data_behaves_the_same(extra: bytes) -> None:
    plain, ahead = _both(CT + extra)
    assert plain == ahead


@pytest.mark.parametrize("where", [0.0, 0.05, 0.3, 0.7, 0.99, 1.0])
def test_an_io_error_fails_the_same_way(where: float) -> None:
    fail_at = int(len(CT) * where)
    plain, ahead = _both(CT, fail_at=fail_at)
    assert plain == ahead
    if where < 1.0:
        assert plain[0] in ("OSError", "AgePayloadError", "AgeHeaderError", "IntegrityError")


def test_content_not_matching_its_checksum_fails_the_same_way() -> None:
    # A well-formed object whose coldvault.json carries another SHA-256.
    meta = objects.DocumentMeta(document_id="d1", patient_ref="p1", name="a", size=0, sha256="")
    body = DOC[:300_000]
    real_replace = objects.replace

    def lying_replace(m: objects.DocumentMeta, **kw: object) -> objects.DocumentMeta:
        kw["sha256"] = "0" * 64
        return real_replace(m, **kw)  # type: ignore[arg-type]

    objects.replace = lying_replace  # type: ignore[assignment]
    try:
        out = io.BytesIO()
        objects.write_object(io.BytesIO(body), len(body), meta, [IDENT.recipient()], out)
    finally:
        objects.replace = real_replace
    plain, ahead = _both(out.getvalue())
    assert plain == ahead
    assert plain[0] == "IntegrityError" and "checksum" in str(plain[1])


def test_restore_hashes_the_whole_ciphertext_after_the_worker_stops(tmp_path: Path) -> None:
    _set_ahead(65536, depth=2, batch=65536)
    digest = hashlib.sha256(CT).hexdigest()
    path, _meta = restore.decrypt_to_folder(
        lambda: cast(BinaryIO, io.BytesIO(CT)),
        [IDENT],
        tmp_path / "out",
        "fallback",
        expected_size=len(CT),
        expected_sha256=digest,
    )
    assert path.read_bytes() == DOC
    # A replaced object (right plaintext, other ciphertext) is still caught by the catalog hash.
    other = _object(DOC)
    with pytest.raises(IntegrityError, match="does not match the catalog"):
        restore.decrypt_to_folder(
            lambda: cast(BinaryIO, io.BytesIO(other)),
            [IDENT],
            tmp_path / "out",
            "fallback",
            expected_size=len(CT),
            expected_sha256=digest,
        )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["scan.pdf"]


def test_stopping_early_with_a_full_queue_leaves_no_thread() -> None:
    # The caller stops reading (e.g. a bad tar entry) while the worker waits on a full queue:
    # close() must still stop it.
    reader = age.decrypt_reader([IDENT], io.BytesIO(CT))
    ahead = ReadAhead(reader.read_chunk, 1, 65536)
    assert ahead.read()
    ahead.close()
    ahead.close()


def test_read_ahead_hands_over_pieces_and_errors_in_order() -> None:
    pieces = [b"a" * 10, b"b" * 20, b"c"]
    it = iter(pieces)

    def read() -> bytes:
        try:
            return next(it)
        except StopIteration:
            raise OSError(errno.EIO, "late failure") from None

    ahead = ReadAhead(read, 1, 15)
    got = [ahead.read(), ahead.read(), ahead.read()]
    assert got == pieces
    with pytest.raises(OSError, match="late failure") as first:
        ahead.read()
    with pytest.raises(OSError) as again:
        ahead.read()
    assert again.value is first.value
    ahead.close()
    eof = ReadAhead(iter([b"x", b""]).__next__, 2, 1)
    assert [eof.read(), eof.read(), eof.read()] == [b"x", b"", b""]
    eof.close()


def test_memory_stays_bounded_with_a_slow_consumer() -> None:
    _set_ahead(0, depth=8, batch=256 * 1024)
    big = _object(random.Random(9).randbytes(24 << 20))
    seen = 0

    class SlowDst(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
            nonlocal seen
            seen += len(b)
            time.sleep(0.002)
            return len(b)

    src = io.BytesIO(big)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        objects.read_object(src, [IDENT], cast(BinaryIO, SlowDst()))
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert seen == 24 << 20
    # tarfile's 1 MiB reads + 8 queued batches of 256 KiB; never the whole 24 MiB.
    assert peak < 8 << 20, f"peak traced allocation {peak} bytes"
