"""Shared fixtures for the drive tests: thread-leak check, umockdev testbed in a helper process,
ext4/exFAT loop images (root), and a private udevd + D-Bus + mock polkit + udisksd stack (root).

Import the fixtures you use into the test module::

    from tests.drives_fixtures import no_thread_leak_fixture, umockdev_bed_fixture  # noqa: F401

Everything started here is stopped by the fixture, loop devices detached and mounts unmounted,
even when the test fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
HELPER = HERE / "drives_umockdev_helper.py"
UDEVD = "/lib/systemd/systemd-udevd"
UDISKSD = "/usr/libexec/udisks2/udisksd"
SYSTEM_PYTHON = "/usr/bin/python3"

# A clean environment for system tools run from tests: never the umockdev preload.
_TOOL_ENV = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}


def is_root() -> bool:
    return os.geteuid() == 0


def need_root() -> None:
    if not is_root():
        pytest.skip("needs root (loop devices and mounts)")


def need_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None and not os.path.exists(t)]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} installed")


def run(
    cmd: list[str], *, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a system tool (no umockdev preload), failing the test with its output on error."""
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=_TOOL_ENV, check=False
    )
    if check and res.returncode != 0:
        raise AssertionError(f"{cmd} exited {res.returncode}: {res.stdout}{res.stderr}")
    return res


