"""``coldvault init`` and ``coldvault key ...``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from coldvault.cli.common import (
    AppContext,
    default_state_dir,
    echo,
    get_passphrase,
    new_passphrase,
    pass_app,
    passphrase_file_option,
)
from coldvault.errors import ConfigError, VaultError

RECOVERY_SHEET = """\
================================================================================
  COLDVAULT RECOVERY SHEET - print this page and keep it offline, in a safe.
================================================================================
  Vault:        {vault_id}
  Created:      {created}
  Key type:     {kind}

  RECOVERY KEY (opens every archived document):

    {recovery_key}

  SIGNING KEY FINGERPRINT (checked by 'coldvault recover'):

    {fingerprint}

  Anyone holding this sheet and one of the vault's USB drives can read every
  archived patient document. Store it like the practice's most sensitive paper.
  To recover on a new machine: coldvault recover --drive /media/... --to DIR
  (or by hand with age, zstd and tar: see docs/recovery.md).
================================================================================
"""


@click.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the vault keeps its keys, spool and catalog (default: /var/lib/coldvault).",
)
@click.option(
    "--classic", is_flag=True, help="X25519 keys (older age tools) instead of post-quantum."
)
@passphrase_file_option
@pass_app
def init(
    app: AppContext, state_dir: Path | None, classic: bool, passphrase_file: Path | None
) -> None:
    """Create a vault: configuration, state folder, keys; print the recovery sheet."""
    from coldvault.config import render_config
    from coldvault.vault import Vault

    config_path = app.resolved_config_path()
    if config_path.exists():
        raise ConfigError(
            f"{config_path} already exists; coldvault will not overwrite it",
            hint="use --config to write a new configuration elsewhere",
        )
    state_dir = (state_dir or default_state_dir()).absolute()
    if (state_dir / "vault.json").exists():
        raise VaultError(f"a vault already exists in {state_dir}; coldvault will not overwrite it")
    passphrase = new_passphrase(passphrase_file, "Choose the vault passphrase")
    try:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        with open(config_path, "x", encoding="utf-8") as f:
            f.write(render_config(state_dir=str(state_dir)))
    except OSError as exc:
        raise ConfigError(f"cannot write {config_path}: {exc.strerror}") from None
    created = Vault.create(state_dir, passphrase, classic=classic)
    info = created.vault.info
    _journal(created.vault, "key-change", action="init", post_quantum=info.post_quantum)
    echo(f"Configuration written to {config_path}")
    echo(f"Vault created in {state_dir}")
    echo()
    echo(
        RECOVERY_SHEET.format(
            vault_id=info.vault_id,
            created=info.created,
            kind=_kind(info.post_quantum),
            recovery_key=created.recovery_key,
            fingerprint=created.fingerprint,
        )
    )
    echo("Next: add your scanner and export folders as [[source]] sections in the configuration,")
    echo("then enroll a USB drive with 'coldvault drive enroll'.")


def _journal(vault: object, event: str, **fields: Any) -> None:
    from coldvault.journal import Journal
    from coldvault.vault import Vault

    assert isinstance(vault, Vault)
    Journal(vault.journal_dir).append(event, **fields)


@click.group()
def key() -> None:
    """Vault keys: show the public recipient, change the passphrase, print the recovery sheet."""


@key.command("show-recipient")
@pass_app
def show_recipient(app: AppContext) -> None:
    """Print the vault's public master recipient (age1...)."""
    echo(app.vault().info.master_recipient)


@key.command("passwd")
@passphrase_file_option
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="COLDVAULT_NEW_PASSPHRASE_FILE",
    help="Read the new passphrase from this file (for scripts).",
)
@pass_app
def passwd(app: AppContext, passphrase_file: Path | None, new_passphrase_file: Path | None) -> None:
    """Change the passphrase (re-encrypts only the identity file)."""
    vault = app.vault()
    old = get_passphrase(passphrase_file, prompt="Current passphrase")
    vault.unlock(old)  # a wrong passphrase stops here, nothing changed
    new = new_passphrase(new_passphrase_file)
    vault.change_passphrase(old, new)
    _journal(vault, "key-change", action="passphrase")
    echo("Passphrase changed.")


@key.command("recovery-sheet")
@passphrase_file_option
@pass_app
def recovery_sheet(app: AppContext, passphrase_file: Path | None) -> None:
    """Print the recovery sheet again (the passphrase is asked): after a lost sheet, or a
    purge stopped before it could show its new recovery key."""
    from coldvault.signing import VerifyKey

    vault = app.vault()
    master = vault.unlock(get_passphrase(passphrase_file))
    info = vault.info
    _journal(vault, "key-change", action="recovery sheet printed")
    echo(
        RECOVERY_SHEET.format(
            vault_id=info.vault_id,
            created=info.created,
            kind=_kind(info.post_quantum),
            recovery_key=str(master),
            fingerprint=VerifyKey.from_text(info.verify_key).fingerprint(),
        )
    )
    echo("Destroy any older recovery sheet of this vault once this one is printed.")


def _kind(post_quantum: bool) -> str:
    return "post-quantum hybrid (mlkem768x25519)" if post_quantum else "X25519 (classic)"


COMMANDS = [init, key]
