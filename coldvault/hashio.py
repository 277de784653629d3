"""Streams that hash (SHA-256) and count what passes through them."""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO


class HashingReader(io.RawIOBase):
    """Reads from ``src`` while hashing and counting what was read."""

    def __init__(self, src: BinaryIO) -> None:
        super().__init__()
        self._src = src
        self.hash = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        readinto = getattr(self._src, "readinto", None)
        if readinto is None:
            data = self._src.read(len(b))
            n = len(data)
            b[:n] = data
        else:  # straight into the caller's buffer: one copy less per MiB
            n = readinto(b) or 0
        if n:
            self.hash.update(memoryview(b)[:n])
            self.size += n
        return n


class HashingWriter(io.RawIOBase):
    """Passes writes to ``dst`` while hashing and counting them."""

    def __init__(self, dst: BinaryIO) -> None:
        super().__init__()
        self._dst = dst
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self.hash.update(data)
        self._dst.write(data)
        n = len(data)
        self.size += n
        return n
