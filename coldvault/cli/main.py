"""The command line: ``coldvault [--config PATH] COMMAND``. The only layer that prints.

One error boundary turns every :class:`ColdvaultError` into ``coldvault: error: ...`` plus an
optional ``hint:`` line and its exit code; anything unexpected is reported as an internal error
in one line (the traceback goes to the log at debug level), never as a raw traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import click

from coldvault import __version__
from coldvault.cli.common import AppContext
from coldvault.errors import ColdvaultError

log = logging.getLogger("coldvault")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(
        level=max(level, logging.DEBUG),
        format="coldvault: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )


#: Each command and the module (``coldvault.cli.<module>``) that defines it, imported only when
#: the command runs or help lists it: ``coldvault --version`` or one command does not pay for
#: every command's imports (the catalog's sqlite3, the drive layer, ...).
COMMAND_MODULES = {
    "init": "vault_cmd",
    "key": "vault_cmd",
    "ingest": "archive_cmd",
    "assign": "archive_cmd",
    "ls": "archive_cmd",
    "drive": "drive_cmd",
    "status": "drive_cmd",
    "daemon": "drive_cmd",
    "restore": "restore_cmd",
    "verify": "restore_cmd",
    "recover": "restore_cmd",
    "patient": "retention_cmd",
    "hold": "retention_cmd",
    "release": "retention_cmd",
    "purge": "retention_cmd",
    "audit": "audit_cmd",
}


class LazyGroup(click.Group):
    """A group whose commands are imported when first asked for (click's lazy-loading recipe)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | COMMAND_MODULES.keys())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMAND_MODULES:
            module = importlib.import_module(f"coldvault.cli.{COMMAND_MODULES[cmd_name]}")
            for command in module.COMMANDS:
                self.add_command(command)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="COLDVAULT_CONFIG",
    help="Configuration file (default: $COLDVAULT_CONFIG, else /etc/coldvault/coldvault.toml).",
)
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.version_option(__version__, prog_name="coldvault")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, verbose: int) -> None:
    """coldvault: archive a medical practice's documents, encrypted, onto offline USB drives."""
    setup_logging(verbose)
    ctx.obj = AppContext(config_path=config_path)


def report(exc: ColdvaultError) -> int:
    from coldvault.config import ConfigFileError

    message = exc.message
    if isinstance(exc, ConfigFileError) and len(exc.problems) == 1:
        # One problem: one line naming the file and the key (several: listed below the line).
        message = f"{exc.path}: {exc.problems[0]}"
    click.echo(f"coldvault: error: {message}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    return exc.exit_code


def main(argv: list[str] | None = None) -> int:
    try:
        result = cli.main(args=argv, prog_name="coldvault", standalone_mode=False)
        return int(result or 0)
    except ColdvaultError as exc:
        return report(exc)
    except click.exceptions.Abort:
        click.echo("coldvault: interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("coldvault: interrupted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return 2
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as exc:  # the last line of defence: one line, never a traceback
        log.debug("internal error", exc_info=True)
        click.echo(
            f"coldvault: internal error: {type(exc).__name__}: {exc} "
            "(this is a bug; run with -vv for details)",
            err=True,
        )
        return 70


def entry() -> None:
    sys.exit(main())
