"""The age STREAM payload: ChaCha20-Poly1305 over 64 KiB chunks with a final-chunk flag.

Both directions stream in bounded memory (at most a couple of chunks are held at once).
"""

from __future__ import annotations

import collections
import io
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import BinaryIO, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from coldvault.age.format import hkdf
from coldvault.errors import AgeHeaderError, AgePayloadError

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
ENC_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
NONCE_SIZE = 16
_MAX_COUNTER = (1 << 88) - 1


def payload_key(file_key: bytes, nonce: bytes) -> bytes:
    return hkdf(file_key, nonce, b"payload")


def _chunk_nonce(counter: int, last: bool) -> bytes:
    if counter > _MAX_COUNTER:
        raise AgePayloadError("the age payload is too long")
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


def seal_payload(key: bytes, data: bytes | bytearray | memoryview) -> bytes:
    """The whole STREAM payload of ``data`` at once: the same chunks as :class:`EncryptWriter`
    (a payload of an exact number of chunks ends with a full final chunk; an empty one is one
    empty final chunk), without a writer's set-up, for data already in memory."""
    aead = ChaCha20Poly1305(key)
    view = memoryview(data).cast("B")
    n = len(view)
    parts = []
    counter = pos = 0
    while True:
        end = pos + CHUNK_SIZE
        last = end >= n
        parts.append(aead.encrypt(_chunk_nonce(counter, last), view[pos:end], None))
        if last:
            return b"".join(parts)
        counter += 1
        pos = end


class _AbortOnError(io.RawIOBase):
    """A writer that, left by an exception inside its ``with`` block, aborts instead of
    closing: an error must never seal a valid, shorter file."""

    def abort(self) -> None:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.abort()
        else:
            self.close()


class Blocks:
    """Cuts a stream of writes into blocks of ``size`` bytes for ``emit(block, last)``. A full
    block is held until more data proves it is not the last one; :meth:`finish` emits the last
    (shorter, possibly empty). Blocks are emitted without copying where the writes allow;
    ``emit`` must not keep the block it is given."""

    def __init__(self, size: int, emit: Callable[[bytes | bytearray | memoryview, bool], None]):
        self._size = size
        self._emit = emit
        self._buf = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        size, buf = self._size, self._buf
        pos = 0
        if buf:
            pos = min(size - len(buf), n)
            buf += view[:pos]
            if len(buf) == size and pos < n:
                self._emit(buf, False)
                buf.clear()
        while n - pos > size:
            self._emit(view[pos : pos + size], False)
            pos += size
        if pos < n:
            buf += view[pos:]
        return n

    def finish(self) -> None:
        self._emit(self._buf, True)
        self._buf.clear()

    def drop(self) -> None:
        self._buf.clear()


class EncryptWriter(_AbortOnError):
    """A write-only stream that encrypts what it is given into ``dst``.

    The payload nonce must already be written by the caller (see :func:`coldvault.age.encrypt`).
    ``close()`` writes the final chunk; it does not close ``dst``.
    """

    def __init__(self, key: bytes, dst: BinaryIO) -> None:
        super().__init__()
        self._aead = ChaCha20Poly1305(key)
        self._dst = dst
        self._chunks = Blocks(CHUNK_SIZE, self._seal)
        self._counter = 0
        self._finished = False

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._finished:
            raise ValueError("write to a finished age stream")
        return self._chunks.write(data)

    def _seal(self, chunk: bytes | bytearray | memoryview, last: bool) -> None:
        nonce = _chunk_nonce(self._counter, last)
        # encrypt() copies nothing it keeps: no need for a bytes copy of ``chunk`` first.
        self._dst.write(self._aead.encrypt(nonce, chunk, None))
        self._counter += 1

    def abort(self) -> None:
        """Stop without writing the final chunk: what was written so far never decrypts."""
        self._finished = True
        self._chunks.drop()
        super().close()

    def close(self) -> None:
        if not self._finished and not self.closed:
            self._chunks.finish()
            self._finished = True
        super().close()


class ThreadedWriter(_AbortOnError):
    """Hands what is written to a worker thread that writes it to ``target``.

    For big objects: the worker encrypts (``target`` is an :class:`EncryptWriter`), hashes and
    writes the ciphertext while the caller reads, hashes and compresses, all of which release
    the GIL. At most ``depth`` writes are queued, so memory stays bounded whatever the size.

    An exception in the worker is raised again, as the same exception object, by the next
    ``write()`` or by ``close()``; what is written after that is dropped. ``close()`` waits for
    the worker to write everything; ``abort()`` (used by ``__exit__`` on an exception) drops
    what is still queued. Both leave no thread behind. ``target`` is never closed.
    """

    def __init__(self, target: BinaryIO | io.RawIOBase, depth: int = 16) -> None:
        super().__init__()
        self._target = target
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._dropping = False
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="coldvault-age-writer", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        get = self._queue.get
        write = self._target.write
        while (item := get()) is not None:
            if self._error is None and not self._dropping:
                try:
                    write(item)
                except BaseException as exc:  # handed to the caller's thread
                    self._error = exc

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self._error is not None:
            self._dropping = True
            self._stop()  # the caller may not close us: leave no thread behind
            raise self._error
        if self._thread is None:
            raise ValueError("write to a closed writer")
        # The worker writes later: keep a private copy (zstandard already hands out bytes).
        self._queue.put(data if type(data) is bytes else bytes(data))
        return len(data)

    def _stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join()

    def abort(self) -> None:
        """Drop what is still queued and stop the worker (nothing more reaches ``target``)."""
        self._dropping = True
        self._stop()
        super().close()

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._stop()
            finally:
                super().close()
            if self._error is not None:
                raise self._error
        super().close()


