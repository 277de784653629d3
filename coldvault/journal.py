"""The audit journal: append-only, hash-chained JSON Lines (principle 9).

Ingest, transfer, restore, purge and key changes are appended here; each entry holds the hash of
the one before, so an edited, removed, inserted or reordered entry breaks the chain and
:func:`verify_folder` names it. A copy goes to every drive at every sync.

What a hash chain proves, and what it does not: anyone can recompute a chain, so a forger who
rewrites *every* entry after the one they change, or cuts the newest entries off, leaves a chain
that is consistent on its own. That is caught by comparing with a head recorded elsewhere
(``expected_head``): the catalog, another drive's copy, and the journal head written into each
signed drive manifest (:mod:`coldvault.manifest`), which only the vault's key can produce.

Privacy: entries outlive the documents by decades and travel on every drive. Callers never put
patient names, external patient ids or document file names in ``fields``: use document ids,
pseudonymous patient references (key ids, keyed hashes), object ids, drive ids, counts and
reasons typed by the operator.

Journal format (``journal/``)
-----------------------------
Segment files ``NNNNNN.jsonl`` (decimal, at least 6 digits, from ``000001``). Entry number
``seq`` (from 1) lives in segment ``(seq - 1) // 10000 + 1``: 10,000 entries per segment. Every
segment but the newest is *closed* and never changes, so a sync copies the closed segments a drive
lacks plus the newest one. Each line is one entry followed by LF, exactly::

    {"event":E,"fields":F,"hash":H,"prev":P,"seq":N,"time":T}

* the canonical JSON of the entry: keys sorted, no whitespace, ``","`` and ``":"`` separators,
  ASCII only (other characters as ``\\uXXXX`` escapes, lowercase hex, surrogate pairs above
  U+FFFF; ``"`` ``\\`` and controls escaped as ``\\"`` ``\\\\`` ``\\b \\f \\n \\r \\t`` or
  ``\\u00XX``) — i.e. Python's ``json.dumps(entry, sort_keys=True, separators=(",", ":"),
  ensure_ascii=True)``. Values are strings, integers, booleans, null, arrays and objects only: no
  floating-point numbers.
* ``N``: the entry number, 1, 2, 3... without gaps.
* ``T``: UTC time, ``YYYY-MM-DDTHH:MM:SSZ``.
* ``E``: the event, ``[a-z][a-z0-9-]*`` (at most 32 characters): ``ingest``, ``sync``,
  ``restore``, ``recover``, ``purge``, ``hold``, ``release``, ``key-change``, ``drive-enroll``,
  ``warning``...
* ``F``: an object of event-specific fields, keys ``[a-z][a-z0-9_]*``.
* ``P``: ``H`` of the previous entry, or 64 ``0`` for entry 1.
* ``H``: lowercase hex SHA-256 of the canonical JSON of the entry *without* the ``hash`` member,
  i.e. of the same line with ``"hash":"<H>",`` removed.
* A line is at most 65,536 bytes.

Writing and crashes: an append takes an exclusive ``flock`` on ``journal/.lock`` (the daemon and
CLI commands append concurrently), writes the new lines with ``O_APPEND``, and fsyncs (and fsyncs
the folder when it created a segment). A crash can leave the newest segment ending in a torn line
(no LF). That entry was never acknowledged, so the next append cuts it off and first appends a
``warning`` entry recording ``reason: "torn-line"``, the segment, and the length and SHA-256 of
the discarded bytes. :func:`verify_folder` reports a torn final line as a ``torn`` problem
(expected after a crash, not tampering), distinct from every other kind.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeAlias

from coldvault.errors import IntegrityError, VaultError

log = logging.getLogger(__name__)

JSONValue: TypeAlias = "str | int | bool | list[JSONValue] | dict[str, JSONValue] | None"

GENESIS = "0" * 64
SEGMENT_ENTRIES = 10_000
MAX_LINE = 65_536
LOCK_NAME = ".lock"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
EVENTS = (
    "ingest",
    "sync",
    "restore",
    "recover",
    "purge",
    "hold",
    "release",
    "key-change",
    "drive-enroll",
    "warning",
)

_SEGMENT_NAME = re.compile(r"([0-9]{6,})\.jsonl")
_EVENT = re.compile(r"[a-z][a-z0-9-]{0,31}")
_FIELD = re.compile(r"[a-z][a-z0-9_]{0,63}")
_HEX = re.compile(r"[0-9a-f]{64}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_KEYS = frozenset({"event", "fields", "hash", "prev", "seq", "time"})
_MAX_DEPTH = 16


class JournalError(IntegrityError):
    """The audit journal is damaged where coldvault needs to read it."""


class JournalHead(NamedTuple):
    """The newest entry: its number and hash (recorded elsewhere to detect truncation)."""

    seq: int
    hash: str


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def _entry_hash(seq: int, time: str, event: str, fields: Mapping[str, Any], prev: str) -> str:
    body = {"event": event, "fields": fields, "prev": prev, "seq": seq, "time": time}
    return hashlib.sha256(_canonical(body)).hexdigest()


def segment_number(seq: int) -> int:
    return (seq - 1) // SEGMENT_ENTRIES + 1


def segment_name(number: int) -> str:
    return f"{number:06d}.jsonl"


@dataclass(frozen=True)
class Entry:
    seq: int
    time: str
    event: str
    fields: dict[str, Any]
    prev: str
    hash: str

    @property
    def when(self) -> datetime:
        return datetime.strptime(self.time, TIME_FORMAT).replace(tzinfo=UTC)

    def to_json(self) -> dict[str, Any]:
        return {
            "event": self.event,
            "fields": self.fields,
            "hash": self.hash,
            "prev": self.prev,
            "seq": self.seq,
            "time": self.time,
        }

    def line(self) -> bytes:
        return _canonical(self.to_json()) + b"\n"

    def expected_hash(self) -> str:
        return _entry_hash(self.seq, self.time, self.event, self.fields, self.prev)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a journal. ``kind`` is one of:

    ``torn`` (the newest segment ends in an incomplete line: expected after a crash),
    ``malformed`` (a line that is not an entry), ``edited`` (an entry whose content does not
    match its hash or is not canonical), ``chain`` (an entry that does not follow the one before
    it: removed, inserted or reordered entries), ``missing-segment``, ``wrong-segment``,
    ``start`` (the first entry is not entry 1), ``anchor`` (the head recorded elsewhere is not in
    this journal), ``unreadable``.
    """

    kind: str
    message: str
    segment: str | None = None
    line: int | None = None
    seq: int | None = None

    @property
    def tampering(self) -> bool:
        """False only for damage a crash explains (a torn final line)."""
        return self.kind != "torn"


