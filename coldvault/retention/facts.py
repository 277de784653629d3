"""A patient's facts for the retention rules: birth, death, last visit (pure; no I/O)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date


@dataclass(frozen=True)
class Facts:
    born: date | None = None
    died: date | None = None
    last_visit: date | None = None

    def to_json(self) -> str:
        return json.dumps(
            {k: v.isoformat() if v else None for k, v in self.__dict__.items()}, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str | None) -> Facts:
        if not text:
            return cls()
        raw = json.loads(text)
        return cls(**{k: date.fromisoformat(v) if v else None for k, v in raw.items()})

    def merged(self, other: Facts) -> Facts:
        return Facts(
            other.born or self.born, other.died or self.died, other.last_visit or self.last_visit
        )


def fact_problems(facts: Facts, today: date | None = None) -> list[str]:
    """What is impossible in these facts (dates in the future, in the wrong order)."""
    out: list[str] = []
    named = (("born", facts.born), ("died", facts.died), ("last_visit", facts.last_visit))
    for name, value in named:
        if today is not None and value is not None and value > today:
            out.append(f"{name}: {value.isoformat()} is in the future")
    born, died, last_visit = facts.born, facts.died, facts.last_visit
    if born and died and died < born:
        out.append("died before being born")
    if born and last_visit and last_visit < born:
        out.append("last visit before the birth date")
    if died and last_visit and last_visit > died:
        out.append("last visit after the death date")
    return out
