"""Patient facts from a CSV export of the practice software (``coldvault patient import CSV``).

The file
--------
* The first non-blank line is a header naming the columns, in any order:

  * ``patient`` (required): patient, id, patient_id, id_patient
  * ``born``: born, birth, naissance, date_naissance, date_de_naissance
  * ``died``: died, death, deces, date_deces, date_de_deces
  * ``last_visit``: last_visit, derniere_visite, date_derniere_visite, date_de_derniere_visite

  Headers are compared without case, accents and surrounding spaces, reading spaces and hyphens
  as underscores: ``Date de naissance``, ``date_naissance`` and ``Date-Naissance`` all name
  ``born``. Any other column is an error, so that a misspelt column is never
  silently ignored: remove the other columns of the export first.
* ``patient`` is the practice software's patient number (the external id, as in the source
  rules); it is kept as text, leading zeros included.
* Dates are ISO ``YYYY-MM-DD`` or French ``DD/MM/YYYY`` (one- or two-digit day and month, four-
  digit year); an empty cell means unknown. Two-digit years are refused: ``01/02/03`` is
  ambiguous.
* The delimiter is sniffed from the header line: ``;`` (French Excel), ``,`` or a tab.
* Encoding: UTF-8 with or without a byte-order mark, UTF-16 with a byte-order mark (Excel's
  "Unicode text"), else Windows-1252 (cp1252, older French Windows software).

Errors
------
Every row is checked (well-formed dates, not before 1870, not after ``today`` when given; death
not before birth; last visit between birth and death; no duplicate patient) and **all** problems
are collected. If there is any, nothing is returned: :class:`FactsCsvError` lists the first few
with their line numbers and counts the rest. Messages name lines and columns, never patient
numbers, so they are safe to log.
"""

from __future__ import annotations

import codecs
import csv
import io
import os
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from coldvault.errors import UsageError
from coldvault.retention.facts import Facts, fact_problems

__all__ = ["COLUMNS", "FactsCsvError", "PatientFactsRow", "parse_facts_csv"]

#: canonical column -> accepted (normalised) header names
COLUMNS: dict[str, tuple[str, ...]] = {
    "patient": ("patient", "id", "patient_id", "id_patient"),
    "born": ("born", "birth", "naissance", "date_naissance", "date_de_naissance"),
    "died": ("died", "death", "deces", "date_deces", "date_de_deces"),
    "last_visit": (
        "last_visit",
        "derniere_visite",
        "date_derniere_visite",
        "date_de_derniere_visite",
    ),
}
_HEADER_TO_COLUMN = {alias: col for col, aliases in COLUMNS.items() for alias in aliases}

MAX_BYTES = 64 * 1024 * 1024
MIN_YEAR = 1870
SHOWN_ERRORS = 5

_ISO_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_FR_RE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")


class FactsCsvError(UsageError):
    """The CSV file has problems; nothing was imported. ``errors`` lists (line, message)."""

    def __init__(self, errors: list[tuple[int, str]]) -> None:
        self.errors = list(errors)
        n = len(self.errors)
        shown = "; ".join(f"line {line}: {msg}" for line, msg in self.errors[:SHOWN_ERRORS])
        more = f"; and {n - SHOWN_ERRORS} more" if n > SHOWN_ERRORS else ""
        plural = "problem" if n == 1 else "problems"
        super().__init__(
            f"The patient CSV file has {n} {plural}, nothing was imported: {shown}{more}.",
            hint="Correct these lines in the file and import it again.",
        )


@dataclass(frozen=True)
class PatientFactsRow:
    """One patient's facts from the CSV; ``line`` is the file line the row starts on."""

    line: int
    patient: str
    born: date | None = None
    died: date | None = None
    last_visit: date | None = None


def _normalise_header(name: str) -> str:
    decomposed = unicodedata.normalize("NFKD", name.strip().lower())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return re.sub(r"[\s\-]+", "_", plain)


def _decode(data: bytes) -> str:
    if data.startswith(codecs.BOM_UTF8):
        try:
            return data[len(codecs.BOM_UTF8) :].decode("utf-8")
        except UnicodeDecodeError:
            raise FactsCsvError([(1, "the file starts as UTF-8 but is not valid UTF-8")]) from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise FactsCsvError(
                [(1, "the file starts as UTF-16 but is not valid UTF-16")]
            ) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        raise FactsCsvError(
            [(1, "the file is neither UTF-8 nor Windows-1252 text (is it a spreadsheet file?)")]
        ) from None


def _read(source: str | bytes | os.PathLike[str]) -> str:
    if isinstance(source, str):
        return source.removeprefix("\ufeff")
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            with path.open("rb") as f:
                data = f.read(MAX_BYTES + 1)
        except FileNotFoundError:
            raise UsageError(f"The CSV file {str(path)!r} does not exist.") from None
        except IsADirectoryError:
            raise UsageError(f"{str(path)!r} is a folder, not a CSV file.") from None
        except OSError as exc:
            raise UsageError(
                f"The CSV file {str(path)!r} cannot be read ({exc.strerror or exc})."
            ) from None
    if len(data) > MAX_BYTES:
        raise UsageError(
            f"The CSV file is larger than {MAX_BYTES // (1024 * 1024)} MiB; is it the right file?"
        )
    return _decode(data)


