"""What every command needs: the configuration, the vault, the passphrase, output helpers."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

from coldvault.errors import UsageError

if TYPE_CHECKING:
    from coldvault.catalog.db import Catalog
    from coldvault.config import Config
    from coldvault.vault import Vault


@dataclass
class AppContext:
    config_path: Path | None = None
    _config: Config | None = field(default=None, repr=False)

    def resolved_config_path(self) -> Path:
        from coldvault.config import default_config_path

        return self.config_path or Path(default_config_path())

    def config(self) -> Config:
        if self._config is None:
            from coldvault.config import load_config

            self._config = load_config(self.resolved_config_path())
        return self._config

    def vault(self) -> Vault:
        from coldvault.vault import Vault

        return Vault(Path(self.config().vault.state_dir))

    def catalog(self, vault: Vault | None = None) -> Catalog:
        from coldvault.catalog.db import Catalog

        return Catalog((vault or self.vault()).catalog_path)


pass_app = click.make_pass_decorator(AppContext, ensure=True)

passphrase_file_option = click.option(
    "--passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="COLDVAULT_PASSPHRASE_FILE",
    help="Read the passphrase from this file (for scripts; also $COLDVAULT_PASSPHRASE_FILE).",
)


def _read_secret_file(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read the passphrase file {path}: {exc.strerror}") from None
    value = data.rstrip(b"\r\n")
    if not value:
        raise UsageError(f"the passphrase file {path} is empty")
    return value


def get_passphrase(
    path: Path | None, *, prompt: str = "Passphrase", confirm: bool = False
) -> bytes:
    """The passphrase from ``--passphrase-file`` or a prompt; never from an argument."""
    if path is not None:
        return _read_secret_file(path)
    if not sys.stdin.isatty():
        raise UsageError(
            "a passphrase is needed but there is no terminal to ask for it",
            hint="use --passphrase-file or COLDVAULT_PASSPHRASE_FILE",
        )
    value = click.prompt(prompt, hide_input=True, confirmation_prompt=confirm, err=True)
    if not value:
        raise UsageError("the passphrase must not be empty")
    return str(value).encode("utf-8")


def new_passphrase(path: Path | None, prompt: str = "New passphrase") -> bytes:
    value = get_passphrase(path, prompt=prompt, confirm=True)
    if path is None and len(value) < 10:
        raise UsageError(
            "this passphrase is too short",
            hint="choose at least 10 characters, for example four unrelated words",
        )
    return value


def default_state_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/coldvault")
    import platformdirs

    return Path(platformdirs.user_data_dir("coldvault"))


def echo(message: str = "", *, err: bool = False) -> None:
    click.echo(message, err=err)
