"""The configuration file: TOML, loaded with :mod:`tomllib`, validated strictly.

Every problem is collected (unknown keys, wrong types, bad regular expressions, missing folders,
duplicate source names...) and reported at once in one :class:`ConfigFileError` whose message
names the file and, for each problem, the key path (``source[2].pattern``; ``[[source]]`` tables
are counted from 1, in file order) and what is wrong.

The result is a tree of frozen dataclasses (:class:`Config`, :class:`VaultSettings`,
:class:`RetentionSettings`, :class:`SourceConfig`) that the rest of coldvault reads.
"""

from __future__ import annotations

import datetime
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from coldvault.errors import ConfigError

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_DATE_FORMATS",
    "Config",
    "ConfigFileError",
    "ConfigProblem",
    "OnArchived",
    "RetentionSettings",
    "SourceConfig",
    "VaultSettings",
    "default_config_path",
    "load_config",
    "parse_config",
    "render_config",
]

DEFAULT_CONFIG_PATH = Path("/etc/coldvault/coldvault.toml")
CONFIG_ENV = "COLDVAULT_CONFIG"

#: Formats tried, in order, for a pattern's ``date`` group when the source gives no ``date_format``.
DEFAULT_DATE_FORMATS: tuple[str, ...] = ("%Y%m%d", "%Y-%m-%d")

OnArchived = Literal["delete", "keep"]

_SOURCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Lower bounds that keep a mistyped value from turning the daemon into a busy loop.
MIN_RESCAN_INTERVAL = 1.0
MIN_QUIET_SECONDS = 0.05


@dataclass(frozen=True)
class VaultSettings:
    """The ``[vault]`` table."""

    state_dir: Path
    copies: int = 2
    """Number of enrolled drives that must hold a verified copy before a source file may go."""
    drive_overdue_days: int = 7
    rescan_interval: float = 600.0
    """Seconds between full rescans of every source (events are only hints)."""
    quiet_seconds: float = 5.0
    """Default quiet period of the finished-file detection (a source may override it)."""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)


@dataclass(frozen=True)
class RetentionSettings:
    """The optional ``[retention]`` table, passed through to the retention module unchecked
    beyond its shape (the profile names are the retention module's business)."""

    profile: str = "cnil-2020"
    kinds: Mapping[str, str] = field(default_factory=dict)
    """Document kind -> rule name, for kinds that carry their own retention rule."""


@dataclass(frozen=True)
class SourceConfig:
    """One ``[[source]]`` table: a watched folder and the rule that maps its files to patients.

    Exactly one of ``pattern`` and ``per_patient_folders`` is normally set; a source with neither
    is allowed and sends every file to the unsorted inbox (``coldvault assign`` files them later).
    """

    name: str
    path: Path
    """Absolute, normalised (not resolved: a symlinked root is the installer's choice)."""
    pattern: re.Pattern[str] | None = None
    """Searched (``re.search``) in the path relative to ``path``, with ``/`` separators."""
    per_patient_folders: bool = False
    on_archived: OnArchived = "keep"
    kind: str | None = None
    ignore: tuple[str, ...] = ()
    """Extra glob patterns (one path component each), on top of the built-in temporary names."""
    date_format: str | None = None
    quiet_seconds: float | None = None
    """Override of ``vault.quiet_seconds`` (e.g. 20 for an SMB or FTP inbox)."""


@dataclass(frozen=True)
class Config:
    """The whole configuration, as loaded from ``path``."""

    path: Path
    vault: VaultSettings
    sources: tuple[SourceConfig, ...] = ()
    retention: RetentionSettings | None = None

    def source(self, name: str) -> SourceConfig:
        """The source called ``name``; :class:`KeyError` if there is none."""
        for src in self.sources:
            if src.name == name:
                return src
        raise KeyError(name)

    def quiet_seconds_for(self, source: SourceConfig) -> float:
        if source.quiet_seconds is not None:
            return source.quiet_seconds
        return self.vault.quiet_seconds


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong in the file: where (a key path, empty for the file itself) and what."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