# --- validation ----------------------------------------------------------------------------


def _check_value(value: object, depth: int = 0) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("journal field nested too deeply")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, list):
        for v in value:
            _check_value(v, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError("journal field keys must be strings")
            _check_value(v, depth + 1)
        return
    raise TypeError(
        f"journal fields hold str, int, bool, None, lists and dicts, not {type(value).__name__}"
    )


def _check_fields(event: str, fields: Mapping[str, object]) -> dict[str, Any]:
    if not _EVENT.fullmatch(event):
        raise ValueError(f"invalid journal event name {event!r}")
    for k, v in fields.items():
        if not _FIELD.fullmatch(k):
            raise ValueError(f"invalid journal field name {k!r}")
        _check_value(v)
    return dict(fields)


def _parse_line(raw: bytes) -> Entry | str:
    """The entry on ``raw`` (without its LF), or a sentence saying why it is not one."""
    if len(raw) > MAX_LINE:
        return "the line is too long"
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return "the line is not valid JSON"
    if not isinstance(obj, dict) or set(obj) != _KEYS:
        return "the line does not have the members of a journal entry"
    seq, time, event, fields = obj["seq"], obj["time"], obj["event"], obj["fields"]
    prev, hash_ = obj["prev"], obj["hash"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        return "the entry number is invalid"
    if not isinstance(time, str) or not _TIME.fullmatch(time):
        return "the time is invalid"
    if not isinstance(event, str) or not _EVENT.fullmatch(event):
        return "the event name is invalid"
    if not isinstance(fields, dict):
        return "the fields are not an object"
    if not (isinstance(prev, str) and _HEX.fullmatch(prev)):
        return "the previous-entry hash is invalid"
    if not (isinstance(hash_, str) and _HEX.fullmatch(hash_)):
        return "the entry hash is invalid"
    return Entry(seq, time, event, fields, prev, hash_)


# --- reading and verifying -----------------------------------------------------------------


def _segments(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for p in folder.iterdir():
        m = _SEGMENT_NAME.fullmatch(p.name)
        if m and p.is_file() and not p.is_symlink():
            found.append((int(m[1]), p))
    found.sort()
    return found


def verify_folder(
    folder: Path,
    expected_head: JournalHead | None = None,
    *,
    read: Callable[[Path], bytes] = Path.read_bytes,
) -> list[Problem]:
    """Check a journal folder (the workstation's or a copy on a drive); no problem = intact.

    Linear, one segment in memory at a time. Reads without the lock (a drive copy has no
    writer); :meth:`Journal.verify` passes a ``read`` that takes it segment by segment.
    """
    folder = Path(folder)
    problems: list[Problem] = []
    try:
        segs = _segments(folder)
    except OSError as e:
        return [
            Problem("unreadable", f"The journal folder {folder} cannot be read ({e.strerror}).")
        ]
    head_seen: str | None = None
    last: JournalHead | None = None
    resync = False  # after a missing segment or a malformed line, do not report the next link
    expected_number = 1
    for index, (number, path) in enumerate(segs):
        name = path.name
        if number != expected_number:
            first = segment_name(expected_number)
            what = (
                first if number == expected_number + 1 else f"{first} to {segment_name(number - 1)}"
            )
            problems.append(
                Problem(
                    "missing-segment",
                    f"Journal segment {what} is missing: entries "
                    f"{(expected_number - 1) * SEGMENT_ENTRIES + 1} to "
                    f"{(number - 1) * SEGMENT_ENTRIES} were removed.",
                    segment=name,
                )
            )
            resync = True
        expected_number = number + 1
        try:
            data = read(path)
        except OSError as err:
            problems.append(
                Problem(
                    "unreadable", f"Journal segment {name} cannot be read ({err.strerror}).", name
                )
            )
            resync = True
            continue
        lines = data.split(b"\n")
        tail = lines.pop()  # b"" when the segment ends with LF
        for lineno, raw in enumerate(lines, 1):
            parsed = _parse_line(raw)
            where = f"line {lineno} of journal segment {name}"
            if isinstance(parsed, str):
                problems.append(
                    Problem("malformed", f"{where.capitalize()}: {parsed}.", name, lineno)
                )
                resync = True
                continue
            ent = parsed
            if ent.hash != ent.expected_hash():
                problems.append(
                    Problem(
                        "edited",
                        f"Journal entry {ent.seq} ({where}) was edited: its content does not match "
                        "its hash.",
                        name,
                        lineno,
                        ent.seq,
                    )
                )
            elif ent.line() != raw + b"\n":
                problems.append(
                    Problem(
                        "edited",
                        f"Journal entry {ent.seq} ({where}) was rewritten: it is not in the form "
                        "coldvault writes.",
                        name,
                        lineno,
                        ent.seq,
                    )
                )
            if segment_number(ent.seq) != number:
                problems.append(
                    Problem(
                        "wrong-segment",
                        f"Journal entry {ent.seq} is in segment {name}, where it does not belong.",
                        name,
                        lineno,
                        ent.seq,
                    )
                )
            link = _link_problem(last, ent, where, resync)
            if link is not None:
                problems.append(Problem(link[0], link[1], name, lineno, ent.seq))
            resync = False
            if last is None or ent.seq > last.seq:
                # An entry that goes backwards is reported once; the chain continues from the
                # newest entry, so one swapped or inserted line is not reported twice.
                last = JournalHead(ent.seq, ent.hash)
            if expected_head is not None and ent.seq == expected_head.seq:
                head_seen = ent.hash
        if tail:
            if index == len(segs) - 1:
                problems.append(
                    Problem(
                        "torn",
                        f"The last line of journal segment {name} is incomplete ({len(tail)} "
                        "bytes): an entry was being written when the computer stopped. The next "
                        "entry written repairs it.",
                        name,
                        len(lines) + 1,
                    )
                )
            else:
                problems.append(
                    Problem(
                        "malformed",
                        f"Journal segment {name} ends with an incomplete line although newer "
                        "segments follow it.",
                        name,
                        len(lines) + 1,
                    )
                )
                resync = True
    if expected_head is not None and head_seen != expected_head.hash:
        if head_seen is None:
            msg = (
                f"Journal entry {expected_head.seq}, recorded elsewhere as written, is not in "
                "this journal: its newest entries were removed or it is an older copy."
            )
        else:
            msg = (
                f"Journal entry {expected_head.seq} differs from the one recorded elsewhere: "
                "the journal was rewritten."
            )
        problems.append(Problem("anchor", msg, seq=expected_head.seq))
    return problems


def _link_problem(
    last: JournalHead | None, e: Entry, where: str, resync: bool
) -> tuple[str, str] | None:
    if resync:
        return None
    if last is None:
        if e.seq != 1 or e.prev != GENESIS:
            return (
                "start",
                f"The journal starts at entry {e.seq} ({where}): the entries before it are "
                "missing.",
            )
        return None
    if e.seq == last.seq + 1 and e.prev == last.hash:
        return None
    if e.seq <= last.seq:
        return (
            "chain",
            f"Journal entry {e.seq} ({where}) comes after entry {last.seq}: entries were "
            "reordered, duplicated or inserted.",
        )
    if e.seq > last.seq + 1:
        if e.seq == last.seq + 2:
            gap = f"entry {last.seq + 1} is"
        else:
            gap = f"entries {last.seq + 1} to {e.seq - 1} are"
        return (
            "chain",
            f"Journal {gap} missing before entry {e.seq} ({where}): removed or moved.",
        )
    return (
        "chain",
        f"Journal entry {e.seq} ({where}) does not follow entry {last.seq}: an entry was "
        "replaced, inserted or rewritten.",
    )


def read_entries(folder: Path) -> Iterator[Entry]:
    """Every entry in order, without checking the chain (use :func:`verify_folder` for that).

    A torn final line is skipped; any other unreadable line raises :class:`JournalError`.
    """
    folder = Path(folder)
    try:
        segs = _segments(folder)
    except FileNotFoundError:
        return
    except OSError as e:
        raise JournalError(f"The journal folder {folder} cannot be read ({e.strerror}).") from None
    for _, path in segs:
        yield from _segment_entries(path)


def _segment_entries(path: Path) -> Iterator[Entry]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as e:
        raise JournalError(f"Journal segment {path.name} cannot be read ({e.strerror}).") from None
    lines = data.split(b"\n")
    lines.pop()  # a torn (or empty) tail
    for lineno, raw in enumerate(lines, 1):
        parsed = _parse_line(raw)
        if isinstance(parsed, str):
            raise JournalError(
                f"Line {lineno} of journal segment {path.name} is damaged: {parsed}.",
                hint="Run 'coldvault audit --verify' for details.",
            )
        yield parsed


# --- writing -------------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


class _Tail(NamedTuple):
    head: JournalHead | None
    repaired: dict[str, JSONValue] | None


class Journal:
    """The workstation's journal folder, appended to by the daemon and CLI commands."""

    def __init__(self, folder: Path, clock: Callable[[], datetime] = _utcnow) -> None:
        self.folder = Path(folder)
        self._clock = clock

    # -- locking ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.folder / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        except OSError as e:
            raise VaultError(
                f"The audit journal {self.folder} cannot be opened ({e.strerror})."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    # -- reading ---------------------------------------------------------------------------
    def entries(self) -> Iterator[Entry]:
        """Every entry in order (see :func:`read_entries`), one segment in memory at a time.

        Each segment is read under the shared lock, so an append in progress is never seen
        half-written; the lock is not held while the caller consumes the entries.
        """
        for path in self.segments():
            with self._locked(exclusive=False):
                found = list(_segment_entries(path))
            yield from found

    def recent_entries(self, segments: int = 2) -> list[Entry]:
        """The entries of the newest ``segments`` segments, in order."""
        out: list[Entry] = []
        for path in self.segments()[-segments:]:
            with self._locked(exclusive=False):
                out += _segment_entries(path)
        return out

    def verify(self, expected_head: JournalHead | None = None) -> list[Problem]:
        """:func:`verify_folder`, each segment read under the shared lock (no append is seen
        half-written, and appends wait for one segment read, not for the whole check)."""

        def read(path: Path) -> bytes:
            with self._locked(exclusive=False):
                return path.read_bytes()

        if not self.folder.exists() and expected_head is None:
            return []  # nothing written yet
        return verify_folder(self.folder, expected_head, read=read)

    def head(self) -> JournalHead | None:
        with self._locked(exclusive=False):
            return self._read_tail(repair=False).head

    def segments(self) -> list[Path]:
        """Segment files in order; all but the last are closed and never change again."""
        try:
            return [p for _, p in _segments(self.folder)]
        except FileNotFoundError:
            return []

    # -- appending -------------------------------------------------------------------------
    def append(self, event: str, /, **fields: JSONValue) -> Entry:
        """Append one entry durably (written and fsynced when this returns)."""
        return self.append_many([(event, fields)])[0]

    def append_many(self, items: Iterable[tuple[str, Mapping[str, JSONValue]]]) -> list[Entry]:
        """Append several entries with one write and one fsync; returns them in order."""
        checked = [(event, _check_fields(event, fields)) for event, fields in items]
        if not checked:
            return []
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the journal clock must return timezone-aware times")
        stamp = now.astimezone(UTC).strftime(TIME_FORMAT)
        with self._locked(exclusive=True):
            tail = self._read_tail(repair=True)
            if tail.repaired is not None:
                checked.insert(0, ("warning", tail.repaired))
            seq, prev = (0, GENESIS) if tail.head is None else tail.head
            made: list[Entry] = []
            for event, fields in checked:
                seq += 1
                h = _entry_hash(seq, stamp, event, fields, prev)
                entry = Entry(seq, stamp, event, fields, prev, h)
                if len(entry.line()) > MAX_LINE:
                    raise ValueError("journal entry too long")
                made.append(entry)
                prev = h
            self._write(made)
        return made[1:] if tail.repaired is not None else made

    def _write(self, entries: list[Entry]) -> None:
        by_segment: dict[int, list[bytes]] = {}
        for e in entries:
            by_segment.setdefault(segment_number(e.seq), []).append(e.line())
        for number, lines in by_segment.items():
            path = self.folder / segment_name(number)
            try:
                created = not path.exists()
                fd = os.open(
                    path,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
                    0o640,
                )
                try:
                    view = memoryview(b"".join(lines))
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                if created:
                    dfd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
                    try:
                        os.fsync(dfd)
                    finally:
                        os.close(dfd)
            except OSError as e:
                raise VaultError(
                    f"Could not write to the audit journal {path} ({e.strerror})."
                ) from None

    def _read_tail(self, repair: bool) -> _Tail:
        """The newest complete entry; with ``repair``, cut off a torn final line first."""
        try:
            segs = _segments(self.folder)
        except OSError as e:
            raise VaultError(
                f"The audit journal {self.folder} cannot be read ({e.strerror})."
            ) from None
        repaired: dict[str, JSONValue] | None = None
        for _, path in reversed(segs):
            try:
                with open(path, "r+b" if repair else "rb") as f:
                    line, torn = _last_line(f)
                    if torn and repair:
                        f.truncate(f.seek(0, os.SEEK_END) - len(torn))
                        os.fsync(f.fileno())
                        log.warning(
                            "journal: cut off a torn final line in %s (%d bytes)",
                            path.name,
                            len(torn),
                        )
                        repaired = {
                            "reason": "torn-line",
                            "segment": path.name,
                            "discarded_bytes": len(torn),
                            "discarded_sha256": hashlib.sha256(torn).hexdigest(),
                        }
            except OSError as e:
                raise VaultError(
                    f"The audit journal segment {path} cannot be read ({e.strerror})."
                ) from None
            if line is None:
                continue  # empty (or only a torn line): the newest entry is in an older segment
            parsed = _parse_line(line)
            if isinstance(parsed, str) or parsed.hash != parsed.expected_hash():
                raise JournalError(
                    f"The newest entry of the audit journal ({path.name}) is damaged, so no new "
                    "entry can be chained to it.",
                    hint="Run 'coldvault audit --verify' and report the result.",
                )
            return _Tail(JournalHead(parsed.seq, parsed.hash), repaired)
        return _Tail(None, repaired)


def _last_line(f: Any) -> tuple[bytes | None, bytes]:
    """(last complete line without LF or None, torn bytes after the last LF)."""
    size = f.seek(0, os.SEEK_END)
    window = 8192
    while True:
        start = max(0, size - window)
        f.seek(start)
        buf = f.read(size - start)
        cut = buf.rfind(b"\n")
        if cut < 0 and start > 0 and window < size:
            window *= 4
            continue
        if cut < 0:
            return None, buf
        torn = buf[cut + 1 :]
        begin = buf.rfind(b"\n", 0, cut)
        if begin < 0 and start > 0:
            window *= 4
            continue
        return buf[begin + 1 : cut], torn
