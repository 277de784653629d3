"""A real vault in a temporary folder, driven like an installer and a practice would drive it.

:func:`make_env` runs ``coldvault init`` (in-process, so the autouse low scrypt cost of
``conftest.py`` applies and later unlocks are cheap, in this process and in subprocesses alike),
then writes a configuration with short quiet periods and rescans and the given sources.
:class:`VaultEnv` runs the CLI as a subprocess (``coldvault daemon``, ``status --json``, ...)
and reads the catalog directly to check what was archived.

The subprocesses get the environment without umockdev's preload (the suite may run under
``umockdev-wrapper``) and without ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from coldvault import keys, objects
from coldvault.catalog.db import Catalog
from coldvault.cli.main import main as cli_main
from coldvault.config import render_config
from coldvault.vault import Vault

PASSPHRASE = "daemon tests passphrase, not secret"
T = TypeVar("T")


def coldvault_argv() -> list[str]:
    """The command that runs the CLI: the venv's console script, else the module."""
    script = Path(sys.executable).with_name("coldvault")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "from coldvault.cli.main import entry; entry()"]


CRASH_ENV = "COLDVAULT_TEST_CRASH_AT"

#: Installed through PYTHONPATH in a CLI subprocess: ``COLDVAULT_TEST_CRASH_AT=module:Qual.name:
#: when:n[:text]`` wraps that function so that its n-th call (counting only calls whose arguments'
#: repr contains ``text``) SIGKILLs the process, ``before`` the call or ``after`` it returned: a
#: real ``kill -9`` at a precise point of the code.
CRASH_SITECUSTOMIZE = """\
import functools, importlib, os, signal

_spec = os.environ.get("COLDVAULT_TEST_CRASH_AT")
if _spec:
    _module, _qual, _when, _nth, *_match = _spec.split(":")
    _owner = importlib.import_module(_module)
    _parts = _qual.split(".")
    for _p in _parts[:-1]:
        _owner = getattr(_owner, _p)
    _orig = getattr(_owner, _parts[-1])
    _calls = [0]

    @functools.wraps(_orig)
    def _crashing(*args, **kwargs):
        if _match and _match[0] not in repr((args, kwargs)):
            return _orig(*args, **kwargs)
        _calls[0] += 1
        hit = _calls[0] == int(_nth)
        if hit and _when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        result = _orig(*args, **kwargs)
        if hit and _when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(_owner, _parts[-1], _crashing)
"""


def crash_env(folder: Path, spec: str) -> dict[str, str]:
    """The environment of a subprocess that kills itself (SIGKILL) at ``spec``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(CRASH_SITECUSTOMIZE)
    path = os.pathsep.join([str(folder), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess_env(PYTHONPATH=path, **{CRASH_ENV: spec})


def subprocess_env(**extra: str) -> dict[str, str]:
    drop = ("LD_PRELOAD", "UMOCKDEV_DIR", "NOTIFY_SOCKET", "COLDVAULT_CONFIG")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.1
) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Source:
    name: str
    pattern: str | None = None
    per_patient_folders: bool = False
    on_archived: str = "keep"
    kind: str | None = None


def _toml_source(src: Source, path: Path) -> str:
    lines = ["", "[[source]]", f"name = {json.dumps(src.name)}", f"path = {json.dumps(str(path))}"]
    if src.pattern is not None:
        lines.append(f"pattern = '{src.pattern}'")
    if src.per_patient_folders:
        lines.append("per_patient_folders = true")
    lines.append(f"on_archived = {json.dumps(src.on_archived)}")
    if src.kind:
        lines.append(f"kind = {json.dumps(src.kind)}")
    return "\n".join(lines) + "\n"


@dataclass
class DaemonProc:
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"the daemon did not exit within {timeout:.0f} s of signal {sig}"
            ) from None

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the daemon logged that it is ready (its signal handlers are in place)."""

        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"the daemon died:\n{self.log_text()}")
            return "daemon ready" in self.log_text()

        wait_for("the daemon to be ready", ready, timeout)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@dataclass
