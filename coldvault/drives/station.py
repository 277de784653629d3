"""The drive station: enroll a drive, and sync the vault to an enrolled drive.

A sync, in order (each step safe to interrupt; the next plug resumes):
  1. check the drive's marker: this vault, an enrolled drive (never write to any other);
  2. carry out deletions a purge left for this drive;
  3. copy what the drive lacks from the spool in batches: temp name, one sync per batch, read back
     from the device (not the page cache), compare SHA-256, rename; record the verified copies in
     the catalog only then;
  4. copy the journal segments, an encrypted catalog snapshot, and a signed manifest of what this
     sync added or removed (then record the manifest head);
  5. drop spool objects that now have the required number of verified copies, and remove the
     originals of sources with ``on_archived = "delete"``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from coldvault import manifest as mf
from coldvault.catalog.db import Catalog, DriveRow
from coldvault.drives import fsio, layout
from coldvault.errors import ColdvaultError, DriveError, NotAvailable, UsageError, VaultError
from coldvault.signing import SigningKey, VerifyKey
from coldvault.snapshot import snapshot_name, write_snapshot
from coldvault.vault import Vault

log = logging.getLogger(__name__)

BATCH_FILES = 256
BATCH_BYTES = 256 * 1024 * 1024
KEEP_SNAPSHOTS = 3
# Copies recorded this long before the newest manifest was signed are checked against it too
# (a clock set back between two syncs must not hide an unvouched copy).
UNVOUCHED_MARGIN = timedelta(days=2)

Progress = Callable[[str, int, int], None]  # (what, done, total)
Opener = Callable[[], BinaryIO]  # opens the source of a copy


@dataclass
class SyncReport:
    drive: str
    copied: int = 0
    bytes: int = 0
    deleted: int = 0
    failed: list[str] = field(default_factory=list)
    spool_dropped: int = 0
    sources_removed: int = 0
    lacking_after: int = 0
    elsewhere: int = 0  # items the drive lacks that only drives not plugged in hold
    stopped: str | None = None  # why the sync stopped early (drive full, removed, ...)

    @property
    def complete(self) -> bool:
        return self.stopped is None and not self.failed and self.lacking_after == 0


def enroll(
    vault: Vault,
    catalog: Catalog,
    root: Path,
    name: str,
    *,
    fs_uuid: str | None = None,
    label: str | None = None,
    serial: str | None = None,
    is_directory: bool = False,
) -> DriveRow:
    """Write the vault marker and layout on ``root`` and record the drive."""
    if not name or any(c in name for c in "\r\n\t") or len(name) > 64:
        raise UsageError("a drive name must be 1 to 64 characters on one line")
    if catalog.drive(name=name) is not None:
        raise UsageError(f"a drive named {name!r} is already enrolled")
    if not root.is_dir():
        raise UsageError(f"{root} is not a folder or a mounted drive")
    drive_id = secrets.token_hex(8)
    marker = layout.Marker(
        vault_id=vault.info.vault_id,
        drive_id=drive_id,
        drive_name=name,
        verify_key=vault.info.verify_key,
        created=datetime.now(UTC),
    )
    layout.init_drive(root, marker)
    with catalog.transaction():
        catalog.add_drive(
            drive_id,
            name,
            fs_uuid=fs_uuid,
            label=label,
            serial=serial,
            path=str(root.absolute()),
            is_directory=is_directory,
        )
    row = catalog.drive(drive_id=drive_id)
    assert row is not None
    return row


class Station:
    def __init__(
        self,
        vault: Vault,
        catalog: Catalog,
        *,
        copies: int = 2,
        source_paths: dict[str, Path] | None = None,
        delete_sources: set[str] | None = None,
        progress: Progress | None = None,
        journal: Callable[..., object] | None = None,
    ) -> None:
        self.vault = vault
        self.catalog = catalog
        self.copies = copies
        self.source_paths = source_paths or {}
        self.delete_sources = delete_sources or set()
        self.progress = progress
        self.journal = journal
        self._verify_key = VerifyKey.from_text(vault.info.verify_key)

    # --- identification ------------------------------------------------------------------
    def identify(self, root: Path) -> DriveRow:
        """The enrolled drive at ``root``; raises if it is foreign or not enrolled."""
        marker = layout.check_marker(root, self.vault.info.vault_id)
        row = self.catalog.drive(drive_id=marker.drive_id)
        if row is None or row.retired:
            raise VaultError(
                f"the drive {marker.drive_name!r} belongs to this vault but is not enrolled "
                "in this catalog",
                hint="enroll it again with 'coldvault drive enroll', or use another drive",
            )
        return row

    def vouched(self, root: Path, row: DriveRow) -> mf.VouchedSet | None:
        folder = layout.vault_dir(root) / layout.MANIFESTS_DIR
        if not any(folder.glob("*.txt")):
            if row.manifest_seq:
                raise mf.ManifestChainError(
                    f"the manifests of drive {row.name!r} are missing (the vault wrote "
                    f"{row.manifest_seq} of them): the drive was tampered with or damaged"
                )
            return None
        head = (
            mf.ChainHead(row.manifest_seq, row.manifest_digest)
            if row.manifest_seq and row.manifest_digest
            else None
        )
        return mf.load_manifest_folder(
            folder,
            self._verify_key,
            vault_id=self.vault.info.vault_id,
            drive_id=row.drive_id,
            known_head=head,
        )

    # --- sync ----------------------------------------------------------------------------
    def sync(self, root: Path) -> SyncReport:
        """Sync one drive; only one sync runs at a time (the daemon and a command may both try)."""
        lock_path = self.vault.state_dir / ".sync.lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another sync is running: waiting for it")
                fcntl.flock(fd, fcntl.LOCK_EX)
            return self._sync_locked(root)
        finally:
            os.close(fd)

    def _sync_locked(self, root: Path) -> SyncReport:
        self.vault.reload_info()  # the snapshot is sealed to the current master
        row = self.identify(root)
        report = SyncReport(row.name)
        top = layout.vault_dir(root)
        self.catalog.touch_drive(row.drive_id, path=str(root))
        repair = False
        try:
            vouched = self.vouched(root, row)
        except mf.ManifestError as exc:
            if not row.manifest_seq or not row.manifest_digest:
                raise
            # Damaged (a flipped bit) or tampered with: the catalog knows what the vault wrote
            # there; every copy is read back and a new full manifest vouches for what matches.
            log.warning(
                "drive %s: its signed manifests cannot be used (%s): every copy is checked "
                "and a new full manifest written",
                row.name,
                exc.message,
            )
            vouched, repair = None, True
        added: list[mf.Entry] = []
        removed: list[str] = []
        try:
            self._clean_temp_files(top)
            added += self._unvouched_copies(top, row, vouched)
            self._deletions(top, row, report, removed)
            self._copy_items(root, top, row, report, added)
            added += self._copy_folder(self.vault.journal_dir, top, layout.JOURNAL_DIR, repair)
            added += self._copy_folder(self.vault.records_dir, top, "records", repair)
            added += self._write_snapshot(top, removed, keep=1 if repair else KEEP_SNAPSHOTS)
        except DriveError as exc:
            report.stopped = exc.message
            log.warning("sync to %s stopped: %s", row.name, exc.message)
        # The manifest records what is on the drive even after a partial sync.
        if added or removed or vouched is None:
            with contextlib.suppress(DriveError):
                self._write_manifest(top, row, vouched, added, removed, repair=repair)
        if report.stopped is None:
            self.catalog.touch_drive(row.drive_id, synced=True, path=str(root))
        report.spool_dropped = self.drop_spool_copies()
        report.sources_removed = self.remove_sources()
        if self.catalog.has_purges():
            from coldvault.purge import finish_rotation, update_record_confirmations

            update_record_confirmations(self.vault, self.catalog)
            if finish_rotation(self.vault, self.catalog) and self.journal is not None:
                self.journal("key-change", action="previous master destroyed")
        report.lacking_after = len(self.catalog.lacking(row.drive_id))
        report.elsewhere = len(self.catalog.lacking_elsewhere(row.drive_id))
        if report.elsewhere:
            log.warning(
                "drive %s lacks %d file(s) that are no longer in the spool: plug it in together "
                "with another drive that holds them (%s) to copy them again",
                row.name,
                report.elsewhere,
                ", ".join(self._holders_of_lacking(row)) or "none",
            )
        if self.journal is not None:
            self.journal(
                "sync",
                drive=row.drive_id,
                copied=report.copied,
                bytes=report.bytes,
                deleted=report.deleted,
                failed=len(report.failed),
                stopped=report.stopped,
            )
        return report

    @staticmethod
    def _clean_temp_files(top: Path) -> None:
        """Temp files an interrupted sync left in the drive's flat folders (object folders are
        cleaned as they are written to)."""
        for folder in (layout.MANIFESTS_DIR, layout.CATALOG_DIR, layout.JOURNAL_DIR, "records"):
            if (top / folder).is_dir():
                fsio.clean_temp_files(top / folder)

    def _unvouched_copies(
        self, top: Path, row: DriveRow, vouched: mf.VouchedSet | None
    ) -> list[mf.Entry]:
        """Copies the catalog records on this drive that no signed manifest vouches for yet: a
        sync stopped (killed, power cut) after recording verified copies and before writing
        its manifest. Each is read back from the device again: vouched for by this sync's
        manifest if it still matches, else forgotten (so it is copied again)."""
        since = None if vouched is None else vouched.created - UNVOUCHED_MARGIN
        out: list[mf.Entry] = []
        gone: list[str] = []
        for rel, size, sha in self.catalog.copies_on(row.drive_id, since=since):
            if vouched is not None and vouched.vouches(rel, size, sha):
                continue
            target = top / rel
            try:
                got = fsio.read_back_object(target.parent, target.name)
            except FileNotFoundError:
                got = None
            if got == (size, sha):
                out.append(mf.Entry(rel, size, sha))
            else:
                gone.append(rel)
        if gone:
            log.warning(
                "drive %s: %d recorded copies are missing or damaged: they will be copied again",
                row.name,
                len(gone),
            )
            with self.catalog.transaction():
                for rel in gone:
                    self.catalog.forget_copy(rel, row.drive_id)
        if out:
            log.info("drive %s: %d copies from an interrupted sync vouched for", row.name, len(out))
        return out

    def _deletions(self, top: Path, row: DriveRow, report: SyncReport, removed: list[str]) -> None:
        for rel in self.catalog.pending_deletions(row.drive_id):
            if rel == "catalog/*":  # a purge: every snapshot sealed to the old master goes
                for snap in sorted((top / layout.CATALOG_DIR).glob("snapshot-*.age")):
                    fsio.remove_file_durable(snap)
                    removed.append(f"{layout.CATALOG_DIR}/{snap.name}")
                with self.catalog.transaction():
                    self.catalog.done_deletion(rel, row.drive_id)
                continue
            target = top / rel
            fsio.remove_object_durable(target.parent, target.name)
            with self.catalog.transaction():
                self.catalog.done_deletion(rel, row.drive_id)
            removed.append(rel)
            report.deleted += 1

    def _copy_items(
        self, root: Path, top: Path, row: DriveRow, report: SyncReport, added: list[mf.Entry]
    ) -> None:
        spool = self.vault.spool
        lacking: list[tuple[tuple[str, str, int, str], Opener]] = [
            (item, _file_opener(spool / item[0])) for item in self.catalog.lacking(row.drive_id)
        ]
        elsewhere = self.catalog.lacking_elsewhere(row.drive_id)
        if elsewhere:
            lacking += self._on_other_drives(row, elsewhere)
        total = len(lacking)
        if not total:
            return
        need = sum(item[2] for item, _ in lacking)
        free = fsio.free_space(root)
        if free < need:
            log.warning("drive %s has %d bytes free for %d bytes to copy", row.name, free, need)
        split_above = fsio.max_file_size(root)
        subs = sorted({(top / item[0]).parent for item, _ in lacking})
        fsio.make_dirs_durable(*subs)
        for sub in subs:
            fsio.clean_temp_files(sub)
        done = 0
        batch: list[tuple[tuple[str, str, int, str], Opener]] = []
        batch_bytes = 0
        stop: DriveError | None = None

        def flush() -> None:
            nonlocal batch, batch_bytes, done, stop
            if not batch:
                return
            with fsio.BatchWriter(root, split_above=split_above) as writer:
                staged: list[tuple[str, str, int, str]] = []
                for item, opener in batch:
                    rel, _kind, _size, sha = item
                    dst = top / rel
                    try:
                        with opener() as src:
                            writer.add(dst.parent, dst.name, src, sha)
                        staged.append(item)
                    except fsio.SourceChanged:
                        report.failed.append(rel)
                        log.error("the copy of %s to copy from does not match the catalog", rel)
                    except FileNotFoundError:
                        report.failed.append(rel)
                        log.error("the copy of %s to copy from is missing", rel)
                    except DriveError as exc:
                        stop = exc
                        break
                result = writer.commit()
            by_path = {str(w.path): w for w in result.written}
            with self.catalog.transaction():
                for rel, _kind, size, sha in staged:
                    w = by_path.get(str(top / rel))
                    if w is None or w.sha256 != sha:
                        continue
                    self.catalog.record_copy(rel, row.drive_id, sha)
                    added.append(mf.Entry(rel, size, sha))
                    report.copied += 1
                    report.bytes += size
            for f in result.failed:
                rel = f.path.relative_to(top).as_posix()
                report.failed.append(rel)
                self._check_spool_copy(rel)
            done += len(batch)
            batch, batch_bytes = [], 0
            if self.progress is not None:
                self.progress("copy", done, total)
            if stop is not None:
                raise stop

        for entry in lacking:
            batch.append(entry)
            batch_bytes += entry[0][2]
            if len(batch) >= BATCH_FILES or batch_bytes >= BATCH_BYTES:
                flush()
        flush()

    def _other_drives(self, row: DriveRow) -> dict[str, Path]:
        """The vault folders of the other enrolled drives reachable now, by drive id."""
        out: dict[str, Path] = {}
        for other in self.catalog.drives():
            if other.drive_id == row.drive_id:
                continue
            try:
                root = find_root(self.catalog, other)
                self.identify(root)
            except ColdvaultError:
                continue
            out[other.drive_id] = layout.vault_dir(root)
        return out

    def _on_other_drives(
        self, row: DriveRow, items: list[tuple[str, str, int, str]]
    ) -> list[tuple[tuple[str, str, int, str], Opener]]:
        """Where to copy items no longer in the spool from: another drive plugged in now. The
        read-back on this drive checks them against the catalog's hash like any copy."""
        others = self._other_drives(row)
        found: list[tuple[tuple[str, str, int, str], Opener]] = []
        if not others:
            return found
        for item in items:
            rel, _kind, _size, sha = item
            for drive_id in self.catalog.holders(rel, sha):
                src = others[drive_id] / rel if drive_id in others else None
                if src is not None and fsio.object_parts(src.parent, src.name):
                    found.append((item, _object_opener(src)))
                    break
        if found:
            log.info("drive %s: %d file(s) to copy from other drives", row.name, len(found))
        return found

    def _holders_of_lacking(self, row: DriveRow) -> list[str]:
        names = {d.drive_id: d.name for d in self.catalog.drives()}
        held = {
            names[d]
            for rel, _k, _s, sha in self.catalog.lacking_elsewhere(row.drive_id)
            for d in self.catalog.holders(rel, sha)
            if d in names
        }
        return sorted(held)

    def _check_spool_copy(self, rel: str) -> None:
        """After a read-back mismatch: tell a damaged spool copy from a failing drive."""
        item = self.catalog.item(rel)
        try:
            size, sha = sha256_file(self.vault.spool / rel)
        except OSError:
            return
        if item is not None and (size, sha) != (item[1], item[2]):
            log.error("spool copy of %s does not match the catalog: it is damaged", rel)

    def _copy_folder(
        self, src_dir: Path, top: Path, folder: str, every: bool = False
    ) -> list[mf.Entry]:
        """Copy the files of ``src_dir`` the drive lacks or holds an older version of; the
        entries of what was copied (``every``: of every file, copied or already there)."""
        out: list[mf.Entry] = []
        if not src_dir.is_dir():
            return out
        dst_dir = top / folder
        fsio.make_dirs_durable(dst_dir)
        for seg in sorted(src_dir.iterdir()):
            if not seg.is_file() or seg.name.startswith("."):
                continue
            data = seg.read_bytes()
            target = dst_dir / seg.name
            with contextlib.suppress(OSError):
                if target.read_bytes() == data:
                    if every:
                        out.append(
                            mf.Entry(
                                f"{folder}/{seg.name}", len(data), hashlib.sha256(data).hexdigest()
                            )
                        )
                    continue
            w = fsio.write_file_atomic(dst_dir, seg.name, data)
            out.append(mf.Entry(f"{folder}/{seg.name}", w.size, w.sha256))
        return out

    def _write_snapshot(
        self, top: Path, removed: list[str], keep: int = KEEP_SNAPSHOTS
    ) -> list[mf.Entry]:
        dst_dir = top / layout.CATALOG_DIR
        fsio.make_dirs_durable(dst_dir)
        name = snapshot_name()
        with tempfile.TemporaryFile(dir=self.vault.state_dir) as tmp:
            write_snapshot(self.vault, self.catalog.conn, tmp)
            tmp.seek(0)
            w = fsio.write_file_atomic(dst_dir, name, tmp)
        snaps = sorted(p.name for p in dst_dir.glob("snapshot-*.age"))
        for old in snaps[:-keep]:
            fsio.remove_file_durable(dst_dir / old)
            removed.append(f"{layout.CATALOG_DIR}/{old}")
        return [mf.Entry(f"{layout.CATALOG_DIR}/{name}", w.size, w.sha256)]

    def _write_manifest(
        self,
        top: Path,
        row: DriveRow,
        vouched: mf.VouchedSet | None,
        added: list[mf.Entry],
        removed: list[str],
        *,
        repair: bool = False,
    ) -> None:
        """Sign and write this sync's manifest. ``repair``: the drive's manifests were unusable;
        a full manifest that follows the recorded head replaces them all."""
        key = SigningKey.load(self.vault.signing_key_path)
        now = datetime.now(UTC)
        from coldvault.journal import Journal

        journal_dir = self.vault.journal_dir
        head = Journal(journal_dir).head() if journal_dir.is_dir() else None
        journal_head = (head.seq, head.hash) if head is not None else None
        # Later entries for a path replace earlier ones; a re-added path is not removed.
        entries = {e.path: e for e in added}
        gone = sorted(set(removed) - set(entries))
        if vouched is None:
            after = (row.manifest_seq, row.manifest_digest) if repair else (0, None)
            m = mf.Manifest(
                vault_id=self.vault.info.vault_id,
                drive_id=row.drive_id,
                seq=(after[0] or 0) + 1,
                created=now,
                prev=after[1],
                full=True,
                entries=tuple(entries.values()),
                journal_head=journal_head,
            )
        else:
            gone = [p for p in gone if p in vouched]
            m = mf.Manifest(
                vault_id=self.vault.info.vault_id,
                drive_id=row.drive_id,
                seq=vouched.head.seq + 1,
                created=now,
                prev=vouched.head.digest,
                entries=tuple(entries.values()),
                removed=tuple(gone),
                journal_head=journal_head,
            )
        data = mf.sign_manifest(m, key)
        folder = top / layout.MANIFESTS_DIR
        fsio.make_dirs_durable(folder)
        fsio.write_file_atomic(folder, mf.manifest_filename(m.seq), data)
        with self.catalog.transaction():
            self.catalog.set_manifest_head(row.drive_id, m.seq, mf.manifest_digest(data))
        if repair:  # the new full manifest stands alone: the unusable chain goes
            for old in sorted(folder.glob("*.txt")):
                if old.name != mf.manifest_filename(m.seq):
                    fsio.remove_file_durable(old)
            log.warning("drive %s: a new full manifest replaces its damaged ones", row.name)

    # --- after a sync --------------------------------------------------------------------
    def drop_spool_copies(self) -> int:
        """Remove spool objects that enough drives hold (verified); returns how many."""
        dropped = 0
        for rel in self.catalog.fully_copied_spool_objects(self.copies):
            with self.catalog.transaction():
                self.catalog.set_in_spool(rel, False)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.vault.spool / rel)
            dropped += 1
        return dropped

    def remove_sources(self) -> int:
        """Remove originals (``on_archived = "delete"``) now held by enough drives."""
        removed = 0
        for doc_id, source, relpath, fingerprint in self.catalog.source_files_ready(self.copies):
            base = self.source_paths.get(source)
            if base is None or source not in self.delete_sources:
                continue
            try:
                if _remove_original(base, relpath, fingerprint):
                    removed += 1
            except OSError as exc:
                log.warning("cannot remove original of document %s: %s", doc_id, exc.strerror)
                continue
            with self.catalog.transaction():
                self.catalog.forget_source_file(doc_id)
        return removed