def _sniff_delimiter(header: str) -> str:
    counts = {d: header.count(d) for d in (";", ",", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def _parse_date(text: str) -> date | str:
    """A date, or an error message."""
    expected = "expected YYYY-MM-DD or DD/MM/YYYY"
    if m := _ISO_RE.fullmatch(text):
        y, mo, d = (int(g) for g in m.groups())
    elif m := _FR_RE.fullmatch(text):
        d, mo, y = (int(g) for g in m.groups())
    else:
        return f"{text[:20]!r} is not a date ({expected})"
    try:
        value = date(y, mo, d)
    except ValueError:
        return f"{text!r} is not a valid calendar date"
    if value.year < MIN_YEAR:
        return f"{text!r} is before {MIN_YEAR}"
    return value


def parse_facts_csv(
    source: str | bytes | os.PathLike[str], *, today: date | None = None
) -> list[PatientFactsRow]:
    """Parse a patient-facts CSV: a path (``os.PathLike``), the file's raw ``bytes``, or its
    decoded text (``str`` is *text*, not a path: pass a :class:`~pathlib.Path` for a file).

    ``today``, when given, makes dates after it errors. Returns one row per patient in file
    order; raises :class:`FactsCsvError` listing every problem if there is any, or
    :class:`UsageError` if the file cannot be read.
    """
    text = _read(source)
    header_text = next((line for line in text.splitlines() if line.strip()), None)
    if header_text is None:
        raise FactsCsvError([(1, "the file is empty (a header line with 'patient' is needed)")])
    delimiter = _sniff_delimiter(header_text)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    errors: list[tuple[int, str]] = []

    prev_end = 0
    header: list[str] = []
    try:
        while not any(c.strip() for c in header):
            header = next(reader)
            header_line = prev_end + 1
            prev_end = reader.line_num
    except (csv.Error, StopIteration) as exc:
        raise FactsCsvError([(prev_end + 1, f"unreadable header ({exc})")]) from None
    columns: list[str | None] = []
    for i, name in enumerate(header):
        key = _normalise_header(name)
        col = _HEADER_TO_COLUMN.get(key)
        if col is None:
            if key == "" and i == len(header) - 1 and i > 0:
                columns.append(None)  # a trailing delimiter
                continue
            errors.append(
                (
                    header_line,
                    f"unknown column {name.strip()[:40]!r} (accepted: {', '.join(COLUMNS)})",
                )
            )
        elif col in columns:
            errors.append((header_line, f"column {col!r} appears twice"))
        columns.append(col)
    if "patient" not in columns:
        errors.append((header_line, "no 'patient' column in the header"))
    if errors:
        raise FactsCsvError(errors)

    rows: list[PatientFactsRow] = []
    seen: dict[str, int] = {}
    while True:
        start = prev_end + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append((start, f"unreadable line ({exc})"))
            break
        prev_end = reader.line_num
        if not any(c.strip() for c in cells):
            continue  # blank line
        extra = cells[len(columns) :]
        if len(cells) < len(columns) or any(c.strip() for c in extra):
            errors.append(
                (
                    start,
                    f"{len(cells)} fields where the header has {len(columns)}"
                    f" (delimiter {delimiter!r})",
                )
            )
            continue
        values: dict[str, str] = {
            col: cell.strip() for col, cell in zip(columns, cells, strict=False) if col
        }
        row_errors: list[str] = []
        patient = values.get("patient", "")
        if not patient:
            row_errors.append("the patient number is missing")
        elif any(unicodedata.category(c).startswith("C") for c in patient):
            row_errors.append("the patient number contains control characters")
        elif patient in seen:
            row_errors.append(f"the same patient is already on line {seen[patient]}")
        else:
            seen[patient] = start
        dates: dict[str, date | None] = {}
        for col in ("born", "died", "last_visit"):
            raw = values.get(col, "")
            if not raw:
                dates[col] = None
                continue
            parsed = _parse_date(raw)
            if isinstance(parsed, str):
                row_errors.append(f"{col}: {parsed}")
                dates[col] = None
            elif today is not None and parsed > today:
                row_errors.append(f"{col}: {raw!r} is in the future")
                dates[col] = None
            else:
                dates[col] = parsed
        born, died, last_visit = dates["born"], dates["died"], dates["last_visit"]
        row_errors += fact_problems(Facts(born, died, last_visit))
        if row_errors:
            errors.extend((start, msg) for msg in row_errors)
            continue
        rows.append(PatientFactsRow(start, patient, born, died, last_visit))
    if errors:
        raise FactsCsvError(errors)
    return rows
