"""Patient facts from a practice software's CSV export."""

from __future__ import annotations

import codecs
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldvault.errors import UsageError
from coldvault.retention.facts_csv import (
    SHOWN_ERRORS,
    FactsCsvError,
    PatientFactsRow,
    parse_facts_csv,
)

D = date.fromisoformat


def test_semicolon_french_dates_and_empty_cells() -> None:
    text = (
        "patient;born;died;last_visit\n"
        "00123;15/06/1995;;10/03/2000\n"
        "456;1950-01-01;2005-06-01;2000-03-10\n"
        "789;;;\n"
    )
    assert parse_facts_csv(text) == [
        PatientFactsRow(2, "00123", D("1995-06-15"), None, D("2000-03-10")),
        PatientFactsRow(3, "456", D("1950-01-01"), D("2005-06-01"), D("2000-03-10")),
        PatientFactsRow(4, "789", None, None, None),
    ]


def test_comma_delimiter_column_order_aliases_and_optional_columns() -> None:
    text = "Date de naissance, Patient ,Dernière-Visite\r\n1/2/1950,A7,29/02/2000\r\n"
    assert parse_facts_csv(text) == [
        PatientFactsRow(2, "A7", D("1950-02-01"), None, D("2000-02-29")),
    ]
    assert parse_facts_csv("id\tdeces\nx\t2001-01-01\n") == [
        PatientFactsRow(2, "x", None, D("2001-01-01"), None)
    ]
    assert parse_facts_csv("patient\n1\n2\n") == [PatientFactsRow(2, "1"), PatientFactsRow(3, "2")]


def test_quoted_fields_blank_lines_and_line_numbers() -> None:
    text = 'patient;born\n1;01/01/1960\n"multi\nline";\n9;02/02/1970\n'
    with pytest.raises(FactsCsvError) as info:
        parse_facts_csv(text)
    assert info.value.errors == [(3, "the patient number contains control characters")]
    good = '\npatient;born;\n"12;3";01/01/1960;\n\n9;02/02/1970;\n'
    assert [(r.line, r.patient) for r in parse_facts_csv(good)] == [(3, "12;3"), (5, "9")]


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("patient;born\nÉlodie-1;01/01/1960\n".encode(), "utf-8"),
        (codecs.BOM_UTF8 + "patient;born\nÉlodie-1;01/01/1960\n".encode(), "utf-8 bom"),
        ("patient;born\nÉlodie-1;01/01/1960\n".encode("cp1252"), "cp1252"),
        ("patient;born\nÉlodie-1;01/01/1960\n".encode("utf-16"), "utf-16 bom"),
    ],
)
def test_encodings(data: bytes, encoding: str, tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_bytes(data)
    expected = [PatientFactsRow(2, "Élodie-1", D("1960-01-01"))]
    assert parse_facts_csv(path) == expected, encoding
    assert parse_facts_csv(data) == expected, encoding


def test_bom_is_not_part_of_the_first_header(tmp_path: Path) -> None:
    assert parse_facts_csv("\ufeffpatient;born\n1;\n") == [PatientFactsRow(2, "1")]


def test_every_error_is_collected_with_its_line_and_nothing_is_returned() -> None:
    text = (
        "patient;born;died;last_visit\n"
        "1;31/02/1990;;\n"  # 2: impossible date
        ";01/01/1990;;\n"  # 3: no patient
        "3;01/01/1990;01/01/1980;\n"  # 4: died before born
        "4;1990/01/01;;01/01/03\n"  # 5: two bad dates
        "1;;;\n"  # 6: duplicate of line 2
        "6;01/01/1990;;01/01/1980\n"  # 7: visit before birth
        "7;;01/01/2000;02/01/2000\n"  # 8: visit after death
        "8;;;;;\n"  # 9: too many fields... empty ones are a trailing delimiter: fine
        "9;01/01/1990;x;y;z\n"  # 10: too many fields
        "10;01/01/1990\n"  # 11: too few
        "11;01/01/1800;;\n"  # 12: implausible
        "ok;01/01/1990;;\n"
    )
    with pytest.raises(FactsCsvError) as info:
        parse_facts_csv(text)
    err = info.value
    assert isinstance(err, UsageError) and err.exit_code == 2
    lines = [line for line, _ in err.errors]
    assert lines == [2, 3, 4, 5, 5, 6, 7, 8, 10, 11, 12]
    by_line = dict(err.errors)
    assert "not a valid calendar date" in by_line[2]
    assert "patient number is missing" in by_line[3]
    assert "died before being born" in by_line[4]
    assert "already on line 2" in by_line[6]
    assert "last visit before the birth date" in by_line[7]
    assert "last visit after the death date" in by_line[8]
    assert "5 fields" in by_line[10] and "2 fields" in by_line[11]
    assert "before 1870" in by_line[12]
    # the message shows the first few, counts the rest, and never a patient number
    assert f"and {len(lines) - SHOWN_ERRORS} more" in err.message
    assert "line 2:" in err.message and "line 6:" not in err.message
    assert err.message.startswith("The patient CSV file has 11 problems")
    assert err.hint


def test_dates_after_today_are_errors_when_today_is_given() -> None:
    text = "patient;last_visit\n1;2030-01-01\n"
    assert parse_facts_csv(text)[0].last_visit == D("2030-01-01")
    with pytest.raises(FactsCsvError) as info:
        parse_facts_csv(text, today=D("2026-11-24"))
    assert info.value.errors == [(2, "last_visit: '2030-01-01' is in the future")]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "empty"),
        ("\n \n", "empty"),
        ("born;died\n1950-01-01;\n", "no 'patient' column"),
        ("patient;naissance;born\n", "'born' appears twice"),
        ("patient;brn\n1;2\n", "unknown column 'brn'"),
        ("patient;;born\n", "unknown column ''"),
    ],
)
def test_bad_headers(text: str, problem: str) -> None:
    with pytest.raises(FactsCsvError) as info:
        parse_facts_csv(text)
    assert problem in info.value.message


