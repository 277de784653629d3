"""One multi-GB CT-like file: time against zstd|age, and peak resident memory."""

from __future__ import annotations

from bench.common import (
    ScenarioResult,
    driver,
    driver_env,
    measure,
    paired_runs,
    rmtree,
    tool,
    warm,
)
from bench.scenarios import Context, file_list


def run(ctx: Context) -> ScenarioResult:
    big = ctx.corpus / "big" / "P00001_ct_scanner.dcm"
    size = big.stat().st_size
    res = ScenarioResult("bigfile", f"One CT-like file of {size / 2**30:.2f} GiB")
    res.data_files, res.data_bytes = 1, size
    tool("age")
    tool("zstd")
    lst = file_list(ctx, "big", [big])
    n = ctx.cores
    rcpt = ctx.x25519_recipient()
    scratch = ctx.scratch("bigfile")
    out = scratch / "out"
    state = scratch / "state"
    # The page cache cannot hold it twice on a small machine; warm it when it fits.
    fits = size < 4 * 2**30

    def prepare(name: str) -> None:
        rmtree(out)
        rmtree(state)
        out.mkdir(parents=True)
        if name.startswith("coldvault"):
            ctx.fresh_vault(state)
        if fits:
            warm([big])

    contenders = [
        ("coldvault", lambda: measure(driver("ingest", str(state), str(lst)), env=driver_env())),
        (
            f"zstd -3 -T{n}|age",
            lambda: measure(f"zstd -3 -T{n} -q -c {big} | age -r {rcpt} > {out}/big.zst.age"),
        ),
        (
            "zstd -3|age",
            lambda: measure(f"zstd -3 -q -c {big} | age -r {rcpt} > {out}/big.zst.age"),
        ),
    ]
    paired_runs(ctx.runs, contenders, res, prepare, ctx.log)
    rmtree(scratch)
    res.ratio(
        f"coldvault (zstd threads on) vs zstd -3 -T{n}|age", "coldvault", f"zstd -3 -T{n}|age"
    )
    res.ratio("coldvault vs single-thread zstd -3|age", "coldvault", "zstd -3|age")
    c = res.contenders.get("coldvault")
    if c and c.runs:
        res.metrics["peak_rss_mib"] = round(c.maxrss_mib, 1)
        res.metrics["mb_s"] = round(size / c.wall / 1e6, 1)
    res.notes.append("Peak RSS is ru_maxrss of the whole process (Python interpreter included).")
    return res
