"""Principle 1: coldvault never opens a network connection.

An audit hook (``sys.addaudithook``) watches every socket created, bound, connected or sent
from, and every name lookup; only AF_UNIX (systemd notify, D-Bus) and AF_NETLINK (udev) are
allowed. It runs inside a real daemon process (through ``sitecustomize``) while it ingests and
syncs, and around in-process CLI runs of every command that handles documents or keys. A static
check makes sure no module imports a network library.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import fs_fixtures
from tests.daemon_fixtures import (
    Source,
    VaultEnv,
    make_env,
    recovery_key,
    signing_fingerprint,
    subprocess_env,
    wait_for,
)

pytestmark = pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning")

PACKAGE = Path(__file__).resolve().parent.parent / "coldvault"
ALLOWED_FAMILIES = {int(socket.AF_UNIX), int(getattr(socket, "AF_NETLINK", 16))}
NET_LOG_ENV = "COLDVAULT_TEST_NET_LOG"

#: The same policy as :func:`_check`, for a subprocess (``PYTHONPATH`` = its folder).
AUDIT_SITECUSTOMIZE = f"""\
import os, sys

_LOG = os.environ.get({NET_LOG_ENV!r})
_ALLOWED = {sorted(ALLOWED_FAMILIES)!r}
_LOOKUPS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex",
            "socket.gethostbyaddr", "socket.getnameinfo")

def _record(line):
    fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)

def _hook(event, args):
    if not event.startswith("socket."):
        return
    bad = None
    if event == "socket.__new__":
        family = int(args[1])
        if family != -1 and family not in _ALLOWED:  # -1: from a descriptor, checked on use
            bad = family
    elif event in ("socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg"):
        family = int(args[0].family)
        if family not in _ALLOWED:
            bad = family
    elif event in _LOOKUPS:
        bad = "lookup"
    if bad is not None:
        _record(f"VIOLATION {{event}} {{bad}} pid={{os.getpid()}}")
        raise PermissionError(f"coldvault test: network access refused ({{event}})")

if _LOG:
    sys.addaudithook(_hook)
    _record(f"armed pid={{os.getpid()}}")