def test_binary_garbage_is_refused() -> None:
    with pytest.raises(FactsCsvError) as info:
        parse_facts_csv(b"PK\x03\x04\x81\x8d\x8f\x90\x9d")
    assert "neither UTF-8 nor Windows-1252" in info.value.message


def test_unreadable_paths_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        parse_facts_csv(tmp_path / "missing.csv")
    with pytest.raises(UsageError, match="is a folder"):
        parse_facts_csv(tmp_path)


def test_a_single_error_message_is_singular() -> None:
    with pytest.raises(FactsCsvError) as info:
        parse_facts_csv("patient;born\n1;yesterday\n")
    assert info.value.message.startswith("The patient CSV file has 1 problem, nothing was imported")
    assert "more" not in info.value.message


ids = st.text(
    alphabet=st.characters(blacklist_categories=("C", "Zs"), blacklist_characters=';,\t"'),
    min_size=1,
    max_size=12,
)
dates = st.none() | st.dates(min_value=date(1870, 1, 1), max_value=date(2100, 12, 31))


@settings(deadline=None)
@given(
    st.lists(st.tuples(ids, dates, dates), max_size=8, unique_by=lambda r: r[0]),
    st.sampled_from([";", ",", "\t"]),
    st.booleans(),
)
def test_round_trip_of_generated_exports(
    rows: list[tuple[str, date | None, date | None]], delimiter: str, french: bool
) -> None:
    def fmt(d: date | None) -> str:
        if d is None:
            return ""
        return d.strftime("%d/%m/%Y") if french else d.isoformat()

    lines = [delimiter.join(["patient", "born", "last_visit"])]
    expected = []
    for i, (pid, born, visit) in enumerate(rows):
        if born and visit and visit < born:
            born, visit = visit, born
        lines.append(delimiter.join([pid, fmt(born), fmt(visit)]))
        expected.append(PatientFactsRow(i + 2, pid.strip(), born, None, visit))
    assert parse_facts_csv("\n".join(lines) + "\n") == expected
