"""Retention rules and the pure purge planner.

``plan(patients, profile, kind_rules, as_of)`` decides, for every patient and every document,
whether the record may be destroyed today. It reads nothing and writes nothing: the purge command
feeds it facts from the catalog and acts on the plan it returns. Everything below follows
principle 7 of the design brief: **when in doubt, keep and report**. A decision is one of

* ``DESTROY`` -- the retention period is over and nothing known could lengthen it;
* ``KEEP`` -- not expired yet (``kept_until`` says until when);
* ``REVIEW`` -- kept, and listed for a human decision with the reason.

Profiles (per patient; every new visit restarts the clock for the whole file)
----------------------------------------------------------------------------
* ``cnil-2020`` (default): 20 years after the last visit; if that ends before the patient's 28th
  birthday, kept until the 28th birthday.
* ``r1112-7``: the same, plus the death rule of art. R1112-7 CSP: if the patient died less than
  10 years after the last visit, the file is kept 10 years after the death. The article says "dans
  tous les cas", so this rule replaces the two others, which is why it can shorten retention and is
  opt-in. "Less than 10 years" is strict: a death exactly 10 years after the last visit keeps the
  other rules. Because the death rule also replaces the 28th-birthday rule, under this profile a
  later visit can even shorten retention (a child seen at 5 who dies 10 years later is kept until
  28; with one more visit the year before the death, only until 10 years after the death).
* ``prudent-30``: 30 years after the last visit. (The 28th-birthday rule is moot: anyone born on
  or before the last visit is more than 28 on its 30th anniversary.)

Counting days
-------------
* ``kept_until`` is the **last day** of retention, inclusive ("conservé jusqu'au"). A record is
  destroyed when ``as_of > kept_until``, i.e. from the day after. Twenty years after a visit on
  2000-03-10 is 2020-03-10: kept on that day, destroyable on 2020-03-11. Likewise the file is kept
  on the 28th birthday itself and 10 years after the death includes the anniversary of the death.
* Adding years or months to a day that does not exist in the target month rolls forward to the
  first day of the next month: 29 February + 1 year is **1 March**, 31 January + 1 month is
  1 March: never earlier than the true anniversary. Rolling back to 28 February would shorten
  retention by a day; rolling forward never does.
* Dates beyond year 9999 saturate at ``date.max`` (never expires).

The last visit
--------------
The effective last visit is the **later** of the given last-visit date and the date of the
patient's newest document (of any kind). A stale last-visit date in the practice software, or a
letter that arrived after the last consultation, can then only lengthen retention, never shorten
it. With neither, nothing can be computed: ``REVIEW`` ("no dates at all"). A document whose date is
unknown could be the newest one, so a patient-rule expiry that depends on the last visit is never
acted on while such a document exists (``REVIEW`` once the known dates say it expired).

Unknown birth date
------------------
The 28th-birthday rule lengthens retention only if the patient was under 8 at the last visit
(``born + 28y > last_visit + 20y``). Without a birth date that cannot be ruled out outright, but the
documents bound it: the patient existed when their earliest document or visit was dated, give or
take a pregnancy for documents written before birth. So ``born <= earliest_known_date +
PRENATAL_MARGIN`` (one year), and the 28th birthday falls at the latest on ``add_years(earliest +
PRENATAL_MARGIN, 28)``. Hence, with an unknown birth date:

* ``as_of <= last_visit + 20y``: ``KEEP`` (not expired under any birth date);
* ``last_visit + 20y < as_of <= latest possible 28th birthday``: ``REVIEW`` ("birth date unknown and
  the 28th-birthday rule could apply");
* later: ``DESTROY``; every plausible birth date has passed its 28th birthday.

``kept_until`` is then the latest plausible expiry (the one the planner acts on). A patient whose
first document is at least 9 years older than the last visit is never put to review for this. Under
``r1112-7`` a known death less than 10 years after the last visit makes the birth date irrelevant.
The assumption is that document dates are not earlier than the real documents; dates come from
the practice's own exports or from the ingest time, which is later, never earlier.

Inconsistent dates
------------------
When the profile reads the death date (``r1112-7``), a death before the last visit is inconsistent:
some date is wrong and the short death rule cannot be trusted. When the profile reads the birth
date, a birth after the last visit is inconsistent too. Either gives ``REVIEW`` as soon as the
earliest plausible expiry has passed, and stays ``REVIEW`` until a human corrects the facts.
Profiles that do not read a date ignore its inconsistencies, because no error in that date can
shorten their result.

Document kinds with their own rule
----------------------------------
``kind_rules`` maps a document kind (``accounting``, ``claims``...) to a :class:`KindRule`: a
duration after the document's date (``after="document"``) or after the patient's effective last
visit (``after="last_visit"``). Such documents expire on their own rule, **independently** of the
patient rule (earlier or later), and the birthday and death rules do not apply to them: the rule is
the practice's explicit choice for non-medical papers. Documents of any other kind follow the
patient rule. The plan therefore holds a decision per document:

* ``PatientDecision.action == DESTROY`` means the **whole** file goes: every document is
  destroyable and the patient rule has expired, so the patient key can be crypto-shredded.
* Otherwise ``PatientDecision.documents_to_destroy`` may still list documents whose kind rule
  expired (claims copies after 90 days). Their objects are deleted, but the patient key survives for
  the rest of the file, so this is deletion, not cryptographic erasure.
* A kind rule that is not a valid :class:`KindRule` for that kind puts the documents of that kind in
  ``REVIEW`` ("unknown document kind rule"), and a document of a kind rule without a date is
  ``REVIEW`` as well.

Holds and unknown profiles
--------------------------
A legal hold puts the patient and every document in ``REVIEW`` ("legal hold: <reason>") whatever
the dates, until released. An unknown profile name puts everything in ``REVIEW``: a broken
configuration destroys nothing.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Any, Literal

from coldvault.errors import ConfigError, VaultError

__all__ = [
    "DEFAULT_PROFILE",
    "PRENATAL_MARGIN",
    "PROFILES",
    "Action",
    "DocumentDecision",
    "DocumentFacts",
    "Duration",
    "KindRule",
    "PatientDecision",
    "PatientFacts",
    "Profile",
    "PurgePlan",
    "RetentionSettings",
    "add_months",
    "add_years",
    "get_profile",
    "parse_duration",
    "parse_kind_rule",
    "plan",
    "settings_from_config",
]

#: How long before birth a document about the patient can be dated (pregnancy, with room).
PRENATAL_MARGIN = timedelta(days=366)

# Upper bounds that keep durations meaningful (and dates inside ``date``'s range).
MAX_YEARS = 200
MAX_MONTHS = MAX_YEARS * 12
MAX_DAYS = MAX_YEARS * 366


# --- date arithmetic ---------------------------------------------------------------------------


def add_months(d: date, months: int) -> date:
    """``d`` plus ``months`` calendar months; a day missing in the target month rolls forward to
    the first of the next month (31 Jan + 1m = 1 Mar), so retention is never shortened.
    Saturates at ``date.max``."""
    if months < 0:
        raise ValueError("add_months only adds")
    total = d.year * 12 + (d.month - 1) + months
    year, month0 = divmod(total, 12)
    if year > date.max.year:
        return date.max
    month = month0 + 1
    last = calendar.monthrange(year, month)[1]
    if d.day <= last:
        return date(year, month, d.day)
    return _add_days(date(year, month, last), 1)


def add_years(d: date, years: int) -> date:
    """``d`` plus ``years``; 29 February lands on 1 March in a common year."""
    return add_months(d, 12 * years)


def _add_days(d: date, days: int) -> date:
    try:
        return d + timedelta(days=days)
    except OverflowError:
        return date.max


# --- durations and rules -------------------------------------------------------------------------

_DURATION_RE = re.compile(r"(?:(\d+)y)?(?:(\d+)m)?(?:(\d+)d)?")


@dataclass(frozen=True, order=True)
class Duration:
    """A calendar duration: years and months are calendar units, days are days."""

    years: int = 0
    months: int = 0
    days: int = 0

    def __post_init__(self) -> None:
        for name, value, limit in (
            ("years", self.years, MAX_YEARS),
            ("months", self.months, MAX_MONTHS),
            ("days", self.days, MAX_DAYS),
        ):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"A retention duration's {name} must be a whole number.")
            if value < 0 or value > limit:
                raise ConfigError(
                    f"A retention duration's {name} must be between 0 and {limit}, not {value}."
                )
        if self.years == self.months == self.days == 0:
            raise ConfigError("A retention duration cannot be zero.")

    def add_to(self, d: date) -> date:
        """The date ``d`` plus this duration (months first, then days; never rolls back)."""
        return _add_days(add_months(d, self.years * 12 + self.months), self.days)

    def __str__(self) -> str:
        return "".join(
            f"{v}{u}" for v, u in ((self.years, "y"), (self.months, "m"), (self.days, "d")) if v
        )


def parse_duration(text: object, key: str = "duration") -> Duration:
    """Parse ``"10y"``, ``"6m"``, ``"90d"`` or a combination in that order (``"1y6m"``).

    ``key`` names the config key in the error message. Raises :class:`ConfigError`.
    """
    hint = 'Write a number followed by y (years), m (months) or d (days), e.g. "10y" or "90d".'
    if not isinstance(text, str):
        raise ConfigError(
            f'{key}: a retention duration must be a quoted text like "10y", not {text!r}.',
            hint=hint,
        )
    s = text.strip()
    m = _DURATION_RE.fullmatch(s)
    if not s or m is None:
        raise ConfigError(f"{key}: {text!r} is not a retention duration.", hint=hint)
    years, months, days = (int(g) if g else 0 for g in m.groups())
    try:
        return Duration(years, months, days)
    except ConfigError as exc:
        raise ConfigError(f"{key}: {exc.message}", hint=hint) from None


AFTER_VALUES: tuple[str, ...] = ("document", "last_visit")


@dataclass(frozen=True)
class KindRule:
    """Retention of the documents of one kind: a duration after the document's own date
    (``after="document"``) or after the patient's last visit (``after="last_visit"``)."""

    kind: str
    years: int = 0
    months: int = 0
    days: int = 0
    after: Literal["document", "last_visit"] = "document"

    def __post_init__(self) -> None:
        if not isinstance(self.kind, str) or not self.kind.strip():
            raise ConfigError("A document kind rule needs a kind name.")
        if self.after not in AFTER_VALUES:
            raise ConfigError(
                f'Document kind {self.kind!r}: \'after\' must be "document" or "last_visit",'
                f" not {self.after!r}."
            )
        self.duration  # noqa: B018 -- validates the numbers

    @property
    def duration(self) -> Duration:
        return Duration(self.years, self.months, self.days)

    @classmethod
    def of(
        cls,
        kind: str,
        duration: Duration | str,
        after: Literal["document", "last_visit"] = "document",
    ) -> KindRule:
        d = (
            parse_duration(duration, f"retention.kinds.{kind}")
            if isinstance(duration, str)
            else duration
        )
        return cls(kind, d.years, d.months, d.days, after)

    def describe(self) -> str:
        anchor = "the document date" if self.after == "document" else "the last visit"
        return f"kind {self.kind}: {self.duration} after {anchor}"


