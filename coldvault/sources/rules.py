"""Source rules: which files of a watched folder to ignore, and which patient, date and kind a
file belongs to.

Paths here are always *relative* to the source folder, with ``/`` separators, and never contain
``..`` (:func:`check_relpath`). A file that no rule maps to a patient gets ``patient=None`` and
goes to the unsorted inbox; it is never dropped.
"""

from __future__ import annotations

import datetime
import fnmatch
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from coldvault.config import DEFAULT_DATE_FORMATS, SourceConfig
from coldvault.errors import UsageError

__all__ = [
    "BUILTIN_IGNORE",
    "RuleMatch",
    "SourceRules",
    "UnsafePathError",
    "check_relpath",
    "is_ignored",
    "is_ignored_name",
    "parse_date",
]

log = logging.getLogger(__name__)

#: Names of files (and folders) that are work in progress or clutter, never documents.
#: Matched case-insensitively against every component of the relative path.
BUILTIN_IGNORE: tuple[str, ...] = (
    ".*",  # dotfiles and dot-folders: rsync/vsftpd/pure-ftpd temp files, .DS_Store, .~lock.*#
    "*.tmp",
    "*.temp",
    "*.part",
    "*.partial",
    "*.filepart",  # WinSCP
    "*.crdownload",  # Chrome
    "*.download",  # Safari
    "*.swp",
    "~$*",  # Microsoft Office owner files
    "~*.tmp",
    "Thumbs.db",
    "desktop.ini",
)


class UnsafePathError(UsageError):
    """A path that would leave the source folder (absolute, ``..``, NUL)."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"A file path was refused because it {why}.")
        self.path = path


def check_relpath(relpath: str) -> str:
    """Validate and normalise a path relative to a source folder: ``/`` separators, no empty or
    ``.`` components. Raises :class:`UnsafePathError` for an absolute path, a ``..`` component,
    a NUL character or an empty path."""
    if "\0" in relpath:
        raise UnsafePathError(relpath, "contains a NUL character")
    if relpath.startswith("/"):
        raise UnsafePathError(relpath, "is absolute")
    parts = [p for p in relpath.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise UnsafePathError(relpath, "climbs out of its folder with '..'")
    if not parts:
        raise UnsafePathError(relpath, "is empty")
    return "/".join(parts)


def _compile_globs(patterns: Iterable[str]) -> re.Pattern[str]:
    regexes = [fnmatch.translate(p.lower()) for p in patterns]
    return re.compile("|".join(f"(?:{r})" for r in regexes) if regexes else r"(?!)")


_BUILTIN_RX = _compile_globs(BUILTIN_IGNORE)


def is_ignored_name(name: str, extra: Sequence[str] = ()) -> bool:
    """Whether one file or folder name is ignored (built-in temporary names + ``extra`` globs)."""
    low = name.lower()
    if _BUILTIN_RX.match(low):
        return True
    return any(fnmatch.fnmatchcase(low, p.lower()) for p in extra)


def is_ignored(relpath: str, extra: Sequence[str] = ()) -> bool:
    """Whether any component of ``relpath`` is ignored (so a file in ``.git/`` or in
    ``upload.part/`` is ignored too)."""
    return any(is_ignored_name(part, extra) for part in relpath.split("/") if part)


def parse_date(text: str, date_format: str | None = None) -> datetime.date | None:
    """``text`` read with ``date_format``, or with the defaults (YYYYMMDD, YYYY-MM-DD);
    None when it does not parse."""
    formats = (date_format,) if date_format else DEFAULT_DATE_FORMATS
    for fmt in formats:
        try:
            return datetime.datetime.strptime(text.strip(), fmt).date()
        except ValueError:
            continue
    return None


@dataclass(frozen=True)
class RuleMatch:
    """What a source rule says about one file."""

    patient: str | None
    """External patient id, or None: the file goes to the unsorted inbox."""
    date: datetime.date | None = None
    kind: str | None = None
    groups: Mapping[str, str] = field(default_factory=dict)
    """Every named group of the pattern that matched (for rules that carry more facts)."""
    warnings: tuple[str, ...] = ()
    """Non-fatal problems (e.g. an unreadable date), worded without the file's name."""


class SourceRules:
    """The compiled ignore list and patient rule of one source."""

    def __init__(self, source: SourceConfig) -> None:
        self.source = source
        self._extra_rx = _compile_globs(source.ignore)

    def ignored_name(self, name: str) -> bool:
        low = name.lower()
        return bool(_BUILTIN_RX.match(low) or self._extra_rx.match(low))

    def ignored(self, relpath: str) -> bool:
        return any(self.ignored_name(part) for part in relpath.split("/") if part)

    def match(self, relpath: str) -> RuleMatch:
        """Patient, date and kind for the file at ``relpath`` (validated by
        :func:`check_relpath`; :class:`UnsafePathError` if it is unsafe)."""
        rel = check_relpath(relpath)
        src = self.source
        if src.pattern is not None:
            return self._match_pattern(src.pattern, rel)
        if src.per_patient_folders:
            parts = rel.split("/")
            patient = parts[0].strip() if len(parts) > 1 else ""
            return RuleMatch(patient=patient or None, kind=src.kind)
        return RuleMatch(patient=None, kind=src.kind)

    def _match_pattern(self, pattern: re.Pattern[str], rel: str) -> RuleMatch:
        src = self.source
        m = pattern.search(rel)
        if m is None:
            return RuleMatch(patient=None, kind=src.kind)
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        patient = groups.get("patient", "").strip() or None
        kind = groups.get("kind", "").strip() or src.kind
        warnings: list[str] = []
        date: datetime.date | None = None
        date_text = groups.get("date", "")
        if date_text.strip():
            date = parse_date(date_text, src.date_format)
            if date is None:
                fmts = src.date_format or " or ".join(DEFAULT_DATE_FORMATS)
                msg = (
                    f"the date found in the file's path does not read as {fmts}; "
                    "the document is archived without a date"
                )
                warnings.append(msg)
                log.warning("source %s: %s", src.name, msg)
        return RuleMatch(
            patient=patient, date=date, kind=kind, groups=groups, warnings=tuple(warnings)
        )
