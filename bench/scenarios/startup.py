"""CLI start-up: ``coldvault --version`` against a bare ``python -c pass``."""

from __future__ import annotations

from pathlib import Path

from bench.common import PYTHON, ScenarioResult, measure, paired_runs


def _coldvault() -> list[str]:
    script = Path(PYTHON).parent / "coldvault"
    if script.exists():
        return [str(script)]
    return [PYTHON, "-c", "from coldvault.cli.main import entry; entry()"]


def run(ctx) -> ScenarioResult:  # type: ignore[no-untyped-def]
    res = ScenarioResult("startup", "CLI start-up (coldvault --version)")
    contenders = [
        ("coldvault --version", lambda: measure([*_coldvault(), "--version"])),
        ("coldvault ls --help", lambda: measure([*_coldvault(), "ls", "--help"])),
        ("python -c pass", lambda: measure([PYTHON, "-c", "pass"])),
    ]
    paired_runs(max(5, ctx.runs * 3), contenders, res, None, lambda s: None)
    c = res.contenders.get("coldvault --version")
    if c and c.runs:
        res.metrics["startup_ms"] = round(c.wall * 1000, 1)
    res.ratio("coldvault --version vs python -c pass", "coldvault --version", "python -c pass")
    return res
