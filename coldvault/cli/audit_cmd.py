"""``coldvault audit [--verify]``: show and verify the hash-chained journal."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from coldvault.cli.common import AppContext, echo, pass_app

if TYPE_CHECKING:
    from coldvault.journal import JournalHead
    from coldvault.vault import Vault


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

    vault = app.vault()
    journal = Journal(vault.journal_dir)
    if check:
        anchor, drive_name = _anchor(app, vault)
        problems = journal.verify(anchor)
        for p in problems:
            echo(f"coldvault: error: journal: {p.message}", err=True)
        bad = [p for p in problems if p.tampering]
        if bad:
            echo(f"journal: {len(bad)} problem(s): entries were edited, removed or reordered")
            return 1
        head = journal.head()
        echo(f"journal OK: {head.seq if head else 0} entries, chain intact")
        if anchor is not None:
            echo(f"entry {anchor.seq} matches the signed manifest of drive {drive_name!r}")
        else:
            echo("(plug in a drive to check that no newest entries were cut off)")
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


def _anchor(app: AppContext, vault: Vault) -> tuple[JournalHead | None, str | None]:
    """The newest journal head a plugged-in drive's signed manifest records, and the drive.

    A hash chain alone does not show that its newest entries were cut off; the head each sync
    signs into the drive's manifest does.
    """
    from coldvault.drives.station import Station, find_root
    from coldvault.errors import ColdvaultError
    from coldvault.journal import JournalHead

    best: JournalHead | None = None
    name: str | None = None
    with app.catalog(vault) as catalog:
        station = Station(vault, catalog)
        for row in catalog.drives():
            try:
                vouched = station.vouched(find_root(catalog, row), row)
            except ColdvaultError:
                continue  # not plugged in, or its manifests fail: 'coldvault verify' says so
            if vouched is None or vouched.journal_head is None:
                continue
            seq, digest = vouched.journal_head
            if best is None or seq > best.seq:
                best, name = JournalHead(seq, digest), row.name
    return best, name
