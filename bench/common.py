"""Timing, process measurement and small helpers shared by the scenarios."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PASSPHRASE = "bench passphrase, not a secret"


class Skip(Exception):
    """A scenario (or one contender) cannot run here: a tool is missing, not root, ..."""


@dataclass
class Measure:
    wall: float
    user: float
    sys: float
    maxrss_kib: int
    stdout: str = ""

    @property
    def cpu(self) -> float:
        return self.user + self.sys


@dataclass
class Contender:
    """One way of doing the scenario's work, measured over several runs."""

    name: str
    runs: list[Measure] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def wall(self) -> float:
        return statistics.median(m.wall for m in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(m.cpu for m in self.runs)

    @property
    def maxrss_mib(self) -> float:
        return max(m.maxrss_kib for m in self.runs) / 1024

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "wall_s": round(self.wall, 4),
            "walls_s": [round(m.wall, 4) for m in self.runs],
            "cpu_s": round(self.cpu, 4),
            "maxrss_mib": round(self.maxrss_mib, 1),
            **self.extra,
        }


@dataclass
class ScenarioResult:
    name: str
    title: str
    data_bytes: int = 0
    data_files: int = 0
    contenders: dict[str, Contender] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    ratios: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def contender(self, name: str) -> Contender:
        return self.contenders.setdefault(name, Contender(name))

    def ratio(self, label: str, a: str, b: str) -> None:
        """Record median(a) / median(b) (lower is better for a) if both ran."""
        ca, cb = self.contenders.get(a), self.contenders.get(b)
        if ca is None or cb is None or not ca.runs or not cb.runs:
            return
        r = {
            "label": label,
            "a": a,
            "b": b,
            "ratio": round(ca.wall / cb.wall, 3),
        }
        if self.data_bytes:
            r["a_mb_s"] = round(self.data_bytes / ca.wall / 1e6, 1)
            r["b_mb_s"] = round(self.data_bytes / cb.wall / 1e6, 1)
        self.ratios.append(r)

    def skipped_names(self) -> set[str]:
        return {s.split(":", 1)[0] for s in self.skipped}

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["contenders"] = {k: v.summary() for k, v in self.contenders.items()}
        return d


def measure(
    argv: Sequence[str] | str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    capture: bool = False,
    check: bool = True,
) -> Measure:
    """Run a command to completion: whole-process wall time, CPU of it and its children, and
    the largest resident set among them (``wait4``; a pipeline reports its biggest process)."""
    if isinstance(argv, str):
        argv = ["bash", "-c", "set -euo pipefail; " + argv]
    full_env = dict(os.environ)
    full_env.update(env or {})
    # Linux carries the spawning process's RSS high-water mark into a child's ru_maxrss (the
    # exec happens on a vfork of this, large, Python process), so the command runs under GNU
    # time, a small C program whose own children report their true peak.
    gnu_time = shutil.which("time", path="/usr/bin:/bin")
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as tfile,
    ):
        cmd = list(argv)
        if gnu_time is not None:
            cmd = [gnu_time, "-q", "-f", "%U %S %M", "-o", tfile.name, *cmd]
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            env=full_env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out if capture else subprocess.DEVNULL,
            stderr=err,
        )
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        proc.returncode = code
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace") if capture else ""
        if check and code != 0:
            tail = err.read().decode(errors="replace").strip()[-2000:]
            raise RuntimeError(f"command failed ({code}): {argv!r}\n{tail}")
        user, system, maxrss = ru.ru_utime, ru.ru_stime, ru.ru_maxrss
        if gnu_time is not None:
            fields = tfile.read().split()
            if len(fields) >= 3:
                user, system, maxrss = float(fields[-3]), float(fields[-2]), int(fields[-1])
    return Measure(wall, user, system, maxrss, text)


def drop_page_cache_of(paths: Sequence[Path]) -> None:
    """Not used for timing fairness (everything runs warm), kept for completeness."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths: Sequence[Path]) -> None:
    """Read files once so that every contender starts with them in the page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 22):
                pass


def settle() -> None:
    """Flush dirty pages left by the previous run, so no run pays for another's writes."""
    os.sync()


def rmtree(path: Path) -> None:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path)


def tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise Skip(f"{name} is not installed")
    return found


def is_root() -> bool:
    return os.geteuid() == 0


def driver(*args: str) -> list[str]:
    """The command line of a bench driver process (``python -m bench.driver ...``)."""
    return [PYTHON, "-m", "bench.driver", *args]


def sha256_files(list_path: Path, passes: int = 1) -> list[str]:
    """A process computing ``passes`` SHA-256 of every file in ``list_path`` (one per line),
    read 1 MiB at a time, with the hashlib coldvault uses: the format's hashes, timed alone."""
    return [
        PYTHON,
        "-c",
        "import hashlib, sys\n"
        "for p in open(sys.argv[1]).read().splitlines():\n"
        "    hs = [hashlib.sha256() for _ in range(int(sys.argv[2]))]\n"
        "    with open(p, 'rb') as f:\n"
        "        while b := f.read(1 << 20):\n"
        "            for h in hs:\n"
        "                h.update(b)\n",
        str(list_path),
        str(passes),
    ]


def driver_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": f"{ROOT}{os.pathsep}{path}" if path else str(ROOT)}


def paired_runs(
    runs: int,
    contenders: Sequence[tuple[str, Callable[[], Measure | None]]],
    result: ScenarioResult,
    prepare: Callable[[str], None] | None = None,
    log: Callable[[str], None] = lambda s: None,
) -> None:
    """Run every contender ``runs`` times, interleaved (A B C, B C A, ...), settled between."""
    names = [n for n, _ in contenders]
    fns = dict(contenders)
    for i in range(runs):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            if name in result.skipped_names():
                continue
            try:
                if prepare is not None:
                    prepare(name)
                settle()
                m = fns[name]()
            except Skip as exc:
                result.skipped.append(f"{name}: {exc}")
                continue
            if m is None:
                continue
            result.contender(name).runs.append(m)
            log(f"  {name}: {m.wall:.3f} s, {m.maxrss_kib / 1024:.0f} MiB")


def version_of(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip(" *") if text else "unknown"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram_gib"] = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    try:
        import cryptography
        import zstandard

        import coldvault

        info["coldvault"] = coldvault.__version__
        info["zstandard"] = f"{zstandard.__version__} (libzstd {zstandard.ZSTD_VERSION})"
        info["cryptography"] = cryptography.__version__
    except ImportError:
        pass
    info["age"] = version_of(["age", "--version"])
    info["zstd"] = version_of(["zstd", "--version"])
    info["restic"] = version_of(["restic", "version"])
    info["borg"] = version_of(["borg", "--version"])
    try:
        git = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        )
        info["commit"] = git.stdout.strip()
    except OSError:
        pass
    return info


def dump_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def tree_size(root: Path) -> tuple[int, int]:
    n = size = 0
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            size += os.lstat(os.path.join(dirpath, f)).st_size
            n += 1
    return n, size
