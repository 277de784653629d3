"""docs/cli.md keeps up with the command line (sqlite-utils' test_docs habit).

* every registered command and sub-command has a working ``--help`` and is documented, with every
  one of its options, in docs/cli.md;
* exit codes: one code per error category, every error class uses a code of the table, and the
  table of docs/cli.md lists each code with its name.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import coldvault
from coldvault import errors
from coldvault.cli.main import cli, main

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"

CATEGORIES: dict[type[errors.ColdvaultError], str] = {
    errors.UsageError: "usage or config",
    errors.ConfigError: "usage or config",
    errors.NotAvailable: "not available",
    errors.AuthenticationError: "authentication",
    errors.VaultError: "vault",
    errors.DriveError: "drive",
    errors.IntegrityError: "failure found",
}


def _commands(
    group: click.Group = cli, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    ctx = click.Context(group)
    for name in sorted(group.list_commands(ctx)):  # the top group loads its commands lazily
        command = group.get_command(ctx, name)
        assert command is not None, name
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from _commands(command, (*path, name))


ALL = list(_commands())
IDS = [" ".join(p) for p, _ in ALL]


def _doc_lines() -> list[tuple[str, bool]]:
    """Lines of docs/cli.md with a flag: is it a Markdown heading (outside code blocks)?"""
    out = []
    fenced = False
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        out.append((line, not fenced and re.match(r"#{1,6} ", line) is not None))
    return out


def section(path: tuple[str, ...]) -> str:
    """The text of docs/cli.md from the first mention of `coldvault <path>` to the next heading."""
    mention = re.compile(r"`coldvault " + re.escape(" ".join(path)) + r"(?=[ `])")
    lines = _doc_lines()
    for i, (line, _) in enumerate(lines):
        if mention.search(line):
            end = next((j for j in range(i + 1, len(lines)) if lines[j][1]), len(lines))
            return "\n".join(line for line, _ in lines[i:end])
    return ""


def test_there_are_commands() -> None:
    names = {p[0] for p, _ in ALL}
    assert {"init", "key", "drive", "ingest", "ls", "status", "daemon"} <= names


@pytest.mark.parametrize(("path", "command"), ALL, ids=IDS)
def test_help_works(path: tuple[str, ...], command: click.Command) -> None:
    result = CliRunner().invoke(cli, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output and path[-1] in result.output
    assert command.help, f"coldvault {' '.join(path)} has no help text"


@pytest.mark.parametrize(("path", "command"), ALL, ids=IDS)
def test_documented_with_every_option(path: tuple[str, ...], command: click.Command) -> None:
    text = section(path)
    assert text, f"docs/cli.md does not mention `coldvault {' '.join(path)}`"
    heading = re.compile(r"^#{2,6} `coldvault " + re.escape(" ".join(path)) + "`", re.M)
    assert heading.search(DOC.read_text()), f"docs/cli.md has no heading for {path}"
    for param in command.params:
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            assert longest in text, f"{longest} of `coldvault {' '.join(path)}` is not documented"


def test_global_options_documented() -> None:
    text = DOC.read_text()
    glob = text[text.index("## Global options") :]
    glob = glob[: glob.index("\n## ", 1)]
    for param in cli.params:
        if isinstance(param, click.Option):
            for opt in param.opts:
                assert f"`{opt}" in glob, f"global option {opt} is not documented"
    assert "COLDVAULT_CONFIG" in glob and "COLDVAULT_PASSPHRASE_FILE" in glob


def test_main_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "Usage: coldvault" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-command"]) == errors.EXIT_CODES["usage or config"]


def test_exit_codes_unique_per_category() -> None:
    codes = list(errors.EXIT_CODES.values())
    assert len(codes) == len(set(codes)), "two categories share an exit code"
    assert errors.EXIT_CODES["ok"] == 0
    for cls, name in CATEGORIES.items():
        assert cls.exit_code == errors.EXIT_CODES[name], cls
    by_code: dict[int, set[str]] = {}
    for cls, name in CATEGORIES.items():
        by_code.setdefault(cls.exit_code, set()).add(name)
    assert all(len(names) == 1 for names in by_code.values()), by_code


def _all_error_classes() -> set[type[errors.ColdvaultError]]:
    for mod in pkgutil.walk_packages(coldvault.__path__, "coldvault."):
        try:
            importlib.import_module(mod.name)
        except ImportError:  # a module whose optional dependency is missing
            continue
    found: set[type[errors.ColdvaultError]] = set()
    todo: list[type[errors.ColdvaultError]] = [errors.ColdvaultError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in found:
                found.add(sub)
                todo.append(sub)
    return found


def test_every_error_class_uses_a_documented_code() -> None:
    doc = DOC.read_text()
    valid = set(errors.EXIT_CODES.values())
    for cls in _all_error_classes():
        assert cls.exit_code in valid, f"{cls.__module__}.{cls.__name__}: {cls.exit_code}"
        base = next((b for b in cls.__mro__ if b in CATEGORIES), None)
        assert base is not None, f"{cls.__name__} derives from no error category"
        if cls.exit_code != base.exit_code:
            # A class that leaves its category's code must be named in the exit code table.
            assert f"`{cls.__name__}`" in doc, f"{cls.__name__} changes its exit code silently"


def test_exit_code_table() -> None:
    doc = DOC.read_text()
    for name, code in errors.EXIT_CODES.items():
        row = re.search(rf"^\| {code} \| `{re.escape(name)}`", doc, re.M)
        assert row, f"exit code {code} ({name}) is not in the table of docs/cli.md"