def _file_opener(path: Path) -> Opener:
    def opener() -> BinaryIO:
        return path.open("rb")

    return opener


def _object_opener(path: Path) -> Opener:
    """Opens an object on a drive, over its parts if it is split."""

    def opener() -> BinaryIO:
        return fsio.open_object(path.parent, path.name)

    return opener


def _remove_original(root: Path, relpath: str, fingerprint: str) -> bool:
    """Remove the original, only if it is still the archived version: first renamed to a hidden
    name (ignored by the watcher, so a crash never gets a half-shredded file archived), then
    overwritten with zeros, then unlinked. Best effort: on SSDs and copy-on-write filesystems the
    old blocks may survive (see docs/threat-model.md)."""
    from coldvault.sources.settle import Fingerprint, lstat_beneath

    try:
        st = lstat_beneath(root, relpath)
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or Fingerprint.from_stat(st).to_text() != fingerprint:
        return False  # changed since: a new version, archived on its own
    path = root / relpath
    hidden = path.with_name(f".coldvault-shred-{secrets.token_hex(6)}")
    os.rename(path, hidden)
    fd = os.open(hidden, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        zeros = b"\0" * (1 << 20)
        left = st.st_size
        while left > 0:
            left -= os.write(fd, zeros[: min(left, len(zeros))])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.unlink(hidden)
    with contextlib.suppress(OSError):
        fsio.fsync_dir(hidden.parent)
    return True


def eject(fs_uuid: str, root: Path) -> None:
    """Unmount (and power off where udisks2 allows) so the drive can be removed safely.

    Through udisks2 when it runs (no root needed, with the polkit rule), else ``umount``.
    Raises a DriveError when neither works.
    """
    from coldvault.drives.mounts import umount
    from coldvault.drives.udisks import UdisksClient

    try:
        client = UdisksClient()
        try:
            client.unmount(fs_uuid)
            client.power_off(fs_uuid)
        finally:
            client.close()
        return
    except ColdvaultError as exc:
        log.debug("udisks eject failed: %s", exc.message)
    umount(root)


def sha256_file(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def find_root(catalog: Catalog, row: DriveRow) -> Path:
    """Where an enrolled drive is right now (directory drives: their path)."""
    if row.is_directory and row.path:
        p = Path(row.path)
        if (p / layout.TOP_DIR / layout.MARKER_FILE).is_file():
            return p
    if row.fs_uuid:
        from coldvault.drives.mounts import find_mount

        m = find_mount(fs_uuid=row.fs_uuid)
        if m is not None:
            return Path(m.mountpoint)
    raise NotAvailable(
        f"the drive {row.name!r} is not plugged in",
        hint="plug it in and try again",
    )
