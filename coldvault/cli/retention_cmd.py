"""``patient set|import``, ``hold``, ``release`` and ``purge``."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import click

from coldvault.cli.archive_cmd import parse_date
from coldvault.cli.common import (
    AppContext,
    echo,
    get_passphrase,
    new_passphrase,
    pass_app,
    passphrase_file_option,
)
from coldvault.errors import ColdvaultError, UsageError


def _journal(app: AppContext, event: str, **fields: object) -> None:
    from coldvault.journal import Journal

    args: dict[str, Any] = dict(fields)
    Journal(app.vault().journal_dir).append(event, **args)


@click.group()
def patient() -> None:
    """Patient facts used by the retention rules (birth, death, last visit)."""


@patient.command("set")
@click.argument("patient_id")
@click.option("--born", help="Birth date (YYYY-MM-DD).")
@click.option("--died", help="Date of death (YYYY-MM-DD).")
@click.option("--last-visit", help="Date of the last visit (YYYY-MM-DD).")
@pass_app
def patient_set(
    app: AppContext, patient_id: str, born: str | None, died: str | None, last_visit: str | None
) -> int:
    """Record facts for one patient (stored encrypted)."""
    from coldvault.patients import Facts, fact_problems, set_facts

    facts = Facts(parse_date(born), parse_date(died), parse_date(last_visit))
    if facts == Facts():
        raise UsageError("nothing to set", hint="give --born, --died or --last-visit")
    problems = fact_problems(facts, date.today())
    if problems:
        raise UsageError(f"patient {patient_id}: {'; '.join(problems)}: nothing recorded")
    vault = app.vault()
    with app.catalog(vault) as catalog:
        set_facts(vault, catalog, [(patient_id, facts)])
    _journal(app, "patient-facts", count=1)
    echo("Facts recorded.")
    return 0


@patient.command("import")
@click.argument("csv_file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@pass_app
def patient_import(app: AppContext, csv_file: Path) -> int:
    """Import facts from a CSV export of the practice software (all or nothing).

    Columns: patient (required), born, died, last_visit; dates YYYY-MM-DD or DD/MM/YYYY;
    separator ';' or ','.
    """
    from coldvault.patients import Facts, set_facts
    from coldvault.retention.facts_csv import parse_facts_csv

    rows = parse_facts_csv(csv_file)
    vault = app.vault()
    with app.catalog(vault) as catalog:
        n = set_facts(
            vault, catalog, [(r.patient, Facts(r.born, r.died, r.last_visit)) for r in rows]
        )
    _journal(app, "patient-facts", count=n)
    echo(f"Facts recorded for {n} patient(s).")
    return 0


@click.command()
@click.argument("patient_id")
@click.option("--reason", required=True, help="Why (claim, litigation...): kept encrypted.")
@pass_app
def hold(app: AppContext, patient_id: str, reason: str) -> int:
    """Place a legal hold: the patient's file is never purged until released."""
    from coldvault.patients import place_hold

    vault = app.vault()
    with app.catalog(vault) as catalog:
        ref = place_hold(vault, catalog, patient_id, reason)
    _journal(app, "hold", patient_ref=ref)
    echo(f"Legal hold placed on patient {patient_id}.")
    return 0


@click.command()
@click.argument("patient_id")
@pass_app
def release(app: AppContext, patient_id: str) -> int:
    """Release a patient's legal hold."""
    from coldvault.patients import release_hold

    vault = app.vault()
    with app.catalog(vault) as catalog:
        ref, _ = release_hold(vault, catalog, patient_id)
    _journal(app, "release", patient_ref=ref)
    echo(f"Legal hold on patient {patient_id} released.")
    return 0


