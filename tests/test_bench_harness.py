"""The benchmark harness runs end to end on a tiny corpus (no timing is asserted, ever).

Outside CI a scenario whose tool is missing (restic, borg) or that needs root (the loop-mounted
drive) is skipped with its reason; in CI (``CI`` set, root, every tool installed) nothing may be.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from bench import corpus, report, run

OPTIONAL_TOOLS = ("restic", "borg")


def test_corpus_is_deterministic(tmp_path: Path) -> None:
    spec = corpus.PRESETS["tiny"]
    a = corpus.generate(tmp_path / "a", spec, log=lambda s: None)
    b = corpus.generate(tmp_path / "b", spec, log=lambda s: None)
    fa, fb = corpus.files_of(a), corpus.files_of(b)
    assert [p.relative_to(a) for p in fa] == [p.relative_to(b) for p in fb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb, strict=True))
    from dataclasses import replace

    other = corpus.generate(tmp_path / "c", replace(spec, seed=spec.seed + 1), log=lambda s: None)
    scans_a = corpus.files_of(a / "mix" / "scans")
    scans_c = corpus.files_of(other / "mix" / "scans")
    assert scans_a[0].read_bytes()[:4096] != scans_c[0].read_bytes()[:4096]
    # The practice mix: scans do not compress, exports do.
    import zstandard

    scan = next(p for p in fa if "/scans/" in str(p))
    export = next(p for p in fa if "/exports/" in str(p))
    z = zstandard.ZstdCompressor(level=3)
    assert len(z.compress(scan.read_bytes())) > 0.99 * scan.stat().st_size
    assert len(z.compress(export.read_bytes())) < 0.4 * export.stat().st_size


def test_harness_runs_on_a_tiny_corpus(tmp_path: Path) -> None:
    for t in ("age", "zstd", "tar"):
        if shutil.which(t) is None:
            pytest.skip(f"{t} is not installed")
    in_ci = bool(os.environ.get("CI"))
    out = tmp_path / "performance.md"
    out.write_text("# Performance\n\nhand-written text kept\n")
    results = tmp_path / "results.json"
    code = run.main(
        ["--tiny", "--workdir", str(tmp_path / "work"), "--out", str(out), "--json", str(results)]
    )
    data = json.loads(results.read_text())
    errors = {s["name"]: s["error"] for s in data["scenarios"] if s["error"]}
    skipped = [sk for s in data["scenarios"] for sk in s["skipped"]]
    missing = [s for s in skipped + list(errors.values()) if "not installed" in s or "root" in s]
    if in_ci:
        assert not skipped and not errors, (skipped, errors)
    else:
        errors = {k: v for k, v in errors.items() if v not in missing}
        assert not errors, errors
    assert code == (1 if errors else 0) or not in_ci
    names = [s["name"] for s in data["scenarios"]]
    assert names == run.SCENARIOS
    # As root, every contender wrote to a journaled ext4 made for the run, removed after it.
    if os.geteuid() == 0 and shutil.which("losetup") and shutil.which("mkfs.ext4"):
        assert "journaled" in data["machine"]["outputs_on"]
        assert not (tmp_path / "work" / "workstation.img").exists()
        assert not os.path.ismount(tmp_path / "work" / "workstation")
    by = {s["name"]: s for s in data["scenarios"]}
    # Every scenario measured coldvault and its anchors, and turned them into ratios.
    for name in ("ingest", "small", "bigfile", "restore"):
        s = by[name]
        assert "coldvault" in " ".join(s["contenders"]), name
        assert len(s["contenders"]) >= 2 and s["ratios"], name
        for c in s["contenders"].values():
            assert c["wall_s"] > 0 and c["maxrss_mib"] > 0
    for t in OPTIONAL_TOOLS:
        if shutil.which(t) is not None:
            assert t in by["ingest"]["contenders"]
    ingest = by["ingest"]["metrics"]
    # Per core against both anchors, and scaling with cores against the machine's own ceiling.
    assert ingest["coldvault_mb_per_cpu_s"] > 0 and ingest["per_file_mb_per_cpu_s"] > 0
    assert "the format's two SHA-256 passes" in by["ingest"]["contenders"]
    if (os.cpu_count() or 1) > 1 and shutil.which("taskset") is not None:
        assert ingest["scaling_with_cores"] > 0 and ingest["machine_scaling"] > 0
        assert "coldvault-1w on 1 core" in by["ingest"]["contenders"]
    targets = {t["target"]: t for t in data["targets"]}
    per_core = [t for name, t in targets.items() if name.startswith("ingest mix per core")]
    assert len(per_core) == 2 and all(t["measured"] for t in per_core)
    # Per-file overhead with patients known, and the brief's prototype's work as the yardstick.
    small = by["small"]["metrics"]
    assert small["prototype's per-file work 4KiB ms/doc"] > 0
    assert small["coldvault-1w 4KiB known patients ms/doc before sync"] > 0
    assert small["coldvault-1w-classic 4KiB known patients ms/doc before sync"] > 0
    against = [t for name, t in targets.items() if "prototype's per-file work" in name]
    assert len(against) == 2 and all(t["measured"] for t in against)
    assert by["restore"]["metrics"]["catalog_documents"] >= 2000
    assert by["restore"]["metrics"]["first_byte_s"] > 0
    assert "the format's two SHA-256 passes" in by["restore"]["contenders"]
    assert by["bigfile"]["metrics"]["format_hashes_cpu_s"] > 0
    assert "cpu_ratio_without_hashes" in by["bigfile"]["metrics"]
    assert by["restore"]["metrics"]["hashes_cpu_s"] > 0
    assert "cpu_ratio_without_kdf_and_hashes" in by["restore"]["metrics"]
    if "sync" not in errors and not by["sync"]["skipped"] and by["sync"]["contenders"]:
        assert by["sync"]["contenders"]["coldvault"]["wall_s"] > 0
    if not by["idle"]["error"] and not by["idle"]["skipped"]:
        assert by["idle"]["metrics"]["archived"] == by["idle"]["metrics"]["files"]
    # Verdicts for every target of the brief, and the report keeps the hand-written text.
    assert {t["verdict"] for t in data["targets"]} <= {"met", "NOT met", "not measured"}
    text = out.read_text()
    assert text.startswith("# Performance\n\nhand-written text kept\n")
    assert report.BEGIN in text and report.END in text and "### Targets" in text
    # A second write replaces the block instead of appending another one.
    report.write_markdown(out, data)
    assert out.read_text().count(report.BEGIN) == 1
