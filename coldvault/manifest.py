"""Signed drive manifests: what the vault vouches is on a drive (principle 8).

age proves nothing about who wrote a file and every recipient is public, so anyone who can write
to a drive could plant or swap an object. Each sync therefore writes a manifest listing the
ciphertext size and SHA-256 of what it copied, signed with the vault's Ed25519 key
(:mod:`coldvault.signing`). ``verify``, ``restore`` and ``recover`` accept a file only if the
*effective set* of the drive's manifests (:func:`effective_entries`) lists its path with the same
size and hash.

Design: one incremental manifest per sync, hash-chained, per drive
------------------------------------------------------------------
Each sync to a drive writes manifest number ``seq`` = previous + 1 holding only what changed:
the entries it added and the paths it removed (after a purge), plus ``prev``, the SHA-256 of the
previous manifest *file*. A ``full`` manifest restates the whole content instead (the first one,
``seq`` 1, is always full; a later full one is a checkpoint). The effective set is the fold of the
chain, from the newest full manifest reachable from the head, applying each delta's removals then
its additions (a later entry for the same path replaces the earlier one).

Why not one full manifest rewritten at every sync: a drive holds up to 2 million objects, i.e.
about 260 MB of manifest text rewritten, read back and signed every evening for a handful of new
documents; the incremental chain writes a few kilobytes. Both designs give the same guarantees:

* **A purged object stays rejected.** The purge's delta lists the path as removed, and that
  removal is signed: the effective set no longer contains it, so an attacker who puts back the
  original ciphertext (byte-identical, listed by an older, validly signed manifest) is refused.
  Older manifests vouch only through the fold, never on their own.
* **Gaps and forks are detected.** Each manifest names its predecessor by hash and number; a
  missing middle manifest (a gap) or two different manifests with the same number (a fork) make
  :func:`effective_entries` fail with a plain sentence, as does a manifest from another drive or
  vault, or one signed by another key.
* **Rollback needs an anchor.** Deleting the *newest* manifests from a drive brings back an older
  state, and no design can notice that from the drive alone (a full-rewrite design would accept an
  older full manifest put back). The workstation therefore records each drive's head
  (:class:`ChainHead`: number and file hash) in the catalog and the journal, and passes it as
  ``known_head``; a head older than the recorded one is refused. On a fresh machine without
  catalog, a rollback can at worst bring back objects whose patient keys were crypto-shredded: the
  recovery key cannot open them.
* **Compaction.** Once a full manifest is on the drive, older manifests may be deleted: the fold
  starts at the newest full manifest reachable from the head and only the chain from there on must
  be complete. Older manifests that remain are still checked (signature, drive, no fork).

Manifest file format (``coldvault-manifest-v1``)
-----------------------------------------------
ASCII, LF line endings, no other whitespace than single spaces as shown, nothing after the final
LF. Lines, in this exact order::

    coldvault-manifest-v1
    vault <vault-id>
    drive <drive-id>
    seq <n>
    prev <64 lowercase hex>          ("prev -" when and only when seq is 1)
    created <YYYY-MM-DDTHH:MM:SSZ>   (UTC, whole seconds)
    kind full|delta                  (seq 1 is always "full")
    signer ed25519:<base64>          (the verify key, see coldvault.signing)
    journal <seq> <64 lowercase hex> (the audit journal's head at the sync, or "journal -")
    added <count>
    removed <count>                  (0 when kind is full)
    + <sha256: 64 lowercase hex> <size> <path>    (count lines, see below)
    - <path>                                      (count lines)
    end
    signature <base64>

* ``<vault-id>``, ``<drive-id>``: 1 to 128 characters of ``A-Z a-z 0-9 . _ : -``.
* Numbers (``seq``, counts, sizes, journal seq) are decimal without sign or leading zeros;
  ``seq`` >= 1; sizes < 2**63.
* ``<path>``: relative to the drive's top folder, components separated by ``/``; each component is
  1 to 255 characters of ``A-Z a-z 0-9 . _ -`` and does not start with ``.`` (so no ``..``, no
  hidden files, no absolute paths); at most 1024 characters in all.
* ``+`` lines are sorted by path in ASCII order with no duplicate; so are ``-`` lines; a path is
  never both added and removed by the same manifest.
* ``<size>`` and ``<sha256>`` are the byte length and SHA-256 of the file's ciphertext as stored on
  the drive (an object split into parts has one entry, for its logical path, with the size
  and SHA-256 of the joined parts).
* ``signature``: standard base64 with padding (88 characters) of the pure Ed25519 signature
  (RFC 8032) by the ``signer`` key over every byte of the file from the first byte up to and
  including the LF that ends the ``end`` line.
* A manifest's *digest* (what the next manifest's ``prev`` holds) is the lowercase hex SHA-256 of
  the whole file, signature line included.

A reader checks the signer against the vault's verify key (from the drive marker, confirmed by the
fingerprint on the recovery sheet), verifies the signature over the exact bytes, then parses
strictly: there is exactly one valid encoding of a given manifest. Suggested place on a drive:
``manifests/<seq, 8 digits or more>.txt`` (:func:`manifest_filename`).
"""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from operator import attrgetter
from pathlib import Path
from typing import NamedTuple

