"""Watched source folders: patient rules, finished-file detection, the watcher.

The ingest pipeline consumes :class:`ReadyFile` objects from a :class:`SourceWatcher`; see
:mod:`coldvault.sources.settle` for what "finished" means and the safe file access helpers.
"""

from typing import TYPE_CHECKING, Any

from coldvault.sources.rules import (
    BUILTIN_IGNORE,
    RuleMatch,
    SourceRules,
    UnsafePathError,
    check_relpath,
    is_ignored,
    parse_date,
)
from coldvault.sources.settle import (
    Fingerprint,
    IsArchived,
    NotRegularFileError,
    Probe,
    Settled,
    Settler,
    lstat_beneath,
    open_beneath,
    probe_writer,
    unlink_beneath,
)

if TYPE_CHECKING:
    from coldvault.sources.watch import ReadyFile, SourceWatcher, watcher_from_config

_LAZY = {"ReadyFile", "SourceWatcher", "watcher_from_config"}


def __getattr__(name: str) -> Any:
    # The watcher pulls in watchdog (~80 ms): only import it when it is used, so commands that
    # only need the rules (``coldvault ingest``) start fast.
    if name in _LAZY:
        from coldvault.sources import watch

        return getattr(watch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BUILTIN_IGNORE",
    "Fingerprint",
    "IsArchived",
    "NotRegularFileError",
    "Probe",
    "ReadyFile",
    "RuleMatch",
    "Settled",
    "Settler",
    "SourceRules",
    "SourceWatcher",
    "UnsafePathError",
    "check_relpath",
    "is_ignored",
    "lstat_beneath",
    "open_beneath",
    "parse_date",
    "probe_writer",
    "unlink_beneath",
    "watcher_from_config",
]
