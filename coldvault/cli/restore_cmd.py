"""``restore``, ``verify`` and ``recover``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from coldvault.cli.common import (
    AppContext,
    echo,
    get_passphrase,
    new_passphrase,
    pass_app,
    passphrase_file_option,
)
from coldvault.errors import NotAvailable, UsageError

if TYPE_CHECKING:
    from coldvault import keys
    from coldvault.catalog.db import Catalog


def _progress(what: str, done: int, total: int) -> None:
    if sys.stderr.isatty() and total:
        click.echo(f"\r  {what}: {done}/{total}", nl=done >= total, err=True)


@click.command()
@click.argument("patient_id")
@click.option(
    "--to",
    "dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Folder to restore into (a sub-folder per patient).",
)
@click.option("--doc", "doc_id", help="Only this document (id or id prefix, see 'coldvault ls').")
@click.option("--since", help="Only documents dated on or after this day (YYYY-MM-DD).")
@click.option("--until", help="Only documents dated on or before this day (YYYY-MM-DD).")
@click.option("--reason", help="Why (patient request, court, colleague...): kept in the journal.")
@passphrase_file_option
@pass_app
def restore(
    app: AppContext,
    patient_id: str,
    dest: Path,
    doc_id: str | None,
    since: str | None,
    until: str | None,
    reason: str | None,
    passphrase_file: Path | None,
) -> int:
    """Decrypt a patient's documents into a folder."""
    from coldvault.cli.archive_cmd import parse_date
    from coldvault.journal import Journal
    from coldvault.restore import restore_patient

    s = parse_date(since)
    u = parse_date(until)
    vault = app.vault()
    master = vault.unlock(get_passphrase(passphrase_file))
    if reason is None and sys.stdin.isatty():
        reason = click.prompt(
            "Reason for this restore (patient request, court, colleague...; kept in the journal)",
            default="",
            show_default=False,
            err=True,
        )
    with app.catalog(vault) as catalog:
        try:
            ref, report = restore_patient(
                vault,
                catalog,
                master,
                patient_id,
                dest.absolute(),
                doc_id=doc_id,
                since=s.isoformat() if s else None,
                until=u.isoformat() if u else None,
                progress=_progress,
            )
        except NotAvailable as exc:
            purges = catalog.conn.execute("SELECT COUNT(*) FROM purges").fetchone()[0]
            if exc.hint or not purges or doc_id or since or until:
                raise
            # A purge unlinks the destroyed patients from their ids on purpose, so the vault
            # cannot tell "never archived" from "destroyed": it says both plainly.
            raise NotAvailable(
                f"{exc.message}: never archived, or destroyed by a purge",
                hint="a purge's destruction records list the destroyed files by pseudonymous "
                f"reference only: {vault.records_dir}",
            ) from None
        names = _document_names(catalog, master, [d for d, _ in report.damaged])
    Journal(vault.journal_dir).append(
        "restore",
        patient_ref=ref,
        documents=[d for d, _ in report.restored],
        damaged=[d for d, _ in report.damaged],
        unavailable=[d for d in sorted(report.unavailable)],
        reason=reason or "",
    )
    for _doc, path in report.restored:
        echo(f"restored {path}")
    for doc, what in report.damaged:
        echo(f"coldvault: error: document {doc} ({names.get(doc, '?')}): {what}", err=True)
    if report.unavailable:
        drives = sorted({d for ds in report.unavailable.values() for d in ds})
        away = [d for d in drives if d not in report.unusable]
        echo(
            f"coldvault: error: {len(report.unavailable)} document(s) are on drives that are "
            + (
                f"not plugged in: {', '.join(away) or 'none recorded'}"
                if away
                else "plugged in but cannot be used"
            ),
            err=True,
        )
        for name, why in sorted(report.unusable.items()):
            echo(f"  drive {name} cannot be used: {why}", err=True)
        if report.unusable:
            echo(
                "hint: 'coldvault drive sync' checks such a drive's copies against the catalog "
                "and writes it a new signed manifest",
                err=True,
            )
    echo(f"{len(report.restored)} document(s) restored into {report.folder}")
    if report.damaged:
        return 1
    if report.unavailable:
        return 3
    return 0


def _document_names(
    catalog: Catalog, master: keys.AnyIdentity, doc_ids: list[str]
) -> dict[str, str]:
    """The original names of documents (sealed in the catalog), for messages."""
    from coldvault.catalog.sealing import Opener

    opener = Opener(catalog.conn, [master])
    out: dict[str, str] = {}
    for d in doc_ids:
        rows = catalog.documents(doc_id=d)
        if rows:
            out[d] = opener.open(rows[0].sealed_name) or "?"
    return out