from coldvault.errors import DriveError, IntegrityError
from coldvault.signing import KeyFormatError, SignatureError, SigningKey, VerifyKey

FORMAT_LINE = "coldvault-manifest-v1"
MANIFEST_DIR = "manifests"
MAX_PATH = 1024
MAX_SIZE = 2**63 - 1

_ID = r"[A-Za-z0-9._:-]{1,128}"
_NUM = r"(?:0|[1-9][0-9]{0,18})"
_HEX = r"[0-9a-f]{64}"
_COMPONENT = r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}"
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_ADDED_LINE = re.compile(rf"^\+ ({_HEX}) ({_NUM}) ({_PATH})$", re.MULTILINE)
_REMOVED_LINE = re.compile(rf"^- ({_PATH})$", re.MULTILINE)
_HEADER = re.compile(
    rf"{FORMAT_LINE}\n"
    rf"vault ({_ID})\n"
    rf"drive ({_ID})\n"
    rf"seq ([1-9][0-9]{{0,18}})\n"
    rf"prev (-|{_HEX})\n"
    r"created ([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z)\n"
    r"kind (full|delta)\n"
    r"signer (ed25519:[A-Za-z0-9+/=]{44})\n"
    rf"journal (-|{_NUM} {_HEX})\n"
    rf"added ({_NUM})\n"
    rf"removed ({_NUM})\n"
)
_SIGNATURE_LINE = re.compile(r"signature ([A-Za-z0-9+/]{86}==)\n")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic GC while building millions of acyclic tuples.

    Tuple subclasses stay tracked, so every collection walks all entries built so far: building
    2 million entries took 5-10x longer with the collector running.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class ManifestError(IntegrityError):
    """A manifest is malformed, not signed by this vault, or its chain is broken."""


class ManifestFormatError(ManifestError):
    """A manifest file is not a well-formed coldvault manifest."""


class ManifestSignatureError(ManifestError):
    """A manifest's signature does not verify, or it was signed by another key."""


class ManifestChainError(ManifestError):
    """A drive's manifests do not form one unbroken chain (gap, fork, rollback, mixed drives)."""


class NotVouchedError(IntegrityError):
    """A file on a drive is not listed, or listed differently, by the drive's manifests."""


class Entry(NamedTuple):
    """One file on the drive as the vault wrote it."""

    path: str
    size: int
    sha256: str


class ChainHead(NamedTuple):
    """A drive's newest manifest: its number and the SHA-256 (hex) of its file."""

    seq: int
    digest: str


def manifest_digest(data: bytes) -> str:
    """The hex SHA-256 of a manifest file: what the next manifest's ``prev`` holds."""
    return hashlib.sha256(data).hexdigest()


def manifest_filename(seq: int) -> str:
    """Suggested file name for manifest ``seq`` in the drive's ``manifests/`` folder."""
    return f"{seq:08d}.txt"