_AFTER_RE = re.compile(r"(?P<duration>\S+)(?:\s+after\s+(?P<after>\S+))?")


def parse_kind_rule(kind: str, text: object, key: str | None = None) -> KindRule:
    """Parse a ``[retention.kinds]`` value: ``"10y"`` (after the document date) or
    ``"6y after last_visit"`` / ``"90d after document"``. Raises :class:`ConfigError`."""
    key = key or f"retention.kinds.{kind}"
    if not isinstance(text, str):
        return KindRule.of(kind, parse_duration(text, key))
    m = _AFTER_RE.fullmatch(text.strip())
    if m is None:
        raise ConfigError(
            f"{key}: {text!r} is not a retention rule.",
            hint='Write "10y", or "6y after last_visit", or "90d after document".',
        )
    after = m.group("after") or "document"
    if after not in AFTER_VALUES:
        raise ConfigError(
            f'{key}: a rule counts "after document" or "after last_visit", not {after!r}.',
            hint='Write "10y", or "6y after last_visit", or "90d after document".',
        )
    return KindRule.of(kind, parse_duration(m.group("duration"), key), after)  # type: ignore[arg-type]


# --- profiles ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """A named patient retention rule."""

    name: str
    description: str
    years_after_last_visit: int
    until_birthday: int | None = None  # kept at least until this birthday (28)
    death_rule_years: int | None = None  # R1112-7: died < N years after last visit -> N after death


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            "cnil-2020",
            "20 years after the last visit, and at least until the 28th birthday",
            20,
            until_birthday=28,
        ),
        Profile(
            "r1112-7",
            "20 years after the last visit, at least until the 28th birthday;"
            " 10 years after a death less than 10 years after the last visit",
            20,
            until_birthday=28,
            death_rule_years=10,
        ),
        Profile("prudent-30", "30 years after the last visit", 30),
    )
}
DEFAULT_PROFILE = "cnil-2020"


