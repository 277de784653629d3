"""Restore one patient from a catalog of millions of documents: time to first byte, and
throughput against ``age -d | zstd -d | tar -x`` of the same objects."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from bench import synthcat
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
    warm,
)
from bench.scenarios import Context

HASHES = "the format's two SHA-256 passes"


def run(ctx: Context) -> ScenarioResult:
    res = ScenarioResult("restore", f"Restore one patient among {ctx.catalog_docs:,} documents")
    tool("age")
    tool("zstd")
    state = ctx.workdir / f"restore-{ctx.catalog_docs}-{ctx.spec.key()}"
    ctx.log(f"  catalog of {ctx.catalog_docs:,} documents in {state}")
    t = time.perf_counter()
    info = synthcat.build(
        state,
        ctx.vault_template(classic=True),
        ctx.corpus,
        ctx.catalog_docs,
        ctx.workdir / "lists" / "restore-target.txt",
    )
    res.metrics["catalog_build_s"] = round(time.perf_counter() - t, 1)
    res.metrics.update({f"catalog_{k}": v for k, v in info.items()})
    res.data_bytes = int(info["target_bytes"])  # type: ignore[call-overload]
    res.data_files = int(info["target_documents"])  # type: ignore[call-overload]
    # The anchor needs the patient's key in clear (as docs/recovery.md does it by hand).
    from bench.driver import PASSPHRASE
    from coldvault import keys
    from coldvault.vault import Vault

    vault = Vault(state)
    conn = sqlite3.connect(state / "catalog.sqlite")
    key_id, pid = conn.execute(
        "SELECT key_id, id FROM patients WHERE lookup = ?",
        (vault.lookup("patient", synthcat.TARGET),),
    ).fetchone()
    paths = [
        r[0]
        for r in conn.execute(
            "SELECT object_path FROM documents WHERE patient = ? ORDER BY archived_at, id", (pid,)
        )
    ]
    conn.close()
    master = vault.unlock(PASSPHRASE)
    key = keys.open_patient_key((state / "spool" / "keys" / f"{key_id}.age").read_bytes(), [master])
    scratch = ctx.scratch("restore")
    keyfile = scratch / "patient.key"
    keyfile.write_text(f"{key.identity}\n")
    out = scratch / "out"
    objs = [state / "spool" / p for p in paths]
    script = scratch / "anchor.sh"
    script.write_text(
        "".join(f"age -d -i {keyfile} {o} | zstd -d -q | tar -x -C {out}\n" for o in objs)
    )

    def cv() -> Measure:
        t0 = time.monotonic()
        m = measure(
            driver("restore", str(state), synthcat.TARGET, str(out)), env=driver_env(), capture=True
        )
        inner = json.loads(m.stdout.strip().splitlines()[-1])
        marks = inner["marks_monotonic"]
        c = res.contender("coldvault")
        c.extra["how"] = inner["how"]
        for k in ("catalog", "unlocked", "first_byte"):
            c.extra.setdefault(f"{k}_s", []).append(round(marks[k] - t0, 3))
        c.extra.setdefault("kdf_s", []).append(round(marks["unlocked"] - marks["catalog"], 3))
        return m

    def prepare(name: str) -> None:
        rmtree(out)
        out.mkdir(parents=True)
        warm(objs + [Path(p) for p in targets.read_text().splitlines() if p])

    # What the format asks of a restore on top of decrypting and decompressing, and the anchor
    # does not do: the SHA-256 of each object (against the catalog and the drive's signed
    # manifest) and of each document (against its coldvault.json), with coldvault's hashlib.
    targets = ctx.workdir / "lists" / "restore-target.txt"
    hashed = scratch / "hashed.txt"
    hashed.write_text("".join(f"{p}\n" for p in objs) + targets.read_text())
    two_hashes = sha256_files(hashed)
    contenders = [
        ("coldvault", cv),
        ("age -d|zstd -d|tar -x", lambda: measure(f"bash -e {script}")),
        (HASHES, lambda: measure(two_hashes)),
    ]
    paired_runs(ctx.runs, contenders, res, prepare, ctx.log)
    rmtree(scratch)
    res.ratio(
        "restore of the patient vs age -d|zstd -d|tar -x per object",
        "coldvault",
        "age -d|zstd -d|tar -x",
    )
    c = res.contender("coldvault")
    if c.runs:

        def med(key: str) -> float:
            v = sorted(c.extra[key])
            return float(v[len(v) // 2])

        res.metrics["first_byte_s"] = med("first_byte_s")
        res.metrics["first_byte_without_kdf_s"] = round(med("first_byte_s") - med("kdf_s"), 3)
        res.metrics["catalog_query_s"] = med("catalog_s")
        res.metrics["passphrase_kdf_s"] = med("kdf_s")
        res.metrics["mb_s"] = round(res.data_bytes / c.wall / 1e6, 1)
        anchor = res.contenders.get("age -d|zstd -d|tar -x")
        if anchor and anchor.runs:
            res.metrics["ratio_without_kdf"] = round((c.wall - med("kdf_s")) / anchor.wall, 3)
            # CPU, the work itself: less the scrypt (one thread: its wall time) and the hashes.
            hashes = res.contenders.get(HASHES)
            if hashes and hashes.runs:
                rest = c.cpu - med("kdf_s") - hashes.cpu
                res.metrics["hashes_cpu_s"] = round(hashes.cpu, 3)
                res.metrics["cpu_ratio_without_kdf_and_hashes"] = round(rest / anchor.cpu, 3)
    res.notes.append(
        "first byte is measured from the process launch: interpreter start-up, catalog query, "
        "the passphrase's scrypt (age work factor 18, deliberately about a second), the patient "
        "key, and the first decrypted bytes. The vault is a classic X25519 one so that the "
        "anchor's age binary can open it."
    )
    return res
