"""``coldvault drive enroll|list|sync|eject`` and ``coldvault status``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from coldvault.catalog.db import DriveRow
from coldvault.cli.archive_cmd import human_size
from coldvault.cli.common import AppContext, echo, pass_app
from coldvault.errors import NotAvailable, UsageError


def _journal(app: AppContext, event: str, **fields: Any) -> None:
    from coldvault.journal import Journal

    Journal(app.vault().journal_dir).append(event, **fields)


@click.group()
def drive() -> None:
    """Enroll, list, sync and eject the USB drives that hold the archive."""


@drive.command()
@click.argument("target")
@click.option("--name", help="A name to recognise the drive by (e.g. 'Lundi', 'Coffre').")
@pass_app
def enroll(app: AppContext, target: str, name: str | None) -> int:
    """Enroll a drive: a mounted drive's folder, a block device, or a plain folder."""
    from coldvault.drives.events import probe_filesystem
    from coldvault.drives.mounts import find_mount, mount_for_path
    from coldvault.drives.station import enroll as do_enroll

    vault = app.vault()
    fs_uuid = label = serial = None
    is_directory = True
    root = Path(target)
    if target.startswith("/dev/"):
        props = probe_filesystem(target)
        fs_uuid = props.get("ID_FS_UUID")
        label = props.get("ID_FS_LABEL")
        serial = props.get("ID_SERIAL_SHORT")
        m = find_mount(devnode=target)
        if m is None:
            raise NotAvailable(
                f"{target} is not mounted",
                hint="mount it (or plug it in on the desktop) and enroll its folder",
            )
        root = Path(m.mountpoint)
        is_directory = False
    elif root.is_dir():
        try:
            m = mount_for_path(root)
            if m.mountpoint == os.path.realpath(root) and m.source.startswith("/dev/"):
                props = probe_filesystem(m.source)
                fs_uuid = props.get("ID_FS_UUID")
                label = props.get("ID_FS_LABEL")
                serial = props.get("ID_SERIAL_SHORT")
                is_directory = fs_uuid is None
        except (OSError, ValueError):
            pass
    else:
        raise UsageError(f"{target} is neither a folder nor a device")
    name = name or label or root.name or "drive"
    with app.catalog(vault) as catalog:
        row = do_enroll(
            vault,
            catalog,
            root.absolute(),
            name,
            fs_uuid=fs_uuid,
            label=label,
            serial=serial,
            is_directory=is_directory,
        )
    _journal(app, "drive-enroll", drive=row.drive_id, fs_uuid=fs_uuid)
    kind = "folder" if is_directory else f"filesystem {fs_uuid}"
    echo(f"Drive {name!r} enrolled ({kind}). Run 'coldvault drive sync {name}' to fill it.")
    return 0


@drive.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def list_cmd(app: AppContext, as_json: bool) -> int:
    """Show each drive: when it was last seen, what it holds and what it lacks."""
    from coldvault.status import compute_status

    cfg = app.config()
    with app.catalog() as catalog:
        st = compute_status(
            catalog, overdue_days=cfg.vault.drive_overdue_days, copies=cfg.vault.copies
        )
    if as_json:
        echo(json.dumps([d.__dict__ for d in st.drives], indent=2))
        return 0
    if not st.drives:
        echo("No drive enrolled yet: 'coldvault drive enroll /media/...'.")
        return 0
    for d in st.drives:
        flag = "  OVERDUE" if d.overdue else ""
        echo(
            f"{d.name:<16} last seen {d.last_seen or 'never':<26} holds {d.items} files "
            f"({human_size(d.bytes)}), lacks {d.lacking}{flag}"
        )
    return 0


def _select(app: AppContext, name: str | None) -> list[tuple[DriveRow, Path]]:
    from coldvault.drives.station import find_root

    with app.catalog() as catalog:
        rows = catalog.drives()
        if name is not None:
            rows = [r for r in rows if r.name == name]
            if not rows:
                raise UsageError(f"no enrolled drive is named {name!r}")
        found = []
        for r in rows:
            try:
                found.append((r, find_root(catalog, r)))
            except NotAvailable:
                if name is not None:
                    raise
    if not found:
        raise NotAvailable("no enrolled drive is plugged in", hint="plug a drive in")
    return found