"""


def hook_env(tmp: Path) -> tuple[dict[str, str], Path]:
    folder = tmp / "audit-site"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(AUDIT_SITECUSTOMIZE)
    log = tmp / "net.log"
    path = os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess_env(PYTHONPATH=path, **{NET_LOG_ENV: str(log)}), log


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def violations(log: Path) -> list[str]:
    return [x for x in _lines(log) if x.startswith("VIOLATION")]


def test_the_subprocess_hook_catches_network_sockets(tmp_path: Path) -> None:
    """Positive control: the hook is installed and does refuse an Internet socket, and lets
    AF_UNIX and netlink sockets through."""
    env, log = hook_env(tmp_path)
    code = (
        "import socket\n"
        "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close()\n"
        "socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 15).close()\n"
        "try:\n"
        "    socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
        "except PermissionError:\n"
        "    print('refused')\n"
        "try:\n"
        "    socket.getaddrinfo('localhost', 80)\n"
        "except PermissionError:\n"
        "    print('refused')\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["refused", "refused"]
    assert any(x.startswith("armed") for x in _lines(log))
    found = violations(log)
    assert len(found) == 2 and "socket.__new__ 2 " in found[0] and "getaddrinfo" in found[1]


@pytest.fixture
def env(tmp_path: Path) -> Iterator[VaultEnv]:
    e = make_env(
        tmp_path / "v",
        [
            Source("scanner", pattern=r"^(?P<patient>[0-9]+)_"),
            Source("exports", per_patient_folders=True),
        ],
        copies=2,  # the spool keeps every object for the folder drive synced last
    )
    try:
        yield e
    finally:
        e.kill_all()


def test_daemon_and_cli_processes_open_no_network_socket(env: VaultEnv, tmp_path: Path) -> None:
    hook, log = hook_env(tmp_path)
    drive = tmp_path / "folder-drive"
    drive.mkdir()
    assert env.cli_inprocess("drive", "enroll", str(drive), "--name", "F") == 0
    with contextlib.ExitStack() as stack:
        loop = None
        if os.geteuid() == 0 and all(
            _which(t) for t in ("mkfs.ext4", "losetup", "mount", "umount", "blkid")
        ):
            (tmp_path / "img").mkdir()
            loop = stack.enter_context(fs_fixtures.loop_drive(tmp_path / "img", "ext4"))
            assert env.cli_inprocess("drive", "enroll", str(loop.mountpoint), "--name", "E") == 0
            loop.umount()  # unplugged; plugged in below, while the daemon runs
        d = env.start_daemon(env=hook)
        wait_for("the daemon", lambda: "daemon ready" in d.log_text() or not d.alive(), 20)
        assert d.alive(), d.log_text()
        for i in range(4):
            (env.sources["scanner"] / f"{i}_scan.pdf").write_bytes(os.urandom(30_000))
        (env.sources["exports"] / "77").mkdir()
        (env.sources["exports"] / "77" / "export.pdf").write_bytes(os.urandom(5000))
        wait_for("ingest", lambda: env.document_count() >= 5, 20)
        if loop is not None:
            # A drive mounted while the daemon runs: found in the mount table, synced, unmounted.
            loop.mount()
            wait_for(
                "the daemon to sync the mounted drive",
                lambda: "You can remove the drive" in d.log_text() or not d.alive(),
                30,
            )
            assert not fs_fixtures.is_mounted(loop.mountpoint)
        assert d.stop() == 0, d.log_text()
        for args in (
            ("drive", "sync", "F"),
            ("status", "--json"),
            ("ls", "77", "--json"),
            ("verify", "--drive", "F"),
            ("restore", "77", "--to", str(tmp_path / "out"), "--passphrase-file",
             str(env.passphrase_file)),
        ):  # fmt: skip
            res = env.cli(*args, check=False, env=hook)
            assert res.returncode == 0, f"{args}: {res.stdout}{res.stderr}"
    armed = [x for x in _lines(log) if x.startswith("armed")]
    assert len(armed) == 6, "the audit hook was not installed in every process"
    assert violations(log) == []
    assert "Traceback" not in d.log_text()
    assert len(list((tmp_path / "out").rglob("*.pdf"))) == 1


def _which(tool: str) -> bool:
    import shutil

    return shutil.which(tool) is not None


# --- in-process ----------------------------------------------------------------------------
_ARMED: list[list[str]] = []
_INSTALLED = False


def _check(event: str, args: tuple[object, ...]) -> None:
    if not _ARMED or not event.startswith("socket."):
        return
    bad: object = None
    if event == "socket.__new__":
        family = int(args[1])  # type: ignore[call-overload]
        if family != -1 and family not in ALLOWED_FAMILIES:
            bad = family
    elif event in ("socket.bind", "socket.connect", "socket.sendto", "socket.sendmsg"):
        family = int(args[0].family)  # type: ignore[attr-defined]
        if family not in ALLOWED_FAMILIES:
            bad = family
    elif event in (
        "socket.getaddrinfo",
        "socket.gethostbyname",
        "socket.gethostbyname_ex",
        "socket.gethostbyaddr",
        "socket.getnameinfo",
    ):
        bad = "lookup"
    if bad is not None:
        _ARMED[-1].append(f"{event} {bad}")
        raise PermissionError(f"coldvault test: network access refused ({event})")


@contextlib.contextmanager
def no_network() -> Iterator[list[str]]:
    """Refuse and record network socket use in this process (audit hooks cannot be removed:
    the hook is installed once and only acts while armed)."""
    global _INSTALLED
    if not _INSTALLED:
        sys.addaudithook(_check)
        _INSTALLED = True
    seen: list[str] = []
    _ARMED.append(seen)
    try:
        yield seen
    finally:
        _ARMED.remove(seen)


def test_the_in_process_hook_catches_network_sockets() -> None:
    with no_network() as seen, pytest.raises(PermissionError):
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    assert seen == [f"socket.__new__ {int(socket.AF_INET6)}"]
    with no_network() as seen:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
    assert seen == []


def test_cli_commands_in_process_open_no_network_socket(tmp_path: Path) -> None:
    from coldvault.cli.main import main

    cfg = tmp_path / "coldvault.toml"
    pw = tmp_path / "pw"
    pw.write_text("in-process passphrase\n")
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(3):
        (docs / f"doc{i}.pdf").write_bytes(os.urandom(4000 + i))
    drive = tmp_path / "drive"
    drive.mkdir()
    out = io.StringIO()

    def run(*args: str) -> None:
        with contextlib.redirect_stdout(out):
            rc = main(["--config", str(cfg), *args])
        assert rc == 0, f"{args}: exit {rc}\n{out.getvalue()}"

    with no_network() as seen:
        run("init", "--state-dir", str(tmp_path / "state"), "--passphrase-file", str(pw))
        sheet = out.getvalue()
        (tmp_path / "rk").write_text(recovery_key(sheet) + "\n")
        run("ingest", *[str(p) for p in sorted(docs.iterdir())], "--patient", "42")
        run("drive", "enroll", str(drive), "--name", "D")
        run("drive", "sync", "D")
        run("verify", "--deep", "--passphrase-file", str(pw))
        run("restore", "42", "--to", str(tmp_path / "restored"), "--passphrase-file", str(pw))
        run(
            "recover",
            "--drive",
            str(drive),
            "--to",
            str(tmp_path / "recovered"),
            "--recovery-key-file",
            str(tmp_path / "rk"),
            "--fingerprint",
            signing_fingerprint(sheet),
        )
        run("status", "--json")
        run("ls", "42", "--unlock", "--passphrase-file", str(pw))
        run("audit", "--verify")
    assert seen == []
    assert len(list((tmp_path / "restored").rglob("doc*.pdf"))) == 3
    assert len(list((tmp_path / "recovered").rglob("doc*.pdf"))) == 3


# --- static ---------------------------------------------------------------------------------
NETWORK_MODULES = {
    "socket",
    "socketserver",
    "ssl",
    "asyncio",
    "selectors",
    "urllib",
    "urllib3",
    "http",
    "httpx",
    "requests",
    "aiohttp",
    "ftplib",
    "smtplib",
    "poplib",
    "imaplib",
    "nntplib",
    "telnetlib",
    "xmlrpc",
    "webbrowser",
}
SOCKET_ALLOWED = {"sdnotify.py"}


def _imports(tree: ast.AST) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.split(".")[0], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module.split(".")[0], node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (getattr(node.func, "id", None) or getattr(node.func, "attr", None))
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value.split(".")[0], node.lineno))
    return found


def test_no_module_imports_a_network_library() -> None:
    offenders = []
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20
    for path in files:
        rel = path.relative_to(PACKAGE).as_posix()
        for name, line in _imports(ast.parse(path.read_text(), str(path))):
            if name in NETWORK_MODULES and not (name == "socket" and rel in SOCKET_ALLOWED):
                offenders.append(f"coldvault/{rel}:{line}: imports {name}")
    assert offenders == []


def test_sdnotify_uses_only_unix_sockets() -> None:
    tree = ast.parse((PACKAGE / "sdnotify.py").read_text())
    calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name)
        and n.func.value.id == "socket"
    ]
    assert calls, "sdnotify no longer creates a socket: update this test"
    for call in calls:
        assert call.func.attr == "socket"  # type: ignore[attr-defined]
        first = call.args[0] if call.args else None
        assert isinstance(first, ast.Attribute) and first.attr == "AF_UNIX", ast.dump(call)
