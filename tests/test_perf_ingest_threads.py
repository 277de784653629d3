"""The background writer thread of big-object ingest: same objects, same errors, no thread left.

Big objects are encrypted, hashed and written by a second thread (``ThreadedWriter``) fed by a
bounded queue; small ones stay on the caller's thread. Every test runs both paths (the threshold
is lowered to force the thread) and expects the same outcome. No timing is asserted here.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import random
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import BinaryIO, cast

import pytest

from coldvault import age, objects
from coldvault.age.stream import ThreadedWriter
from coldvault.errors import AgePayloadError, UsageError

IDENT = age.X25519Identity.generate()


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("coldvault-")]


@pytest.fixture(params=[False, True], ids=["caller-thread", "writer-thread"])
def background(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    bg = bool(request.param)
    monkeypatch.setattr(objects, "BACKGROUND_MIN_SIZE", 0 if bg else 1 << 62)
    before = _workers()
    yield bg
    assert _workers() == before, "a worker thread was left behind"


def _meta(name: str = "scan.pdf") -> objects.DocumentMeta:
    return objects.DocumentMeta(document_id="d1", patient_ref="p1", name=name, size=0, sha256="")


def _data(size: int, compressible: bool, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    if not compressible:
        return rnd.randbytes(size)
    words = [b"<obs value='%d'/>\n" % rnd.randrange(1000) for _ in range(512)]
    out = b"".join(rnd.choice(words) for _ in range(size // 16 + 1))
    return out[:size]


def _write(data: bytes, dst: BinaryIO) -> objects.ObjectResult:
    return objects.write_object(io.BytesIO(data), len(data), _meta(), [IDENT.recipient()], dst)


@pytest.mark.parametrize("size", [0, 1, 4096, 65536, 65537, 3 * 65536 + 5, 2_500_000])
@pytest.mark.parametrize("compressible", [True, False])
def test_objects_read_back_the_same_on_both_paths(
    background: bool, size: int, compressible: bool
) -> None:
    data = _data(size, compressible)
    dst = io.BytesIO()
    result = _write(data, dst)
    ct = dst.getvalue()
    assert result.size == len(ct)
    assert result.sha256 == hashlib.sha256(ct).hexdigest()
    assert result.meta.sha256 == hashlib.sha256(data).hexdigest()
    out = io.BytesIO()
    opened = objects.read_object(io.BytesIO(ct), [IDENT], out)
    assert out.getvalue() == data
    assert opened.meta == result.meta
    # The plaintext stream (tar inside zstd) is the same whichever thread encrypted it.
    plain = age.decrypt_bytes([IDENT], ct)
    other = io.BytesIO()
    objects.BACKGROUND_MIN_SIZE = 1 << 62 if background else 0
    _write(data, other)
    assert age.decrypt_bytes([IDENT], other.getvalue()) == plain


def test_a_big_file_uses_the_thread_by_default() -> None:
    seen: list[str] = []

    class Spy(io.BytesIO):
        def write(self, b: object) -> int:
            seen.append(threading.current_thread().name)
            return super().write(b)  # type: ignore[arg-type]

    size = objects.BACKGROUND_MIN_SIZE
    data = _data(size, compressible=False)
    dst = Spy()
    _write(data, cast(BinaryIO, dst))
    assert any(n.startswith("coldvault-age-writer") for n in seen)
    out = io.BytesIO()
    objects.read_object(io.BytesIO(dst.getvalue()), [IDENT], out)
    assert out.getvalue() == data
    seen.clear()
    _write(b"x" * 4096, cast(BinaryIO, Spy()))
    assert seen and not any(n.startswith("coldvault-") for n in seen)


class _FailingDst(io.RawIOBase):
    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.written = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.written + len(b) > self.after:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written += len(b)
        return len(b)


@pytest.mark.parametrize("after", [0, 100, 70_000, 1_000_000])
def test_a_write_error_reaches_the_caller_unchanged(background: bool, after: int) -> None:
    data = _data(3_000_000, compressible=False)
    with pytest.raises(OSError) as info:
        _write(data, cast(BinaryIO, _FailingDst(after)))
    assert info.value.errno == errno.ENOSPC
    assert type(info.value) is OSError


class _Source(io.RawIOBase):
    """``size`` bytes, then optionally more (the file grew) or an I/O error part-way."""

    def __init__(self, data: bytes, fail_at: int | None = None) -> None:
        super().__init__()
        self._src = io.BytesIO(data)
        self._fail_at = fail_at

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._fail_at is not None and self._src.tell() >= self._fail_at:
            raise OSError(errno.EIO, "Input/output error")
        return self._src.readinto(b)


def test_a_changed_file_fails_as_before(background: bool) -> None:
    data = _data(3_000_000, compressible=True)
    dst = io.BytesIO()
    with pytest.raises(UsageError, match="changed while it was being archived"):
        objects.write_object(
            cast(BinaryIO, _Source(data)), len(data) - 10, _meta(), [IDENT.recipient()], dst
        )
    with pytest.raises(UsageError, match="changed while it was being archived"):
        objects.write_object(
            cast(BinaryIO, _Source(data)), len(data) + 10, _meta(), [IDENT.recipient()], dst
        )


def test_a_read_error_fails_as_before_and_leaves_no_valid_object(background: bool) -> None:
    data = _data(3_000_000, compressible=True)
    dst = io.BytesIO()
    with pytest.raises(OSError) as info:
        objects.write_object(
            cast(BinaryIO, _Source(data, fail_at=2_000_000)),
            len(data),
            _meta(),
            [IDENT.recipient()],
            dst,
        )
    assert info.value.errno == errno.EIO
    # No final chunk was written: what is there never decrypts.
    with pytest.raises(AgePayloadError):
        age.decrypt_bytes([IDENT], dst.getvalue())


def test_memory_stays_bounded_with_a_slow_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objects, "BACKGROUND_MIN_SIZE", 0)
    size = 24 << 20
    src_path = io.BytesIO(_data(size, compressible=False, seed=7))

    class SlowDst(io.RawIOBase):
        n = 0

        def writable(self) -> bool:
            return True

        def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
            SlowDst.n += 1
            if SlowDst.n % 8 == 0:
                time.sleep(0.002)
            return len(b)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        objects.write_object(
            cast(BinaryIO, src_path), size, _meta(), [IDENT.recipient()], cast(BinaryIO, SlowDst())
        )
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # Read buffer (1 MiB) + a bounded queue of zstd blocks; never the whole 24 MiB.
    assert peak < 8 << 20, f"peak traced allocation {peak} bytes"


# --- ThreadedWriter on its own -------------------------------------------------------------------


class _Collect(io.RawIOBase):
    def __init__(self, fail_on: int | None = None, gate: threading.Event | None = None) -> None:
        super().__init__()
        self.items: list[bytes] = []
        self.fail_on = fail_on
        self.gate = gate

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail_on is not None and len(self.items) == self.fail_on:
            raise OSError(errno.EIO, "boom")
        self.items.append(bytes(b))
        return len(b)


def test_threaded_writer_passes_everything_in_order() -> None:
    before = _workers()
    target = _Collect()
    with ThreadedWriter(target, depth=2) as w:
        for i in range(200):
            w.write(b"%d," % i)
        w.write(bytearray(b"ba"))
        w.write(memoryview(b"mv"))
    assert b"".join(target.items) == b"".join(b"%d," % i for i in range(200)) + b"bamv"
    assert _workers() == before


def test_threaded_writer_error_is_the_same_object_and_no_thread_is_left() -> None:
    before = _workers()
    target = _Collect(fail_on=3)
    w = ThreadedWriter(target, depth=2)
    raised: BaseException | None = None
    try:
        for _ in range(1000):
            w.write(b"x" * 10)
        w.close()
    except OSError as exc:
        raised = exc
    assert raised is not None and raised.errno == errno.EIO
    assert _workers() == before
    assert len(target.items) == 3
    # Closing after the error does not raise it again; later writes keep failing with it.
    w.close()
    with pytest.raises(OSError) as again:
        w.write(b"late")
    assert again.value is raised
    ok = ThreadedWriter(_Collect())
    ok.close()
    with pytest.raises(ValueError):
        ok.write(b"late")


def test_threaded_writer_error_surfaces_at_close() -> None:
    target = _Collect(fail_on=0)
    w = ThreadedWriter(target)
    w.write(b"one")
    with pytest.raises(OSError, match="boom"):
        w.close()
    assert not _workers()


def test_threaded_writer_abort_drops_the_queue() -> None:
    gate = threading.Event()
    target = _Collect(gate=gate)
    w = ThreadedWriter(target, depth=4)
    for _ in range(3):
        w.write(b"q")
    w._dropping = True  # what abort() sets first; then let the worker go
    gate.set()
    w.abort()
    assert len(target.items) <= 1
    assert not _workers()


def test_threaded_writer_queue_is_bounded() -> None:
    gate = threading.Event()
    target = _Collect(gate=gate)
    w = ThreadedWriter(target, depth=3)
    accepted = 0

    def feed() -> None:
        nonlocal accepted
        for _ in range(50):
            w.write(b"z" * 100)
            accepted += 1

    t = threading.Thread(target=feed)
    t.start()
    time.sleep(0.3)
    # depth queued + one held by the blocked worker + one blocked in put().
    assert accepted <= 3 + 1
    gate.set()
    t.join(10)
    w.close()
    assert accepted == 50 and len(target.items) == 50
    assert not _workers()


def test_exception_inside_with_aborts_without_waiting_for_the_target() -> None:
    target = _Collect()
    with pytest.raises(RuntimeError), ThreadedWriter(target) as w:
        w.write(b"a")
        raise RuntimeError("caller failed")
    assert not _workers()


def test_threads_are_gone_after_many_objects() -> None:
    before = threading.active_count()
    old = objects.BACKGROUND_MIN_SIZE
    objects.BACKGROUND_MIN_SIZE = 0
    try:
        for i in range(30):
            _write(os.urandom(1000 + i), io.BytesIO())
    finally:
        objects.BACKGROUND_MIN_SIZE = old
    assert threading.active_count() == before
