"""The idle daemon: CPU and memory over a window with nothing to do, with an empty watched
folder and with thousands of already-archived files in it at start-up."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from bench.common import PYTHON, ScenarioResult, Skip, driver, driver_env
from bench.scenarios import Context

TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _mem_kib(pid: int) -> tuple[int, int]:
    rss = hwm = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1])
    return rss, hwm


def _config(path: Path, state: Path, source: Path) -> None:
    path.write_text(
        "[vault]\n"
        f'state_dir = "{state}"\n'
        "copies = 1\n"
        "quiet_seconds = 0.5\n"
        "workers = 2\n"
        "[[source]]\n"
        'name = "scanner"\n'
        f'path = "{source}"\n'
        "pattern = '^(?P<patient>P[0-9]+)_'\n"
    )


def _documents(state: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{state / 'catalog.sqlite'}?mode=ro", uri=True, timeout=5)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


class _Daemon:
    def __init__(self, config: Path, log: Path) -> None:
        self._log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            driver("daemon", str(config)),
            env=os.environ | driver_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )
        self.t0 = time.monotonic()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _wait_quiet(d: _Daemon, limit: float, tick: float = 1.0) -> tuple[float, float]:
    """Wait until the daemon uses less than 1 % of a CPU over a ``tick``; returns
    (seconds since launch, CPU seconds used so far)."""
    pid = d.proc.pid
    quiet = 0.01 * tick
    last = _cpu(pid)
    time.sleep(tick)
    while time.monotonic() - d.t0 < limit:
        if not d.alive():
            raise RuntimeError("the daemon exited during start-up")
        now = _cpu(pid)
        if now - last < quiet:
            break
        last = now
        time.sleep(tick)
    return time.monotonic() - d.t0, _cpu(pid)


def _window(d: _Daemon, seconds: float) -> dict[str, float]:
    pid = d.proc.pid
    c0, t0 = _cpu(pid), time.monotonic()
    peak = 0
    while time.monotonic() - t0 < seconds:
        time.sleep(min(1.0, max(0.05, seconds - (time.monotonic() - t0))))
        if not d.alive():
            raise RuntimeError("the daemon exited while idle")
        peak = max(peak, _mem_kib(pid)[0])
    c1, t1 = _cpu(pid), time.monotonic()
    rss, hwm = _mem_kib(pid)
    return {
        "window_s": round(t1 - t0, 1),
        "cpu_percent": round((c1 - c0) / (t1 - t0) * 100, 3),
        "rss_mib": round(max(peak, rss) / 1024, 1),
        "hwm_mib": round(hwm / 1024, 1),
    }


def run(ctx: Context) -> ScenarioResult:
    res = ScenarioResult("idle", f"Idle daemon over {ctx.idle_seconds:g} s")
    probe = subprocess.run(
        [PYTHON, "-c", "import coldvault.daemon"],
        env=os.environ | driver_env(),
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        raise Skip("coldvault.daemon cannot be imported: " + probe.stderr.strip()[-200:])
    scratch = ctx.scratch("idle")
    state = ctx.fresh_vault(scratch / "state")
    src = scratch / "inbox"
    src.mkdir()
    cfg = scratch / "coldvault.toml"
    _config(cfg, state, src)
    log = scratch / "daemon.log"
    limit = max(30.0, ctx.idle_files / 50)
    tick = 0.25 if getattr(ctx, "fast", False) else 1.0

    d = _Daemon(cfg, log)
    try:
        wall, cpu = _wait_quiet(d, limit, tick)
        res.metrics["empty_startup_s"] = round(wall, 2)
        res.metrics["empty_startup_cpu_s"] = round(cpu, 2)
        res.metrics["empty"] = _window(d, ctx.idle_seconds)
    finally:
        d.stop()
    # Files already there at start-up: the first start archives them (timed), the second
    # finds them archived and stays idle.
    payload = (ctx.corpus / "tiny").iterdir().__next__().read_bytes()
    for i in range(ctx.idle_files):
        (src / f"P{i % 500:05d}_note_{i:06d}.txt").write_bytes(payload + str(i).encode())
    d = _Daemon(cfg, log)
    try:
        t0 = time.monotonic()
        while _documents(state) < ctx.idle_files and time.monotonic() - t0 < limit * 4:
            if not d.alive():
                raise RuntimeError("the daemon exited while archiving: " + log.read_text()[-500:])
            time.sleep(tick / 2)
        res.metrics["archive_files_s"] = round(time.monotonic() - d.t0, 1)
        res.metrics["archived"] = _documents(state)
    finally:
        d.stop()
    d = _Daemon(cfg, log)
    try:
        wall, cpu = _wait_quiet(d, limit, tick)
        res.metrics["with_files_startup_s"] = round(wall, 2)
        res.metrics["with_files_startup_cpu_s"] = round(cpu, 2)
        res.metrics["with_files"] = _window(d, ctx.idle_seconds)
    finally:
        d.stop()
    res.metrics["files"] = ctx.idle_files
    res.notes.append(
        "CPU is utime+stime of the daemon process (all threads) over the window, after "
        "start-up has gone quiet; memory is VmRSS sampled every second and VmHWM."
    )
    return res
