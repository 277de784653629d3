"""``coldvault audit [--verify]``: show and verify the hash-chained journal."""

from __future__ import annotations

import json

import click

from coldvault.cli.common import AppContext, echo, pass_app


@click.command()
@click.option(
    "--verify", "check", is_flag=True, help="Check the chain; exit 1 if anything is wrong."
)
@click.option("--json", "as_json", is_flag=True, help="Entries as JSON lines.")
@click.option("--last", type=int, default=0, help="Only the last N entries.")
@pass_app
def audit(app: AppContext, check: bool, as_json: bool, last: int) -> int:
    """Show the audit journal (ingest, sync, restore, purge, holds, key changes)."""
    from coldvault.journal import Journal

    journal = Journal(app.vault().journal_dir)
    if check:
        problems = journal.verify()
        for p in problems:
            echo(f"coldvault: error: journal: {p.message}", err=True)
        bad = [p for p in problems if p.tampering]
        if bad:
            echo(f"journal: {len(bad)} problem(s): entries were edited, removed or reordered")
            return 1
        head = journal.head()
        echo(f"journal OK: {head.seq if head else 0} entries, chain intact")
        return 0
    entries = list(journal.entries())
    if last:
        entries = entries[-last:]
    for e in entries:
        if as_json:
            echo(json.dumps(e.to_json(), ensure_ascii=False))
        else:
            fields = " ".join(
                f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in e.fields.items()
            )
            echo(f"{e.seq:>6} {e.time} {e.event:<12} {fields}")
    return 0


COMMANDS = [audit]
