"""Restore a patient's documents into a folder, from the spool or a plugged-in drive.

Safety of what is written: only into ``DIR/<patient>/``, under a name reduced to a plain base name
(whatever the object claims), never over an existing file (a suffix is added), and only after
the object's ciphertext matched the catalog (and, on a drive, the signed manifest) and its
plaintext matched its own SHA-256. A damaged object is reported and the rest still restored.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

from coldvault import age, keys, objects
from coldvault import manifest as mf
from coldvault.catalog.db import Catalog, DocumentRow, DriveRow
from coldvault.drives import fsio, layout
from coldvault.errors import ColdvaultError, DriveError, IntegrityError, NotAvailable, UsageError
from coldvault.hashio import HashingReader
from coldvault.vault import Vault

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def safe_name(name: str, fallback: str) -> str:
    """A file name that cannot escape its folder or hide: base name only, no control chars."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1])
    name = _UNSAFE.sub("_", name).strip().lstrip(".")
    if not name or name in (".", ".."):
        name = fallback
    return name[:200]


def place_file(tmp: Path, folder: Path, name: str, mtime: float | None = None) -> Path:
    """Move ``tmp`` to ``folder/name`` without ever replacing an existing file."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    for i in range(10000):
        candidate = name if i == 0 else (f"{stem} ({i}).{ext}" if ext else f"{stem} ({i})")
        target = folder / candidate
        try:
            os.link(tmp, target)  # fails if target exists: never overwrites
        except FileExistsError:
            continue
        os.unlink(tmp)
        if mtime:
            with contextlib.suppress(OSError):
                os.utime(target, (mtime, mtime))
        return target
    raise UsageError(f"too many files named {name} in {folder}")


@dataclass(frozen=True)
class Located:
    where: str  # "spool" or a drive name
    open: Callable[[], BinaryIO]
    vouched: mf.VouchedSet | None = None


def decrypt_to_folder(
    opener: Callable[[], BinaryIO],
    identities: Sequence[age.Identity],
    folder: Path,
    fallback_name: str,
    *,
    expected_size: int | None = None,
    expected_sha256: str | None = None,
    vouched: mf.VouchedSet | None = None,
    relpath: str | None = None,
) -> tuple[Path, objects.DocumentMeta]:
    """Decrypt one object into ``folder``; every check passes before the file appears."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".coldvault-restore-{os.urandom(6).hex()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as out, opener() as raw:
            hashing = HashingReader(raw)
            src = io.BufferedReader(hashing, 1 << 20)
            opened = objects.read_object(cast(BinaryIO, src), identities, cast(BinaryIO, out))
            while src.read(1 << 20):  # the hash covers the whole file
                pass
        digest = hashing.hash.hexdigest()
        if expected_sha256 is not None and (
            digest != expected_sha256
            or (expected_size is not None and hashing.size != expected_size)
        ):
            raise IntegrityError(
                "the object does not match the catalog: it was damaged or replaced"
            )
        if vouched is not None and relpath is not None:
            vouched.check(relpath, hashing.size, digest)
        name = safe_name(opened.meta.name or opened.member_name, fallback_name)
        return place_file(tmp, folder, name, opened.meta.mtime), opened.meta
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class RestoreReport:
    folder: Path
    restored: list[tuple[str, Path]] = field(default_factory=list)
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (doc id, what)
    unavailable: dict[str, list[str]] = field(default_factory=dict)  # doc id -> drives
    unusable: dict[str, str] = field(default_factory=dict)  # plugged-in drive -> why not used


class Restorer:
    def __init__(
        self,
        vault: Vault,
        catalog: Catalog,
        master: keys.AnyIdentity | list[keys.AnyIdentity],
        progress: Progress | None = None,
    ) -> None:
        self.vault = vault
        self.catalog = catalog
        self.masters = master if isinstance(master, list) else [master]
        self.master = self.masters[0]
        self.progress = progress
        self._roots: dict[str, tuple[Path, mf.VouchedSet | None]] | None = None
        self.unusable: dict[str, str] = {}  # drive name -> why it cannot be used

    def plugged_drives(self) -> dict[str, tuple[Path, mf.VouchedSet | None]]:
        """Enrolled drives reachable now, with their vouched sets (checked once)."""
        if self._roots is None:
            from coldvault.drives.station import Station, find_root

            self._roots = {}
            station = Station(self.vault, self.catalog)
            for row in self.catalog.drives():
                try:
                    root = find_root(self.catalog, row)
                    station.identify(root)
                    self._roots[row.drive_id] = (root, station.vouched(root, row))
                except NotAvailable:
                    continue
                except ColdvaultError as exc:
                    log.warning("drive %s cannot be used: %s", row.name, exc.message)
                    self.unusable[row.name] = exc.message
        return self._roots

    def _drive_rows(self) -> dict[str, DriveRow]:
        return {r.drive_id: r for r in self.catalog.drives(include_retired=True)}

    def locate(self, path: str) -> Located | None:
        """The first place that holds ``path`` (see :meth:`locations`)."""
        return next(iter(self.locations(path)), None)

    def locations(self, path: str) -> Iterator[Located]:
        """Every place that holds ``path`` now: the spool, then each plugged-in drive holding a
        copy (drives are only looked at when the spool does not do)."""
        item = self.catalog.item(path)
        spool = self.vault.spool / path
        if item is not None and item[3] and spool.is_file():
            yield Located("spool", lambda: open(spool, "rb"))  # noqa: SIM115 (an opener)
        holders = [
            r[0]
            for r in self.catalog.conn.execute(
                "SELECT drive_id FROM copies WHERE path = ?", (path,)
            )
        ]
        rows = self._drive_rows()
        for drive_id in holders:
            found = self.plugged_drives().get(drive_id)
            if found is None:
                continue
            root, vouched = found
            top = layout.vault_dir(root)
            target = top / path
            if not fsio.object_parts(target.parent, target.name):
                continue
            yield Located(
                rows[drive_id].name,
                lambda t=target: fsio.open_object(t.parent, t.name),  # type: ignore[misc]
                vouched,
            )

    def holders(self, path: str) -> list[str]:
        return self.catalog.copies_of(path)

    def patient_identity(self, key_id: str) -> keys.AnyIdentity:
        """The patient's identity, from the first good copy of its key file within reach."""
        rel = f"keys/{key_id}.age"
        item = self.catalog.item(rel)
        problem: IntegrityError | None = None
        for loc in self.locations(rel):
            with loc.open() as f:
                data = f.read()
            digest = hashlib.sha256(data).hexdigest()
            try:
                if item is not None and digest != item[2]:
                    raise IntegrityError(
                        f"the patient's key file on {loc.where} is damaged or was replaced"
                    )
                if loc.vouched is not None:
                    loc.vouched.check(rel, len(data), digest)
            except IntegrityError as exc:
                log.error("%s", exc.message)
                problem = exc
                continue
            key = keys.open_patient_key(data, self.masters)
            assert key.identity is not None
            return key.identity
        if problem is not None:
            raise problem
        raise NotAvailable(
            "the patient's key file is neither on this computer nor on a plugged-in drive",
            hint="plug in one of the vault's drives: " + (", ".join(self.holders(rel)) or "?"),
        )

    def restore_documents(
        self, docs: Sequence[DocumentRow], folder: Path, identities: Sequence[age.Identity]
    ) -> RestoreReport:
        report = RestoreReport(folder)
        _check_writable(folder)
        for i, doc in enumerate(docs):
            if self.progress is not None:
                self.progress("restore", i, len(docs))
            item = self.catalog.item(doc.object_path)
            problems: list[str] = []
            for loc in self.locations(doc.object_path):
                try:
                    path, _ = decrypt_to_folder(
                        loc.open,
                        identities,
                        folder,
                        f"document-{doc.doc_id}",
                        expected_size=item[1] if item else None,
                        expected_sha256=item[2] if item else None,
                        vouched=loc.vouched,
                        relpath=doc.object_path,
                    )
                except ColdvaultError as exc:
                    log.error("document %s (%s): %s", doc.doc_id, loc.where, exc.message)
                    problems.append(f"{loc.where}: {exc.message}")
                    continue
                except OSError as exc:
                    if exc.errno in _TARGET_ERRNOS:
                        raise RestoreTargetError(
                            f"cannot write the restored documents into {folder}: "
                            f"{exc.strerror or exc}",
                            hint="free some space or choose another folder with --to; "
                            "what was restored so far is complete",
                        ) from None
                    problems.append(f"{loc.where}: cannot be read: {exc.strerror or exc}")
                    continue
                report.restored.append((doc.doc_id, path))
                break
            else:
                if problems:  # every copy within reach is damaged
                    report.damaged.append((doc.doc_id, "; ".join(problems)))
                else:
                    report.unavailable[doc.doc_id] = self.holders(doc.object_path)
        if self.progress is not None:
            self.progress("restore", len(docs), len(docs))
        return report


class RestoreTargetError(DriveError):
    """The folder restored into cannot be written (full, read-only, no permission)."""


_TARGET_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".coldvault-probe-{os.urandom(4).hex()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as exc:
        raise RestoreTargetError(
            f"cannot write the restored documents into {folder}: {exc.strerror or exc}",
            hint="choose another folder with --to",
        ) from None


def restore_patient(
    vault: Vault,
    catalog: Catalog,
    master: keys.AnyIdentity | list[keys.AnyIdentity],
    patient_id: str,
    dest: Path,
    *,
    doc_id: str | None = None,
    since: str | None = None,
    until: str | None = None,
    progress: Progress | None = None,
) -> tuple[str, RestoreReport]:
    """Restore one patient's documents into ``dest/<patient>/``; returns (patient ref, report)."""
    row = catalog.patient_by_lookup(vault.lookup("patient", patient_id))
    if row is None:
        raise NotAvailable(f"no documents are archived for patient {patient_id}")
    if row.purged:
        raise NotAvailable(
            f"the records of patient {patient_id} were destroyed by the purge of {row.purged}"
        )
    docs = catalog.documents(row.id, since=since, until=until, doc_id=doc_id)
    if not docs:
        raise NotAvailable(f"no document of patient {patient_id} matches")
    restorer = Restorer(vault, catalog, master, progress)
    identity = restorer.patient_identity(row.key_id)
    folder = dest / safe_name(patient_id, f"patient-{row.key_id[:8]}")
    report = restorer.restore_documents(docs, folder, [identity])
    report.unusable = dict(restorer.unusable)
    return row.key_id, report