def wait_until(predicate: Any, timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a true value (returned) or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        time.sleep(interval)


# --- threads --------------------------------------------------------------------------------


@pytest.fixture(name="no_thread_leak")
def no_thread_leak_fixture() -> Iterator[None]:
    """Fail a test that leaves a thread running (watchdog's conftest habit)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert not leaked, f"threads leaked: {[t.name for t in leaked]}"


# --- line-oriented subprocess with read timeouts (no reader threads) ------------------------


class LineProc:
    """A subprocess speaking JSON lines on stdin/stdout; reads have a deadline."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: str | None = None) -> None:
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=cwd,
        )
        assert self.proc.stdout is not None
        self._fd = self.proc.stdout.fileno()
        self._buf = b""

    def readline(self, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line from {self.cmd[-1]} within {timeout} s")
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 65536)
                if not chunk:
                    err = self.stderr_text()
                    raise AssertionError(f"{self.cmd} ended ({self.proc.poll()}): {err}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return dict(json.loads(line))

    def no_line(self, within: float) -> bool:
        """True when nothing arrives within ``within`` seconds."""
        if b"\n" in self._buf:
            return False
        ready, _, _ = select.select([self._fd], [], [], within)
        return not ready

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()

    def stderr_text(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.close_stdin()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


# --- umockdev ---------------------------------------------------------------------------------

_GI_PYTHON: list[str | None] = []


def gi_python() -> str | None:
    """A Python that can import gi's UMockdev (this one, or Debian's python3 with python3-gi)."""
    if not _GI_PYTHON:
        found = None
        for py in dict.fromkeys([sys.executable, SYSTEM_PYTHON]):
            if not os.path.exists(py):
                continue
            probe = (
                "import gi; gi.require_version('UMockdev', '1.0'); "
                "from gi.repository import UMockdev"
            )
            res = subprocess.run([py, "-c", probe], capture_output=True, env=_TOOL_ENV, check=False)
            if res.returncode == 0:
                found = py
                break
        _GI_PYTHON.append(found)
    return _GI_PYTHON[0]


class UmockdevBed:
    """A UMockdev testbed owned by a helper process, plus watcher processes that use it."""

    def __init__(self, python_with_gi: str) -> None:
        self._tb = LineProc(
            ["umockdev-wrapper", python_with_gi, str(HELPER), "testbed"], env=dict(_TOOL_ENV)
        )
        self.root = str(self._tb.readline()["root"])
        self._watchers: list[LineProc] = []

    def cmd(self, **command: Any) -> dict[str, Any]:
        self._tb.send(command)
        reply = self._tb.readline()
        assert reply.get("ok"), reply
        return reply

    def plug_stick(self, **kw: Any) -> dict[str, Any]:
        return self.cmd(op="stick", **kw)

    def start_watcher(self) -> LineProc:
        """Start the real PyudevDriveSource + DriveWatcher in a preloaded child; wait until
        it listens. Events found by the start-up scan may come before or after "ready"."""
        env = dict(
            _TOOL_ENV,
            LD_PRELOAD="libumockdev-preload.so.0",
            UMOCKDEV_DIR=self.root,
            PYTHONPATH=os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
        )
        w = LineProc([sys.executable, str(HELPER), "watch"], env=env)
        self._watchers.append(w)
        return w

    def close(self) -> None:
        for w in self._watchers:
            w.stop()
        with contextlib.suppress(Exception):
            self._tb.send({"op": "quit"})
        self._tb.stop()


@pytest.fixture(name="umockdev_bed")
def umockdev_bed_fixture() -> Iterator[UmockdevBed]:
    if shutil.which("umockdev-wrapper") is None:
        pytest.skip("needs umockdev (apt install umockdev gir1.2-umockdev-1.0)")
    py = gi_python()
    if py is None:
        pytest.skip("needs gi with UMockdev (apt install python3-gi gir1.2-umockdev-1.0)")
    bed = UmockdevBed(py)
    try:
        yield bed
    finally:
        bed.close()


def read_events(watcher: LineProc, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """The next ``n`` DriveEvents (as dicts) printed by a watcher; "ready" lines skipped."""
    out: list[dict[str, Any]] = []
    while len(out) < n:
        line = watcher.readline(timeout)
        if "event" in line:
            out.append(line["event"])
    return out


# --- loop images (root) ---------------------------------------------------------------------


def make_ext4(path: Path, *, fs_uuid: str | None = None, label: str = "COLDVAULT01") -> str:
    """An ext4 image file (16 MiB, sparse); returns its UUID."""
    need_tools("mkfs.ext4")
    u = fs_uuid or str(uuidlib.uuid4())
    with open(path, "wb") as f:
        f.truncate(16 * 1024 * 1024)
    run(["mkfs.ext4", "-q", "-F", "-L", label, "-U", u, str(path)])
    return u


@dataclass
class LoopMounts:
    """Loop devices and mounts made by a test, undone in reverse order at teardown."""

    loops: list[str] = field(default_factory=list)
    mounts: list[str] = field(default_factory=list)

    def attach(self, image: Path) -> str:
        node = run(["losetup", "-f", "--show", str(image)]).stdout.strip()
        self.loops.append(node)
        return node

    def mount(self, source: str, mountpoint: Path, *extra: str) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        run(["mount", *extra, source, str(mountpoint)])
        self.mounts.append(str(mountpoint))

    def mount_exfat_fuse(self, loopdev: str, mountpoint: Path) -> None:
        mountpoint.mkdir(parents=True, exist_ok=True)
        run(["mount.exfat-fuse", loopdev, str(mountpoint)])
        self.mounts.append(str(mountpoint))

    def cleanup(self) -> None:
        from coldvault.drives.mounts import is_mountpoint

        for mp in reversed(self.mounts):
            with contextlib.suppress(Exception):
                if is_mountpoint(mp):
                    r = run(["umount", mp], check=False)
                    if r.returncode != 0:
                        run(["umount", "-l", mp], check=False)
        for node in reversed(self.loops):
            run(["losetup", "-d", node], check=False)
        self.mounts.clear()
        self.loops.clear()


@pytest.fixture(name="loops")
def loops_fixture() -> Iterator[LoopMounts]:
    need_root()
    need_tools("losetup", "mount", "umount")
    lm = LoopMounts()
    try:
        yield lm
    finally:
        lm.cleanup()


# --- udisks stack (root): udevd + private system bus + mock polkit + udisksd ------------------

_BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={sock}</listen><auth>EXTERNAL</auth>
  <policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>
  <allow receive_sender="*"/></policy>
</busconfig>
"""


def _dbus_call(address: str, dest: str, path: str, iface: str, method: str,
               sig: str | None = None, body: tuple[Any, ...] = ()) -> tuple[Any, ...]:  # fmt: skip
    from jeepney import DBusAddress, MessageType, new_method_call
    from jeepney.io.blocking import open_dbus_connection

    with open_dbus_connection(bus=address) as conn:
        msg = new_method_call(DBusAddress(path, bus_name=dest, interface=iface), method, sig, body)
        reply = conn.send_and_get_reply(msg, timeout=10)
        if reply.header.message_type == MessageType.error:
            raise AssertionError(f"{dest} {method}: {reply.body}")
        return tuple(reply.body)


def _name_has_owner(address: str, name: str) -> bool:
    try:
        (owned,) = _dbus_call(address, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                              "org.freedesktop.DBus", "NameHasOwner", "s", (name,))  # fmt: skip
    except Exception:
        return False
    return bool(owned)


def _snapshot_dev() -> dict[str, tuple[int, int, int]]:
    out = {}
    for name in os.listdir("/dev"):
        p = os.path.join("/dev", name)
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                out[p] = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@dataclass
class UdisksStack:
    """Handles to the running private udisks2 stack."""

    bus_address: str
    tmp: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    own_udevd: bool = False
    created_paths: list[str] = field(default_factory=list)
    dev_modes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    media_before: set[str] = field(default_factory=set)

    def polkit(self, method: str, sig: str, *args: Any) -> None:
        """Call the mock polkit's control methods (SetAllowed 'as', AllowUnknown 'b')."""
        _dbus_call(self.bus_address, "org.freedesktop.PolicyKit1",
                   "/org/freedesktop/PolicyKit1/Authority", "org.freedesktop.DBus.Mock",
                   method, sig, args)  # fmt: skip

    def allow(self, *actions: str, unknown: bool = False) -> None:
        self.polkit("SetAllowed", "as", list(actions))
        self.polkit("AllowUnknown", "b", unknown)

    def settle(self) -> None:
        run(["udevadm", "settle", "-t", "10"], check=False)

    def stop(self) -> None:
        for name in ("udisksd", "polkitd", "dbus", "udevd"):
            _stop(self.procs.pop(name, None))
        if self.own_udevd:
            # leave the machine as udev-less as it was: later tests (and the fallback checks)
            # must not see a stale /run/udev/control nor udev's /dev links
            for p in self.created_paths:
                shutil.rmtree(p, ignore_errors=True)
            for p, (mode, uid, gid) in self.dev_modes.items():
                with contextlib.suppress(OSError):
                    os.chown(p, uid, gid)
                    os.chmod(p, mode)
        shutil.rmtree(self.tmp, ignore_errors=True)
        # udisksd makes /media/<user>/ for its mounts: remove the ones it made, once empty
        with contextlib.suppress(OSError):
            for name in set(os.listdir("/media")) - self.media_before:
                with contextlib.suppress(OSError):
                    os.rmdir(os.path.join("/media", name))


def start_udisks_stack() -> UdisksStack:
    """Start (udevd if none runs) + dbus-daemon + dbusmock polkitd + udisksd; caller stops it."""
    tmp = tempfile.mkdtemp(prefix="cv-udisks-")
    os.chmod(tmp, 0o755)
    sock = os.path.join(tmp, "system_bus_socket")
    conf = os.path.join(tmp, "bus.conf")
    Path(conf).write_text(_BUS_CONF.format(sock=sock))
    stack = UdisksStack(bus_address=f"unix:path={sock}", tmp=tmp)
    with contextlib.suppress(OSError):
        stack.media_before = set(os.listdir("/media"))
    env = dict(_TOOL_ENV, DBUS_SYSTEM_BUS_ADDRESS=stack.bus_address)
    try:
        from coldvault.drives.events import detect_udevd

        if not detect_udevd():
            stack.own_udevd = True
            stack.created_paths = [
                p for p in ("/run/udev", "/dev/disk", "/dev/block") if not os.path.lexists(p)
            ]
            stack.dev_modes = _snapshot_dev()
            log = open(os.path.join(tmp, "udevd.log"), "wb")  # noqa: SIM115
            stack.procs["udevd"] = subprocess.Popen([UDEVD], stdout=log, stderr=log, env=_TOOL_ENV)
            log.close()
            wait_until(lambda: detect_udevd(), timeout=10)
            run(["udevadm", "settle", "-t", "10"], check=False)
        stack.procs["dbus"] = subprocess.Popen(
            ["dbus-daemon", "--config-file", conf, "--nofork", "--nopidfile"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_TOOL_ENV,
        )  # fmt: skip
        wait_until(lambda: os.path.exists(sock), timeout=10)
        # Debian's python3-dbusmock (needs dbus-python and gi: python3-dbus, python3-gi)
        stack.procs["polkitd"] = subprocess.Popen(
            [SYSTEM_PYTHON, "-m", "dbusmock", "--system", "--template", "polkitd"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )  # fmt: skip
        wait_until(lambda: _name_has_owner(stack.bus_address, "org.freedesktop.PolicyKit1"), 10)
        stack.polkit("AllowUnknown", "b", True)
        stack.procs["udisksd"] = subprocess.Popen(
            [UDISKSD], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
        )
        wait_until(lambda: _name_has_owner(stack.bus_address, "org.freedesktop.UDisks2"), 20)
    except BaseException:
        stack.stop()
        raise
    return stack


def udisks_stack_skip_reason() -> str | None:
    if not is_root():
        return "needs root (starts udevd, udisksd and loop devices)"
    for tool in (UDEVD, UDISKSD, "dbus-daemon", "udevadm", "losetup", "mkfs.ext4"):
        if shutil.which(tool) is None and not os.path.exists(tool):
            return f"needs {tool} (apt install udev udisks2 dbus e2fsprogs)"
    res = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import dbusmock, dbus, gi"], capture_output=True, env=_TOOL_ENV,
        check=False,
    )  # fmt: skip
    if res.returncode != 0:
        return "needs python3-dbusmock for the mock polkit (apt install python3-dbusmock)"
    return None


@pytest.fixture(scope="module", name="udisks_stack")
def udisks_stack_fixture() -> Iterator[UdisksStack]:
    reason = udisks_stack_skip_reason()
    if reason:
        pytest.skip(reason)
    stack = start_udisks_stack()
    try:
        yield stack
    finally:
        stack.stop()