@dataclass(frozen=True)
class Manifest:
    """One manifest. ``entries`` are the files added (all files when ``full``), sorted by path.

    ``signer`` (verify key text) and ``digest`` (hex SHA-256 of the file) are filled in by
    :func:`load_manifest`; ``signer`` may be left ``None`` before signing.
    """

    vault_id: str
    drive_id: str
    seq: int
    created: datetime
    prev: str | None = None
    full: bool = False
    entries: Sequence[Entry] = field(default=(), repr=False)
    removed: Sequence[str] = field(default=(), repr=False)
    journal_head: tuple[int, str] | None = None
    signer: str | None = None
    digest: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.created.tzinfo is None:
            raise ValueError("manifest creation time must be timezone-aware")
        created = self.created.astimezone(UTC).replace(microsecond=0)
        object.__setattr__(self, "created", created)
        # Timsort is linear on already sorted input (the load path).
        with _gc_paused():
            # Entries compare by path first (paths are unique); Timsort is linear on already
            # sorted input (the load path).
            object.__setattr__(self, "entries", tuple(sorted(self.entries)))
        object.__setattr__(self, "removed", tuple(sorted(self.removed)))

    def lookup(self, path: str) -> Entry | None:
        """The entry this manifest adds for ``path``, or None."""
        entries = self.entries
        i = bisect_left(entries, path, key=attrgetter("path"))
        if i < len(entries) and entries[i].path == path:
            return entries[i]
        return None

    def successor(
        self,
        created: datetime,
        entries: Iterable[Entry] = (),
        removed: Iterable[str] = (),
        *,
        full: bool = False,
        journal_head: tuple[int, str] | None = None,
    ) -> Manifest:
        """The next manifest of this chain (this one must come from :func:`load_manifest`)."""
        if self.digest is None:
            raise ValueError("the previous manifest's digest is unknown: load it from its file")
        return Manifest(
            vault_id=self.vault_id,
            drive_id=self.drive_id,
            seq=self.seq + 1,
            created=created,
            prev=self.digest,
            full=full,
            entries=tuple(entries),
            removed=tuple(removed),
            journal_head=journal_head,
            signer=self.signer,
        )


# --- encoding ------------------------------------------------------------------------------


def _encode_unsigned(m: Manifest, signer: str) -> str:
    journal = "-" if m.journal_head is None else f"{m.journal_head[0]} {m.journal_head[1]}"
    head = (
        f"{FORMAT_LINE}\n"
        f"vault {m.vault_id}\n"
        f"drive {m.drive_id}\n"
        f"seq {m.seq}\n"
        f"prev {m.prev if m.prev is not None else '-'}\n"
        f"created {m.created.strftime(_TIME_FORMAT)}\n"
        f"kind {'full' if m.full else 'delta'}\n"
        f"signer {signer}\n"
        f"journal {journal}\n"
        f"added {len(m.entries)}\n"
        f"removed {len(m.removed)}\n"
    )
    added = "".join([f"+ {h} {n} {p}\n" for p, n, h in m.entries])
    removed = "".join([f"- {p}\n" for p in m.removed])
    return head + added + removed + "end\n"


def sign_manifest(manifest: Manifest, key: SigningKey) -> bytes:
    """Encode and sign ``manifest``: the bytes of the manifest file.

    Raises ValueError if the manifest cannot be encoded (bad path, hash, id, numbering): a
    programming error, never written to a drive.
    """
    signer = key.public().to_text()
    if manifest.signer is not None and manifest.signer != signer:
        raise ValueError("the manifest names another signer than the key signing it")
    if manifest.created.year > 9999 or manifest.created.year < 1000:
        raise ValueError("manifest creation year out of range")
    text = _encode_unsigned(manifest, signer)
    # Re-parse what we are about to sign: whatever we sign, we can load.
    try:
        _parse_unsigned(text, build=False)
    except ManifestFormatError as e:
        raise ValueError(f"manifest cannot be encoded: {e.message}") from None
    signed = text.encode("ascii")
    sig = base64.b64encode(key.sign(signed))
    return signed + b"signature " + sig + b"\n"


# --- decoding ------------------------------------------------------------------------------


class _Parsed(NamedTuple):
    header: re.Match[str]
    entries: list[Entry]
    removed: list[str]


