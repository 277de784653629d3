"""``ingest``, ``assign``, ``ls``, ``status`` and ``daemon``."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import click

from coldvault.cli.common import AppContext, echo, get_passphrase, pass_app, passphrase_file_option
from coldvault.errors import NotAvailable, UsageError


def parse_date(value: str | None) -> date | None:
    if value is None:
        return None
    for fmt in ("%Y-%m-%d", "%d/%m/%Y", "%Y%m%d"):
        try:
            from datetime import datetime

            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    raise UsageError(f"not a date: {value!r}", hint="write dates as YYYY-MM-DD")


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--patient", "patient_id", required=True, help="The patient's id in the practice software."
)
@click.option("--date", "doc_date", help="The document's date (YYYY-MM-DD).")
@click.option("--kind", default="", help="The document kind (e.g. scan, letter, accounting).")
@pass_app
def ingest(
    app: AppContext, files: tuple[Path, ...], patient_id: str, doc_date: str | None, kind: str
) -> int:
    """Archive FILES by hand for one patient."""
    from coldvault import ingest_audit
    from coldvault.ingest import Ingestor, IngestRequest
    from coldvault.journal import Journal

    d = parse_date(doc_date)
    vault = app.vault()
    failures = 0
    with app.catalog(vault) as catalog:
        journal = Journal(vault.journal_dir)
        ingest_audit.catch_up(journal, catalog)
        ingestor = Ingestor(vault, catalog)
        try:
            requests = []
            for f in files:
                if f.is_symlink() or not f.is_file():
                    what = (
                        "a symbolic link (not followed)"
                        if f.is_symlink()
                        else "not a regular file"
                        if f.exists()
                        else "no such file"
                    )
                    echo(f"coldvault: error: {f}: {what}", err=True)
                    failures += 1
                    continue
                requests.append(
                    IngestRequest(path=f.absolute(), patient_id=patient_id, doc_date=d, kind=kind)
                )
            results = ingestor.ingest_batch(requests)
        finally:
            ingestor.close()
        archived = [r for r in results if r.doc_id]
        if archived:
            ingest_audit.journal_ingest(
                journal, catalog, [r.doc_id for r in archived if r.doc_id], source="manual"
            )
    for r in results:
        if r.error is not None:
            failures += 1
            echo(f"coldvault: error: {r.request.path.name}: {r.error.message}", err=True)
        elif r.doc_id:
            echo(f"archived {r.request.path.name} as document {r.doc_id}")
    return 1 if failures else 0


@click.command()
@click.argument("doc_id")
@click.option(
    "--patient", "patient_id", required=True, help="The patient to file the document under."
)
@passphrase_file_option
@pass_app
def assign(app: AppContext, doc_id: str, patient_id: str, passphrase_file: Path | None) -> int:
    """File a document from the unsorted inbox under a patient.

    The document was encrypted to the master key, so the passphrase is needed to re-encrypt it
    to the patient's key.
    """
    from coldvault.assign import assign_document
    from coldvault.journal import Journal

    vault = app.vault()
    master = vault.unlock(get_passphrase(passphrase_file))
    with app.catalog(vault) as catalog:
        new_doc = assign_document(vault, catalog, master, doc_id, patient_id)
        Journal(vault.journal_dir).append("assign", document=doc_id, new_document=new_doc)
        with catalog.transaction():
            catalog.mark_journaled([new_doc])
    echo(f"document {doc_id} filed as {new_doc}")
    return 0


@click.command("ls")
@click.argument("patient_id", required=False)
@click.option("--unsorted", is_flag=True, help="List the unsorted inbox.")
@click.option("--unlock", is_flag=True, help="Also show document names (asks for the passphrase).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@passphrase_file_option
@pass_app
def ls_cmd(
    app: AppContext,
    patient_id: str | None,
    unsorted: bool,
    unlock: bool,
    as_json: bool,
    passphrase_file: Path | None,
) -> int:
    """List archived documents (of one patient, or a summary of all)."""
    from coldvault.catalog.sealing import Opener

    vault = app.vault()
    with app.catalog(vault) as catalog:
        opener = None
        if unlock:
            opener = Opener(catalog.conn, [vault.unlock(get_passphrase(passphrase_file))])
        if patient_id is None and not unsorted:
            rows = catalog.conn.execute(
                "SELECT p.key_id, COUNT(d.id), "
                "MAX(COALESCE(d.doc_date, substr(d.archived_at, 1, 10))), p.sealed_id "
                "FROM patients p LEFT JOIN documents d ON d.patient = p.id "
                "AND d.purged IS NULL WHERE p.purged IS NULL GROUP BY p.id ORDER BY p.id"
            ).fetchall()
            out = [
                {"patient_ref": r[0], "documents": r[1], "latest": r[2]}
                | ({"patient": opener.open(r[3])} if opener else {})
                for r in rows
            ]
            counts = catalog.counts()
            if as_json:
                echo(json.dumps({"patients": out, "unsorted": counts["unsorted"]}, indent=2))
                return 0
            for o in out:
                who = f"  {o['patient']}" if opener else ""
                echo(
                    f"{o['patient_ref']}  {o['documents']:>6} documents  latest {o['latest']}{who}"
                )
            echo(
                f"{counts['patients']} patients, {counts['documents']} documents, "
                f"{counts['unsorted']} unsorted"
            )
            return 0
        if unsorted:
            docs = catalog.documents(unsorted=True)
        else:
            assert patient_id is not None
            row = catalog.patient_by_lookup(vault.lookup("patient", patient_id))
            if row is None:
                raise NotAvailable(f"no documents archived for patient {patient_id}")
            docs = catalog.documents(row.id)
        out = []
        for d in docs:
            item = {
                "doc_id": d.doc_id,
                "date": d.doc_date or d.archived_at[:10],
                "kind": d.kind,
                "size": d.size,
                "source": d.source,
                "copies": catalog.copies_of(d.object_path),
                "in_spool": bool((catalog.item(d.object_path) or ("", 0, "", False))[3]),
            }
            if opener is not None:
                item["name"] = opener.open(d.sealed_name)
            out.append(item)
    if as_json:
        echo(json.dumps(out, indent=2, ensure_ascii=False))
        return 0
    for o in out:
        copies = o["copies"]
        assert isinstance(copies, list)
        where = ", ".join(copies) or ("spool only" if o["in_spool"] else "nowhere")
        name = f"  {o['name']}" if "name" in o else ""
        kind = str(o["kind"] or "-")
        size = human_size(int(str(o["size"])))
        echo(f"{o['doc_id']}  {o['date']}  {kind:<10} {size:>9}  [{where}]{name}")
    echo(f"{len(out)} documents")
    return 0


COMMANDS = [ingest, assign, ls_cmd]
