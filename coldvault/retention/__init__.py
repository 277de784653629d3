"""Retention: profiles and the pure purge planner (``rules``), patient facts from a practice
software's CSV export (``facts_csv``), and the destruction record (``record``)."""

from coldvault.retention.rules import (
    DEFAULT_PROFILE,
    PROFILES,
    Action,
    DocumentDecision,
    DocumentFacts,
    Duration,
    KindRule,
    PatientDecision,
    PatientFacts,
    Profile,
    PurgePlan,
    RetentionSettings,
    get_profile,
    parse_duration,
    parse_kind_rule,
    plan,
    settings_from_config,
)

__all__ = [
    "DEFAULT_PROFILE",
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
    "get_profile",
    "parse_duration",
    "parse_kind_rule",
    "plan",
    "settings_from_config",
]
