"""Encrypted catalog snapshots: everything a new workstation needs, sealed to the master.

A snapshot is an age file (to the master recipient) of a zstd frame of a pax tar holding
``catalog.sqlite`` (a consistent copy made with SQLite's backup API), ``vault.json``,
``lookup.key`` and ``signing.key``. So ``age -d -i master.key SNAP | zstd -d | tar -x`` opens it
by hand too. Only these four names are ever extracted, whatever else the tar claims to hold.
"""

from __future__ import annotations

import io
import os
import sqlite3
import tarfile
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, cast

import zstandard

from coldvault import age
from coldvault.errors import AgeError, IntegrityError
from coldvault.vault import Vault

MEMBERS = ("catalog.sqlite", "vault.json", "lookup.key", "signing.key")
PREFIX = "snapshot-"


def snapshot_name(when: datetime | None = None) -> str:
    when = when or datetime.now(UTC)
    return f"{PREFIX}{when.strftime('%Y%m%dt%H%M%S%fz')}.age"


def write_snapshot(vault: Vault, conn: sqlite3.Connection, dst: BinaryIO) -> None:
    """Stream an encrypted snapshot of ``vault`` (catalog from ``conn``) into ``dst``."""
    with tempfile.TemporaryDirectory(dir=vault.state_dir, prefix=".snap-") as tmp:
        copy = Path(tmp) / "catalog.sqlite"
        target = sqlite3.connect(copy)
        try:
            conn.backup(target)
        finally:
            target.close()
        enc = age.encrypt_writer([vault.master_recipient()], dst)
        with (
            enc,
            zstandard.ZstdCompressor(level=3).stream_writer(
                cast(BinaryIO, enc), closefd=False
            ) as z,
            tarfile.open(fileobj=z, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):
            for name in MEMBERS:
                path = copy if name == "catalog.sqlite" else vault.state_dir / name
                info = tar.gettarinfo(str(path), arcname=name)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                info.mode = 0o600
                with open(path, "rb") as f:
                    tar.addfile(info, f)


def read_snapshot(src: BinaryIO, masters: Sequence[age.Identity], dest: Path) -> list[str]:
    """Decrypt a snapshot into ``dest`` (which must exist); returns the member names written."""
    written: list[str] = []
    try:
        reader = age.decrypt_reader(masters, src)
        z = zstandard.ZstdDecompressor().stream_reader(cast(BinaryIO, reader), closefd=False)
        with z, tarfile.open(fileobj=z, mode="r|") as tar:
            for info in tar:
                if info.name not in MEMBERS or not info.isreg() or info.name in written:
                    raise IntegrityError("the catalog snapshot holds an unexpected entry")
                f = tar.extractfile(info)
                assert f is not None
                out = dest / info.name
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as o:
                    while chunk := f.read(1 << 20):
                        o.write(chunk)
                    o.flush()
                    os.fsync(o.fileno())
                written.append(info.name)
    except AgeError:
        raise
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise IntegrityError(f"the catalog snapshot is damaged ({exc})") from None
    if set(written) != set(MEMBERS):
        raise IntegrityError("the catalog snapshot is incomplete")
    return written


def snapshot_bytes(vault: Vault, conn: sqlite3.Connection) -> bytes:
    buf = io.BytesIO()
    write_snapshot(vault, conn, buf)
    return buf.getvalue()