class VaultEnv:
    base: Path
    config: Path
    state: Path
    passphrase_file: Path
    init_output: str
    sources: dict[str, Path] = field(default_factory=dict)
    daemons: list[DaemonProc] = field(default_factory=list)

    # --- the CLI --------------------------------------------------------------------------
    def argv(self, *args: str) -> list[str]:
        return [*coldvault_argv(), "--config", str(self.config), *args]

    def cli(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            env=env if env is not None else subprocess_env(),
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"coldvault {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
            )
        return res

    def cli_inprocess(self, *args: str) -> int:
        return cli_main(["--config", str(self.config), *args])

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.cli("status", "--json").stdout))

    def ls(self, *args: str) -> Any:
        return json.loads(self.cli("ls", "--json", *args).stdout)

    def start_daemon(self, *extra: str, env: dict[str, str] | None = None) -> DaemonProc:
        log = self.base / f"daemon-{len(self.daemons)}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                self.argv("-v", *extra, "daemon"),
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env if env is not None else subprocess_env(),
            )
        d = DaemonProc(proc, log)
        self.daemons.append(d)
        return d

    def kill_all(self) -> None:
        for d in self.daemons:
            if d.alive():
                d.proc.kill()
                d.proc.wait(10)

    # --- direct reads ---------------------------------------------------------------------
    @property
    def vault(self) -> Vault:
        return Vault(self.state)

    @contextlib.contextmanager
    def catalog(self) -> Iterator[Catalog]:
        cat = Catalog(self.vault.catalog_path, readonly=True)
        try:
            yield cat
        finally:
            cat.close()

    def docs_for(self, source: str, relpath: str) -> list[tuple[str, str, str | None, str]]:
        """(doc_id, plaintext sha256, patient key id or None, object path) of every version of
        ``source``/``relpath`` in the catalog, oldest first."""
        key = self.vault.lookup("source", f"{source}\0{relpath}")
        with self.catalog() as cat:
            rows = cat.conn.execute(
                "SELECT d.doc_id, d.sha256, p.key_id, d.object_path FROM documents d "
                "LEFT JOIN patients p ON p.id = d.patient WHERE d.source_key = ? "
                "ORDER BY d.id",
                (key,),
            ).fetchall()
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def document_count(self) -> int:
        if not self.vault.catalog_path.exists():
            return 0
        try:
            with self.catalog() as cat:
                return int(cat.counts()["documents"])
        except sqlite3.OperationalError:  # the daemon is creating the catalog right now
            return 0

    def journal_events(self) -> list[str]:
        from coldvault.journal import Journal

        return [e.event for e in Journal(self.vault.journal_dir).entries()]

    def unlock(self) -> keys.AnyIdentity:
        return self.vault.unlock(PASSPHRASE.encode())


def make_env(
    base: Path,
    sources: Sequence[Source] = (),
    *,
    quiet_seconds: float = 0.3,
    rescan_interval: float = 2.0,
    copies: int = 1,
    workers: int = 2,
) -> VaultEnv:
    """A fresh vault under ``base`` (``coldvault init``), configured with ``sources``."""
    base.mkdir(parents=True, exist_ok=True)
    config = base / "coldvault.toml"
    state = base / "state"
    pw = base / "passphrase"
    pw.write_text(PASSPHRASE + "\n")
    pw.chmod(0o600)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli_main(
            [
                "--config",
                str(config),
                "init",
                "--state-dir",
                str(state),
                "--passphrase-file",
                str(pw),
            ]
        )
    assert rc == 0, out.getvalue()
    text = render_config(
        state, copies=copies, rescan_interval=rescan_interval, quiet_seconds=quiet_seconds
    ).replace("# workers = 2 ", f"workers = {workers} #")
    paths: dict[str, Path] = {}
    for src in sources:
        folder = base / "inbox" / src.name
        folder.mkdir(parents=True)
        paths[src.name] = folder
        text += _toml_source(src, folder)
    config.write_text(text)
    return VaultEnv(base, config, state, pw, out.getvalue(), paths)


def recovery_key(init_output: str) -> str:
    for line in init_output.splitlines():
        if "AGE-SECRET-KEY-" in line:
            return line.strip()
    raise AssertionError("no recovery key in the output of init")


def signing_fingerprint(init_output: str) -> str:
    lines = init_output.splitlines()
    for i, line in enumerate(lines):
        if "SIGNING KEY FINGERPRINT" in line:
            return next(x.strip() for x in lines[i + 1 :] if x.strip())
    raise AssertionError("no signing key fingerprint in the output of init")


def decrypt_object(
    data: bytes, vault: Vault, master: keys.AnyIdentity, patient_key_id: str | None
) -> bytes:
    """The document inside an object (ciphertext ``data``), with the master or the patient key
    read from the spool."""
    identity: Any = master
    if patient_key_id is not None:
        sealed = (vault.spool / "keys" / f"{patient_key_id}.age").read_bytes()
        pk = keys.open_patient_key(sealed, [master])
        assert pk.identity is not None
        identity = pk.identity
    out = io.BytesIO()
    objects.read_object(io.BytesIO(data), [identity], out)
    return out.getvalue()


def spool_strays(vault: Vault) -> list[str]:
    """Temporary files and files the catalog does not know, in the spool."""
    out: list[str] = []
    with Catalog(vault.catalog_path, readonly=True) as cat:
        for p in sorted(vault.spool.rglob("*")):
            if not p.is_file():
                continue
            rel = p.relative_to(vault.spool).as_posix()
            if p.name.startswith(".") or cat.item(rel) is None:
                out.append(rel)
    return out
