"""The object's inner layers, written by hand for speed, must stay byte for byte what the
reference libraries write: the tar headers (``tarfile``), ``coldvault.json`` (``json`` of the
dataclass), and zstd frames from compressors reused across documents."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from coldvault import age, objects
from coldvault.errors import UsageError
from coldvault.objects import DocumentMeta


def _tarfile_header(name: str, size: int, mtime: float) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = int(mtime)
    info.mode = 0o600
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


_names = st.one_of(
    st.text(st.characters(min_codepoint=1, max_codepoint=127), min_size=1, max_size=120),
    st.text(st.characters(min_codepoint=1, blacklist_categories=("Cs",)), min_size=1, max_size=60),
    st.sampled_from(["x" * 100, "x" * 101, "compte-rendu été.pdf", "coldvault.json"]),
)
_numbers = st.one_of(st.integers(0, 1 << 40), st.sampled_from([0, 8**11 - 1, 8**11, 8**12 + 5]))


@settings(max_examples=400)
@given(_names, _numbers, st.one_of(_numbers.map(float), st.floats(-1e9, 1e11)))
def test_tar_header_is_what_tarfile_writes(name: str, size: int, mtime: float) -> None:
    assert objects._tar_header(name, size, mtime) == _tarfile_header(name, size, mtime)


def test_tar_header_fast_path_parses_back() -> None:
    header = objects._tar_header("P00042_scan.pdf", 123456, 1_700_000_000.7)
    assert len(header) == tarfile.BLOCKSIZE
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    assert (info.name, info.size, info.mtime, info.mode) == (
        "P00042_scan.pdf",
        123456,
        1_700_000_000,
        0o600,
    )
    assert info.isreg()


_opt_text = st.one_of(st.none(), st.text(max_size=20))


@given(
    st.builds(
        DocumentMeta,
        document_id=st.text(max_size=20),
        patient_ref=st.text(max_size=40),
        name=st.text(max_size=60),
        size=st.integers(0, 1 << 45),
        sha256=st.text("0123456789abcdef", max_size=64),
        source=st.text(max_size=20),
        kind=st.text(max_size=20),
        document_date=_opt_text,
        mtime=st.floats(0, 4e9),
        archived_at=st.text(max_size=30),
    )
)
def test_metadata_json_is_the_dataclass_as_json(meta: DocumentMeta) -> None:
    expected = json.dumps(dataclasses.asdict(meta), sort_keys=True, ensure_ascii=False)
    assert meta.to_json() == expected.encode("utf-8")
    assert DocumentMeta.from_json(meta.to_json()) == meta


class _Short(io.RawIOBase):
    """Yields the bytes it holds whatever size was announced: fewer, like a file truncated
    while it is read, or more, like one that grew."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return self._data.read(n)


@pytest.mark.parametrize("data", [b"compressible text " * 20_000, os.urandom(300_000)])
def test_a_document_after_a_failed_one_round_trips(data: bytes) -> None:
    """The thread's reused compressor is left mid-frame by the failure; the next object must be
    a complete, correct frame all the same."""
    identity = age.X25519Identity.generate()
    meta = DocumentMeta("d1", "p", "doc.txt", 0, "")
    with pytest.raises(UsageError):
        objects.write_object(
            _Short(data), len(data) + 10, meta, [identity.recipient()], io.BytesIO()
        )
    for doc in (data, data[:5000]):
        out = io.BytesIO()
        objects.write_object(io.BytesIO(doc), len(doc), meta, [identity.recipient()], out)
        back = io.BytesIO()
        opened = objects.read_object(io.BytesIO(out.getvalue()), [identity], back)
        assert back.getvalue() == doc and opened.meta.size == len(doc)


# --- stored frames (incompressible documents) ----------------------------------------------


def _zstd_cli() -> str | None:
    path = shutil.which("zstd")
    if path is None and os.environ.get("COLDVAULT_REQUIRE_INTEROP") == "1":
        pytest.fail("zstd is not installed (COLDVAULT_REQUIRE_INTEROP=1)")
    return path


def _stored(data: bytes, cuts: list[int]) -> bytes:
    out = io.BytesIO()
    w = objects.StoredFrameWriter(out)
    pos = 0
    for cut in sorted(c % (len(data) + 1) for c in cuts):
        w.write(data[pos:cut])
        pos = max(pos, cut)
    w.write(data[pos:])
    w.close()
    return out.getvalue()