@click.command()
@click.option("--drive", "drive_name", help="Only this drive (default: every plugged-in drive).")
@click.option("--deep", is_flag=True, help="Also decrypt everything (asks for the passphrase).")
@passphrase_file_option
@pass_app
def verify(
    app: AppContext, drive_name: str | None, deep: bool, passphrase_file: Path | None
) -> int:
    """Check the copies on the drives against the catalog and the signed manifests."""
    from coldvault.drives.station import find_root
    from coldvault.journal import Journal
    from coldvault.verify import verify_drive

    vault = app.vault()
    master = vault.unlock(get_passphrase(passphrase_file)) if deep else None
    failures = 0
    checked_any = False
    with app.catalog(vault) as catalog:
        rows = catalog.drives()
        if drive_name is not None:
            rows = [r for r in rows if r.name == drive_name]
            if not rows:
                raise UsageError(f"no enrolled drive is named {drive_name!r}")
        for row in rows:
            try:
                root = find_root(catalog, row)
            except NotAvailable:
                if drive_name is not None:
                    raise
                continue
            checked_any = True
            report = verify_drive(
                vault, catalog, row, root, deep=deep, master=master, progress=_progress
            )
            for kind, paths in (
                ("missing", report.missing),
                ("damaged", report.damaged),
                ("not vouched for by the signed manifest", report.not_vouched),
                ("unknown to the catalog", report.extra),
            ):
                for p in paths:
                    echo(f"drive {row.name}: {kind}: {p}", err=True)
            if report.manifest_problem:
                echo(f"drive {row.name}: manifest: {report.manifest_problem}", err=True)
            verdict = (
                "OK"
                if report.ok
                else "PROBLEMS FOUND (damaged or missing copies are copied again at the next "
                "sync, from the spool or from another drive plugged in with this one)"
            )
            echo(f"drive {row.name}: {report.checked} file(s) checked: {verdict}")
            Journal(vault.journal_dir).append(
                "verify",
                drive=row.drive_id,
                checked=report.checked,
                ok=report.ok,
                missing=len(report.missing),
                damaged=len(report.damaged),
                not_vouched=len(report.not_vouched),
                extra=len(report.extra),
                deep=deep,
            )
            failures += 0 if report.ok else 1
    if not checked_any:
        raise NotAvailable("no enrolled drive is plugged in", hint="plug a drive in")
    return 1 if failures else 0


@click.command()
@click.option(
    "--drive",
    "drive_path",
    required=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Where the drive is mounted.",
)
@click.option(
    "--to",
    "dest",
    type=click.Path(file_okay=False, path_type=Path),
    help="Restore every document into this folder.",
)
@click.option("--rebuild", is_flag=True, help="Rebuild the state folder and catalog instead.")
@click.option("--patient", "patient_id", help="Only this patient (with --to).")
@click.option(
    "--recovery-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the recovery key (default: asks for it).",
)
@click.option("--fingerprint", help="The signing key fingerprint printed on the recovery sheet.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="With --rebuild: the new state folder (default: /var/lib/coldvault).",
)
@passphrase_file_option
@pass_app
def recover(
    app: AppContext,
    drive_path: Path,
    dest: Path | None,
    rebuild: bool,
    patient_id: str | None,
    recovery_key_file: Path | None,
    fingerprint: str | None,
    state_dir: Path | None,
    passphrase_file: Path | None,
) -> int:
    """Get everything back from one drive and the paper recovery key (no state needed)."""
    from coldvault.keys import parse_recovery_key
    from coldvault.recover import drive_fingerprint, rebuild_state, recover_documents

    if (dest is None) == (not rebuild):
        raise UsageError("give either --to DIR or --rebuild")
    marker, actual = drive_fingerprint(drive_path)
    echo(f"Drive {marker.drive_name!r} of vault {marker.vault_id}")
    echo(f"Signing key fingerprint on the drive: {actual}")
    if fingerprint is None:
        if not sys.stdin.isatty():
            raise UsageError(
                "the signing key fingerprint from the recovery sheet is needed",
                hint="pass --fingerprint as printed on the sheet",
            )
        fingerprint = click.prompt("Fingerprint printed on the recovery sheet", err=True)
    if recovery_key_file is not None:
        try:
            text = recovery_key_file.read_text()
        except OSError as exc:
            raise UsageError(f"cannot read {recovery_key_file}: {exc.strerror}") from None
    elif sys.stdin.isatty():
        text = click.prompt("Recovery key (AGE-SECRET-KEY-...)", hide_input=True, err=True)
    else:
        raise UsageError("the recovery key is needed", hint="use --recovery-key-file")
    master = parse_recovery_key(text)
    assert fingerprint is not None
    if rebuild:
        from coldvault.cli.common import default_state_dir
        from coldvault.config import render_config

        target = (state_dir or default_state_dir()).absolute()
        passphrase = new_passphrase(passphrase_file, "Choose a passphrase for this workstation")
        docs, added = rebuild_state(drive_path, master, fingerprint, target, passphrase)
        config_path = app.resolved_config_path()
        if not config_path.exists():
            config_path.parent.mkdir(parents=True, exist_ok=True)
            config_path.write_text(render_config(state_dir=str(target)))
            echo(f"Configuration written to {config_path} (add the sources again).")
        echo(f"State rebuilt in {target}: {docs} documents known, {added} found only on the drive.")
        return 0
    assert dest is not None
    report = recover_documents(
        drive_path, master, fingerprint, dest.absolute(), patient_id=patient_id, progress=_progress
    )
    for rel in report.rejected:
        echo(
            f"coldvault: error: {rel}: rejected, not vouched for by the signed manifests", err=True
        )
    for rel, what in report.damaged:
        echo(f"coldvault: error: {rel}: {what}", err=True)
    for rel in report.unmatched:
        echo(f"coldvault: error: {rel}: no key on this drive opens it", err=True)
    echo(
        f"{report.restored} document(s) of {len(report.patients)} patient folder(s) "
        f"restored into {dest}"
    )
    return 1 if (report.rejected or report.damaged or report.unmatched) else 0


COMMANDS = [restore, verify, recover]
