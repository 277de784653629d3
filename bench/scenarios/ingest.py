"""Ingest of the practice mix: coldvault against tar|zstd|age streams, per-file zstd|age,
restic and borg, on the same bytes in the same run."""

from __future__ import annotations

import json
import shutil

from bench.common import (
    Measure,
    ScenarioResult,
    Skip,
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

    def cv(workers: int, one_core: bool = False) -> Measure:
        argv = driver("ingest", str(state), str(lst), "--workers", str(workers))
        m = measure(["taskset", "-c", "0", *argv] if one_core else argv, env=env, capture=True)
        inner = json.loads(m.stdout.strip().splitlines()[-1])
        c = res.contender(f"coldvault-{workers}w" + (" on 1 core" if one_core else ""))
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

    # The machine's own ceiling for two CPU-bound jobs at once (two cores of a VM share caches,
    # memory bandwidth and, often, a physical core): one zstd -3 -T1 over the mix, then two.
    one_zstd = f"tar -C {mix} -cf - . | zstd -3 -T1 -q > /dev/null"
    # What the format itself asks on top of compressing and encrypting: a SHA-256 of every
    # document (in its coldvault.json) and of every object (catalog, manifests), i.e. two
    # passes over about the corpus's size, with the same hashlib coldvault uses.
    two_hashes = sha256_files(lst, passes=2)
    contenders = [
        ("coldvault-1w", lambda: cv(1)),
        (f"coldvault-{n}w", lambda: cv(n)),
        ("coldvault-1w on 1 core", lambda: cv(1, one_core=True)),
        ("machine: one zstd -3 -T1", lambda: measure(one_zstd)),
        ("the format's two SHA-256 passes", lambda: measure(two_hashes)),
        (f"machine: {n} zstd -3 -T1 at once", lambda: measure(f"{one_zstd} & " * n + "wait")),
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
        contenders = [c for c in contenders if "1 core" not in c[0] and c[0] != f"coldvault-{n}w"]
        contenders = [c for c in contenders if not c[0].startswith("machine:")]
    elif shutil.which("taskset") is None:
        res.skipped.append("coldvault-1w on 1 core: taskset is not installed (util-linux)")
        contenders = [c for c in contenders if "1 core" not in c[0]]
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
    res.ratio(
        f"{n} workers on {n} cores vs 1 worker on 1 core (scaling with cores)",
        f"coldvault-{n}w",
        "coldvault-1w on 1 core",
    )
    c1 = res.contenders.get("coldvault-1w")
    if c1 and c1.runs:
        res.metrics["coldvault_1w_mb_s"] = round(res.data_bytes / c1.wall / 1e6, 1)
    cn = res.contenders.get(f"coldvault-{n}w")
    if c1 and cn and c1.runs and cn.runs:
        res.metrics["scaling"] = round(c1.wall / cn.wall, 2)
    c1c = res.contenders.get("coldvault-1w on 1 core")
    if c1c and cn and c1c.runs and cn.runs:
        res.metrics["scaling_with_cores"] = round(c1c.wall / cn.wall, 2)
    m1 = res.contenders.get("machine: one zstd -3 -T1")
    mn = res.contenders.get(f"machine: {n} zstd -3 -T1 at once")
    if m1 and mn and m1.runs and mn.runs:
        res.metrics["machine_scaling"] = round(n * m1.wall / mn.wall, 2)
    # Per core: megabytes per CPU second (user + system, all threads and processes).
    for name, key in (
        ("coldvault-1w", "coldvault_mb_per_cpu_s"),
        ("tar|zstd -3|age", "stream_mb_per_cpu_s"),
        ("per-file zstd -3|age", "per_file_mb_per_cpu_s"),
    ):
        c = res.contenders.get(name)
        if c and c.runs and c.cpu > 0:
            res.metrics[key] = round(res.data_bytes / c.cpu / 1e6, 1)
    c1, hashes = (
        res.contenders.get("coldvault-1w"),
        res.contenders.get("the format's two SHA-256 passes"),
    )
    if c1 and hashes and c1.runs and hashes.runs and c1.cpu > hashes.cpu:
        res.metrics["coldvault_mb_per_cpu_s_without_hashes"] = round(
            res.data_bytes / (c1.cpu - hashes.cpu) / 1e6, 1
        )
    res.notes.append(
        "coldvault makes each batch durable (syncfs) before recording it; the stream anchors "
        "and per-file scripts do not sync, restic and borg sync their own repository."
    )
    return res
