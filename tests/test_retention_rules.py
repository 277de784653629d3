"""The pure purge planner: legal cases on both sides of every boundary, and properties."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from coldvault.errors import ConfigError, VaultError
from coldvault.retention.rules import (
    PRENATAL_MARGIN,
    PROFILES,
    Action,
    DocumentFacts,
    Duration,
    KindRule,
    PatientDecision,
    PatientFacts,
    Profile,
    add_months,
    add_years,
    get_profile,
    parse_duration,
    plan,
    settings_from_config,
)

D = date.fromisoformat
DAY = timedelta(days=1)


def doc(n: int, when: str | date | None, kind: str | None = None) -> DocumentFacts:
    d = D(when) if isinstance(when, str) else when
    return DocumentFacts(doc_id=n, object_id=f"obj{n}", kind=kind, document_date=d)


def decide(
    profile: str | Profile,
    as_of: str | date,
    kinds: Mapping[str, KindRule] | None = None,
    **facts: Any,
) -> PatientDecision:
    for key in ("born", "died", "last_visit"):
        if isinstance(facts.get(key), str):
            facts[key] = D(facts[key])
    facts.setdefault("ref", "p1")
    day = D(as_of) if isinstance(as_of, str) else as_of
    result = plan([PatientFacts(**facts)], profile, kinds or {}, day)
    assert len(result.decisions) == 1
    return result.decisions[0]


# --- date arithmetic -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "years", "expected"),
    [
        ("2000-03-10", 20, "2020-03-10"),
        ("2000-02-29", 20, "2020-02-29"),  # leap to leap
        ("2000-02-29", 1, "2001-03-01"),  # never 28 February: that would shorten retention
        ("2000-02-29", 30, "2030-03-01"),
        ("2080-02-29", 20, "2100-03-01"),  # 2100 is not a leap year
        ("1999-02-28", 1, "2000-02-28"),
        ("9990-01-01", 20, "9999-12-31"),  # saturates: never expires
    ],
)
def test_add_years_rolls_forward_from_29_february(start: str, years: int, expected: str) -> None:
    assert add_years(D(start), years) == D(expected)


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        ("2023-01-31", 1, "2023-03-01"),
        ("2024-01-31", 1, "2024-03-01"),
        ("2024-01-30", 1, "2024-03-01"),
        ("2024-01-29", 1, "2024-02-29"),
        ("2024-08-31", 1, "2024-10-01"),
        ("2024-08-31", 6, "2025-03-01"),
        ("2024-12-15", 1, "2025-01-15"),
    ],
)
def test_add_months_rolls_forward(start: str, months: int, expected: str) -> None:
    assert add_months(D(start), months) == D(expected)


dates = st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31))


@settings(deadline=None)
@given(dates, st.integers(0, 60), st.integers(0, 60))
def test_add_years_never_shortens(d: date, a: int, b: int) -> None:
    later = add_years(d, a)
    assert later >= d
    if not (d.month == 2 and d.day == 29):
        assert later == d.replace(year=d.year + a)
    else:
        # the true anniversary, or the day after it in a common year
        assert later in (
            date(d.year + a, 2, 29) if _leap(d.year + a) else None,
            date(d.year + a, 3, 1),
        )
    assert add_years(later, b) >= add_years(d, a + b)


def _leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


@settings(deadline=None)
@given(dates, dates, st.integers(0, 600))
def test_add_months_is_monotonic(d1: date, d2: date, k: int) -> None:
    lo, hi = sorted((d1, d2))
    assert add_months(lo, k) <= add_months(hi, k)


# --- durations and configuration -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10y", Duration(years=10)),
        ("6m", Duration(months=6)),
        ("90d", Duration(days=90)),
        ("1y6m", Duration(1, 6, 0)),
        ("1y2m3d", Duration(1, 2, 3)),
        (" 10y ", Duration(years=10)),
    ],
)
def test_parse_duration(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected
    assert str(parse_duration(text)) == text.strip()


@pytest.mark.parametrize(
    "bad",
    ["", "10", "y", "10 y", "10Y", "-1y", "6m1y", "0d", "0y0m", "1.5y", "10yrs", "999y", 10, None],
)
def test_parse_duration_rejects_with_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(bad, "retention.kinds.claims")
    assert "retention.kinds.claims" in info.value.message
    assert info.value.hint


def test_settings_from_config_builds_profile_and_kind_rules() -> None:
    settings = settings_from_config(
        {
            "profile": "r1112-7",
            "kinds": {
                "accounting": "10y",
                "claims": "90d",
                "letters": {"keep": "6y", "after": "last_visit"},
                "forms": "6y after last_visit",
                "scans": "1y6m after document",
            },
        }
    )
    assert settings.profile is PROFILES["r1112-7"]
    assert settings.kinds == {
        "accounting": KindRule("accounting", years=10),
        "claims": KindRule("claims", days=90),
        "letters": KindRule("letters", years=6, after="last_visit"),
        "forms": KindRule("forms", years=6, after="last_visit"),
        "scans": KindRule("scans", years=1, months=6),
    }
    assert settings_from_config(None).profile.name == "cnil-2020"
    assert settings_from_config({}).kinds == {}


def test_settings_from_config_lists_every_error_with_its_key() -> None:
    with pytest.raises(ConfigError) as info:
        settings_from_config(
            {
                "profile": "cnil-2021",
                "colour": "blue",
                "kinds": {
                    "claims": "90 days",
                    "accounting": 10,
                    "letters": {"keep": "6y", "after": "birth"},
                    "misc": {"duration": "1y"},
                    "forms": "6y after birth",
                    "notes": "6y before last_visit",
                    "": "1y",
                },
            }
        )
    msg = info.value.message
    for key in (
        "retention.profile",
        "retention.colour",
        "retention.kinds.claims",
        "retention.kinds.accounting",
        "retention.kinds.letters.after",
        "retention.kinds.misc",
        "retention.kinds.forms: a rule counts",
        "retention.kinds.notes: '6y before last_visit' is not a retention rule",
        "retention.kinds.: A document kind rule needs a kind name",
    ):
        assert key in msg, key


def test_get_profile_unknown_is_a_config_error() -> None:
    assert get_profile("prudent-30").years_after_last_visit == 30
    with pytest.raises(ConfigError):
        get_profile("forever")


def test_kind_rule_validates() -> None:
    with pytest.raises(ConfigError):
        KindRule("claims")  # zero duration
    with pytest.raises(ConfigError):
        KindRule("claims", days=90, after="birth")  # type: ignore[arg-type]
    assert KindRule.of("claims", "90d") == KindRule("claims", days=90)


# --- cnil-2020 ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("as_of", "action"),
    [("2020-03-09", Action.KEEP), ("2020-03-10", Action.KEEP), ("2020-03-11", Action.DESTROY)],
)
def test_cnil_adult_expires_the_day_after_20_years(as_of: str, action: Action) -> None:
    d = decide("cnil-2020", as_of, born="1950-01-01", last_visit="2000-03-10")
    assert d.kept_until == D("2020-03-10")
    assert d.action is action
    assert d.rule == "cnil-2020: 20 years after the last visit"


@pytest.mark.parametrize(
    ("as_of", "action"),
    [("2020-03-11", Action.KEEP), ("2023-06-15", Action.KEEP), ("2023-06-16", Action.DESTROY)],
)
def test_cnil_child_kept_until_the_28th_birthday(as_of: str, action: Action) -> None:
    d = decide("cnil-2020", as_of, born="1995-06-15", last_visit="2000-03-10")
    assert d.kept_until == D("2023-06-15")
    assert d.action is action
    assert "28th birthday" in d.rule


def test_cnil_exactly_8_at_the_last_visit_both_rules_agree() -> None:
    d = decide("cnil-2020", "2020-03-11", born="1992-03-10", last_visit="2000-03-10")
    assert d.kept_until == D("2020-03-10")
    assert d.action is Action.DESTROY
    d = decide("cnil-2020", "2020-03-11", born="1992-03-11", last_visit="2000-03-10")
    assert d.kept_until == D("2020-03-11")
    assert d.action is Action.KEEP


def test_cnil_ignores_the_death_date() -> None:
    d = decide(
        "cnil-2020", "2020-03-10", born="1950-01-01", died="2001-01-01", last_visit="2000-03-10"
    )
    assert (d.action, d.kept_until) == (Action.KEEP, D("2020-03-10"))
    # inconsistent but unused: no error in it can shorten cnil-2020
    d = decide(
        "cnil-2020", "2020-03-11", born="1950-01-01", died="1999-01-01", last_visit="2000-03-10"
    )
    assert d.action is Action.DESTROY


def test_born_29_february() -> None:
    # 28 is a multiple of 4: the 28th birthday of a leap-day baby is usually a 29 February ...
    d = decide("cnil-2020", "2032-02-29", born="2004-02-29", last_visit="2005-01-10")
    assert (d.kept_until, d.action) == (D("2032-02-29"), Action.KEEP)
    d = decide("cnil-2020", "2032-03-01", born="2004-02-29", last_visit="2005-01-10")
    assert d.action is Action.DESTROY
    # ... except across a century: 2100 is a common year, so 1 March, never 28 February
    d = decide("cnil-2020", "2100-03-01", born="2072-02-29", last_visit="2073-01-10")
    assert (d.kept_until, d.action) == (D("2100-03-01"), Action.KEEP)
    d = decide("cnil-2020", "2100-03-02", born="2072-02-29", last_visit="2073-01-10")
    assert d.action is Action.DESTROY


def test_visit_on_29_february() -> None:
    d = decide("prudent-30", "2030-03-01", born="1950-01-01", last_visit="2000-02-29")
    assert (d.kept_until, d.action) == (D("2030-03-01"), Action.KEEP)
    assert decide(
        "prudent-30", "2030-03-02", born="1950-01-01", last_visit="2000-02-29"
    ).action is (Action.DESTROY)
    d = decide("cnil-2020", "2100-03-01", born="2000-01-01", last_visit="2080-02-29")
    assert (d.kept_until, d.action) == (D("2100-03-01"), Action.KEEP)


# --- r1112-7 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("as_of", "action"),
    [("2015-06-01", Action.KEEP), ("2015-06-02", Action.DESTROY)],
)
def test_r1112_death_within_10_years_keeps_10_years_after_death(as_of: str, action: Action) -> None:
    facts = {"born": "1950-01-01", "died": "2005-06-01", "last_visit": "2000-03-10"}
    d = decide("r1112-7", as_of, **facts)
    assert (d.kept_until, d.action) == (D("2015-06-01"), action)
    assert d.rule == "r1112-7: 10 years after the death"
    # the default profile never shortens
    assert decide("cnil-2020", as_of, **facts).kept_until == D("2020-03-10")


@pytest.mark.parametrize(
    ("died", "kept_until"),
    [
        ("2010-03-09", "2020-03-09"),  # 1 day less than 10 years: death rule
        ("2010-03-10", "2020-03-10"),  # exactly 10 years: "less than" is false, the 20-year rule
        ("2012-01-01", "2020-03-10"),
    ],
)
def test_r1112_death_rule_boundary(died: str, kept_until: str) -> None:
    d = decide("r1112-7", "2000-01-01", born="1950-01-01", died=died, last_visit="2000-03-10")
    assert d.kept_until == D(kept_until)


@pytest.mark.parametrize(
    ("died", "kept_until"),
    [("2010-03-09", "2020-03-09"), ("2010-03-10", "2023-06-15")],
)
def test_r1112_death_exactly_10_years_after_keeps_the_28th_birthday(
    died: str, kept_until: str
) -> None:
    # "less than 10 years" is strict: at exactly 10 years the other rules stay in force
    d = decide("r1112-7", "2000-01-01", born="1995-06-15", died=died, last_visit="2000-03-10")
    assert d.kept_until == D(kept_until)


def test_r1112_death_rule_overrides_the_28th_birthday_and_needs_no_birth_date() -> None:
    d = decide(
        "r1112-7", "2011-01-02", born="1995-06-15", died="2001-01-01", last_visit="2000-03-10"
    )
    assert (d.kept_until, d.action) == (D("2011-01-01"), Action.DESTROY)
    d = decide("r1112-7", "2011-01-02", died="2001-01-01", last_visit="2000-03-10")
    assert (d.kept_until, d.action) == (D("2011-01-01"), Action.DESTROY)


def test_r1112_a_newer_visit_can_shorten_through_the_death_rule() -> None:
    # R1112-7: "dans tous les cas" -- why this profile is opt-in. A child seen at 5 and dying 10
    # years later is kept until the 28th birthday; had there been a visit a year before the death,
    # only 10 years after the death.
    facts = {"born": "1985-01-01", "died": "2000-01-01"}
    d1 = decide("r1112-7", "2000-01-01", last_visit="1990-01-01", **facts)
    d2 = decide("r1112-7", "2000-01-01", last_visit="1999-01-01", **facts)
    assert d1.kept_until == D("2013-01-01")
    assert d2.kept_until == D("2010-01-01")
    # the default profile never does that
    d1 = decide("cnil-2020", "2000-01-01", last_visit="1990-01-01", **facts)
    d2 = decide("cnil-2020", "2000-01-01", last_visit="1999-01-01", **facts)
    assert (d1.kept_until, d2.kept_until) == (D("2013-01-01"), D("2019-01-01"))


def test_r1112_death_on_29_february() -> None:
    d = decide(
        "r1112-7", "2022-03-01", born="1950-01-01", died="2012-02-29", last_visit="2010-05-05"
    )
    assert (d.kept_until, d.action) == (D("2022-03-01"), Action.KEEP)
    d = decide(
        "r1112-7", "2022-03-02", born="1950-01-01", died="2012-02-29", last_visit="2010-05-05"
    )
    assert d.action is Action.DESTROY


def test_r1112_death_before_last_visit_is_reviewed_never_destroyed() -> None:
    facts = {"born": "1950-01-01", "died": "1999-01-01", "last_visit": "2000-03-10"}
    # before the earliest plausible expiry (1999 + 10y): nothing to decide yet
    assert decide("r1112-7", "2009-01-01", **facts).action is Action.KEEP
    for as_of in ("2009-01-02", "2020-03-11", "2090-01-01"):
        d = decide("r1112-7", as_of, **facts)
        assert d.action is Action.REVIEW
        assert "death date before the last visit" in d.reasons[0]


# --- prudent-30 -------------------------------------------------------------------------------


def test_prudent_30_needs_no_birth_date() -> None:
    d = decide("prudent-30", "2030-03-11", last_visit="2000-03-10")
    assert (d.kept_until, d.action) == (D("2030-03-10"), Action.DESTROY)
    assert decide("prudent-30", "2030-03-10", last_visit="2000-03-10").action is Action.KEEP


# --- unknown and doubtful facts ------------------------------------------------------------------


def test_unknown_birth_with_only_a_last_visit_is_reviewed_until_every_28th_birthday_passed() -> (
    None
):
    # latest plausible birth: last visit + PRENATAL_MARGIN = 2001-03-11; 28th birthday 2029-03-11
    lv = "2000-03-10"
    worst = add_years(D(lv) + PRENATAL_MARGIN, 28)
    assert worst == D("2029-03-11")
    assert decide("cnil-2020", "2020-03-10", last_visit=lv).action is Action.KEEP
    d = decide("cnil-2020", "2020-03-11", last_visit=lv)
    assert d.action is Action.REVIEW
    assert d.reasons == ("birth date unknown and the 28th-birthday rule could apply",)
    assert d.kept_until == worst
    assert decide("cnil-2020", worst, last_visit=lv).action is Action.REVIEW
    assert decide("cnil-2020", worst + DAY, last_visit=lv).action is Action.DESTROY
    # r1112-7 too, without a death
    assert decide("r1112-7", "2020-03-11", last_visit=lv).action is Action.REVIEW


def test_unknown_birth_is_no_doubt_when_the_first_document_is_old_enough() -> None:
    # first document 1990-01-01: born at the latest 1991-01-02, 28 by 2019-01-02 < 2020-03-10
    docs = [doc(1, "1990-01-01"), doc(2, "2000-03-10")]
    d = decide("cnil-2020", "2020-03-11", documents=docs)
    assert (d.action, d.kept_until, d.reasons) == (Action.DESTROY, D("2020-03-10"), ())
    # 9 years before the last visit is enough (the margin is one year), a day less is not
    docs = [doc(1, "1991-03-10"), doc(2, "2000-03-10")]
    assert decide("cnil-2020", "2020-03-11", documents=docs).action is Action.DESTROY
    docs = [doc(1, "1991-03-12"), doc(2, "2000-03-10")]
    assert decide("cnil-2020", "2020-03-11", documents=docs).action is Action.REVIEW


def test_no_dates_at_all_is_reviewed() -> None:
    for docs in ([], [doc(1, None)]):
        d = decide("cnil-2020", "2090-01-01", born="1950-01-01", documents=docs)
        assert d.action is Action.REVIEW
        assert "no dates at all" in d.reasons
        assert d.kept_until is None


def test_a_document_without_date_blocks_expiry_of_the_patient_rule() -> None:
    docs = [doc(1, "2000-03-10"), doc(2, None)]
    assert (
        decide("cnil-2020", "2020-03-10", born="1950-01-01", documents=docs).action is Action.KEEP
    )
    d = decide("cnil-2020", "2020-03-11", born="1950-01-01", documents=docs)
    assert d.action is Action.REVIEW
    assert "without a date" in d.reasons[0]
    assert d.documents_to_destroy == ()


def test_birth_after_last_visit_is_reviewed() -> None:
    facts = {"born": "2001-01-01", "last_visit": "2000-03-10"}
    assert decide("cnil-2020", "2020-03-10", **facts).action is Action.KEEP
    d = decide("cnil-2020", "2040-01-01", **facts)
    assert d.action is Action.REVIEW
    assert "birth date after the last visit" in d.reasons[0]


def test_last_visit_is_the_later_of_the_given_date_and_the_newest_document() -> None:
    docs = [doc(1, "1995-01-01"), doc(2, "2002-05-05")]
    d = decide(
        "cnil-2020", "2021-01-01", born="1950-01-01", last_visit="2000-03-10", documents=docs
    )
    assert d.last_visit == D("2002-05-05")
    assert (d.kept_until, d.action) == (D("2022-05-05"), Action.KEEP)
    d = decide(
        "cnil-2020", "2021-01-01", born="1950-01-01", last_visit="2003-01-01", documents=docs
    )
    assert d.last_visit == D("2003-01-01")
    d = decide("cnil-2020", "2022-05-06", born="1950-01-01", documents=docs)
    assert d.action is Action.DESTROY
    assert {x.doc_id for x in d.documents_to_destroy} == {1, 2}
    assert d.destroy_key


@pytest.mark.parametrize(
    ("reason", "shown"), [("litige Dr X", "litige Dr X"), (None, "(no reason")]
)
def test_legal_hold_is_reviewed_whatever_the_dates(reason: str | None, shown: str) -> None:
    docs = [doc(1, "1990-01-01"), doc(2, "1990-01-01", "claims")]
    d = decide(
        "cnil-2020",
        "2090-01-01",
        {"claims": KindRule("claims", days=90)},
        born="1950-01-01",
        documents=docs,
        held=True,
        hold_reason=reason,
    )
    assert d.action is Action.REVIEW
    assert len(d.reasons) == 1
    assert d.reasons[0].startswith("legal hold: ") and shown in d.reasons[0]
    assert d.documents_to_destroy == ()
    assert all(x.action is Action.REVIEW for x in d.documents)


def test_unknown_profile_reviews_everything() -> None:
    docs = [doc(1, "1990-01-01"), doc(2, "1990-01-01", "claims")]
    d = decide("cnil-2021", "2090-01-01", {"claims": KindRule("claims", days=90)}, documents=docs)
    assert d.action is Action.REVIEW
    assert d.reasons == ("unknown profile 'cnil-2021'",)
    assert d.documents_to_destroy == ()


def test_duplicate_patient_is_a_vault_error() -> None:
    with pytest.raises(VaultError):
        plan([PatientFacts("a"), PatientFacts("a")], "cnil-2020", {}, D("2020-01-01"))


# --- document kinds ------------------------------------------------------------------------------

KINDS = {
    "accounting": KindRule("accounting", years=10),
    "claims": KindRule("claims", days=90),
    "letters": KindRule("letters", years=5, after="last_visit"),
}


@pytest.mark.parametrize(
    ("as_of", "destroyed"), [("2024-03-30", set()), ("2024-03-31", set()), ("2024-04-01", {2})]
)
def test_claims_expire_on_their_own_rule_inside_a_kept_file(
    as_of: str, destroyed: set[int]
) -> None:
    docs = [doc(1, "2024-01-01"), doc(2, "2024-01-01", "claims")]
    d = decide("cnil-2020", as_of, KINDS, born="1950-01-01", documents=docs)
    assert d.action is Action.KEEP
    assert not d.destroy_key
    assert {x.doc_id for x in d.documents_to_destroy} == destroyed
    claims = next(x for x in d.documents if x.document.doc_id == 2)
    assert claims.kept_until == D("2024-03-31")  # 2024-01-01 + 90 days, the last day kept
    assert claims.rule == "kind claims: 90d after the document date"


def test_a_longer_kind_rule_outlives_the_patient_rule() -> None:
    docs = [
        doc(1, "2000-01-01"),
        doc(2, "2012-06-01", "accounting"),
        doc(3, "1999-01-01", "letters"),
    ]
    # last visit = newest document of any kind = 2012-06-01
    d = decide("cnil-2020", "2032-06-02", KINDS, born="1950-01-01", documents=docs)
    assert d.kept_until == D("2032-06-01")
    assert d.action is Action.DESTROY  # accounting 2022-06-01, letters 2017-06-01 expired too
    docs = [doc(1, "2000-01-01"), doc(2, "2000-01-01", "accounting")]
    d = decide(
        "prudent-30",
        "2031-01-01",
        {"accounting": KindRule("accounting", years=40)},
        born="1950-01-01",
        documents=docs,
    )
    assert d.action is Action.KEEP
    assert [x.doc_id for x in d.documents_to_destroy] == [1]
    assert [x.doc_id for x in d.documents_kept] == [2]


def test_kind_rule_after_the_last_visit() -> None:
    docs = [doc(1, "2000-01-01", "letters"), doc(2, "2010-01-01")]
    kept = decide("cnil-2020", "2015-01-01", KINDS, born="1950-01-01", documents=docs)
    assert kept.documents[0].kept_until == D("2015-01-01")
    assert kept.documents_to_destroy == ()
    gone = decide("cnil-2020", "2015-01-02", KINDS, born="1950-01-01", documents=docs)
    assert [x.doc_id for x in gone.documents_to_destroy] == [1]


def test_bad_kind_rule_and_undated_kind_document_are_reviewed() -> None:
    docs = [doc(1, "2000-01-01", "claims"), doc(2, "2000-01-01")]
    bad = {"claims": KindRule("accounting", years=1)}  # does not describe 'claims'
    d = decide("cnil-2020", "2010-01-01", bad, born="1950-01-01", documents=docs)
    assert d.action is Action.REVIEW
    assert d.reasons == ("document 1: unknown document kind rule for 'claims'",)
    assert d.documents_to_destroy == ()
    d = decide("cnil-2020", "2010-01-01", {"claims": "90d"}, born="1950-01-01", documents=docs)  # type: ignore[dict-item]
    assert d.action is Action.REVIEW
    docs = [doc(1, None, "claims"), doc(2, "2000-01-01")]
    d = decide("cnil-2020", "2010-01-01", KINDS, born="1950-01-01", documents=docs)
    assert d.action is Action.REVIEW
    assert "document 1: document date unknown" in d.reasons


def test_unknown_birth_does_not_block_kind_rules() -> None:
    docs = [doc(1, "2000-01-01"), doc(2, "2000-01-01", "claims")]
    d = decide("cnil-2020", "2020-01-02", KINDS, documents=docs)
    assert d.action is Action.REVIEW
    assert [x.doc_id for x in d.documents_to_destroy] == [2]


# --- a stored expected plan ----------------------------------------------------------------------


def test_plan_matches_the_stored_expected_plan() -> None:
    patients = [
        PatientFacts(
            "adult",
            born=D("1950-01-01"),
            last_visit=D("2000-03-10"),
            documents=[doc(1, "2000-03-10"), doc(2, "2000-03-10", "claims")],
        ),
        PatientFacts("child", born=D("1995-06-15"), documents=[doc(3, "2000-03-10")]),
        PatientFacts(
            "held",
            born=D("1950-01-01"),
            documents=[doc(4, "1990-01-01")],
            held=True,
            hold_reason="plainte 2019",
        ),
    ]
    result = plan(patients, "cnil-2020", {"claims": KindRule("claims", days=90)}, D("2021-01-01"))
    assert [d.ref for d in result.destroy] == ["adult"]
    assert [d.ref for d in result.keep] == ["child"]
    assert [d.ref for d in result.review] == ["held"]
    assert [(p.ref, x.doc_id) for p, x in result.documents_to_destroy()] == [
        ("adult", 1),
        ("adult", 2),
    ]
    assert result.to_dict() == {
        "as_of": "2021-01-01",
        "profile": "cnil-2020",
        "patients": [
            {
                "ref": "adult",
                "action": "destroy",
                "kept_until": "2020-03-10",
                "last_visit": "2000-03-10",
                "rule": "cnil-2020: 20 years after the last visit",
                "reasons": [],
                "documents": [
                    {
                        "doc_id": 1,
                        "object_id": "obj1",
                        "action": "destroy",
                        "kept_until": "2020-03-10",
                        "rule": "cnil-2020: 20 years after the last visit",
                        "reason": "",
                    },
                    {
                        "doc_id": 2,
                        "object_id": "obj2",
                        "action": "destroy",
                        "kept_until": "2000-06-08",
                        "rule": "kind claims: 90d after the document date",
                        "reason": "",
                    },
                ],
            },
            {
                "ref": "child",
                "action": "keep",
                "kept_until": "2023-06-15",
                "last_visit": "2000-03-10",
                "rule": "cnil-2020: until the 28th birthday",
                "reasons": [],
                "documents": [
                    {
                        "doc_id": 3,
                        "object_id": "obj3",
                        "action": "keep",
                        "kept_until": "2023-06-15",
                        "rule": "cnil-2020: until the 28th birthday",
                        "reason": "",
                    },
                ],
            },
            {
                "ref": "held",
                "action": "review",
                "kept_until": "2010-01-01",
                "last_visit": "1990-01-01",
                "rule": "cnil-2020: 20 years after the last visit",
                "reasons": ["legal hold: plainte 2019"],
                "documents": [
                    {
                        "doc_id": 4,
                        "object_id": "obj4",
                        "action": "review",
                        "kept_until": "2010-01-01",
                        "rule": "cnil-2020: 20 years after the last visit",
                        "reason": "legal hold: plainte 2019",
                    },
                ],
            },
        ],
    }


# --- properties ----------------------------------------------------------------------------------

opt_dates = st.none() | dates
kinds = st.sampled_from([None, "letter", "claims", "accounting", "letters"])
documents = st.lists(
    st.builds(DocumentFacts, st.integers(0, 10_000), st.just("o"), kinds, opt_dates),
    max_size=4,
    unique_by=lambda d: d.doc_id,
)
patients = st.builds(
    PatientFacts,
    st.just("p"),
    born=opt_dates,
    died=opt_dates,
    last_visit=opt_dates,
    held=st.booleans(),
    hold_reason=st.none() | st.text(max_size=10),
    documents=documents,
)
profiles = st.sampled_from(sorted(PROFILES))
as_ofs = st.dates(min_value=date(1950, 1, 1), max_value=date(2200, 12, 31))


def run(p: PatientFacts, profile: str, as_of: date) -> PatientDecision:
    return plan([p], profile, KINDS, as_of).decisions[0]


def destroyed(d: PatientDecision) -> set[int | str]:
    return {x.doc_id for x in d.documents_to_destroy}


def eff_last_visit(p: PatientFacts) -> date | None:
    ds = [x.document_date for x in p.documents if x.document_date] + (
        [p.last_visit] if p.last_visit else []
    )
    return max(ds) if ds else None


def earliest_date(p: PatientFacts) -> date | None:
    ds = [x.document_date for x in p.documents if x.document_date] + (
        [p.last_visit] if p.last_visit else []
    )
    return min(ds) if ds else None


@settings(max_examples=300, deadline=None)
@given(patients, profiles, as_ofs, as_ofs)
def test_destroyed_stays_destroyed_for_later_as_of(
    p: PatientFacts, profile: str, a1: date, a2: date
) -> None:
    early, late = sorted((a1, a2))
    d1, d2 = run(p, profile, early), run(p, profile, late)
    assert destroyed(d1) <= destroyed(d2)
    if d1.action is Action.DESTROY:
        assert d2.action is Action.DESTROY


@settings(max_examples=300, deadline=None)
@given(patients, profiles, as_ofs, dates, dates)
def test_a_newer_visit_never_shortens_retention(
    p: PatientFacts, profile: str, as_of: date, v1: date, v2: date
) -> None:
    v1, v2 = sorted((v1, v2))
    p1 = dataclasses.replace(p, last_visit=v1)
    p2 = dataclasses.replace(p, last_visit=v2)
    lv1 = eff_last_visit(p1)
    assert lv1 is not None
    # a birth date after the first last visit is inconsistent there (reviewed), not at the newer
    assume(p.born is None or p.born <= lv1)
    # under r1112-7 a newer visit can bring a death within 10 years, and the death rule then
    # replaces the 28th-birthday rule: see test_r1112_a_newer_visit_can_shorten_through_the_death
    assume(profile != "r1112-7" or p.died is None)
    d1, d2 = run(p1, profile, as_of), run(p2, profile, as_of)
    assert destroyed(d2) <= destroyed(d1)
    if d1.kept_until is not None and d2.kept_until is not None:
        assert d2.kept_until >= d1.kept_until
    if d2.action is Action.DESTROY:
        assert d1.action is Action.DESTROY


@settings(deadline=None)
@given(patients, profiles, as_ofs, st.text(max_size=10))
def test_a_hold_never_destroys(p: PatientFacts, profile: str, as_of: date, reason: str) -> None:
    free = run(dataclasses.replace(p, held=False), profile, as_of)
    held = run(dataclasses.replace(p, held=True, hold_reason=reason), profile, as_of)
    assert destroyed(held) == set() <= destroyed(free)
    assert held.action is Action.REVIEW
    assert held.reasons[0].startswith("legal hold: ")


@settings(max_examples=300, deadline=None)
@given(patients, profiles, as_ofs, st.data())
def test_an_unknown_birth_date_never_destroys_more_than_any_plausible_one(
    p: PatientFacts, profile: str, as_of: date, data: st.DataObject
) -> None:
    lv, first = eff_last_visit(p), earliest_date(p)
    assume(lv is not None and first is not None)
    assert lv is not None and first is not None
    latest = min(lv, first + PRENATAL_MARGIN)  # a consistent birth date
    born = data.draw(st.dates(min_value=date(1850, 1, 1), max_value=latest))
    unknown = run(dataclasses.replace(p, born=None), profile, as_of)
    known = run(dataclasses.replace(p, born=born), profile, as_of)
    assert destroyed(unknown) <= destroyed(known)
    if unknown.action is Action.DESTROY:
        assert known.action is Action.DESTROY


@settings(max_examples=300, deadline=None)
@given(patients, profiles, as_ofs, st.data())
def test_an_unknown_death_date_never_destroys_more_than_any_consistent_one(
    p: PatientFacts, profile: str, as_of: date, data: st.DataObject
) -> None:
    lv = eff_last_visit(p)
    died = data.draw(st.dates(min_value=lv or date(1900, 1, 1), max_value=date(2150, 1, 1)))
    unknown = run(dataclasses.replace(p, died=None), profile, as_of)
    known = run(dataclasses.replace(p, died=died), profile, as_of)
    assert destroyed(unknown) <= destroyed(known)


@settings(deadline=None)
@given(patients, profiles, as_ofs, st.data())
def test_an_unknown_document_date_never_destroys_more(
    p: PatientFacts, profile: str, as_of: date, data: st.DataObject
) -> None:
    assume(p.documents)
    i = data.draw(st.integers(0, len(p.documents) - 1))
    when = data.draw(dates)
    docs = list(p.documents)
    docs[i] = dataclasses.replace(docs[i], document_date=None)
    unknown = run(dataclasses.replace(p, documents=docs), profile, as_of)
    docs[i] = dataclasses.replace(docs[i], document_date=when)
    known = run(dataclasses.replace(p, documents=docs), profile, as_of)
    assert destroyed(unknown) <= destroyed(known)


@settings(max_examples=300, deadline=None)
@given(patients, as_ofs)
def test_cnil_2020_never_destroys_before_20_years_and_the_28th_birthday(
    p: PatientFacts, as_of: date
) -> None:
    d = run(p, "cnil-2020", as_of)
    lv = eff_last_visit(p)
    if lv is None:
        assert not any(x.rule.startswith("cnil") for x in d.documents if x.action is Action.DESTROY)
        return
    assert d.kept_until is not None and d.kept_until >= add_years(lv, 20)
    if p.born is not None:
        assert d.kept_until >= add_years(p.born, 28)
    else:  # kept at least until the latest plausible 28th birthday
        first = earliest_date(p)
        assert first is not None
        assert d.kept_until >= add_years(first + PRENATAL_MARGIN, 28)
    for x in d.documents:
        if x.rule.startswith("cnil") and x.action is Action.DESTROY:
            assert as_of > add_years(lv, 20)
            if p.born is not None:
                assert as_of > add_years(p.born, 28)


@settings(max_examples=300, deadline=None)
@given(patients, as_ofs)
def test_r1112_7_follows_the_death_rule_and_is_otherwise_cnil(p: PatientFacts, as_of: date) -> None:
    d = run(p, "r1112-7", as_of)
    cnil = run(p, "cnil-2020", as_of)
    lv = eff_last_visit(p)
    if lv is None:
        return
    assert d.kept_until is not None and cnil.kept_until is not None
    if p.died is not None and lv <= p.died < add_years(lv, 10):
        assert d.kept_until == add_years(p.died, 10)
        assert d.kept_until >= add_years(lv, 10)
        assert d.kept_until <= cnil.kept_until
    elif p.died is None or p.died >= lv:
        assert d.kept_until == cnil.kept_until
    if p.died is not None and p.died >= lv:
        # never earlier than both 10 years after the death and 20 years after the last visit
        assert d.kept_until >= min(add_years(p.died, 10), add_years(lv, 20))
    for x in d.documents:
        if x.rule.startswith("r1112") and x.action is Action.DESTROY:
            assert as_of > add_years(lv, 10)
            if p.died is not None and p.died < add_years(lv, 10):
                assert as_of > add_years(p.died, 10)


@settings(deadline=None)
@given(patients, profiles, as_ofs)
def test_kind_rule_documents_are_destroyed_only_after_their_rule(
    p: PatientFacts, profile: str, as_of: date
) -> None:
    d = run(p, profile, as_of)
    lv = eff_last_visit(p)
    for x in d.documents:
        rule = KINDS.get(x.document.kind or "")
        if rule is None or x.action is not Action.DESTROY:
            continue
        anchor = x.document.document_date if rule.after == "document" else lv
        assert anchor is not None and as_of > rule.duration.add_to(anchor)