def get_profile(name: str) -> Profile:
    """The profile called ``name``; :class:`ConfigError` if there is none."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"retention.profile: unknown retention profile {name!r}.",
            hint="Use one of: " + ", ".join(PROFILES) + ".",
        ) from None


# --- configuration ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionSettings:
    """The ``[retention]`` table of the configuration, validated."""

    profile: Profile = field(default_factory=lambda: PROFILES[DEFAULT_PROFILE])
    kinds: Mapping[str, KindRule] = field(default_factory=dict)


def settings_from_config(
    table: Mapping[str, Any] | None, path: str = "retention"
) -> RetentionSettings:
    """Build :class:`RetentionSettings` from the parsed TOML ``[retention]`` table::

        [retention]
        profile = "cnil-2020"            # optional, the default
        [retention.kinds]
        accounting = "10y"               # 10 years after the document date
        claims = "90d"
        letters = "6y after last_visit"  # or "90d after document" (the default anchor)
        forms = { keep = "6y", after = "last_visit" }   # the same, as a table

    Unknown keys are rejected; every problem is listed, each with its key path, in one
    :class:`ConfigError`.
    """
    if table is None:
        return RetentionSettings()
    errors: list[str] = []
    if not isinstance(table, Mapping):
        raise ConfigError(f"{path} must be a table.")
    for key in table:
        if key not in ("profile", "kinds"):
            errors.append(f"{path}.{key}: unknown key (expected profile, kinds)")
    profile = PROFILES[DEFAULT_PROFILE]
    if "profile" in table:
        name = table["profile"]
        if isinstance(name, str) and name in PROFILES:
            profile = PROFILES[name]
        else:
            errors.append(
                f"{path}.profile: unknown retention profile {name!r}"
                f" (expected one of {', '.join(PROFILES)})"
            )
    kinds: dict[str, KindRule] = {}
    raw_kinds = table.get("kinds", {})
    if not isinstance(raw_kinds, Mapping):
        errors.append(f'{path}.kinds: must be a table of kind = "duration"')
        raw_kinds = {}
    for kind, value in raw_kinds.items():
        key = f"{path}.kinds.{kind}"
        try:
            if isinstance(value, Mapping):
                extra = sorted(set(value) - {"keep", "after"})
                if extra:
                    errors.append(
                        f"{key}: unknown key(s) {', '.join(extra)} (expected keep, after)"
                    )
                    continue
                if "keep" not in value:
                    errors.append(f"{key}: missing 'keep' (a duration such as \"10y\")")
                    continue
                after = value.get("after", "document")
                if after not in AFTER_VALUES:
                    errors.append(f'{key}.after: must be "document" or "last_visit", not {after!r}')
                    continue
                kinds[kind] = KindRule.of(kind, parse_duration(value["keep"], f"{key}.keep"), after)
            else:
                kinds[kind] = parse_kind_rule(kind, value, key)
        except ConfigError as exc:
            errors.append(exc.message if exc.message.startswith(key) else f"{key}: {exc.message}")
    if errors:
        raise ConfigError(
            "The retention settings are invalid: " + "; ".join(errors) + ".",
            hint='Example: [retention] profile = "cnil-2020", [retention.kinds] claims = "90d".',
        )
    return RetentionSettings(profile, kinds)


# --- facts and decisions -------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentFacts:
    """What the planner needs to know about one archived document."""

    doc_id: int | str
    object_id: str
    kind: str | None = None
    document_date: date | None = None


@dataclass(frozen=True)
class PatientFacts:
    """What the planner needs to know about one patient, under a pseudonymous reference."""

    ref: str
    born: date | None = None
    died: date | None = None
    last_visit: date | None = None
    held: bool = False
    hold_reason: str | None = None
    documents: Sequence[DocumentFacts] = ()


class Action(StrEnum):
    DESTROY = "destroy"
    KEEP = "keep"
    REVIEW = "review"


@dataclass(frozen=True)
class DocumentDecision:
    document: DocumentFacts
    action: Action
    kept_until: date | None  # last day of retention, inclusive; None if it cannot be established
    rule: str
    reason: str


@dataclass(frozen=True)
class PatientDecision:
    """The decision for one patient.

    ``action`` is ``DESTROY`` only when the whole file goes (key included); ``REVIEW`` when the
    patient rule or any document needs a human; else ``KEEP`` -- with possibly some documents in
    ``documents_to_destroy`` under their kind rule. ``kept_until`` and ``rule`` are the patient
    rule's; each document carries its own.
    """

    ref: str
    action: Action
    kept_until: date | None
    rule: str
    reasons: tuple[str, ...]
    documents: tuple[DocumentDecision, ...]
    last_visit: date | None = None  # the effective last visit used

    @property
    def destroy_key(self) -> bool:
        """True when the patient key may be crypto-shredded (the whole file is destroyed)."""
        return self.action is Action.DESTROY

    @property
    def documents_to_destroy(self) -> tuple[DocumentFacts, ...]:
        return tuple(d.document for d in self.documents if d.action is Action.DESTROY)

    @property
    def documents_to_review(self) -> tuple[DocumentFacts, ...]:
        return tuple(d.document for d in self.documents if d.action is Action.REVIEW)

    @property
    def documents_kept(self) -> tuple[DocumentFacts, ...]:
        return tuple(d.document for d in self.documents if d.action is not Action.DESTROY)


@dataclass(frozen=True)
class PurgePlan:
    as_of: date
    profile: str
    decisions: tuple[PatientDecision, ...]

    def _with(self, action: Action) -> tuple[PatientDecision, ...]:
        return tuple(d for d in self.decisions if d.action is action)

    @property
    def destroy(self) -> tuple[PatientDecision, ...]:
        """Patients whose whole file (and key) is destroyed."""
        return self._with(Action.DESTROY)

    @property
    def keep(self) -> tuple[PatientDecision, ...]:
        return self._with(Action.KEEP)

    @property
    def review(self) -> tuple[PatientDecision, ...]:
        return self._with(Action.REVIEW)

    def documents_to_destroy(self) -> Iterator[tuple[PatientDecision, DocumentFacts]]:
        """Every document to destroy, whole files and kind-rule expiries alike."""
        for dec in self.decisions:
            for doc in dec.documents_to_destroy:
                yield dec, doc

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (dates as ISO text), stable for stored expected plans."""

        def iso(d: date | None) -> str | None:
            return d.isoformat() if d else None

        return {
            "as_of": self.as_of.isoformat(),
            "profile": self.profile,
            "patients": [
                {
                    "ref": p.ref,
                    "action": p.action.value,
                    "kept_until": iso(p.kept_until),
                    "last_visit": iso(p.last_visit),
                    "rule": p.rule,
                    "reasons": list(p.reasons),
                    "documents": [
                        {
                            "doc_id": d.document.doc_id,
                            "object_id": d.document.object_id,
                            "action": d.action.value,
                            "kept_until": iso(d.kept_until),
                            "rule": d.rule,
                            "reason": d.reason,
                        }
                        for d in p.documents
                    ],
                }
                for p in self.decisions
            ],
        }