@click.command()
@click.option("--as-of", "as_of", help="Evaluate the rules on this day (default: today).")
@click.option("--execute", is_flag=True, help="Really destroy (asks for a typed confirmation).")
@click.option("--yes", is_flag=True, help="With --execute: skip the typed confirmation (scripts).")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@click.option("--operator", help="Who runs the purge (default: the login name).")
@click.option(
    "--new-passphrase-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --execute: seal the new master key with the new passphrase in this file.",
)
@passphrase_file_option
@pass_app
def purge(
    app: AppContext,
    as_of: str | None,
    execute: bool,
    yes: bool,
    as_json: bool,
    operator: str | None,
    new_passphrase_file: Path | None,
    passphrase_file: Path | None,
) -> int:
    """Show what the retention rules would destroy (dry run), or destroy it with --execute."""
    from coldvault.purge import execute as do_execute
    from coldvault.purge import make_plan, rotation_pending
    from coldvault.retention.rules import settings_from_config

    cfg = app.config()
    table = (
        {"profile": cfg.retention.profile, "kinds": dict(cfg.retention.kinds)}
        if cfg.retention
        else None
    )
    settings = settings_from_config(table)
    day = parse_date(as_of) or date.today()
    vault = app.vault()
    passphrase = get_passphrase(passphrase_file)
    masters = vault.unlock_all(passphrase)
    new_pass = new_passphrase(new_passphrase_file) if execute and new_passphrase_file else None

    def say(message: str = "") -> None:  # with --json, stdout holds the plan alone
        echo(message, err=as_json)

    with app.catalog(vault) as catalog:
        the_plan = make_plan(catalog, masters, settings, day)
        if as_json:
            echo(json.dumps(the_plan.to_dict(), indent=2))
        else:
            _print_plan(the_plan)
        _print_inbox(vault, catalog, masters, say)
        if not execute:
            if the_plan.destroy or any(True for _ in the_plan.documents_to_destroy()):
                say("\nThis was a dry run. Run again with --execute to destroy.")
            return 0
        n_docs = sum(1 for _ in the_plan.documents_to_destroy())
        if not n_docs and not rotation_pending(vault):
            say("Nothing to destroy.")
            return 3
        if not n_docs:
            say("\nFinishing the master key rotation of an interrupted purge.")
        elif not yes:
            if not sys.stdin.isatty():
                raise UsageError("confirmation needed", hint="type it at a terminal, or --yes")
            answer = click.prompt(f"Type DETRUIRE to destroy {n_docs} document(s) forever")
            if answer.strip() != "DETRUIRE":
                raise UsageError("not confirmed: nothing was destroyed")
        result = do_execute(
            vault,
            catalog,
            masters,
            the_plan,
            passphrase=passphrase,
            operator=operator or getpass.getuser(),
        )
    if new_pass is not None:
        # Only the new master gets the new passphrase; the previous one keeps the old
        # passphrase until it is destroyed (every key file is re-sealed to the new master).
        from coldvault import keys
        from coldvault.fsutil import write_atomic

        rotated = app.vault()
        write_atomic(
            rotated.identity_path,
            keys.seal_master(rotated.unlock(passphrase), rotated.info.vault_id, new_pass),
        )
    if result.json_path is not None:
        _journal(
            app,
            "purge",
            patients=result.destroyed_patients,
            documents=result.destroyed_documents,
            record=result.json_path.name,
            as_of=day.isoformat(),
            profile=the_plan.profile,
        )
    _journal(
        app,
        "key-change",
        action="master rotated by purge"
        + (" (interrupted rotation finished)" if result.resumed else ""),
    )
    if new_pass is not None:
        _journal(app, "key-change", action="passphrase")
    if result.json_path is not None:
        say(
            f"\nDestroyed {result.destroyed_documents} document(s) of "
            f"{result.destroyed_patients} patient(s)."
        )
        say(f"Destruction record: {result.html_path} (print and sign it) and {result.json_path}")
    say("\nNEW RECOVERY KEY (the old one no longer opens the vault's keys once every drive")
    say("has been plugged in; print this one, then destroy the old sheet):\n")
    say(f"    {result.new_recovery_key}\n")
    pending = _sync_plugged_drives(app, say)
    if pending:
        say(
            "Plug in every other drive so that the destruction reaches it: "
            + ", ".join(pending)
            + " ('coldvault status')."
        )
    else:
        say("Every enrolled drive has received the destruction.")
    return 0


def _sync_plugged_drives(app: AppContext, say: Callable[[str], None]) -> list[str]:
    """Carry the destruction to the drives plugged in now; returns the other drives' names.

    The daemon syncs a drive when it is plugged in: one already plugged in (or a folder drive)
    would otherwise keep the destroyed objects until it is plugged in again.
    """
    from coldvault.drives.station import Station, find_root
    from coldvault.errors import ColdvaultError, NotAvailable
    from coldvault.journal import Journal

    cfg = app.config()
    vault = app.vault()
    journal = Journal(vault.journal_dir)
    pending: list[str] = []
    with app.catalog(vault) as catalog:
        for row in catalog.drives():
            try:
                root = find_root(catalog, row)
                station = Station(
                    vault,
                    catalog,
                    copies=cfg.vault.copies,
                    source_paths={s.name: Path(s.path) for s in cfg.sources},
                    delete_sources={s.name for s in cfg.sources if s.on_archived == "delete"},
                    journal=journal.append,
                )
                report = station.sync(root)
            except NotAvailable:
                pending.append(row.name)
                continue
            except ColdvaultError as exc:
                say(f"warning: drive {row.name!r}: {exc.message}")
                pending.append(row.name)
                continue
            if report.stopped or catalog.pending_deletions(row.drive_id):
                pending.append(row.name)
            say(f"Drive {row.name!r}: {report.deleted} file(s) destroyed, {report.copied} copied.")
    return pending


def _print_plan(the_plan: object) -> None:
    from coldvault.retention.rules import PurgePlan

    assert isinstance(the_plan, PurgePlan)
    echo(f"Retention profile {the_plan.profile}, as of {the_plan.as_of.isoformat()}")
    echo(f"\nTo destroy ({len(the_plan.destroy)} patient file(s)):")
    for d in the_plan.destroy:
        echo(
            f"  {d.ref}  {len(d.documents):>4} document(s)  rule {d.rule}, "
            f"kept until {d.kept_until}"
        )
    partial = [d for d in the_plan.decisions if not d.destroy_key and d.documents_to_destroy]
    if partial:
        echo("\nDocuments expired under their own kind rule:")
        for d in partial:
            echo(f"  {d.ref}  {len(d.documents_to_destroy):>4} document(s)")
    echo(f"\nKept for a human decision ({len(the_plan.review)}):")
    for d in the_plan.review:
        echo(f"  {d.ref}  {'; '.join(d.reasons)}")
    echo(f"\nKept (not expired): {len(the_plan.keep)} patient file(s)")


def _print_inbox(
    vault: object, catalog: object, masters: list[Any], say: Callable[[str], None]
) -> None:
    """The unsorted inbox is kept: the purge re-encrypts it to the new master key."""
    from coldvault.catalog.db import Catalog
    from coldvault.inbox import locate_inbox
    from coldvault.vault import Vault

    assert isinstance(vault, Vault) and isinstance(catalog, Catalog)
    n = len(catalog.documents(unsorted=True))
    if not n:
        return
    say(f"\nUnsorted inbox: {n} document(s), kept (re-encrypted to the new master key).")
    try:
        locate_inbox(vault, catalog, masters)
    except ColdvaultError as exc:
        say(f"  To execute the purge: {exc.message}; {exc.hint}.")


COMMANDS = [patient, hold, release, purge]