_CHUNK = 1 << 20  # characters of entry lines parsed at a time: bounds the transient memory


def _parse_unsigned(text: str, name: str = "manifest", *, build: bool = True) -> _Parsed:
    """Check the unsigned part strictly; with ``build`` also make the Entry objects.

    Linear in the size of the manifest; entry lines are matched a chunk at a time by one C-level
    regex pass, so that 2 million entries never exist twice as intermediate tuples.
    """

    def malformed(what: str) -> ManifestFormatError:
        return ManifestFormatError(f"The {name} {what}.")

    header = _HEADER.match(text)
    if header is None:
        raise malformed("has a malformed header")
    seq, prev, kind = int(header[3]), header[4], header[6]
    n_added, n_removed = int(header[9]), int(header[10])
    if (seq == 1) != (prev == "-"):
        raise malformed("has an inconsistent number and predecessor")
    if seq == 1 and kind != "full":
        raise malformed("number 1 is not a full manifest")
    if kind == "full" and n_removed:
        raise malformed("is full but lists removals")
    try:
        datetime.strptime(header[5], _TIME_FORMAT)
    except ValueError:
        raise malformed("has an invalid creation time") from None
    start, end = header.end(), len(text) - 4
    if end < start or not text.endswith("\nend\n"):
        raise malformed("does not end with 'end'")
    # The header ends with LF, so searching from start - 1 also finds removals right after it.
    split = text.find("\n- ", start - 1, end)
    split = end if split < 0 else split + 1

    removed = _REMOVED_LINE.findall(text, split, end)
    if len(removed) != n_removed or text.count("\n", split, end) != n_removed:
        raise malformed("has a malformed or miscounted removed entry")
    if n_removed > 1 and not all(a < b for a, b in pairwise(removed)):
        raise malformed("lists removed entries out of order or twice")
    if max(map(len, removed), default=0) > MAX_PATH:
        raise malformed("has a path that is too long")
    removed_set = set(removed)

    if text.count("\n", start, split) != n_added:
        raise malformed("has a malformed or miscounted added entry")
    entries: list[Entry] = []
    seen, last = 0, ""
    pos = start
    with _gc_paused():
        while pos < split:
            stop = text.find("\n", min(pos + _CHUNK, split) - 1, split)
            stop = split if stop < 0 else stop + 1
            found = _ADDED_LINE.findall(text, pos, stop)
            if len(found) != text.count("\n", pos, stop):
                raise malformed("has a malformed added entry")
            paths = [f[2] for f in found]
            if paths:
                if not (last < paths[0] and all(a < b for a, b in pairwise(paths))):
                    raise malformed("lists added entries out of order or twice")
                if max(map(len, paths)) > MAX_PATH:
                    raise malformed("has a path that is too long")
                if max(len(f[1]) for f in found) >= 19 and max(int(f[1]) for f in found) > MAX_SIZE:
                    raise malformed("has a size out of range")
                if removed_set and not removed_set.isdisjoint(paths):
                    raise malformed("both adds and removes the same path")
                last = paths[-1]
            seen += len(found)
            if build:
                entries.extend([Entry(p, int(n), h) for h, n, p in found])
            pos = stop
    if seen != n_added:
        raise malformed("has a miscounted added entry")
    return _Parsed(header, entries, removed)