# --- the planner ---------------------------------------------------------------------------------


def _day(d: date | None) -> date | None:
    """Accept datetimes too (comparing a datetime with a date raises)."""
    if isinstance(d, datetime):
        return d.date()
    return d


@dataclass(frozen=True)
class _RuleResult:
    action: Action
    kept_until: date | None
    rule: str
    reasons: tuple[str, ...]


def _decide(
    as_of: date, kept_until: date, earliest: date, doubts: list[str], resolved: bool
) -> Action:
    """``kept_until``: the expiry acted on; ``earliest``: the earliest plausible expiry.

    A doubt matters only once some plausible reading says the record expired; ``resolved`` doubts
    (unknown birth date) end when every reading agrees, unresolved ones (inconsistent dates) never.
    """
    if not doubts:
        return Action.DESTROY if as_of > kept_until else Action.KEEP
    if as_of <= earliest:
        return Action.KEEP
    if resolved and as_of > kept_until:
        return Action.DESTROY
    return Action.REVIEW


def _patient_rule(
    profile: Profile,
    facts: PatientFacts,
    last_visit: date | None,
    earliest_evidence: date | None,
    undated_documents: int,
    as_of: date,
) -> _RuleResult:
    name = profile.name
    if last_visit is None:
        return _RuleResult(Action.REVIEW, None, name, ("no dates at all",))
    born, died = _day(facts.born), _day(facts.died)
    base = add_years(last_visit, profile.years_after_last_visit)
    kept = base
    rule = f"{name}: {profile.years_after_last_visit} years after the last visit"
    earliest = base  # earliest plausible expiry
    unresolved: list[str] = []
    resolved: list[str] = []

    death_rule = False
    if profile.death_rule_years is not None and died is not None:
        limit = add_years(last_visit, profile.death_rule_years)
        if died < last_visit:
            unresolved.append("death date before the last visit: the dates are inconsistent")
            earliest = min(earliest, add_years(died, profile.death_rule_years))
        elif died < limit:
            death_rule = True
            kept = earliest = add_years(died, profile.death_rule_years)
            rule = f"{name}: {profile.death_rule_years} years after the death"

    if profile.until_birthday is not None and not death_rule:
        if born is not None:
            if born > last_visit:
                unresolved.append("birth date after the last visit: the dates are inconsistent")
            birthday = add_years(born, profile.until_birthday)
            if birthday > kept:
                kept = birthday
                rule = f"{name}: until the {_ordinal(profile.until_birthday)} birthday"
        else:
            assert earliest_evidence is not None  # there is a last visit
            latest_birth = _add_days(earliest_evidence, PRENATAL_MARGIN.days)
            worst = add_years(latest_birth, profile.until_birthday)
            if worst > kept:
                kept = worst
                rule = (
                    f"{name}: until the latest possible {_ordinal(profile.until_birthday)}"
                    " birthday (birth date unknown)"
                )
                resolved.append(
                    f"birth date unknown and the {_ordinal(profile.until_birthday)}-birthday rule"
                    " could apply"
                )

    if undated_documents:
        unresolved.append(
            f"{undated_documents} document(s) without a date: the last visit cannot be established"
        )
    doubts = unresolved + resolved
    action = _decide(as_of, kept, min(earliest, kept), doubts, resolved=not unresolved)
    reasons = tuple(doubts) if action is Action.REVIEW else ()
    return _RuleResult(action, kept, rule, reasons)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _kind_rule_decision(
    doc: DocumentFacts,
    rule: object,
    last_visit: date | None,
    undated_documents: int,
    as_of: date,
) -> DocumentDecision:
    kind = doc.kind
    if not isinstance(rule, KindRule) or rule.kind != kind:
        return DocumentDecision(
            doc, Action.REVIEW, None, f"kind {kind}", f"unknown document kind rule for {kind!r}"
        )
    label = rule.describe()
    if rule.after == "document":
        anchor = _day(doc.document_date)
        if anchor is None:
            return DocumentDecision(doc, Action.REVIEW, None, label, "document date unknown")
        kept = rule.duration.add_to(anchor)
        action = Action.DESTROY if as_of > kept else Action.KEEP
        return DocumentDecision(doc, action, kept, label, "")
    if last_visit is None:
        return DocumentDecision(doc, Action.REVIEW, None, label, "no dates at all")
    kept = rule.duration.add_to(last_visit)
    if as_of <= kept:
        return DocumentDecision(doc, Action.KEEP, kept, label, "")
    if undated_documents:
        return DocumentDecision(
            doc, Action.REVIEW, kept, label, "a document without a date: last visit uncertain"
        )
    return DocumentDecision(doc, Action.DESTROY, kept, label, "")