_B = objects.STORED_BLOCK


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([0, 1, 1000, _B - 1, _B, _B + 1, 2 * _B, 3 * _B + 7]),
    st.lists(st.integers(0, 4 * _B), max_size=5),
)
def test_stored_frame_is_a_zstd_frame_of_the_data(size: int, cuts: list[int]) -> None:
    data = os.urandom(size)
    frame = _stored(data, cuts)
    assert frame.startswith(objects.STORED_FRAME_HEADER)
    params = zstandard.get_frame_parameters(frame)
    assert params.has_checksum and params.window_size == _B
    # Raw blocks: the data plus a 3-byte header per block (at least one), and the checksum.
    blocks = max(1, -(-size // _B))
    assert len(frame) == len(objects.STORED_FRAME_HEADER) + size + 3 * blocks + 4
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(frame))
    assert reader.read() == data
    # The frame made at once (small documents, written whole) is the same bytes.
    assert objects.stored_frame(data) == frame


@pytest.mark.parametrize("size", [5000, 3 * _B + 11])
def test_zstd_itself_reads_and_checks_a_stored_frame(size: int, tmp_path: Path) -> None:
    zstd = _zstd_cli()
    if zstd is None:
        pytest.skip("zstd is not installed (apt install zstd)")
    data = os.urandom(size)
    frame = tmp_path / "f.zst"
    frame.write_bytes(_stored(data, [size // 3]))
    out = subprocess.run([zstd, "-d", "-c", "-q", str(frame)], capture_output=True, check=True)
    assert out.stdout == data
    # The checksum is the one zstd expects: one flipped content byte and zstd refuses the frame.
    damaged = bytearray(frame.read_bytes())
    damaged[len(objects.STORED_FRAME_HEADER) + 3 + 10] ^= 1
    frame.write_bytes(bytes(damaged))
    bad = subprocess.run([zstd, "-t", "-q", str(frame)], capture_output=True)
    assert bad.returncode != 0 and b"checksum" in bad.stderr.lower()


@pytest.fixture(params=["whole", "streamed"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each object test through both writing paths: small documents are built whole in memory,
    larger ones streamed; WHOLE_MAX = -1 streams every document."""
    if request.param == "streamed":
        monkeypatch.setattr(objects, "WHOLE_MAX", -1)
    return str(request.param)


@pytest.mark.parametrize(
    ("data", "stored"),
    [(os.urandom(700_000), True), (b"compte-rendu de consultation\n" * 30_000, False)],
)
def test_incompressible_documents_are_stored_compressible_ones_compressed(
    data: bytes, stored: bool, path: str
) -> None:
    identity = age.X25519Identity.generate()
    out = io.BytesIO()
    meta = DocumentMeta("d2", "p", "scan.pdf", 0, "")
    result = objects.write_object(io.BytesIO(data), len(data), meta, [identity.recipient()], out)
    assert result.compressed is not stored
    frame = age.decrypt_bytes([identity], out.getvalue())
    assert frame.startswith(objects.STORED_FRAME_HEADER) is stored
    back = io.BytesIO()
    objects.read_object(io.BytesIO(out.getvalue()), [identity], back)
    assert back.getvalue() == data


def _frame_of(data: bytes, identity: age.X25519Identity, whole: bool) -> bytes:
    saved = objects.WHOLE_MAX
    objects.WHOLE_MAX = saved if whole else -1
    try:
        out = io.BytesIO()
        meta = DocumentMeta("d3", "p", "note.txt", 0, "", mtime=1_700_000_000.0)
        result = objects.write_object(
            io.BytesIO(data), len(data), meta, [identity.recipient()], out
        )
    finally:
        objects.WHOLE_MAX = saved
    assert result.size == len(out.getvalue())
    return age.decrypt_bytes([identity], out.getvalue())


@pytest.mark.parametrize("size", [0, 1, 4096, 100_000, 700_000, objects.WHOLE_MAX])
@pytest.mark.parametrize("kind", ["text", "noise"])
def test_a_small_document_written_whole_is_the_streamed_object(size: int, kind: str) -> None:
    """Same tar stream, same frame header descriptor (checksum, no content size), either way;
    zstd, told the size, may choose a smaller window for a whole small document."""
    data = os.urandom(size) if kind == "noise" else (b"ordonnance\n" * (size // 11 + 1))[:size]
    identity = age.X25519Identity.generate()
    whole, streamed = _frame_of(data, identity, True), _frame_of(data, identity, False)
    assert whole[:5] == streamed[:5]  # magic, frame header descriptor
    p_whole, p_streamed = (zstandard.get_frame_parameters(f) for f in (whole, streamed))
    assert p_whole.has_checksum and p_streamed.has_checksum
    assert p_whole.content_size == p_streamed.content_size  # unknown in both
    assert p_whole.window_size <= p_streamed.window_size
    if kind == "noise" and size >= 4096:  # stored, both ways
        assert whole.startswith(objects.STORED_FRAME_HEADER)
        assert streamed.startswith(objects.STORED_FRAME_HEADER)
    dctx = zstandard.ZstdDecompressor()
    tar_whole = dctx.stream_reader(io.BytesIO(whole)).read()
    assert tar_whole == dctx.stream_reader(io.BytesIO(streamed)).read()
    with tarfile.open(fileobj=io.BytesIO(tar_whole)) as tf:
        member = tf.extractfile("note.txt")
        assert member is not None and member.read() == data


@pytest.mark.parametrize("size", [0, 4096, 300_000])
def test_a_document_that_grew_or_shrank_is_refused(size: int, path: str) -> None:
    identity = age.X25519Identity.generate()
    data = os.urandom(size)
    meta = DocumentMeta("d4", "p", "doc.pdf", 0, "")
    with pytest.raises(UsageError, match="changed while it was being archived"):
        objects.write_object(
            _Short(data + b"more"), size, meta, [identity.recipient()], io.BytesIO()
        )
    if size:
        with pytest.raises(UsageError, match="changed while it was being archived"):
            objects.write_object(
                _Short(data[:-1]), size, meta, [identity.recipient()], io.BytesIO()
            )
