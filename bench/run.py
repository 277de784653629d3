"""The one command: ``python -m bench.run [--quick | --tiny] [options]``.

Generates (or reuses) the seeded corpus, runs every scenario with coldvault and its anchors
side by side, and writes the figures as JSON and into docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import signal
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import ROOT, ScenarioResult, dump_json, machine_info, tree_size
from bench.corpus import PRESETS, generate
from bench.disk import image_size, workstation_disk
from bench.scenarios import Context, cpu_count

SCENARIOS = ["startup", "ingest", "small", "bigfile", "sync", "restore", "idle"]

#: preset -> (catalog documents for the restore scenario, idle window s, files in watched folders)
PRESET_EXTRA = {
    "full": (2_000_000, 60.0, 10_000),
    "quick": (200_000, 10.0, 1_000),
    "tiny": (2_000, 1.0, 20),
}


def parse_size(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="~100 MB corpus, for development")
    size.add_argument("--tiny", action="store_true", help="a few MB: checks the harness runs")
    p.add_argument("--big-size", type=parse_size, help="size of the big file (e.g. 5G)")
    p.add_argument("--runs", type=int, help="runs per contender (median; default 3, tiny 1)")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--catalog-docs", type=int, help="documents in the restore catalog")
    p.add_argument("--idle-seconds", type=float, help="idle daemon window")
    p.add_argument("--idle-files", type=int, help="files in the watched folder at start-up")
    p.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    p.add_argument("--workdir", type=Path, default=Path("/var/tmp/coldvault-bench"))
    p.add_argument(
        "--out", type=Path, help="markdown report (default docs/performance.md; '-' for none)"
    )
    p.add_argument("--json", type=Path, help="JSON results (default WORKDIR/results.json)")
    a = p.parse_args(argv)

    preset = "tiny" if a.tiny else "quick" if a.quick else "full"
    spec = replace(PRESETS[preset], seed=a.seed)
    if a.big_size:
        spec = replace(spec, big_size=a.big_size)
    docs, idle_s, idle_files = PRESET_EXTRA[preset]
    runs = a.runs or (1 if preset == "tiny" else 3)
    a.workdir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", file=sys.stderr, flush=True)

    corpus = generate(a.workdir, spec, log)
    wanted = a.only.split(",") if a.only else SCENARIOS
    for name in wanted:
        if name not in SCENARIOS:
            p.error(f"unknown scenario {name!r}")
    results: list[ScenarioResult] = []
    with workstation_disk(a.workdir, image_size(tree_size(corpus)[1]), log) as disk:
        ctx = Context(
            workdir=a.workdir,
            out=disk.path,
            corpus=corpus,
            spec=spec,
            runs=runs,
            cores=cpu_count(),
            catalog_docs=a.catalog_docs or docs,
            idle_seconds=a.idle_seconds if a.idle_seconds is not None else idle_s,
            idle_files=a.idle_files if a.idle_files is not None else idle_files,
            log=log,
            fast=preset == "tiny",
        )
        for name in wanted:
            log(f"scenario {name}")
            mod = importlib.import_module(f"bench.scenarios.{name}")
            try:
                res: ScenarioResult = mod.run(ctx)
            except Exception as exc:  # a broken scenario is reported, the others still run
                res = ScenarioResult(name, name, error=f"{type(exc).__name__}: {exc}")
                log(traceback.format_exc())
            results.append(res)
            for r in res.ratios:
                log(f"  {r['label']}: {r['ratio']}")
            for s in res.skipped:
                log(f"  skipped {s}")
    machine = machine_info()
    machine["outputs_on"] = disk.description
    report: dict[str, Any] = {
        "command": "python -m bench.run " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "preset": preset,
        "runs": runs,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "duration_s": round(time.time() - started, 1),
        "machine": machine,
        "corpus": {"seed": spec.seed, "key": spec.key(), "big_size": spec.big_size},
        "scenarios": [r.to_json() for r in results],
    }
    from bench import report as rep

    report["targets"] = rep.verdicts(report)
    dump_json(a.json or a.workdir / "results.json", report)
    out = a.out if a.out is not None else ROOT / "docs" / "performance.md"
    if str(out) != "-":
        rep.write_markdown(out, report)
        log(f"wrote {out}")
    log(f"done in {time.time() - started:.0f} s")
    failed = [r.name for r in results if r.error]
    return 1 if failed else 0


if __name__ == "__main__":
    # Stopped with kill: unwind, so that the bench filesystem is unmounted and its image removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.chdir(ROOT)
    sys.exit(main())
