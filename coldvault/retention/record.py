"""The destruction record (registre de destruction) a purge leaves behind.

A private practice keeps a signed register of what it destroyed instead of an archives visa. The
record is one :class:`DestructionRecord`, rendered two ways:

* :func:`render_json` -- the JSON twin: canonical (sorted keys, sorted lists, two-space indent,
  UTF-8, final newline), with ``"format"`` and ``"version"`` fields, so the same record always
  gives the same bytes; :func:`load_json` reads it back and checks it.
* :func:`render_html` -- a self-contained printable page (no script, no external resource; print
  CSS for A4), in French with English subtitles, with a signature block for the doctor. It prints
  the SHA-256 of the JSON twin, so the signed paper vouches for the file: write the twin exactly as
  :func:`render_json` returns it, UTF-8 encoded, and ``sha256sum`` matches :func:`json_sha256`.

Patients appear only under their pseudonymous reference; no name, no external id. Everything
taken from the record is escaped in the HTML.

Nothing here writes files; the purge command does.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Literal

from coldvault.errors import IntegrityError

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "DestroyedPatient",
    "DestructionRecord",
    "RecordFormatError",
    "json_sha256",
    "load_json",
    "render_html",
    "render_json",
    "to_dict",
]

FORMAT = "coldvault-destruction-record"
FORMAT_VERSION = 1

_HASH_RE = re.compile(r"[0-9a-f]{64}")

Scope = Literal["patient", "documents"]
SCOPES: tuple[str, ...] = ("patient", "documents")


class RecordFormatError(IntegrityError):
    """A destruction record is malformed, edited or from a newer coldvault."""


def _strings(values: Iterable[str], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        raise RecordFormatError(f"The destruction record's {what} must be a list.")
    out = tuple(values)
    if not all(isinstance(v, str) for v in out):
        raise RecordFormatError(f"The destruction record's {what} must be texts.")
    return tuple(sorted(out))


@dataclass(frozen=True)
class DestroyedPatient:
    """What was destroyed for one patient.

    ``scope`` is ``"patient"`` when the whole file went and the patient key was crypto-shredded,
    ``"documents"`` when only some documents expired under their kind rule (the key survives).
    ``object_hashes`` are the SHA-256 (hex) of the destroyed objects' ciphertext, as in the signed
    manifests. Lists are kept sorted so the record has one canonical form.
    """

    ref: str
    document_count: int
    object_hashes: tuple[str, ...]
    drives_confirmed: tuple[str, ...] = ()
    drives_pending: tuple[str, ...] = ()
    scope: Scope = "patient"
    rule: str = ""
    kept_until: date | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.ref, str) or not self.ref:
            raise RecordFormatError("A destruction record entry has no patient reference.")
        if (
            not isinstance(self.document_count, int)
            or isinstance(self.document_count, bool)
            or self.document_count < 0
        ):
            raise RecordFormatError("A destruction record entry has an invalid document count.")
        hashes = _strings(self.object_hashes, "object hashes")
        bad = [h for h in hashes if not _HASH_RE.fullmatch(h)]
        if bad:
            raise RecordFormatError(
                "A destruction record entry has an object hash that is not 64 lowercase hex digits."
            )
        object.__setattr__(self, "object_hashes", hashes)
        object.__setattr__(self, "drives_confirmed", _strings(self.drives_confirmed, "drives"))
        object.__setattr__(self, "drives_pending", _strings(self.drives_pending, "drives"))
        if self.scope not in SCOPES:
            raise RecordFormatError(f"Unknown destruction scope {self.scope!r}.")
        if not isinstance(self.rule, str):
            raise RecordFormatError("A destruction record entry's rule must be a text.")
        if self.kept_until is not None and (
            not isinstance(self.kept_until, date) or isinstance(self.kept_until, datetime)
        ):
            raise RecordFormatError("A destruction record entry's kept_until must be a date.")


@dataclass(frozen=True)
class DestructionRecord:
    """One purge's destruction record. ``created`` is when it was written (timezone-aware
    preferred), ``as_of`` the date the retention rules were evaluated on."""

    vault_id: str
    created: datetime
    operator: str
    profile: str
    as_of: date
    patients: tuple[DestroyedPatient, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("vault_id", "operator", "profile"):
            if not isinstance(getattr(self, name), str):
                raise RecordFormatError(f"The destruction record's {name} must be a text.")
        if not isinstance(self.created, datetime):
            raise RecordFormatError("The destruction record's creation time must be a datetime.")
        if not isinstance(self.as_of, date) or isinstance(self.as_of, datetime):
            raise RecordFormatError("The destruction record's as-of date must be a date.")
        patients = tuple(self.patients)
        if not all(isinstance(p, DestroyedPatient) for p in patients):
            raise RecordFormatError("The destruction record's patients are malformed.")
        patients = tuple(sorted(patients, key=lambda p: (p.ref, p.scope)))
        keys = [(p.ref, p.scope) for p in patients]
        if len(set(keys)) != len(keys):
            raise RecordFormatError("A patient appears twice in the destruction record.")
        object.__setattr__(self, "patients", patients)

    @property
    def document_count(self) -> int:
        return sum(p.document_count for p in self.patients)

    @property
    def object_count(self) -> int:
        return sum(len(p.object_hashes) for p in self.patients)

    @property
    def drives_pending(self) -> tuple[str, ...]:
        """Every drive that has not confirmed the erasure of everything yet."""
        return tuple(sorted({d for p in self.patients for d in p.drives_pending}))


# --- JSON ---------------------------------------------------------------------------------------


def to_dict(record: DestructionRecord) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "vault_id": record.vault_id,
        "created": record.created.isoformat(),
        "operator": record.operator,
        "profile": record.profile,
        "as_of": record.as_of.isoformat(),
        "patients": [
            {
                "ref": p.ref,
                "scope": p.scope,
                "rule": p.rule,
                "kept_until": p.kept_until.isoformat() if p.kept_until else None,
                "document_count": p.document_count,
                "object_hashes": list(p.object_hashes),
                "drives_confirmed": list(p.drives_confirmed),
                "drives_pending": list(p.drives_pending),
            }
            for p in record.patients
        ],
        "totals": {
            "patients": len({p.ref for p in record.patients}),
            "documents": record.document_count,
            "objects": record.object_count,
        },
    }


def render_json(record: DestructionRecord) -> str:
    """The canonical JSON twin (text; encode it as UTF-8)."""
    return json.dumps(to_dict(record), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def json_sha256(record: DestructionRecord) -> str:
    """SHA-256 (hex) of the JSON twin's UTF-8 bytes, as printed on the HTML page."""
    return hashlib.sha256(render_json(record).encode("utf-8")).hexdigest()