def _plan_patient(
    facts: PatientFacts,
    profile: Profile | None,
    profile_name: str,
    kind_rules: Mapping[str, KindRule],
    as_of: date,
) -> PatientDecision:
    docs = tuple(facts.documents)
    dated = [d for d in (_day(x.document_date) for x in docs) if d is not None]
    undated = len(docs) - len(dated)
    given = _day(facts.last_visit)
    candidates = [*dated, *([given] if given is not None else [])]
    last_visit = max(candidates) if candidates else None
    earliest_evidence = min(candidates) if candidates else None

    if profile is None:
        reason = f"unknown profile {profile_name!r}"
        return PatientDecision(
            facts.ref,
            Action.REVIEW,
            None,
            profile_name,
            (reason,),
            tuple(DocumentDecision(d, Action.REVIEW, None, profile_name, reason) for d in docs),
            last_visit,
        )

    pr = _patient_rule(profile, facts, last_visit, earliest_evidence, undated, as_of)
    hold = None
    if facts.held:
        hold = f"legal hold: {(facts.hold_reason or '').strip() or '(no reason recorded)'}"
        pr = _RuleResult(Action.REVIEW, pr.kept_until, pr.rule, (hold, *pr.reasons))

    decisions: list[DocumentDecision] = []
    for doc in docs:
        if doc.kind is not None and doc.kind in kind_rules:
            dd = _kind_rule_decision(doc, kind_rules[doc.kind], last_visit, undated, as_of)
            if hold is not None:
                dd = DocumentDecision(doc, Action.REVIEW, dd.kept_until, dd.rule, hold)
        else:
            reason = "; ".join(pr.reasons) if pr.action is Action.REVIEW else ""
            dd = DocumentDecision(doc, pr.action, pr.kept_until, pr.rule, reason)
        decisions.append(dd)

    reasons = list(pr.reasons)
    for dd in decisions:
        if dd.action is Action.REVIEW and dd.rule != pr.rule and dd.reason not in reasons:
            reasons.append(f"document {dd.document.doc_id}: {dd.reason}")
    if pr.action is Action.REVIEW or any(d.action is Action.REVIEW for d in decisions):
        action = Action.REVIEW
    elif pr.action is Action.DESTROY and all(d.action is Action.DESTROY for d in decisions):
        action = Action.DESTROY
    else:
        action = Action.KEEP
    return PatientDecision(
        facts.ref,
        action,
        pr.kept_until,
        pr.rule,
        tuple(dict.fromkeys(reasons)),
        tuple(decisions),
        last_visit,
    )


def plan(
    patients: Sequence[PatientFacts],
    profile: Profile | str,
    kind_rules: Mapping[str, KindRule],
    as_of: date,
) -> PurgePlan:
    """Decide, for every patient and document, destroy / keep / review on ``as_of``.

    Pure: the same facts give the same plan, in the order of ``patients``. ``profile`` is a
    :class:`Profile` or a profile name (an unknown name reviews everything). Raises
    :class:`VaultError` if a patient reference appears twice (the facts are damaged).
    """
    day = _day(as_of)
    assert day is not None
    if isinstance(profile, Profile):
        prof: Profile | None = profile
        name = profile.name
    else:
        prof = PROFILES.get(profile) if isinstance(profile, str) else None
        name = str(profile)
    seen: set[str] = set()
    for p in patients:
        if p.ref in seen:
            raise VaultError(
                "The purge cannot be planned: a patient reference appears twice in the catalog.",
                hint="Run `coldvault verify` and report the problem.",
            )
        seen.add(p.ref)
    decisions = tuple(_plan_patient(p, prof, name, kind_rules, day) for p in patients)
    return PurgePlan(day, name, decisions)
