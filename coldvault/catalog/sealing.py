"""Sealed catalog fields: names, patient ids and facts, hold reasons.

The daemon must write these without being able to read them back (principle 2), and sealing each
one as its own age file would cost a post-quantum encapsulation and ~1.6 KB per document. So a
*batch key* (32 random bytes) is sealed once to the master recipient and stored in ``seal_keys``;
fields are encrypted with ChaCha20-Poly1305 under it. The process forgets the batch key when it
ends (a new one per process and per ``MAX_USES`` fields). Reading needs the master identity.

Blob layout: 4-byte big-endian ``seal_keys.id`` || 12-byte random nonce || ciphertext+tag; the
AEAD's associated data is the 4-byte key id.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from coldvault import age
from coldvault.errors import AgeError, IntegrityError

MAX_USES = 100_000


class Sealer:
    def __init__(self, conn: sqlite3.Connection, master: age.Recipient, generation: int) -> None:
        self._conn = conn
        self._master = master
        self._generation = generation
        self._key_id: int | None = None
        self._aead: ChaCha20Poly1305 | None = None
        self._uses = 0

    def _new_key(self) -> None:
        key = os.urandom(32)
        sealed = age.encrypt_bytes([self._master], key)
        cur = self._conn.execute(
            "INSERT INTO seal_keys (generation, sealed, created) VALUES (?, ?, ?)",
            (self._generation, sealed, datetime.now(UTC).isoformat()),
        )
        assert cur.lastrowid is not None
        self._key_id = cur.lastrowid
        self._aead = ChaCha20Poly1305(key)
        self._uses = 0

    def seal(self, text: str) -> bytes:
        """Encrypt ``text``; must run inside the caller's transaction (it may insert a key)."""
        if self._aead is None or self._uses >= MAX_USES:
            self._new_key()
        assert self._aead is not None and self._key_id is not None
        self._uses += 1
        prefix = struct.pack(">I", self._key_id)
        nonce = os.urandom(12)
        return prefix + nonce + self._aead.encrypt(nonce, text.encode("utf-8"), prefix)


class Opener:
    def __init__(self, conn: sqlite3.Connection, masters: Sequence[age.Identity]) -> None:
        self._conn = conn
        self._masters = list(masters)
        self._keys: dict[int, ChaCha20Poly1305] = {}

    def _key(self, key_id: int) -> ChaCha20Poly1305:
        if key_id not in self._keys:
            row = self._conn.execute(
                "SELECT sealed FROM seal_keys WHERE id = ?", (key_id,)
            ).fetchone()
            if row is None:
                raise IntegrityError("a sealed catalog field refers to a missing key")
            try:
                self._keys[key_id] = ChaCha20Poly1305(age.decrypt_bytes(self._masters, row[0]))
            except AgeError:
                raise IntegrityError("a catalog batch key cannot be opened") from None
        return self._keys[key_id]

    def open(self, blob: bytes | None) -> str | None:
        if blob is None:
            return None
        prefix, nonce, ct = blob[:4], blob[4:16], blob[16:]
        (key_id,) = struct.unpack(">I", prefix)
        try:
            return self._key(key_id).decrypt(nonce, ct, prefix).decode("utf-8")
        except InvalidTag:
            raise IntegrityError("a sealed catalog field is damaged") from None

    def reseal_all(self, new_master: age.Recipient, generation: int) -> int:
        """Re-encrypt every batch key to a new master (master rotation); returns the count."""
        rows = self._conn.execute("SELECT id, sealed FROM seal_keys").fetchall()
        for key_id, sealed in rows:
            raw = age.decrypt_bytes(self._masters, sealed)
            self._conn.execute(
                "UPDATE seal_keys SET sealed = ?, generation = ? WHERE id = ?",
                (age.encrypt_bytes([new_master], raw), generation, key_id),
            )
        return len(rows)