_TOP_KEYS = {
    "format",
    "version",
    "vault_id",
    "created",
    "operator",
    "profile",
    "as_of",
    "patients",
    "totals",
}
_PATIENT_KEYS = {
    "ref",
    "scope",
    "rule",
    "kept_until",
    "document_count",
    "object_hashes",
    "drives_confirmed",
    "drives_pending",
}


def _require(obj: Mapping[str, Any], keys: set[str], where: str) -> None:
    missing, extra = keys - set(obj), set(obj) - keys
    if missing or extra:
        parts = []
        if missing:
            parts.append("missing " + ", ".join(sorted(missing)))
        if extra:
            parts.append("unexpected " + ", ".join(sorted(extra)))
        raise RecordFormatError(
            f"The destruction record is malformed ({where}: {'; '.join(parts)})."
        )


def _iso_date(value: Any, where: str) -> date:
    try:
        if not isinstance(value, str):
            raise ValueError
        return date.fromisoformat(value)
    except ValueError:
        raise RecordFormatError(f"The destruction record has an invalid date in {where}.") from None


def load_json(data: str | bytes) -> DestructionRecord:
    """Read a JSON twin back. Raises :class:`RecordFormatError` if it is malformed, if its totals
    do not match its entries (an edited record), or if a newer coldvault wrote it."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise RecordFormatError("The destruction record is not valid JSON.") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise RecordFormatError("This file is not a coldvault destruction record.")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RecordFormatError("The destruction record has an invalid format version.")
    if version > FORMAT_VERSION:
        raise RecordFormatError(
            f"The destruction record uses format version {version}, newer than this coldvault"
            f" understands ({FORMAT_VERSION}).",
            hint="Read it with a newer coldvault.",
        )
    _require(obj, _TOP_KEYS, "record")
    try:
        created = datetime.fromisoformat(obj["created"])
    except (TypeError, ValueError):
        raise RecordFormatError("The destruction record has an invalid creation time.") from None
    raw_patients = obj["patients"]
    if not isinstance(raw_patients, list):
        raise RecordFormatError("The destruction record's patients must be a list.")
    patients = []
    for i, p in enumerate(raw_patients):
        if not isinstance(p, dict):
            raise RecordFormatError(f"The destruction record's entry {i + 1} is malformed.")
        _require(p, _PATIENT_KEYS, f"entry {i + 1}")
        for key in ("object_hashes", "drives_confirmed", "drives_pending"):
            if not isinstance(p[key], list):
                raise RecordFormatError(f"The destruction record's entry {i + 1} is malformed.")
        kept = p["kept_until"]
        patients.append(
            DestroyedPatient(
                ref=p["ref"],
                document_count=p["document_count"],
                object_hashes=tuple(p["object_hashes"]),
                drives_confirmed=tuple(p["drives_confirmed"]),
                drives_pending=tuple(p["drives_pending"]),
                scope=p["scope"],
                rule=p["rule"],
                kept_until=None if kept is None else _iso_date(kept, f"entry {i + 1}"),
            )
        )
    record = DestructionRecord(
        vault_id=obj["vault_id"],
        created=created,
        operator=obj["operator"],
        profile=obj["profile"],
        as_of=_iso_date(obj["as_of"], "as_of"),
        patients=tuple(patients),
    )
    if obj["totals"] != to_dict(record)["totals"]:
        raise RecordFormatError(
            "The destruction record's totals do not match its entries: it was edited or damaged."
        )
    return record


# --- HTML ---------------------------------------------------------------------------------------

_CSS = """
@page { size: A4; margin: 14mm 12mm 16mm 12mm; }
* { box-sizing: border-box; }
body { font-family: "DejaVu Sans", "Liberation Sans", Arial, sans-serif; font-size: 10pt;
       color: #000; background: #fff; margin: 0 auto; max-width: 200mm; padding: 6mm; }
h1 { font-size: 16pt; margin: 0 0 1mm 0; }
h2 { font-size: 12pt; margin: 6mm 0 2mm 0; }
.en { color: #444; font-style: italic; font-weight: normal; font-size: 0.85em; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #000; padding: 1.2mm 1.6mm; vertical-align: top; text-align: left; }
th { background: #eee; }
thead { display: table-header-group; }
tr { break-inside: avoid; page-break-inside: avoid; }
table.meta th { width: 42%; }
.num { text-align: right; white-space: nowrap; }
.hash { font-family: "DejaVu Sans Mono", "Liberation Mono", monospace; font-size: 6.8pt;
        word-break: break-all; }
.warn { border: 2px solid #000; padding: 2mm; margin: 3mm 0; font-weight: bold; }
.signature { break-inside: avoid; page-break-inside: avoid; margin-top: 8mm; }
.signature td { height: 32mm; width: 33%; }
.signature th { font-weight: normal; }
footer { margin-top: 6mm; font-size: 8pt; color: #444; }
@media print {
  body { padding: 0; max-width: none; }
  th { background: #eee !important; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""

_SCOPE_TEXT = {
    "patient": (
        "Dossier entier, clé détruite",
        "whole file, key destroyed",
    ),
    "documents": (
        "Documents seuls (règle par type), clé conservée",
        "documents only (kind rule), key kept",
    ),
}


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _bi(fr: str, en: str) -> str:
    """French text with its English subtitle (both escaped)."""
    return f'{_e(fr)}<br><span class="en">{_e(en)}</span>'


def _lines(values: Iterable[str], css: str = "") -> str:
    items = [_e(v) for v in values]
    if not items:
        return "&#8212;"
    cls = f' class="{css}"' if css else ""
    return "<br>".join(f"<span{cls}>{v}</span>" for v in items)


def render_html(record: DestructionRecord) -> str:
    """A self-contained printable page (French, English subtitles). Every value is escaped."""
    created = record.created.strftime("%Y-%m-%d %H:%M:%S %Z").strip()
    meta_rows = [
        (("Coffre", "Vault"), _e(record.vault_id)),
        (("Date de la destruction", "Date of destruction"), _e(created)),
        (("Opérateur", "Operator"), _e(record.operator)),
        (("Profil de conservation", "Retention profile"), _e(record.profile)),
        (("Date de référence des durées", "Retention evaluated as of"), _e(record.as_of)),
        (
            ("Méthode", "Method"),
            _bi(
                "Effacement cryptographique (NIST SP 800-88) : clés du patient détruites,"
                " objets chiffrés supprimés de chaque disque.",
                "Cryptographic erasure: patient keys destroyed, encrypted objects deleted"
                " from every drive.",
            ),
        ),
        (
            ("Patients / documents / objets", "Patients / documents / objects"),
            _e(
                f"{len({p.ref for p in record.patients})} / {record.document_count}"
                f" / {record.object_count}"
            ),
        ),
        (
            ("Empreinte SHA-256 du fichier JSON jumeau", "SHA-256 of the JSON twin"),
            f'<span class="hash">{_e(json_sha256(record))}</span>',
        ),
    ]
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="fr">',
        "<head>",
        '<meta charset="utf-8">',
        f"<title>Registre de destruction / Destruction record &#8212; {_e(record.vault_id)}"
        f" &#8212; {_e(record.as_of)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        '<h1>Registre de destruction <span class="en">/ Destruction record</span></h1>',
        '<table class="meta"><tbody>',
    ]
    for (fr, en), value in meta_rows:
        out.append(f"<tr><th>{_bi(fr, en)}</th><td>{value}</td></tr>")
    out.append("</tbody></table>")

    pending = record.drives_pending
    if pending:
        out.append(
            '<p class="warn">'
            + _bi(
                "Effacement pas encore confirmé sur : " + ", ".join(pending),
                "Erasure not yet confirmed on: " + ", ".join(pending),
            )
            + "</p>"
        )

    out.append(f"<h2>{_bi('Dossiers détruits', 'Destroyed records')}</h2>")
    if not record.patients:
        out.append(f"<p>{_bi('Aucune destruction.', 'Nothing was destroyed.')}</p>")
    else:
        headers = [
            ("N°", "No."),
            ("Référence patient (pseudonyme)", "Patient reference (pseudonymous)"),
            ("Documents", "Documents"),
            ("Étendue et règle", "Scope and rule"),
            ("Empreintes SHA-256 des objets", "Object SHA-256 hashes"),
            ("Disques confirmés", "Drives confirmed"),
            ("Disques en attente", "Drives pending"),
        ]
        out.append("<table><thead><tr>")
        out.extend(f"<th>{_bi(fr, en)}</th>" for fr, en in headers)
        out.append("</tr></thead><tbody>")
        for n, p in enumerate(record.patients, 1):
            fr, en = _SCOPE_TEXT[p.scope]
            rule = _bi(fr, en)
            if p.rule:
                rule += f"<br>{_e(p.rule)}"
            if p.kept_until:
                until = p.kept_until.isoformat()
                rule += f"<br>{_bi('conservé jusqu’au ' + until, 'kept until ' + until)}"
            out.append(
                "<tr>"
                f'<td class="num">{n}</td>'
                f'<td class="hash">{_e(p.ref)}</td>'
                f'<td class="num">{p.document_count}</td>'
                f"<td>{rule}</td>"
                f"<td>{_lines(p.object_hashes, 'hash')}</td>"
                f"<td>{_lines(p.drives_confirmed)}</td>"
                f"<td>{_lines(p.drives_pending)}</td>"
                "</tr>"
            )
        out.append("</tbody></table>")

    out.append('<table class="signature"><thead><tr>')
    sign = _bi("Nom, date, signature du médecin", "Name, date, signature of the physician")
    out.append(f'<th colspan="3">{sign}</th>')
    out.append("</tr></thead><tbody><tr>")
    out.append(f"<td>{_bi('Nom', 'Name')}</td><td>{_bi('Date', 'Date')}</td>")
    out.append(f"<td>{_bi('Signature', 'Signature')}</td>")
    out.append("</tr></tbody></table>")
    out.append(
        "<footer>"
        + _bi(
            f"Registre produit par coldvault (format {FORMAT} version {FORMAT_VERSION}). Conserver"
            " ce registre signé avec son fichier JSON jumeau.",
            "Keep this signed record together with its JSON twin.",
        )
        + "</footer>"
    )
    out.append("</body>")
    out.append("</html>")
    return "\n".join(out) + "\n"
