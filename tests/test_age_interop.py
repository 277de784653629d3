"""age interoperability, both directions, with two independent implementations.

* the reference Go ``age`` / ``age-keygen`` binaries (Debian's age 1.1: X25519 and scrypt);
* typage, Filippo Valsorda's TypeScript implementation (npm ``age-encryption``, pinned in
  tests/interop/package.json), run by node for the post-quantum mlkem768x25519 type, which
  age 1.1 predates, and for X25519 and scrypt again.

Missing tools skip with a reason; with ``COLDVAULT_REQUIRE_INTEROP=1`` they fail instead, so a CI
that is meant to have them cannot go green by skipping.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import random
import re
import select
import shutil
import subprocess
import tempfile
import termios
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from coldvault import age
from coldvault.age.format import parse_header
from coldvault.age.stream import CHUNK_SIZE
from coldvault.errors import AgeNoMatchError

C = CHUNK_SIZE
SIZES = [0, 1, C, 2 * C + 1, 3 * 1024 * 1024 + 7]  # the last spans 49 chunks
INTEROP_DIR = Path(__file__).resolve().parent / "interop"
TIMEOUT = 120


def _missing(reason: str) -> None:
    if os.environ.get("COLDVAULT_REQUIRE_INTEROP") == "1":
        pytest.fail(f"{reason} (COLDVAULT_REQUIRE_INTEROP=1)")
    pytest.skip(reason)


def _data(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def _stanza_types(ct: bytes) -> list[str]:
    return [s.type for s in parse_header(io.BytesIO(ct)).stanzas]


# --- the age binaries ------------------------------------------------------------------------


@dataclass(frozen=True)
class AgeTools:
    age: str
    keygen: str

    def run(self, *args: str | Path, data: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.age, *map(str, args)], input=data, capture_output=True, timeout=TIMEOUT
        )


@pytest.fixture(scope="session")
def age_tools() -> AgeTools:
    tool, keygen = shutil.which("age"), shutil.which("age-keygen")
    if tool is None or keygen is None:
        _missing("the age and age-keygen binaries are not installed (apt package 'age')")
    assert tool is not None and keygen is not None
    return AgeTools(tool, keygen)


def _ok(proc: subprocess.CompletedProcess[bytes]) -> bytes:
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def _keyfile(tmp_path: Path, identity: age.X25519Identity | age.HybridIdentity) -> Path:
    path = tmp_path / f"key-{os.urandom(4).hex()}.txt"
    path.write_text(f"# created by coldvault's tests\n{identity}\n")
    return path


def _run_with_tty(argv: Sequence[str | Path], passphrase: bytes) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with a pseudo-terminal as its controlling terminal (and stdin, stderr),
    answering every passphrase prompt with ``passphrase``: age reads passphrases from /dev/tty
    only. Returns the exit code, the terminal transcript and what went to stdout (a pipe)."""
    master, slave = os.openpty()

    def take_terminal() -> None:  # runs in the child, after setsid(), with the pty as stdin
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [str(a) for a in argv],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=slave,
        start_new_session=True,
        preexec_fn=take_terminal,
    )
    os.close(slave)
    assert proc.stdout is not None
    out_fd = proc.stdout.fileno()
    transcript, stdout = bytearray(), bytearray()
    answered = 0
    open_fds = {master, out_fd}
    deadline = time.monotonic() + TIMEOUT
    try:
        while open_fds and time.monotonic() < deadline:
            ready, _, _ = select.select(list(open_fds), [], [], 0.1)
            for fd in ready:
                try:
                    data = os.read(fd, 1 << 16)
                except OSError:  # EIO on the pty: the child closed the terminal
                    data = b""
                if not data:
                    open_fds.discard(fd)
                elif fd == out_fd:
                    stdout += data
                else:
                    transcript += data
                    while transcript.lower().count(b"passphrase") > answered:
                        with contextlib.suppress(OSError):
                            os.write(master, passphrase + b"\n")
                        answered += 1
            if not ready and proc.poll() is not None and out_fd not in open_fds:
                break
        return proc.wait(timeout=TIMEOUT), bytes(transcript), bytes(stdout)
    finally:
        os.close(master)
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_age_keygen_keys_parse(age_tools: AgeTools, tmp_path: Path) -> None:
    keyfile = tmp_path / "key.txt"
    subprocess.run([age_tools.keygen, "-o", keyfile], check=True, capture_output=True)
    text = keyfile.read_text()
    (identity,) = age.parse_identity_file(text)
    assert isinstance(identity, age.X25519Identity)
    assert str(identity) in text
    public = re.search(r"^# public key: (age1\S+)$", text, re.M)
    assert public is not None
    assert str(identity.recipient()) == public.group(1)
    derived = subprocess.run(
        [age_tools.keygen, "-y", keyfile], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert str(age.parse_recipient(derived)) == public.group(1)
    # And the other way: age-keygen derives the same recipient from a key we made.
    ours = age.X25519Identity.generate()
    theirs = subprocess.run(
        [age_tools.keygen, "-y"], input=f"{ours}\n", check=True, capture_output=True, text=True
    ).stdout.strip()
    assert theirs == str(ours.recipient())


@pytest.mark.parametrize("size", SIZES)
def test_age_decrypts_our_x25519_files(age_tools: AgeTools, tmp_path: Path, size: int) -> None:
    identity = age.X25519Identity.generate()
    decoy = age.X25519Identity.generate()
    data = _data(size)
    ct = tmp_path / "ours.age"
    ct.write_bytes(age.encrypt_bytes([decoy.recipient(), identity.recipient()], data))
    # (stdout, not -o: age 1.1 creates the -o file only when it writes the first byte)
    assert _ok(age_tools.run("-d", "-i", _keyfile(tmp_path, identity), ct)) == data
    wrong = age_tools.run("-d", "-i", _keyfile(tmp_path, age.X25519Identity.generate()), ct)
    assert wrong.returncode != 0 and b"no identity matched" in wrong.stderr


@pytest.mark.parametrize("size", SIZES)
def test_we_decrypt_age_x25519_files(age_tools: AgeTools, tmp_path: Path, size: int) -> None:
    identity = age.X25519Identity.generate()
    data = _data(size)
    by_recipient = _ok(age_tools.run("-r", str(identity.recipient()), data=data))
    by_identity = _ok(age_tools.run("-e", "-i", _keyfile(tmp_path, identity), data=data))
    armored = _ok(age_tools.run("-a", "-r", str(identity.recipient()), data=data))
    assert armored.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    for ct in (by_recipient, by_identity, armored):
        assert age.decrypt_bytes([identity], ct) == data
    # Streaming from a file, as coldvault reads objects.
    path = tmp_path / "theirs.age"
    path.write_bytes(by_recipient)
    out = io.BytesIO()
    with open(path, "rb") as f:
        age.decrypt([age.HybridIdentity.generate(), identity], f, out)
    assert out.getvalue() == data


def test_we_decrypt_age_files_for_several_recipients(age_tools: AgeTools, tmp_path: Path) -> None:
    keyfile = tmp_path / "theirs.txt"
    subprocess.run([age_tools.keygen, "-o", keyfile], check=True, capture_output=True)
    ours = age.X25519Identity.generate()
    (theirs,) = age.parse_identity_file(keyfile.read_text())
    ct = _ok(
        age_tools.run(
            "-r", str(theirs.recipient()), "-r", str(ours.recipient()), data=b"for two people"
        )
    )
    assert _stanza_types(ct) == ["X25519", "X25519"]
    assert age.decrypt_bytes([ours], ct) == b"for two people"
    assert age.decrypt_bytes([theirs], ct) == b"for two people"
    with pytest.raises(AgeNoMatchError):
        age.decrypt_bytes([age.X25519Identity.generate()], ct)


@pytest.mark.parametrize("size", [0, 2 * C + 1])
def test_age_decrypts_our_scrypt_files(age_tools: AgeTools, tmp_path: Path, size: int) -> None:
    data = _data(size)
    ct = tmp_path / "ours.age"
    ct.write_bytes(age.encrypt_bytes([age.ScryptRecipient(b"tty passphrase")], data))
    assert parse_header(io.BytesIO(ct.read_bytes())).stanzas[0].args[1] == "10"
    rc, transcript, out = _run_with_tty([age_tools.age, "-d", ct], b"tty passphrase")
    assert rc == 0, transcript.decode(errors="replace")
    assert out == data
    rc, transcript, out = _run_with_tty([age_tools.age, "-d", ct], b"not it")
    assert rc != 0 and b"incorrect passphrase" in transcript.lower() and out == b""


def test_we_decrypt_age_scrypt_files(age_tools: AgeTools, tmp_path: Path) -> None:
    data = _data(2 * C + 1)
    plain = tmp_path / "plain"
    plain.write_bytes(data)
    rc, transcript, ct = _run_with_tty([age_tools.age, "-p", plain], b"tty passphrase")
    assert rc == 0, transcript.decode(errors="replace")
    assert b"Confirm passphrase" in transcript  # both prompts were answered
    (stanza,) = parse_header(io.BytesIO(ct)).stanzas
    assert stanza.type == "scrypt" and stanza.args[1] == "18"  # age's default work factor
    assert age.decrypt_bytes([age.ScryptIdentity(b"tty passphrase")], ct) == data
    with pytest.raises(AgeNoMatchError):
        age.decrypt_bytes([age.ScryptIdentity(b"not it")], ct)


# --- typage (npm age-encryption) -----------------------------------------------------------------


def _pinned_version() -> str:
    package = json.loads((INTEROP_DIR / "package.json").read_text())
    return str(package["dependencies"]["age-encryption"])


def _installed_version() -> str | None:
    meta = INTEROP_DIR / "node_modules" / "age-encryption" / "package.json"
    try:
        return str(json.loads(meta.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return None


@contextlib.contextmanager
def _install_lock() -> Iterator[None]:
    # Several pytest runs may share this work tree: one npm install at a time.
    tag = hashlib.sha256(str(INTEROP_DIR).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"coldvault-interop-{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@dataclass(frozen=True)
class Typage:
    node: str

    def _node(
        self, script: str, *args: str, data: bytes = b"", env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [self.node, str(INTEROP_DIR / script), *args],
            input=data,
            capture_output=True,
            timeout=TIMEOUT,
            cwd=INTEROP_DIR,
            env={**os.environ, **(env or {})},
        )

    def keygen(self, kind: str) -> tuple[str, str]:
        identity, recipient = _ok(self._node("keygen.mjs", kind)).decode().split()
        return identity, recipient

    def recipient_of(self, identity: str) -> str:
        return _ok(self._node("keygen.mjs", "recipient", data=identity.encode())).decode().strip()

    def encrypt(self, data: bytes, *recipients: str) -> bytes:
        args = [a for r in recipients for a in ("-r", r)]
        return _ok(self._node("encrypt.mjs", *args, data=data))

    def encrypt_passphrase(self, data: bytes, passphrase: str, work_factor: int) -> bytes:
        env = {"AGE_PASSPHRASE": passphrase}
        return _ok(self._node("encrypt.mjs", "-p", "-w", str(work_factor), data=data, env=env))

    def decrypt(self, ct: bytes, keyfile: Path) -> subprocess.CompletedProcess[bytes]:
        return self._node("decrypt.mjs", "-i", str(keyfile), data=ct)

    def decrypt_passphrase(self, ct: bytes, passphrase: str) -> subprocess.CompletedProcess[bytes]:
        return self._node("decrypt.mjs", "-p", data=ct, env={"AGE_PASSPHRASE": passphrase})


@pytest.fixture(scope="session")
def typage() -> Typage:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        _missing("node and npm are not installed (needed to run typage, npm age-encryption)")
    assert node is not None and npm is not None
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0]) < 20:
        _missing(f"typage needs node 20 or later, this is {version}")
    pinned = _pinned_version()
    with _install_lock():
        if _installed_version() != pinned:
            try:
                proc = subprocess.run(
                    [
                        npm,
                        "ci",
                        "--no-audit",
                        "--no-fund",
                        "--loglevel=error",
                        "--prefer-offline",  # the npm cache, when it has the pinned tarballs
                        "--fetch-retries=1",
                        "--fetch-retry-mintimeout=2000",
                        "--fetch-retry-maxtimeout=5000",
                    ],
                    cwd=INTEROP_DIR,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    env={**os.environ, "npm_config_update_notifier": "false"},
                )
            except subprocess.TimeoutExpired:
                _missing("npm ci in tests/interop timed out (is the npm registry reachable?)")
            if proc.returncode != 0 or _installed_version() != pinned:
                head = " ".join(proc.stderr.strip().splitlines()[:2])
                _missing(f"npm ci in tests/interop failed (registry unreachable?): {head}")
    return Typage(node)


def test_typage_is_the_pinned_version(typage: Typage) -> None:
    assert _installed_version() == _pinned_version()


def test_hybrid_keys_agree_with_typage(typage: Typage) -> None:
    identity, recipient = typage.keygen("hybrid")
    ours = age.parse_identity(identity)
    assert isinstance(ours, age.HybridIdentity)
    assert str(ours) == identity
    assert str(ours.recipient()) == recipient  # same seed expansion and key encoding
    assert str(age.parse_recipient(recipient)) == recipient
    mine = age.HybridIdentity.generate()
    assert typage.recipient_of(str(mine)) == str(mine.recipient())
    x25519 = age.X25519Identity.generate()
    assert typage.recipient_of(str(x25519)) == str(x25519.recipient())


@pytest.mark.parametrize("size", SIZES)
def test_we_decrypt_typage_hybrid_files(typage: Typage, size: int) -> None:
    identity, recipient = typage.keygen("hybrid")
    data = _data(size)
    ct = typage.encrypt(data, recipient)
    assert _stanza_types(ct) == ["mlkem768x25519"]
    assert age.decrypt_bytes([age.parse_identity(identity)], ct) == data
    with pytest.raises(AgeNoMatchError):
        age.decrypt_bytes([age.HybridIdentity.generate()], ct)


@pytest.mark.parametrize("size", SIZES)
def test_typage_decrypts_our_hybrid_files(typage: Typage, tmp_path: Path, size: int) -> None:
    identity = age.HybridIdentity.generate()
    data = _data(size)
    ct = age.encrypt_bytes([identity.recipient()], data)
    assert _stanza_types(ct) == ["mlkem768x25519"]
    assert _ok(typage.decrypt(ct, _keyfile(tmp_path, identity))) == data
    wrong = typage.decrypt(ct, _keyfile(tmp_path, age.HybridIdentity.generate()))
    assert wrong.returncode != 0 and wrong.stdout == b""


def test_typage_decrypts_our_file_for_its_own_hybrid_key(typage: Typage, tmp_path: Path) -> None:
    identity, recipient = typage.keygen("hybrid")
    other = age.HybridIdentity.generate()
    data = _data(C + 3)
    ct = age.encrypt_bytes([other.recipient(), age.parse_recipient(recipient)], data)
    keyfile = tmp_path / "typage.txt"
    keyfile.write_text(f"# typage's key\n{identity}\n")
    assert _ok(typage.decrypt(ct, keyfile)) == data
    # A typage file for two hybrid recipients, one of them ours.
    ct = typage.encrypt(data, recipient, str(other.recipient()))
    assert age.decrypt_bytes([other], ct) == data


@pytest.mark.parametrize("size", [0, 2 * C + 1])
def test_x25519_both_ways_with_typage(typage: Typage, tmp_path: Path, size: int) -> None:
    data = _data(size)
    identity, recipient = typage.keygen("x25519")
    assert (
        age.decrypt_bytes([age.parse_identity(identity)], typage.encrypt(data, recipient)) == data
    )
    ours = age.X25519Identity.generate()
    ct = age.encrypt_bytes([ours.recipient()], data)
    assert _ok(typage.decrypt(ct, _keyfile(tmp_path, ours))) == data


def test_scrypt_both_ways_with_typage(typage: Typage) -> None:
    data = _data(C + 1)
    theirs = typage.encrypt_passphrase(data, "node passphrase", work_factor=12)
    assert parse_header(io.BytesIO(theirs)).stanzas[0].args[1] == "12"
    assert age.decrypt_bytes([age.ScryptIdentity(b"node passphrase")], theirs) == data
    ours = age.encrypt_bytes([age.ScryptRecipient(b"node passphrase")], data)
    assert _ok(typage.decrypt_passphrase(ours, "node passphrase")) == data
    assert typage.decrypt_passphrase(ours, "not it").returncode != 0


def test_typage_rejects_our_file_once_tampered(typage: Typage, tmp_path: Path) -> None:
    # Guards the harness itself: a failing decryption must show up as a failure.
    identity = age.HybridIdentity.generate()
    ct = bytearray(age.encrypt_bytes([identity.recipient()], _data(100)))
    ct[-1] ^= 1
    proc = typage.decrypt(bytes(ct), _keyfile(tmp_path, identity))
    assert proc.returncode != 0
