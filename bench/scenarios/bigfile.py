"""One multi-GB CT-like file: time against zstd|age, and peak resident memory."""

from __future__ import annotations

from bench.common import (
    Measure,
    ScenarioResult,
    driver,
    driver_env,
    measure,
    paired_runs,
    rmtree,
    sha256_files,
    tool,
    tree_size,
    warm,
)
from bench.scenarios import Context, file_list

HASH = "SHA-256 of the document (one of the format's two passes)"


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

    object_bytes: list[int] = []

    def cv() -> Measure:
        m = measure(driver("ingest", str(state), str(lst)), env=driver_env())
        object_bytes.append(tree_size(state / "spool" / "objects")[1])
        return m

    # The format's two SHA-256 passes (the document's, for its coldvault.json; the object's,
    # for the catalog and the signed manifests), which neither anchor computes: one pass over
    # the document is timed here, the object's is scaled from it by the object's size.
    one_hash = sha256_files(lst)
    contenders = [
        ("coldvault", cv),
        (HASH, lambda: measure(one_hash)),
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
    hashed = res.contenders.get(HASH)
    anchor = res.contenders.get(f"zstd -3 -T{n}|age")
    if c and c.runs and hashed and hashed.runs and anchor and anchor.runs and object_bytes:
        both = hashed.cpu * (1 + object_bytes[-1] / size)
        res.metrics["format_hashes_cpu_s"] = round(both, 2)
        res.metrics["cpu_ratio_without_hashes"] = round((c.cpu - both) / anchor.cpu, 3)
    res.notes.append("Peak RSS is ru_maxrss of the whole process (Python interpreter included).")
    return res
