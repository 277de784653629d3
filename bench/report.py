"""Targets of the brief (section 8), verdicts, and the markdown written to docs/performance.md.

Only the block between the two markers is rewritten; the text around it is kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

BEGIN = "<!-- bench:results:begin (written by python -m bench.run; do not edit by hand) -->"
END = "<!-- bench:results:end -->"


def _scenario(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    for s in report["scenarios"]:
        if s["name"] == name and not s.get("error"):
            return dict(s)
    return None


def _ratio(s: dict[str, Any] | None, a: str, b: str) -> float | None:
    if s is None:
        return None
    for r in s["ratios"]:
        if r["a"] == a and r["b"] == b:
            return float(r["ratio"])
    return None


def verdicts(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target: what was measured, the bound, and met / not met / not measured."""
    n = report["machine"].get("cores") or 1
    ing = _scenario(report, "ingest")
    small = _scenario(report, "small")
    big = _scenario(report, "bigfile")
    rest = _scenario(report, "restore")
    sync = _scenario(report, "sync")
    idle = _scenario(report, "idle")
    start = _scenario(report, "startup")
    rows: list[dict[str, Any]] = []

    def add(
        target: str,
        value: float | None,
        bound: float,
        unit: str = "x",
        lower_is_better: bool = True,
    ) -> None:
        if value is None:
            verdict = "not measured"
        elif lower_is_better:
            verdict = "met" if value <= bound else "NOT met"
        else:
            verdict = "met" if value >= bound else "NOT met"
        rows.append(
            {"target": target, "measured": value, "bound": bound, "unit": unit, "verdict": verdict}
        )

    tar1 = _ratio(ing, "coldvault-1w", "tar|zstd -3|age")
    add("ingest mix, 1 worker vs tar|zstd -3|age (brief: <= 1.0x)", tar1, 1.0)
    im = ing["metrics"] if ing else {}

    def per_core(anchor: str) -> float | None:
        a, b = im.get("coldvault_mb_per_cpu_s"), im.get(anchor)
        return round(a / b, 3) if a and b else None

    add(
        "ingest mix per core (MB per CPU second) vs per-file zstd -3|age (issue: >= 0.9x)",
        per_core("per_file_mb_per_cpu_s"),
        0.9,
        "x throughput",
        False,
    )
    add(
        "ingest mix per core (MB per CPU second) vs one tar|zstd -3|age stream (>= 0.9x)",
        per_core("stream_mb_per_cpu_s"),
        0.9,
        "x throughput",
        False,
    )
    hashless, stream = (
        im.get("coldvault_mb_per_cpu_s_without_hashes"),
        im.get("stream_mb_per_cpu_s"),
    )
    add(
        "the same, less the CPU time of the format's two SHA-256 passes (the bound, >= 0.9x)",
        round(hashless / stream, 3) if hashless and stream else None,
        0.9,
        "x throughput",
        False,
    )
    add(
        f"ingest mix, {n} workers vs tar|zstd -3 -T{n}|age (<= 0.8x)",
        _ratio(ing, f"coldvault-{n}w", f"tar|zstd -3 -T{n}|age"),
        0.8,
    )
    add(
        f"ingest mix, {n} workers vs first restic backup (brief <= 0.5x)",
        _ratio(ing, f"coldvault-{n}w", "restic"),
        0.5,
    )
    add(
        "ingest mix, 1 worker vs first borg create -C zstd,3 (<= 1.0x)",
        _ratio(ing, "coldvault-1w", "borg"),
        1.0,
    )
    add(
        f"parallel ingest scales with cores: {n} workers on {n} cores vs 1 worker on 1 core "
        f"(>= 1.6x on 2 cores; this machine's own ceiling: {im.get('machine_scaling', '?')}x)",
        im.get("scaling_with_cores"),
        1.6,
        "x speed-up",
        False,
    )
    add(
        f"big file vs zstd -3 -T{n}|age (<= 1.0x)",
        _ratio(big, "coldvault", f"zstd -3 -T{n}|age"),
        1.0,
    )
    add(
        f"big file CPU, less the format's two SHA-256 passes (timed in the same run), vs zstd "
        f"-3 -T{n}|age's CPU (the bound, <= 1.0x)",
        big["metrics"].get("cpu_ratio_without_hashes") if big else None,
        1.0,
    )
    add(
        "big file: peak resident memory (< 100 MiB)",
        big["metrics"].get("peak_rss_mib") if big else None,
        100.0,
        "MiB",
    )
    add(
        "small documents per second, 1 worker, default (post-quantum) vault (>= 200)",
        small["metrics"].get("coldvault-1w docs/s") if small else None,
        200.0,
        "docs/s",
        False,
    )
    add(
        "small documents per second, 1 worker, classic vault (>= 200)",
        small["metrics"].get("coldvault-1w-classic docs/s") if small else None,
        200.0,
        "docs/s",
        False,
    )
    add(
        "per-file overhead before fsync, 4 KiB files, default vault (<= 0.5 ms)",
        small["metrics"].get("coldvault-1w 4KiB ms/doc before sync") if small else None,
        0.5,
        "ms",
    )
    add(
        "per-file overhead before fsync, 4 KiB files, classic vault (<= 0.5 ms)",
        small["metrics"].get("coldvault-1w-classic 4KiB ms/doc before sync") if small else None,
        0.5,
        "ms",
    )
    known = "coldvault-1w 4KiB known patients"
    for vault, name in (("default", known), ("classic", known.replace("1w", "1w-classic"))):
        add(
            f"per-file overhead before fsync, 4 KiB files of known patients, {vault} vault "
            "(<= 0.5 ms)",
            small["metrics"].get(f"{name} ms/doc before sync") if small else None,
            0.5,
            "ms",
        )
    # The brief set 0.5 ms where its prototype's per-file work took 0.29 ms: the same target
    # on any machine is 0.5 / 0.29 times that work, timed in the same run.
    floor = small["metrics"].get("prototype's per-file work 4KiB ms/doc") if small else None
    for vault, name in (("default", known), ("classic", known.replace("1w", "1w-classic"))):
        got = small["metrics"].get(f"{name} ms/doc before sync") if small else None
        add(
            f"per-file overhead before fsync, known patients, {vault} vault, against the brief's "
            "prototype's per-file work timed in the same run (<= 0.5 / 0.29 ms)",
            round(got / floor, 2) if got and floor else None,
            round(0.5 / 0.29, 2),
        )
    add(
        "CLI start-up (<= 150 ms)",
        start["metrics"].get("startup_ms") if start else None,
        150.0,
        "ms",
    )
    add(
        "restore: first byte of a patient among the catalogued documents (< 1 s)",
        rest["metrics"].get("first_byte_s") if rest else None,
        1.0,
        "s",
    )
    add(
        "restore of a patient vs age -d|zstd -d|tar -x (<= 1.0x, passphrase KDF included)",
        _ratio(rest, "coldvault", "age -d|zstd -d|tar -x"),
        1.0,
    )
    add(
        "restore of a patient vs age -d|zstd -d|tar -x (<= 1.0x, KDF excluded)",
        rest["metrics"].get("ratio_without_kdf") if rest else None,
        1.0,
    )
    add(
        "restore CPU, less the KDF and the format's two SHA-256 passes (timed in the same run), "
        "vs the anchor's CPU (the bound, <= 1.0x)",
        rest["metrics"].get("cpu_ratio_without_kdf_and_hashes") if rest else None,
        1.0,
    )
    add(
        "drive sync vs cp + sync + read back (bounded by the drive: <= 1.25x)",
        _ratio(sync, "coldvault", "cp + sync + read back"),
        1.25,
    )
    for key, label in (("empty", "empty watched folder"), ("with_files", "files already there")):
        m = idle["metrics"].get(key) if idle else None
        add(f"idle daemon CPU, {label} (< 1 %)", m["cpu_percent"] if m else None, 1.0, "%")
        add(f"idle daemon memory, {label} (< 80 MB)", m["rss_mib"] if m else None, 76.3, "MiB")
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.1f}"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def _cell(v: Any) -> str:
    return str(v).replace("|", "\\|")


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    out = [
        f"Run of {report['date']} ({report['preset']} corpus, {report['runs']} run(s) per "
        f"contender, medians; {report['duration_s']:.0f} s in all). Command:",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('ram_gib')} GiB RAM, "
        f"Linux {m.get('kernel')}, Python {m.get('python')}. Versions: coldvault "
        f"{m.get('coldvault')} (commit {m.get('commit')}), zstandard {m.get('zstandard')}, "
        f"cryptography {m.get('cryptography')}; age {m.get('age')}; {m.get('zstd')}; "
        f"{m.get('restic')}; {m.get('borg')}. Corpus seed {report['corpus']['seed']} "
        f"(key {report['corpus']['key']}), "
        f"big file {report['corpus']['big_size'] / 2**30:.2f} GiB. Outputs on "
        f"{m.get('outputs_on', 'the workdir')}.",
        "",
        "### Targets",
        "",
        "| target | measured | bound | verdict |",
        "|---|---|---|---|",
    ]
    for t in report.get("targets", []):
        val = "—" if t["measured"] is None else f"{_fmt(t['measured'])} {t['unit']}"
        out.append(
            f"| {_cell(t['target'])} | {val} | {_fmt(t['bound'])} {t['unit']} | {t['verdict']} |"
        )
    for s in report["scenarios"]:
        out += ["", f"### {s['title']} (`{s['name']}`)", ""]
        if s.get("error"):
            out.append(f"The scenario failed: `{s['error']}`")
            continue
        if s["data_bytes"]:
            out.append(f"Data: {s['data_files']:,} files, {s['data_bytes'] / 1e6:,.1f} MB.")
            out.append("")
        if s["contenders"]:
            out += [
                "| contender | wall s (median) | MB/s | CPU s | peak RSS MiB | more |",
                "|---|---|---|---|---|---|",
            ]
            for c in s["contenders"].values():
                extra = {
                    k: v
                    for k, v in c.items()
                    if k not in ("name", "wall_s", "walls_s", "cpu_s", "maxrss_mib")
                }
                mbs = f"{s['data_bytes'] / c['wall_s'] / 1e6:,.1f}" if s["data_bytes"] else ""
                out.append(
                    f"| {_cell(c['name'])} | {_fmt(c['wall_s'])} ({_fmt(c['walls_s'])}) | {mbs} | "
                    f"{_fmt(c['cpu_s'])} | {_fmt(c['maxrss_mib'])} | "
                    f"{_cell('; '.join(f'{k}: {_fmt(v)}' for k, v in extra.items()))} |"
                )
            out.append("")
        if s["ratios"]:
            out += ["| comparison (lower is better for the first) | ratio |", "|---|---|"]
            for r in s["ratios"]:
                out.append(f"| {_cell(r['label'])} | {r['ratio']} |")
            out.append("")
        if s["metrics"]:
            out.append(
                "Figures: " + "; ".join(f"{k}: {_fmt(v)}" for k, v in s["metrics"].items()) + "."
            )
        for note in s["notes"]:
            out.append(f"\n{note}")
        for sk in s["skipped"]:
            out.append(f"\nSkipped: {sk}")
    return "\n".join(out) + "\n"


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = f"{BEGIN}\n{render(report)}{END}\n"
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        path.write_text(head + block + tail)
    else:
        path.write_text(old + ("\n" if old else "") + block)