class ConfigFileError(ConfigError):
    """The configuration file has one or more problems; all are listed in the message."""

    def __init__(self, path: Path | str, problems: list[ConfigProblem]) -> None:
        self.path = Path(path)
        self.problems = tuple(problems)
        n = len(self.problems)
        lines = [f"{self.path}: {n} problem{'s' if n != 1 else ''} in the configuration"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__(
            "\n".join(lines),
            hint=f"Correct {self.path} and try again.",
        )


def default_config_path() -> Path:
    """``$COLDVAULT_CONFIG`` if set and not empty, else ``/etc/coldvault/coldvault.toml``."""
    env = os.environ.get(CONFIG_ENV, "")
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: Path | str | None = None, *, check_paths: bool = True) -> Config:
    """Read and validate the configuration file.

    ``check_paths=False`` skips the checks that need the filesystem (source folders exist and are
    folders, sources do not overlap once symlinks are resolved), so ``coldvault init`` can write
    and re-read a config before the folders exist.
    """
    path = Path(path) if path is not None else default_config_path()
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(
            f"The configuration file {path} does not exist.",
            hint="Run `coldvault init`, or give the right file with --config or COLDVAULT_CONFIG.",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"The configuration path {path} is a folder, not a file.") from None
    except OSError as exc:
        raise ConfigError(
            f"The configuration file {path} cannot be read ({exc.strerror or exc})."
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(
            path, [ConfigProblem("", f"the file is not valid UTF-8 text (byte {exc.start})")]
        ) from None
    return parse_config(text, path=path, check_paths=check_paths)


def parse_config(text: str, *, path: Path | str = "<config>", check_paths: bool = True) -> Config:
    """Validate TOML ``text``; ``path`` is used in messages and kept in :attr:`Config.path`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(path, [ConfigProblem("", f"not valid TOML: {exc}")]) from None
    v = _Validator(check_paths)
    config = v.config(data, Path(path))
    if v.problems:
        raise ConfigFileError(path, v.problems)
    assert config is not None
    return config


# --- validation ------------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return "a date/time"
    return type(value).__name__


class _Validator:
    def __init__(self, check_paths: bool) -> None:
        self.check_paths = check_paths
        self.problems: list[ConfigProblem] = []

    def add(self, key: str, message: str) -> None:
        self.problems.append(ConfigProblem(key, message))

    # generic typed getters: each returns None (and records a problem) when the value is unusable

    def unknown_keys(self, table: Mapping[str, Any], allowed: tuple[str, ...], prefix: str) -> None:
        for key in table:
            if key not in allowed:
                where = f"{prefix}.{key}" if prefix else key
                self.add(where, f"unknown key (allowed here: {', '.join(allowed)})")

    def str_(self, table: Mapping[str, Any], key: str, where: str) -> str | None:
        value = table[key]
        if not isinstance(value, str):
            self.add(where, f"must be a string, not {_type_name(value)}")
            return None
        return value

    def int_(self, table: Mapping[str, Any], key: str, where: str, minimum: int) -> int | None:
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int):
            self.add(where, f"must be an integer, not {_type_name(value)}")
            return None
        if value < minimum:
            self.add(where, f"must be at least {minimum} (got {value})")
            return None
        return value

    def number(
        self, table: Mapping[str, Any], key: str, where: str, minimum: float
    ) -> float | None:
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.add(where, f"must be a number of seconds, not {_type_name(value)}")
            return None
        if not value >= minimum:  # also rejects nan
            self.add(where, f"must be at least {minimum:g} (got {value})")
            return None
        return float(value)

    def bool_(self, table: Mapping[str, Any], key: str, where: str) -> bool | None:
        value = table[key]
        if not isinstance(value, bool):
            self.add(where, f"must be true or false, not {_type_name(value)}")
            return None
        return value

    def abs_path(self, table: Mapping[str, Any], key: str, where: str) -> Path | None:
        value = self.str_(table, key, where)
        if value is None:
            return None
        if not value:
            self.add(where, "must not be empty")
            return None
        if "\0" in value:
            self.add(where, "must not contain a NUL character")
            return None
        if not os.path.isabs(value):
            self.add(where, f"must be an absolute path (starting with /), got {value!r}")
            return None
        return Path(os.path.normpath(value))

    # sections

    def config(self, data: dict[str, Any], path: Path) -> Config | None:
        self.unknown_keys(data, ("vault", "retention", "source"), "")
        vault: VaultSettings | None = None
        if "vault" not in data:
            self.add("vault", "missing: the [vault] table with at least state_dir is required")
        elif not isinstance(data["vault"], dict):
            self.add("vault", f"must be a table ([vault]), not {_type_name(data['vault'])}")
        else:
            vault = self.vault(data["vault"])
        retention = None
        if "retention" in data:
            retention = self.retention(data["retention"])
        sources: list[SourceConfig] = []
        if "source" in data:
            raw_sources = data["source"]
            if not isinstance(raw_sources, list) or not all(
                isinstance(s, dict) for s in raw_sources
            ):
                self.add("source", "must be written as [[source]] tables")
            else:
                indexed: list[tuple[int, SourceConfig]] = []
                for i, table in enumerate(raw_sources, start=1):
                    src = self.source(table, f"source[{i}]")
                    if src is not None:
                        indexed.append((i, src))
                self.cross_check_sources(raw_sources, indexed, vault)
                sources = [src for _, src in indexed]
        if vault is None:
            return None
        return Config(path=path, vault=vault, sources=tuple(sources), retention=retention)

    def vault(self, table: dict[str, Any]) -> VaultSettings | None:
        keys = (
            "state_dir",
            "copies",
            "drive_overdue_days",
            "rescan_interval",
            "quiet_seconds",
            "workers",
        )
        self.unknown_keys(table, keys, "vault")
        kwargs: dict[str, Any] = {}
        ok = True
        if "state_dir" not in table:
            self.add("vault.state_dir", "missing (the folder where coldvault keeps its state)")
            ok = False
        else:
            state_dir = self.abs_path(table, "state_dir", "vault.state_dir")
            ok &= state_dir is not None
            kwargs["state_dir"] = state_dir
        for key, minimum in (("copies", 1), ("drive_overdue_days", 1), ("workers", 1)):
            if key in table:
                value = self.int_(table, key, f"vault.{key}", minimum)
                ok &= value is not None
                kwargs[key] = value
        for key, fmin in (
            ("rescan_interval", MIN_RESCAN_INTERVAL),
            ("quiet_seconds", MIN_QUIET_SECONDS),
        ):
            if key in table:
                fvalue = self.number(table, key, f"vault.{key}", fmin)
                ok &= fvalue is not None
                kwargs[key] = fvalue
        return VaultSettings(**kwargs) if ok else None

    def retention(self, value: Any) -> RetentionSettings | None:
        if not isinstance(value, dict):
            self.add("retention", f"must be a table ([retention]), not {_type_name(value)}")
            return None
        self.unknown_keys(value, ("profile", "kinds"), "retention")
        ok = True
        profile = "cnil-2020"
        if "profile" in value:
            p = self.str_(value, "profile", "retention.profile")
            if p is None:
                ok = False
            elif not p:
                self.add("retention.profile", "must not be empty")
                ok = False
            else:
                profile = p
        kinds: dict[str, str] = {}
        if "kinds" in value:
            raw = value["kinds"]
            if not isinstance(raw, dict):
                self.add("retention.kinds", f"must be a table, not {_type_name(raw)}")
                ok = False
            else:
                for k, rule in raw.items():
                    if not isinstance(rule, str):
                        self.add(
                            f"retention.kinds.{k}",
                            f"must be a string (a rule name), not {_type_name(rule)}",
                        )
                        ok = False
                    else:
                        kinds[k] = rule
        return RetentionSettings(profile=profile, kinds=kinds) if ok else None

    def source(self, table: dict[str, Any], where: str) -> SourceConfig | None:
        keys = (
            "name",
            "path",
            "pattern",
            "per_patient_folders",
            "on_archived",
            "kind",
            "ignore",
            "date_format",
            "quiet_seconds",
        )
        self.unknown_keys(table, keys, where)
        ok = True
        kwargs: dict[str, Any] = {}
        for key in ("name", "path"):
            if key not in table:
                self.add(f"{where}.{key}", "missing")
                ok = False
        if "name" in table:
            name = self.str_(table, "name", f"{where}.name")
            if name is not None and not _SOURCE_NAME_RE.match(name):
                self.add(
                    f"{where}.name",
                    f"{name!r} is not a valid source name (letters, digits, '_', '.', '-'; "
                    "starting with a letter or digit; at most 64 characters)",
                )
                name = None
            ok &= name is not None
            kwargs["name"] = name
        if "path" in table:
            spath = self.abs_path(table, "path", f"{where}.path")
            if spath is not None and self.check_paths:
                if not spath.exists():
                    self.add(f"{where}.path", f"the folder {spath} does not exist")
                    spath = None
                elif not spath.is_dir():
                    self.add(f"{where}.path", f"{spath} is not a folder")
                    spath = None
            ok &= spath is not None
            kwargs["path"] = spath
        if "pattern" in table:
            pattern = self.pattern(table, f"{where}.pattern")
            ok &= pattern is not None
            kwargs["pattern"] = pattern
        if "per_patient_folders" in table:
            ppf = self.bool_(table, "per_patient_folders", f"{where}.per_patient_folders")
            ok &= ppf is not None
            kwargs["per_patient_folders"] = ppf
        if "pattern" in table and table.get("per_patient_folders") is True:
            self.add(
                f"{where}.per_patient_folders",
                "cannot be combined with pattern (choose one way to find the patient)",
            )
            ok = False
        if "on_archived" in table:
            oa = self.str_(table, "on_archived", f"{where}.on_archived")
            if oa is not None and oa not in ("delete", "keep"):
                self.add(f"{where}.on_archived", f'must be "delete" or "keep", not {oa!r}')
                oa = None
            ok &= oa is not None
            kwargs["on_archived"] = oa
        if "kind" in table:
            kind = self.str_(table, "kind", f"{where}.kind")
            if kind is not None and not kind.strip():
                self.add(f"{where}.kind", "must not be empty")
                kind = None
            ok &= kind is not None
            kwargs["kind"] = kind
        if "ignore" in table:
            ignore = self.ignore(table["ignore"], f"{where}.ignore")
            ok &= ignore is not None
            kwargs["ignore"] = ignore
        if "date_format" in table:
            fmt = self.date_format(table, f"{where}.date_format")
            ok &= fmt is not None
            kwargs["date_format"] = fmt
        if "quiet_seconds" in table:
            q = self.number(table, "quiet_seconds", f"{where}.quiet_seconds", MIN_QUIET_SECONDS)
            ok &= q is not None
            kwargs["quiet_seconds"] = q
        return SourceConfig(**kwargs) if ok else None

    def pattern(self, table: Mapping[str, Any], where: str) -> re.Pattern[str] | None:
        text = self.str_(table, "pattern", where)
        if text is None:
            return None
        try:
            rx = re.compile(text)
        except re.error as exc:
            self.add(where, f"not a valid regular expression: {exc}")
            return None
        if "patient" not in rx.groupindex:
            self.add(
                where,
                "has no named group `patient`: write it like (?P<patient>[0-9]+) "
                "(or use per_patient_folders = true)",
            )
            return None
        return rx

    def ignore(self, value: Any, where: str) -> tuple[str, ...] | None:
        if not isinstance(value, list):
            self.add(where, f"must be an array of glob patterns, not {_type_name(value)}")
            return None
        out: list[str] = []
        ok = True
        for i, pat in enumerate(value, start=1):
            if not isinstance(pat, str):
                self.add(f"{where}[{i}]", f"must be a string, not {_type_name(pat)}")
                ok = False
            elif not pat:
                self.add(f"{where}[{i}]", "must not be empty")
                ok = False
            elif "/" in pat:
                self.add(
                    f"{where}[{i}]",
                    f"{pat!r}: a pattern applies to one file or folder name, it cannot contain '/'",
                )
                ok = False
            else:
                out.append(pat)
        return tuple(out) if ok else None

    def date_format(self, table: Mapping[str, Any], where: str) -> str | None:
        fmt = self.str_(table, "date_format", where)
        if fmt is None:
            return None
        # A usable format writes a date that it can read back (catches "%Y%m", "YYYYMMDD", "%Q").
        probe = datetime.date(2031, 12, 24)
        try:
            back = datetime.datetime.strptime(probe.strftime(fmt), fmt).date()
        except ValueError as exc:
            self.add(where, f"{fmt!r} is not a usable strptime date format ({exc})")
            return None
        if back != probe:
            self.add(where, f"{fmt!r} does not give a full date (it needs year, month and day)")
            return None
        return fmt

    def cross_check_sources(
        self,
        tables: list[dict[str, Any]],
        sources: list[tuple[int, SourceConfig]],
        vault: VaultSettings | None,
    ) -> None:
        seen: dict[str, int] = {}
        for i, table in enumerate(tables, start=1):
            name = table.get("name")
            if isinstance(name, str):
                if name in seen:
                    self.add(
                        f"source[{i}].name",
                        f"duplicate source name {name!r} (already used by source[{seen[name]}])",
                    )
                else:
                    seen[name] = i
        # Overlapping folders would archive a file twice; a source inside the state folder (or
        # the reverse) would make the daemon archive its own spool.
        located = [(f"source[{n}].path", self._real(src.path)) for n, src in sources]
        for a in range(len(located)):
            for b in range(a + 1, len(located)):
                (ka, pa), (kb, pb) = located[a], located[b]
                if pa == pb:
                    self.add(kb, f"is the same folder as {ka}")
                elif _is_within(pa, pb) or _is_within(pb, pa):
                    self.add(kb, f"overlaps {ka} (one folder is inside the other)")
        if vault is not None:
            state = self._real(vault.state_dir)
            for key, p in located:
                if p == state or _is_within(p, state) or _is_within(state, p):
                    self.add(
                        key, "overlaps vault.state_dir (coldvault would archive its own files)"
                    )

    def _real(self, p: Path) -> Path:
        return Path(os.path.realpath(p)) if self.check_paths else p


def _is_within(inner: Path, outer: Path) -> bool:
    return inner != outer and outer in inner.parents


# --- writing a fresh configuration -----------------------------------------------------------


def _toml_str(value: str) -> str:
    """A TOML basic string (double quotes, escapes)."""
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def render_config(
    state_dir: Path | str,
    *,
    copies: int = 2,
    drive_overdue_days: int = 7,
    rescan_interval: float | None = None,
    quiet_seconds: float | None = None,
) -> str:
    """The text of a fresh configuration file, as ``coldvault init`` writes it: the ``[vault]``
    table and commented examples of sources and retention. ``load_config`` accepts it as is."""
    lines = [
        "# coldvault configuration (TOML). See `coldvault --help` and docs/ for every key.",
        "# After editing, restart the service: systemctl restart coldvault",
        "",
        "[vault]",
        "# Where coldvault keeps its keys, catalog and spool (objects waiting for drives).",
        f"state_dir = {_toml_str(str(state_dir))}",
        "# How many enrolled drives must hold a verified copy before a source file may be deleted.",
        f"copies = {int(copies)}",
        "# Warn when a drive has not been plugged in for this many days.",
        f"drive_overdue_days = {int(drive_overdue_days)}",
    ]
    if rescan_interval is not None:
        lines.append(f"rescan_interval = {float(rescan_interval)!r}")
    else:
        lines.append("# Seconds between full rescans of the source folders.")
        lines.append("# rescan_interval = 600")
    if quiet_seconds is not None:
        lines.append(f"quiet_seconds = {float(quiet_seconds)!r}")
    else:
        lines.append("# Seconds a file must stay unchanged before it is taken.")
        lines.append("# quiet_seconds = 5")
    lines += [
        "# workers = 2                   # default: the number of CPU cores",
        "",
        "# [retention]",
        '# profile = "cnil-2020"         # or "r1112-7", "prudent-30"',
        "# [retention.kinds]",
        '# accounting = "10y"',
        "",
        "# Watched folders. Add one [[source]] table per folder, then restart the service.",
        "#",
        "# [[source]]",
        '# name = "scanner"',
        '# path = "/srv/scans"',
        "# # A regular expression on the path relative to `path`, with a named group `patient`,",
        "# # and optionally `date` and `kind`. Files that match nothing go to the unsorted inbox.",
        "# pattern = '^(?P<patient>[0-9]+)_(?P<date>[0-9]{8})'",
        '# date_format = "%Y%m%d"        # default: YYYYMMDD or YYYY-MM-DD',
        '# kind = "scan"',
        '# on_archived = "delete"        # or "keep" (default); deleted once on `copies` drives',
        '# ignore = ["*.bak"]            # added to the built-in temporary names',
        "#",
        "# [[source]]",
        '# name = "exports"',
        '# path = "/srv/exports"',
        "# per_patient_folders = true    # the first folder of the path is the patient id",
        '# kind = "export"',
        "",
    ]
    return "\n".join(lines)