class DecryptReader(io.RawIOBase):
    """A read-only stream of the plaintext of an age payload read from ``src``.

    Only authenticated plaintext is ever returned; truncation, extension and tampering raise
    :class:`AgePayloadError` at the chunk where they are found.
    """

    def __init__(self, file_key: bytes, src: BinaryIO) -> None:
        super().__init__()
        nonce = _read_exact(src, NONCE_SIZE)
        if len(nonce) != NONCE_SIZE:
            raise AgeHeaderError("the age file ends before the payload nonce")
        self._aead = ChaCha20Poly1305(payload_key(file_key, nonce))
        self._src = src
        self._counter = 0
        self._last = False
        self._out = b""
        self._pos = 0
        # Trailing data after the final chunk is reported after that chunk's plaintext, which
        # is authentic, has been released (as the reference implementation does).
        self._pending: AgePayloadError | None = None

    def readable(self) -> bool:
        return True

    def _next_chunk(self) -> bytes:
        data = _read_exact(self._src, ENC_CHUNK_SIZE)
        last = False
        if len(data) < ENC_CHUNK_SIZE:
            if not data:
                raise AgePayloadError("the age file is truncated (no final chunk)")
            if self._counter != 0 and len(data) == TAG_SIZE:
                raise AgePayloadError("the age file ends with an empty chunk")
            last = True
        try:
            out = self._aead.decrypt(_chunk_nonce(self._counter, last), data, None)
        except InvalidTag:
            if last:
                raise AgePayloadError(
                    "the age file is damaged (a payload chunk fails authentication)"
                ) from None
            # A full-size chunk may be the final one.
            last = True
            try:
                out = self._aead.decrypt(_chunk_nonce(self._counter, True), data, None)
            except InvalidTag:
                raise AgePayloadError(
                    "the age file is damaged (a payload chunk fails authentication)"
                ) from None
        self._counter += 1
        if last:
            self._last = True
            if self._src.read(1):
                self._pending = AgePayloadError("the age file has data after its final chunk")
        return out

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        mv = memoryview(b).cast("B")
        while self._pos >= len(self._out):
            if self._last:
                if self._pending is not None:
                    raise self._pending
                return 0
            self._out = self._next_chunk()
            self._pos = 0
        n = min(len(mv), len(self._out) - self._pos)
        mv[:n] = self._out[self._pos : self._pos + n]
        self._pos += n
        return n

    def read_chunk(self) -> bytes:
        """The next decrypted chunk (or the rest of the current one); b"" at the end."""
        while self._pos >= len(self._out):
            if self._last:
                if self._pending is not None:
                    raise self._pending
                return b""
            self._out = self._next_chunk()
            self._pos = 0
        out = self._out[self._pos :] if self._pos else self._out
        self._pos = len(self._out)
        return out


class _Channel:
    """A bounded FIFO between one producer and one consumer that the consumer can shut."""

    def __init__(self, depth: int) -> None:
        self._items: collections.deque[object] = collections.deque()
        self._cond = threading.Condition()
        self._depth = depth
        self._shut = False

    def put(self, item: object) -> bool:
        """Queue ``item``, waiting for room; False once the consumer has shut the channel."""
        with self._cond:
            while len(self._items) >= self._depth and not self._shut:
                self._cond.wait()
            if self._shut:
                return False
            self._items.append(item)
            self._cond.notify()
            return True

    def get(self) -> object:
        with self._cond:
            while not self._items:
                self._cond.wait()
            item = self._items.popleft()
            self._cond.notify()
            return item

    def shut(self) -> None:
        with self._cond:
            self._shut = True
            self._items.clear()
            self._cond.notify_all()


_EOF = object()


class ReadAhead:
    """What ``read()`` returns, called ahead of time by a worker thread.

    For big objects: the worker decrypts and decompresses (``read`` pulls from a zstd reader
    over a :class:`DecryptReader`) while the caller unpacks, hashes and writes. At most
    ``depth`` batches of about ``batch`` bytes wait in between, so memory stays bounded.
    Pieces come out in order; an exception of ``read`` (damage, truncation, an I/O error) is
    raised, as the same exception object, exactly after the pieces read before it, as ``read``
    itself would have. ``close()`` stops and joins the worker; the worker may have read further
    than the caller consumed, but never runs after ``close()`` returns.
    """

    def __init__(self, read: Callable[[], bytes], depth: int, batch: int) -> None:
        self._read = read
        self._batch = batch
        self._chan = _Channel(depth)
        self._items: collections.deque[bytes] = collections.deque()
        self._end: BaseException | None = None
        self._done = False
        self._thread: threading.Thread | None = threading.Thread(
            target=self._run, name="coldvault-read-ahead", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        read = self._read
        put = self._chan.put
        batch: list[bytes] = []
        try:
            eof = False
            while not eof:
                batch = []
                n = 0
                while n < self._batch:
                    piece = read()
                    if not piece:
                        eof = True
                        break
                    batch.append(piece)
                    n += len(piece)
                if batch and not put(batch):
                    return
                batch = []
            put(_EOF)
        except BaseException as exc:  # handed to the caller's thread, in order
            if not batch or put(batch):
                put(exc)

    def read(self) -> bytes:
        """The next piece; b"" at the end (errors raised where they occurred)."""
        while not self._items:
            if self._end is not None:
                raise self._end
            if self._done:
                return b""
            item = self._chan.get()
            if item is _EOF:
                self._done = True
            elif isinstance(item, BaseException):
                self._end = item
            else:
                self._items.extend(cast(list[bytes], item))
        return self._items.popleft()

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._chan.shut()
            thread.join()
        self._items.clear()


def _read_exact(src: BinaryIO, n: int) -> bytes:
    data = src.read(n)
    if data is None:
        data = b""
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = src.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)