@drive.command()
@click.argument("name", required=False)
@pass_app
def sync(app: AppContext, name: str | None) -> int:
    """Copy what is pending to the plugged-in drive(s), verify, and say when to remove them."""
    from coldvault.drives.station import Station
    from coldvault.journal import Journal

    cfg = app.config()
    vault = app.vault()
    journal = Journal(vault.journal_dir)
    status = 0
    for row, root in _select(app, name):
        with app.catalog(vault) as catalog:
            station = Station(
                vault,
                catalog,
                copies=cfg.vault.copies,
                source_paths={s.name: Path(s.path) for s in cfg.sources},
                delete_sources={s.name for s in cfg.sources if s.on_archived == "delete"},
                progress=_progress,
                journal=journal.append,
            )
            report = station.sync(root)
        dname = report.drive
        echo(
            f"Drive {dname!r}: {report.copied} file(s) copied and verified "
            f"({human_size(report.bytes)}), {report.deleted} deleted."
        )
        for f in report.failed:
            echo(f"coldvault: error: {f}: could not be copied or verified", err=True)
        if report.elsewhere:
            echo(
                f"Drive {dname!r} lacks {report.elsewhere} file(s) that only other drives hold "
                "(a copy found damaged or missing): plug one of them in together with this one "
                "and sync again."
            )
        if report.stopped:
            echo(f"coldvault: error: the copy stopped: {report.stopped}", err=True)
            echo("hint: nothing is lost; plug the drive in again to resume", err=True)
            status = 6
            continue
        if report.failed:
            status = 1
            continue
        journal.append("drive-done", drive=row.drive_id, copied=report.copied)
        if row.is_directory:
            echo(f"Drive {dname!r} is up to date: you can remove the drive.")
        else:
            echo(
                f"Drive {dname!r} is up to date: run 'coldvault drive eject {dname}', "
                "then you can remove the drive."
            )
    return status


def _progress(what: str, done: int, total: int) -> None:
    click.echo(f"\r  {what}: {done}/{total}", nl=done >= total, err=True)


@drive.command()
@click.argument("name", required=False)
@pass_app
def eject(app: AppContext, name: str | None) -> int:
    """Unmount (and power off) a drive so that it can be removed safely."""
    from coldvault.drives.station import eject as eject_drive

    for row, root in _select(app, name):
        rname = row.name
        fs_uuid = row.fs_uuid
        if row.is_directory or not fs_uuid:
            echo(f"Drive {rname!r} is a folder: nothing to eject.")
            continue
        eject_drive(fs_uuid, root)
        _journal(app, "drive-eject", drive=row.drive_id)
        echo(f"Drive {rname!r}: you can remove the drive now.")
    return 0


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_app
def status(app: AppContext, as_json: bool) -> int:
    """Pending documents, drives and when each was last seen, warnings."""
    from coldvault.status import compute_status

    cfg = app.config()
    with app.catalog() as catalog:
        st = compute_status(
            catalog, overdue_days=cfg.vault.drive_overdue_days, copies=cfg.vault.copies
        )
    if as_json:
        echo(json.dumps(st.to_dict(), indent=2))
        return 0
    echo(
        f"{st.patients} patients, {st.documents} documents archived, "
        f"{st.unsorted} in the unsorted inbox"
    )
    echo(f"Spool (waiting for drives): {st.spool_items} files, {human_size(st.spool_bytes)}")
    for src, n, b in st.pending_by_source:
        echo(f"  pending from {src}: {n} documents, {human_size(b)}")
    for d in st.drives:
        echo(
            f"Drive {d.name}: last seen {d.last_seen or 'never'}, lacks {d.lacking} files"
            + ("  (OVERDUE)" if d.overdue else "")
        )
    for w in st.warnings:
        echo(f"warning: {w}")
    return 0


@click.command()
@pass_app
def daemon(app: AppContext) -> int:
    """Run the archiving service in the foreground (for systemd)."""
    from coldvault.daemon import Daemon

    return Daemon(app.config()).run()


COMMANDS = [drive, status, daemon]
