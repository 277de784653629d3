"""Documents <-> objects: a POSIX (pax) tar stream of the document and ``coldvault.json``,
compressed as one zstd frame, encrypted as one age file, all streamed in bounded memory.

So that ``age -d -i patient.key OBJ | zstd -d | tar -x`` gives the document back with its name.
The document comes first in the tar stream and ``coldvault.json`` last, because the metadata holds
the plaintext SHA-256, known only once the document has been read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import tarfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import BinaryIO, cast

import xxhash
import zstandard

from coldvault import age
from coldvault.age.stream import Blocks, ReadAhead, ThreadedWriter
from coldvault.errors import AgeError, IntegrityError, UsageError
from coldvault.hashio import HashingWriter

OBJECT_FORMAT = 1
META_NAME = "coldvault.json"
# The document entry is renamed if it would collide with the metadata entry.
COLLISION_NAME = "document-coldvault.json"
READ_SIZE = 1 << 20
#: What restore reads from the tar stream at a time: tarfile's stream reader copies what it
#: holds on each read, and buffers that stay in the CPU's cache make those copies cheap.
UNPACK_SIZE = 128 * 1024
PROBE_SIZE = 128 * 1024
#: A probe that compresses to more than this fraction is stored (raw blocks, StoredFrameWriter).
INCOMPRESSIBLE_RATIO = 0.92
LEVEL = 3
#: Files at least this large use zstd's own worker threads, with jobs of this size.
THREADED_MIN_SIZE = 32 * 1024 * 1024
#: Documents up to this size are written whole, in memory (see _write_whole): for them the
#: streaming writers' set-up costs more than the work. At most ~4x this is held per worker.
WHOLE_MAX = 1024 * 1024
JOB_SIZE = 2 * 1024 * 1024
#: Files at least this large are encrypted, hashed and written by a second thread while the
#: caller reads, hashes and compresses; smaller ones stay on the caller's thread (a thread per
#: small document would cost more than it saves).
BACKGROUND_MIN_SIZE = 16 * 1024 * 1024
#: Writes queued for that thread (each at most zstd's ~128 KiB output block): bounds memory.
BACKGROUND_DEPTH = 16
#: When reading an object, decryption and decompression move to a second thread once this much
#: has been unpacked (so small objects never start one); the worker reads READ_AHEAD_PIECE
#: bytes at a time and at most READ_AHEAD_DEPTH batches of READ_AHEAD_BATCH bytes wait between
#: the threads (bounded memory).
READ_AHEAD_AFTER = 8 * 1024 * 1024
READ_AHEAD_PIECE = 128 * 1024
READ_AHEAD_DEPTH = 8
READ_AHEAD_BATCH = 256 * 1024


def new_id() -> str:
    """A random 128-bit identifier, lowercase hex (FAT-safe, unlinkable)."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class DocumentMeta:
    """What ``coldvault.json`` holds (format version 1)."""

    document_id: str
    patient_ref: str
    name: str
    size: int
    sha256: str
    source: str = ""
    kind: str = ""
    document_date: str | None = None  # ISO date from the source rule, if any
    mtime: float = 0.0
    archived_at: str = ""  # ISO 8601 UTC
    format: int = OBJECT_FORMAT

    def to_json(self) -> bytes:
        # Every field is a str, number or None: no need for asdict()'s deep copy.
        raw = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps(raw, sort_keys=True, ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> DocumentMeta:
        try:
            raw = json.loads(data.decode("utf-8"))
            if raw.get("format") != OBJECT_FORMAT:
                raise IntegrityError(
                    f"this object uses format version {raw.get('format')!r}, "
                    "which this version of coldvault does not know"
                )
            fields = {k: raw[k] for k in cls.__dataclass_fields__ if k in raw}
            return cls(**fields)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise IntegrityError("the object's coldvault.json is malformed") from None


@dataclass(frozen=True)
class ObjectResult:
    """The outcome of writing an object: its ciphertext size and SHA-256, and the metadata."""

    size: int
    sha256: str
    meta: DocumentMeta
    compressed: bool


def _tar_header(name: str, size: int, mtime: float) -> bytes:
    """The header of a regular file, as ``tarfile`` writes it in PAX format: a plain ustar block
    when the name is ASCII and fits and the numbers fit in their octal fields (built here
    directly, ~20x faster: it counts for small documents), else with a PAX extended header."""
    seconds = int(mtime)
    if name.isascii() and len(name) <= 100 and 0 <= size < _OCTAL11 and 0 <= seconds < _OCTAL11:
        head = b"%s%s%011o\0%011o\0" % (
            name.encode("ascii").ljust(100, b"\0"),
            _MODE_IDS,
            size,
            seconds,
        )
        checksum = sum(head) + _CHECKSUM_REST
        return head + b"%06o\0 " % checksum + _USTAR_TAIL
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = seconds
    info.mode = 0o600
    info.type = tarfile.REGTYPE
    info.uname = info.gname = ""
    return info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


_OCTAL11 = 8**11  # the largest size and mtime a ustar field holds, plus one
_MODE_IDS = b"0000600\0" + b"0000000\0" * 2  # mode, uid, gid
# type '0', no link name, magic "ustar\0" version "00", empty user and group names, device
# numbers and prefix, and the block's padding.
_USTAR_TAIL = b"0" + b"\0" * 100 + tarfile.POSIX_MAGIC + b"\0" * (32 + 32 + 8 + 8 + 155 + 12)
# The checksum counts its own field as eight spaces.
_CHECKSUM_REST = 8 * ord(" ") + sum(_USTAR_TAIL)


#: The end of a tar archive: two zero blocks.
_TAR_END = b"\0" * (2 * tarfile.BLOCKSIZE)


def _pad(size: int) -> bytes:
    return b"\0" * (-size % tarfile.BLOCKSIZE)


def _tar_after(size: int, final: DocumentMeta) -> bytes:
    """What follows the document's ``size`` bytes in the object's tar: their padding, the
    ``coldvault.json`` member (``final``: with the document's size and SHA-256), the end."""
    body = final.to_json()
    return b"".join(
        (
            _pad(size),
            _tar_header(META_NAME, len(body), final.mtime),
            body,
            _pad(len(body)),
            _TAR_END,
        )
    )


def is_compressible(sample: bytes) -> bool:
    """Decide from the first block whether compressing is worth the time (scans are not)."""
    if len(sample) < 4096:
        return True
    out = _compressor(1, checksum=False).compress(sample)
    return len(out) < INCOMPRESSIBLE_RATIO * len(sample)


_local = threading.local()


def _compressor(level: int, *, checksum: bool = True) -> zstandard.ZstdCompressor:
    """This thread's compressor for ``level``, made once: a new one costs more than compressing
    a small document. (A compressor serves one frame at a time, so one per thread; a frame left
    unfinished by an error is discarded when the next one starts.)"""
    cache: dict[tuple[int, bool], zstandard.ZstdCompressor] | None = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    cctx = cache.get((level, checksum))
    if cctx is None:
        # No content size in the frame header, as in a streamed frame (whose size is not
        # known when it starts): objects written whole or streamed have the same header.
        cctx = cache[level, checksum] = zstandard.ZstdCompressor(
            level=level, write_checksum=checksum, write_content_size=False
        )
    return cctx


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: A stored frame's header: the checksum flag (no content size, not single-segment, no
#: dictionary) and a window of 128 KiB (exponent 7, mantissa 0), the largest raw block.
STORED_FRAME_HEADER = ZSTD_MAGIC + bytes([0x04, 7 << 3])
STORED_BLOCK = 128 * 1024


class StoredFrameWriter(io.RawIOBase):
    """Writes what it is given to ``dst`` as one zstd frame (RFC 8878) of raw blocks, with the
    content checksum: the frame zstd itself writes for data it cannot compress, without the
    time zstd spends finding that out (its match finder runs over every byte, as slow as a
    SHA-256 pass; this is a copy and an XXH64, ~19 GB/s).

    ``close()`` writes the last block and the checksum; it does not close ``dst``. After an
    error, do not close it: the frame is left unfinished (the object is discarded anyway)."""

    def __init__(self, dst: BinaryIO | io.RawIOBase) -> None:
        super().__init__()
        self._dst = dst
        self._blocks = Blocks(STORED_BLOCK, self._block)
        self._xxh = xxhash.xxh64()
        dst.write(STORED_FRAME_HEADER)

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._xxh.update(data)
        return self._blocks.write(data)

    def _block(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        self._dst.write(_raw_block_header(len(data), last))
        self._dst.write(bytes(data) if isinstance(data, bytearray) else data)

    def close(self) -> None:
        if not self.closed:
            self._blocks.finish()
            self._dst.write(_frame_checksum(self._xxh.intdigest()))
        super().close()

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()


def _raw_block_header(size: int, last: bool) -> bytes:
    """3 bytes little-endian: the last-block bit, type 0 (raw), then the size."""
    return (size << 3 | last).to_bytes(3, "little")


def _frame_checksum(xxh64: int) -> bytes:
    """The content checksum: the low 32 bits of XXH64 (seed 0), little-endian."""
    return (xxh64 & 0xFFFFFFFF).to_bytes(4, "little")


def stored_frame(data: bytes) -> bytes:
    """The stored frame of ``data`` at once: the same bytes as :class:`StoredFrameWriter`."""
    view = memoryview(data)
    n = len(view)
    parts: list[bytes | memoryview] = [STORED_FRAME_HEADER]
    pos = 0
    while True:
        block = view[pos : pos + STORED_BLOCK]
        pos += len(block)
        last = pos >= n
        parts += (_raw_block_header(len(block), last), block)
        if last:
            break
    parts.append(_frame_checksum(xxhash.xxh64_intdigest(data)))
    return b"".join(parts)


def safe_member_name(name: str) -> str:
    base = os.path.basename(name.replace("\\", "/"))
    if base in ("", ".", ".."):
        raise UsageError(f"cannot archive a document without a file name: {name!r}")
    return COLLISION_NAME if base == META_NAME else base


def write_object(
    src: BinaryIO,
    size: int,
    meta: DocumentMeta,
    recipients: Sequence[age.Recipient],
    dst: BinaryIO,
    *,
    level: int = LEVEL,
    threads: int | None = None,
) -> ObjectResult:
    """Stream ``size`` bytes of ``src`` into an object written to ``dst``.

    ``meta.sha256`` and ``meta.size`` are filled in from what was read. If ``src`` yields more
    or fewer bytes than ``size`` (the file changed while being read), :class:`UsageError` is
    raised and ``dst`` holds garbage the caller must discard.
    """
    member = safe_member_name(meta.name)
    first = src.read(min(PROBE_SIZE, size) if size else 1)
    compressed = is_compressible(first)
    if size <= WHOLE_MAX:
        return _write_whole(src, size, first, compressed, member, meta, recipients, dst, level)
    if threads is None:
        threads = (os.cpu_count() or 1) if size >= THREADED_MIN_SIZE else 0
    if compressed and threads:
        # zstd's default job (4x the window) holds ~70 MiB in buffers on 2 workers; 2 MiB
        # jobs hold ~30 MiB for the same ratio (to 0.01%) and speed (docs/performance.md).
        cctx: zstandard.ZstdCompressor | None = zstandard.ZstdCompressor(
            compression_params=zstandard.ZstdCompressionParameters.from_level(
                level, threads=threads, job_size=JOB_SIZE, write_checksum=True
            )
        )
    else:
        cctx = _compressor(level) if compressed else None
    out = HashingWriter(dst)
    plain = hashlib.sha256()
    enc = age.encrypt_writer(recipients, cast(BinaryIO, out))
    # Exits run in reverse: zstd ends its frame into ``sink``, the worker (if any) finishes and
    # is joined (its error raised here), then ``enc`` writes the final chunk, or aborts.
    with contextlib.ExitStack() as stack:
        stack.enter_context(enc)
        sink: io.RawIOBase = enc
        if size >= BACKGROUND_MIN_SIZE:
            sink = stack.enter_context(ThreadedWriter(enc, BACKGROUND_DEPTH))
        z: BinaryIO | io.RawIOBase
        if cctx is None:  # incompressible: stored, not compressed
            z = stack.enter_context(StoredFrameWriter(sink))
        else:
            z = stack.enter_context(
                cctx.stream_writer(cast(BinaryIO, sink), size=-1, closefd=False)
            )
        z.write(_tar_header(member, size, meta.mtime))
        got = 0
        chunk = first
        while chunk:
            got += len(chunk)
            if got > size:
                break
            plain.update(chunk)
            z.write(chunk)
            chunk = src.read(READ_SIZE)
        if got != size:
            raise UsageError(f"document {meta.document_id} changed while it was being archived")
        final = replace(meta, size=size, sha256=plain.hexdigest())
        z.write(_tar_after(size, final))
    return ObjectResult(out.size, out.hash.hexdigest(), final, compressed)


def _write_whole(
    src: BinaryIO,
    size: int,
    first: bytes,
    compressed: bool,
    member: str,
    meta: DocumentMeta,
    recipients: Sequence[age.Recipient],
    dst: BinaryIO,
    level: int,
) -> ObjectResult:
    """:func:`write_object` for a small document, in memory: the same object, with one
    compression, one encryption and one write instead of three streaming writers."""
    parts = [first]
    got = len(first)
    while got <= size:  # one byte more than expected, if the file grew
        chunk = src.read(size + 1 - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    if got != size:
        raise UsageError(f"document {meta.document_id} changed while it was being archived")
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    final = replace(meta, size=size, sha256=hashlib.sha256(data).hexdigest())
    tar = b"".join((_tar_header(member, size, meta.mtime), data, _tar_after(size, final)))
    frame = _compressor(level).compress(tar) if compressed else stored_frame(tar)
    obj = age.encrypt_bytes(recipients, frame)
    dst.write(obj)
    return ObjectResult(len(obj), hashlib.sha256(obj).hexdigest(), final, compressed)


class _Unpacked(io.RawIOBase):
    """What tarfile reads: the decompressed stream, read the way tarfile asks for it.

    The first READ_AHEAD_AFTER bytes are decrypted and decompressed on the caller's thread, as
    tarfile asks. After that a :class:`ReadAhead` worker decrypts and decompresses while the
    caller unpacks, hashes and writes; the bytes and errors come in the same order, at the same
    places, so a damaged object fails the same way on both paths.
    """

    def __init__(self, z: BinaryIO) -> None:
        super().__init__()
        self._z = z
        self._ahead: ReadAhead | None = None
        self._served = 0
        self._rest = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self._ahead is None:
            # tarfile's own block size: zstd is asked exactly what it was asked before there
            # was a worker (tarfile is opened with a bigger buffer, for the worker's pieces).
            data = self._z.read(min(size, tarfile.RECORDSIZE) if size >= 0 else tarfile.RECORDSIZE)
            self._served += len(data)
            if self._served >= READ_AHEAD_AFTER and data:
                z = self._z
                self._ahead = ReadAhead(
                    lambda: z.read(READ_AHEAD_PIECE), READ_AHEAD_DEPTH, READ_AHEAD_BATCH
                )
            return data
        data = self._rest or self._ahead.read()
        if 0 <= size < len(data):
            self._rest = data[size:]
            return data[:size]
        self._rest = b""
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        """Stop and join the worker, if any (the streams are then the caller's again)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.close()
        super().close()


@dataclass(frozen=True)
class OpenedDocument:
    meta: DocumentMeta
    member_name: str


def read_object(src: BinaryIO, identities: Sequence[age.Identity], dst: BinaryIO) -> OpenedDocument:
    """Decrypt the object in ``src``, write the document's bytes to ``dst`` and check them.

    Raises :class:`IntegrityError` (or an :class:`AgeError`) if the object is damaged, not
    openable with ``identities``, or its content does not match its own SHA-256.
    """
    reader = age.decrypt_reader(identities, src)
    plain = hashlib.sha256()
    written = 0
    member_name = ""
    meta: DocumentMeta | None = None
    z = cast(
        BinaryIO,
        zstandard.ZstdDecompressor().stream_reader(cast(BinaryIO, reader), closefd=False),
    )
    unpacked = _Unpacked(z)
    try:
        with tarfile.open(
            fileobj=unpacked, mode="r|", format=tarfile.PAX_FORMAT, bufsize=UNPACK_SIZE
        ) as tar:
            for info in tar:
                if not info.isreg():
                    raise IntegrityError("the object holds an unexpected tar entry")
                f = tar.extractfile(info)
                assert f is not None
                if info.name == META_NAME:
                    meta = DocumentMeta.from_json(f.read(1 << 20))
                    continue
                if member_name:
                    raise IntegrityError("the object holds more than one document")
                member_name = info.name
                while chunk := f.read(UNPACK_SIZE):
                    plain.update(chunk)
                    dst.write(chunk)
                    written += len(chunk)
    except AgeError:
        raise
    except (tarfile.TarError, zstandard.ZstdError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise
        raise IntegrityError("the object is damaged (its content cannot be unpacked)") from None
    finally:
        unpacked.close()  # joins the worker, if any: no thread outlives this call
        z.close()
    if meta is None or not member_name:
        raise IntegrityError("the object is incomplete (document or coldvault.json missing)")
    if written != meta.size or plain.hexdigest() != meta.sha256:
        raise IntegrityError(
            f"document {meta.document_id} does not match its checksum: the object is damaged"
        )
    return OpenedDocument(meta, member_name)


def read_object_meta(src: BinaryIO, identities: Sequence[age.Identity]) -> DocumentMeta:
    """Decrypt an object only to read its metadata (verifies the whole object)."""
    return read_object(src, identities, cast(BinaryIO, _NullWriter())).meta


class _NullWriter(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        return len(data)