def load_manifest(
    data: bytes, expected_key: VerifyKey | None, *, name: str = "manifest"
) -> Manifest:
    """Check and parse a manifest file.

    With ``expected_key`` the manifest must be signed by it; with ``None`` only the signature by
    the key the manifest itself names is checked (integrity, not authenticity: the caller must
    then compare the signer's fingerprint). Raises :class:`ManifestError` subclasses with a plain
    sentence naming ``name``.
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ManifestFormatError(
            f"The {name} is not a coldvault manifest (not plain text)."
        ) from None
    end = text.rfind("\nsignature ")
    sig_match = _SIGNATURE_LINE.fullmatch(text, end + 1) if end >= 0 else None
    if not text.startswith(FORMAT_LINE + "\n") or sig_match is None:
        raise ManifestFormatError(f"The {name} is not a complete coldvault manifest.")
    signed = data[: end + 1]
    header = _HEADER.match(text, 0, end + 1)
    if header is None:
        raise ManifestFormatError(f"The {name} has a malformed header.")
    try:
        signer = VerifyKey.from_text(header[7])
    except KeyFormatError:
        raise ManifestFormatError(f"The {name} names a malformed signing key.") from None
    if expected_key is not None and signer != expected_key:
        raise ManifestSignatureError(
            f"The {name} was signed by another key (fingerprint {signer.fingerprint()}), "
            f"not by this vault's key ({expected_key.fingerprint()}).",
            hint="The drive may belong to another vault, or its manifests were replaced.",
        )
    signature = base64.b64decode(sig_match[1])
    if base64.b64encode(signature).decode("ascii") != sig_match[1]:
        raise ManifestFormatError(f"The {name} has a non-canonical signature line.")
    try:
        signer.verify(signed, signature)
    except SignatureError:
        raise ManifestSignatureError(
            f"The signature of the {name} does not match its content: it was changed after "
            "the vault wrote it."
        ) from None
    parsed = _parse_unsigned(text[: end + 1], name)
    h = parsed.header
    journal = None if h[8] == "-" else (int(h[8].split(" ")[0]), h[8].split(" ")[1])
    return Manifest(
        vault_id=h[1],
        drive_id=h[2],
        seq=int(h[3]),
        created=datetime.strptime(h[5], _TIME_FORMAT).replace(tzinfo=UTC),
        prev=None if h[4] == "-" else h[4],
        full=h[6] == "full",
        entries=parsed.entries,
        removed=parsed.removed,
        journal_head=journal,
        signer=h[7],
        digest=manifest_digest(data),
    )


# --- the chain -----------------------------------------------------------------------------


class VouchedSet(Mapping[str, Entry]):
    """The effective content of a drive according to its manifests: path -> :class:`Entry`."""

    def __init__(
        self,
        entries: dict[str, Entry],
        *,
        vault_id: str,
        drive_id: str,
        head: ChainHead,
        created: datetime,
        signer: VerifyKey,
        journal_head: tuple[int, str] | None,
    ) -> None:
        self._entries = entries
        self.vault_id = vault_id
        self.drive_id = drive_id
        self.head = head
        self.created = created
        self.signer = signer
        self.journal_head = journal_head

    def __getitem__(self, path: str) -> Entry:
        return self._entries[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def vouches(self, path: str, size: int, sha256: str) -> bool:
        e = self._entries.get(path)
        return e is not None and e.size == size and e.sha256 == sha256.lower()

    def check(self, path: str, size: int, sha256: str) -> None:
        """Raise :class:`NotVouchedError` unless the vault wrote exactly this file at ``path``."""
        e = self._entries.get(path)
        if e is None:
            raise NotVouchedError(
                f"The file {path} on the drive was not written by this vault (or was purged): "
                "it is not in the drive's signed manifests."
            )
        if e.size != size or e.sha256 != sha256.lower():
            raise NotVouchedError(
                f"The file {path} on the drive differs from what the vault wrote "
                "(size or hash do not match the signed manifest): it was damaged or replaced."
            )


def effective_entries(
    files: Iterable[tuple[str, bytes]],
    expected_key: VerifyKey,
    *,
    vault_id: str | None = None,
    drive_id: str | None = None,
    known_head: ChainHead | None = None,
) -> VouchedSet:
    """Fold all manifest files found on a drive (``(name, content)`` in any order).

    Every file must be a manifest signed by ``expected_key`` for one vault and drive (``vault_id``
    and ``drive_id`` if given). The newest manifest is the head; the chain from the newest full
    manifest reachable from it up to the head must be complete. ``known_head``, the head the
    workstation last wrote to this drive, must be in the chain (else: rollback or fork).
    """
    by_seq: dict[int, tuple[str, Manifest]] = {}
    ids: tuple[str, str] | None = None
    for name, data in files:
        m = load_manifest(data, expected_key, name=f"manifest {name}")
        if ids is None:
            ids = (m.vault_id, m.drive_id)
            if vault_id is not None and m.vault_id != vault_id:
                raise ManifestChainError(
                    f"The manifest {name} belongs to another vault ({m.vault_id})."
                )
            if drive_id is not None and m.drive_id != drive_id:
                raise ManifestChainError(
                    f"The manifest {name} belongs to another drive ({m.drive_id}), "
                    "not to this one: manifests were copied between drives."
                )
        elif (m.vault_id, m.drive_id) != ids:
            raise ManifestChainError(
                f"The manifest {name} belongs to another drive or vault than the others "
                "on this drive: manifests were copied between drives."
            )
        seen = by_seq.get(m.seq)
        if seen is not None and seen[1].digest != m.digest:
            raise ManifestChainError(
                f"Two different manifests number {m.seq} were found ({seen[0]} and {name}): "
                "the drive's history forked.",
                hint="Was this drive synced from two workstations, or from a restored state "
                "folder? Keep the drive aside and report it.",
            )
        by_seq.setdefault(m.seq, (name, m))
    if not by_seq:
        raise ManifestChainError("No signed manifest was found on the drive.")

    head_seq = max(by_seq)
    chain: list[Manifest] = []
    seq = head_seq
    while True:
        m = by_seq[seq][1]
        chain.append(m)
        if m.full:
            break
        assert m.prev is not None  # parse guarantees: delta => seq > 1 => prev
        before = by_seq.get(seq - 1)
        if before is None:
            raise ManifestChainError(
                f"Manifest number {seq - 1} is missing from the drive, so manifests "
                f"{seq} to {head_seq} cannot be checked.",
                hint="A file was deleted from the drive's manifests folder.",
            )
        if before[1].digest != m.prev:
            raise ManifestChainError(
                f"Manifest number {seq} does not follow manifest {seq - 1} ({before[0]}): "
                "the chain is broken."
            )
        seq -= 1
    chain.reverse()
    head = chain[-1]
    assert head.digest is not None

    if known_head is not None:
        if known_head.seq > head.seq:
            raise ManifestChainError(
                f"The drive's newest manifest is number {head.seq}, but the vault wrote number "
                f"{known_head.seq} to it: newer manifests were removed from the drive."
            )
        known = by_seq.get(known_head.seq)
        if known is not None and known[1].digest != known_head.digest:
            raise ManifestChainError(
                f"The drive's manifest number {known_head.seq} is not the one the vault wrote: "
                "the drive's history forked."
            )

    state: dict[str, Entry] = {}
    for m in chain:
        if m.full:
            with _gc_paused():
                state = {e.path: e for e in m.entries}
            continue
        for p in m.removed:
            state.pop(p, None)
        with _gc_paused():
            for e in m.entries:
                state[e.path] = e
    return VouchedSet(
        state,
        vault_id=head.vault_id,
        drive_id=head.drive_id,
        head=ChainHead(head.seq, head.digest),
        created=head.created,
        signer=expected_key,
        journal_head=head.journal_head,
    )


_MANIFEST_NAME = re.compile(r"[0-9]{8,}\.txt")


def load_manifest_folder(
    folder: Path,
    expected_key: VerifyKey,
    *,
    vault_id: str | None = None,
    drive_id: str | None = None,
    known_head: ChainHead | None = None,
) -> VouchedSet:
    """:func:`effective_entries` over the ``NNNNNNNN.txt`` files of a drive's manifest folder."""
    try:
        names = sorted(p.name for p in folder.iterdir() if _MANIFEST_NAME.fullmatch(p.name))
    except FileNotFoundError:
        raise ManifestChainError(f"The drive has no manifest folder ({folder}).") from None
    except OSError as e:
        raise DriveError(f"Cannot list the manifests in {folder} ({e.strerror}).") from None

    def read() -> Iterator[tuple[str, bytes]]:
        for n in names:
            try:
                yield n, (folder / n).read_bytes()
            except OSError as e:
                raise ManifestChainError(
                    f"The manifest {folder / n} cannot be read ({e.strerror})."
                ) from None

    return effective_entries(
        read(), expected_key, vault_id=vault_id, drive_id=drive_id, known_head=known_head
    )
