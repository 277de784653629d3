"""Source rules: ignore lists, patient/date/kind mapping, path-escape safety."""

from __future__ import annotations

import datetime
import logging
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldvault.config import SourceConfig
from coldvault.errors import UsageError
from coldvault.sources.rules import (
    SourceRules,
    UnsafePathError,
    check_relpath,
    is_ignored,
    is_ignored_name,
    parse_date,
)

SCAN_RX = re.compile(r"^(?P<patient>[0-9]+)_(?P<date>[0-9]{8})")


def src(**kw: object) -> SourceConfig:
    base: dict[str, object] = {"name": "scanner", "path": Path("/srv/scans")}
    base.update(kw)
    return SourceConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "scan.tmp",
        "SCAN.TMP",
        "upload.part",
        "x.partial",
        "film.crdownload",
        "doc.pdf.filepart",
        "~$rapport.docx",
        ".~lock.rapport.odt#",
        ".hidden",
        ".DS_Store",
        ".pureftpd-upload.5f2a.123",
        "Thumbs.db",
        "desktop.ini",
    ],
)
def test_builtin_temporary_names_are_ignored(name: str):
    assert is_ignored_name(name)
    assert is_ignored(f"123/{name}")


@pytest.mark.parametrize(
    "name", ["scan.pdf", "123_20240102.tiff", "rapport.docx", "a.tmp.pdf", "tmp", "part"]
)
def test_documents_are_not_ignored(name: str):
    assert not is_ignored_name(name)
    assert not is_ignored(f"p42/{name}")


def test_ignore_applies_to_every_component():
    assert is_ignored(".git/objects/ab")
    assert is_ignored("p42/.cache/scan.pdf")
    assert is_ignored("p42/upload.part/scan.pdf")
    assert not is_ignored("p42/sub/scan.pdf")


def test_source_ignore_globs_add_to_builtin_case_insensitively():
    rules = SourceRules(src(ignore=("*.bak", "Corbeille")))
    assert rules.ignored("a.BAK") and rules.ignored("corbeille/x.pdf")
    assert rules.ignored("x.tmp")  # built-ins still apply
    assert not rules.ignored("a.pdf")
    assert not SourceRules(src()).ignored("a.bak")


def test_pattern_maps_patient_date_and_kind():
    rules = SourceRules(src(pattern=SCAN_RX, kind="scan"))
    m = rules.match("123_20240102_ordonnance.pdf")
    assert m.patient == "123" and m.date == datetime.date(2024, 1, 2) and m.kind == "scan"
    assert m.groups == {"patient": "123", "date": "20240102"}
    assert m.warnings == ()


def test_pattern_kind_group_overrides_source_kind():
    rx = re.compile(r"^(?P<kind>[a-z]+)/(?P<patient>[0-9]+)-(?P<date>\d{4}-\d{2}-\d{2})")
    rules = SourceRules(src(pattern=rx, kind="scan"))
    m = rules.match("bio/77-2023-12-31.pdf")
    assert (m.patient, m.kind, m.date) == ("77", "bio", datetime.date(2023, 12, 31))


def test_pattern_matches_anywhere_in_relative_path_with_slashes():
    rx = re.compile(r"(?P<patient>[^/]+)/")
    m = SourceRules(src(pattern=rx)).match("dupont-42/2024/scan.pdf")
    assert m.patient == "dupont-42"


def test_no_match_goes_to_unsorted_inbox():
    rules = SourceRules(src(pattern=SCAN_RX, kind="scan"))
    m = rules.match("lettre sans numero.pdf")
    assert m.patient is None and m.date is None and m.kind == "scan"


def test_empty_or_missing_optional_groups():
    rx = re.compile(r"^(?P<patient>[0-9]*)(?:_(?P<date>\d{8}))?")
    rules = SourceRules(src(pattern=rx))
    assert rules.match("_x.pdf").patient is None  # empty patient group = no patient
    m = rules.match("55.pdf")
    assert m.patient == "55" and m.date is None and m.warnings == ()


def test_unparsable_date_is_a_warning_not_an_error(caplog: pytest.LogCaptureFixture):
    rules = SourceRules(src(pattern=SCAN_RX))
    with caplog.at_level(logging.WARNING, logger="coldvault.sources.rules"):
        m = rules.match("123_20241340.pdf")  # month 13
    assert m.patient == "123" and m.date is None
    assert len(m.warnings) == 1 and "without a date" in m.warnings[0]
    assert caplog.records and "123_20241340" not in caplog.text  # no file name in logs


def test_configured_date_format():
    rx = re.compile(r"^(?P<patient>\d+) (?P<date>\d\d\.\d\d\.\d{4})")
    rules = SourceRules(src(pattern=rx, date_format="%d.%m.%Y"))
    assert rules.match("9 24.12.2031 radio.pdf").date == datetime.date(2031, 12, 24)


def test_parse_date_defaults():
    assert parse_date("20240229") == datetime.date(2024, 2, 29)
    assert parse_date("2024-02-29") == datetime.date(2024, 2, 29)
    assert parse_date("2023-02-29") is None
    assert parse_date("29/02/2024") is None
    assert parse_date("29/02/2024", "%d/%m/%Y") == datetime.date(2024, 2, 29)


def test_per_patient_folders():
    rules = SourceRules(src(per_patient_folders=True, kind="export"))
    m = rules.match("DUPONT Jean 1950/2024/bilan.pdf")
    assert m.patient == "DUPONT Jean 1950" and m.kind == "export" and m.date is None
    assert rules.match("loose-file.pdf").patient is None  # not in a patient folder


def test_source_without_rule_sends_everything_to_unsorted():
    assert SourceRules(src()).match("123_20240102.pdf").patient is None


@pytest.mark.parametrize(
    "bad", ["../etc/passwd", "a/../../b", "/etc/passwd", "", ".", "a/\0b", "a/.."]
)
def test_unsafe_paths_are_refused(bad: str):
    with pytest.raises(UnsafePathError) as ei:
        check_relpath(bad)
    assert isinstance(ei.value, UsageError)
    with pytest.raises(UnsafePathError):
        SourceRules(src(per_patient_folders=True)).match(bad)


def test_relpath_normalisation():
    assert check_relpath("./a//b/./c.pdf") == "a/b/c.pdf"
    assert check_relpath("..a/b..") == "..a/b.."  # dots inside names are fine


@given(st.lists(st.sampled_from(["a", "b", ".", "..", "", "x y", "é"]), min_size=1, max_size=6))
def test_checked_relpath_never_escapes(parts: list[str]):
    rel = "/".join(parts)
    try:
        out = check_relpath(rel)
    except UnsafePathError:
        assert ".." in parts or all(p in ("", ".") for p in parts) or rel.startswith("/")
        return
    assert not out.startswith("/") and ".." not in out.split("/") and "" not in out.split("/")
