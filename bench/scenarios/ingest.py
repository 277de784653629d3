"""Ingest of the practice mix: coldvault against tar|zstd|age streams, per-file zstd|age,
restic and borg, on the same bytes in the same run."""

from __future__ import annotations

import json

from bench.common import (
    Measure,
    ScenarioResult,
    Skip,
    driver,
    driver_env,
    measure,
    paired_runs,
    rmtree,
    tool,
    tree_size,
    warm,
)
from bench.corpus import files_of
from bench.scenarios import Context, file_list, per_file_script


def run(ctx: Context) -> ScenarioResult:
    mix = ctx.corpus / "mix"
    files = files_of(mix)
    res = ScenarioResult(
        "ingest", "Ingest of the practice mix (compress + encrypt + spool + catalog)"
    )
    res.data_files, res.data_bytes = tree_size(mix)
    lst = file_list(ctx, "mix", files)
    n = ctx.cores
    rcpt = ctx.x25519_recipient()
    scratch = ctx.scratch("ingest")
    out = scratch / "out"
    state = scratch / "state"
    pw = {"RESTIC_PASSWORD": "bench", "BORG_PASSPHRASE": "bench"}
    env = (
        driver_env()
        | pw
        | {
            "RESTIC_CACHE_DIR": str(scratch / "restic-cache"),
            "BORG_BASE_DIR": str(scratch / "borg-base"),
        }
    )

    def cv(workers: int) -> Measure:
        m = measure(
            driver("ingest", str(state), str(lst), "--workers", str(workers)), env=env, capture=True
        )
        inner = json.loads(m.stdout.strip().splitlines()[-1])
        c = res.contender(f"coldvault-{workers}w")
        c.extra.setdefault("in_process_ingest_s", []).append(round(inner["ingest_s"], 3))
        c.extra.setdefault("sync_s", []).append(round(inner["sync_s"], 3))
        return m

    def prepare(name: str) -> None:
        rmtree(out)
        rmtree(state)
        out.mkdir(parents=True)
        if name.startswith("coldvault"):
            ctx.fresh_vault(state)
        elif name == "restic":
            tool("restic")
            measure(
                ["restic", "-r", str(out / "repo"), "init", "--repository-version", "2"], env=env
            )
        elif name == "borg":
            tool("borg")
            measure(["borg", "init", "-e", "repokey-blake2", str(out / "repo")], env=env)
        warm(files)

    contenders = [
        ("coldvault-1w", lambda: cv(1)),
        (f"coldvault-{n}w", lambda: cv(n)),
        (
            "tar|zstd -3|age",
            lambda: measure(
                f"tar -C {mix} -cf - . | zstd -3 -q | age -r {rcpt} > {out}/all.tar.zst.age"
            ),
        ),
        (
            f"tar|zstd -3 -T{n}|age",
            lambda: measure(
                f"tar -C {mix} -cf - . | zstd -3 -T{n} -q | age -r {rcpt} > {out}/all.tar.zst.age"
            ),
        ),
        ("per-file zstd -3|age", lambda: measure(per_file_script(lst, out, rcpt))),
        (
            "restic",
            lambda: measure(
                ["restic", "-r", str(out / "repo"), "backup", "--quiet", str(mix)], env=env
            ),
        ),
        (
            "borg",
            lambda: measure(
                ["borg", "create", "-C", "zstd,3", f"{out}/repo::first", str(mix)], env=env
            ),
        ),
    ]
    if n == 1:
        contenders = [c for c in contenders if c[0] not in (f"coldvault-{n}w",)]
    for name in ("restic", "borg"):
        try:
            tool(name)
        except Skip as exc:
            res.skipped.append(f"{name}: {exc}")
    paired_runs(ctx.runs, contenders, res, prepare, ctx.log)
    rmtree(scratch)
    res.ratio("1 worker vs one tar|zstd -3|age stream", "coldvault-1w", "tar|zstd -3|age")
    res.ratio(f"{n} workers vs tar|zstd -3 -T{n}|age", f"coldvault-{n}w", f"tar|zstd -3 -T{n}|age")
    res.ratio("1 worker vs per-file zstd -3|age", "coldvault-1w", "per-file zstd -3|age")
    res.ratio(f"{n} workers vs first restic backup", f"coldvault-{n}w", "restic")
    res.ratio("1 worker vs first borg create -C zstd,3", "coldvault-1w", "borg")
    res.ratio(f"{n} workers vs 1 worker (scaling)", f"coldvault-{n}w", "coldvault-1w")
    c1 = res.contenders.get("coldvault-1w")
    if c1 and c1.runs:
        res.metrics["coldvault_1w_mb_s"] = round(res.data_bytes / c1.wall / 1e6, 1)
    cn = res.contenders.get(f"coldvault-{n}w")
    if c1 and cn and c1.runs and cn.runs:
        res.metrics["scaling"] = round(c1.wall / cn.wall, 2)
    res.notes.append(
        "coldvault makes each batch durable (syncfs) before recording it; the stream anchors "
        "and per-file scripts do not sync, restic and borg sync their own repository."
    )
    return res
