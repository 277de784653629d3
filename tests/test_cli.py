"""End-to-end tests of the command line, called in-process through ``main(argv)``.

Every failure a user can meet ends as one ``coldvault: error: ...`` line (plus an optional
``hint:`` line and indented details), the documented exit code, and never a traceback.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from coldvault import age, objects
from coldvault.catalog.db import Catalog
from coldvault.cli.main import cli as cli_group
from coldvault.cli.main import main
from coldvault.restore import place_file, safe_name
from coldvault.vault import Vault
from tests.helpers import PASSPHRASE


@dataclass
class Result:
    rc: int
    out: str
    err: str

    def error_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.startswith("coldvault: error:")]


class Cli:
    """A vault driven through the command line, in a temporary folder."""

    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp
        self.capsys = capsys
        self.config = tmp / "coldvault.toml"
        self.state = tmp / "state"
        self.passphrase_file = tmp / "passphrase"
        self.passphrase_file.write_bytes(PASSPHRASE + b"\n")
        self.recovery_key = ""
        self.fingerprint = ""

    def __call__(self, *args: str, config: Path | None = None) -> Result:
        self.capsys.readouterr()
        rc = main(["--config", str(config or self.config), *args])
        out, err = self.capsys.readouterr()
        assert "Traceback" not in out + err
        assert "internal error" not in err, err
        return Result(rc, out, err)

    def init(self, *extra: str) -> Result:
        r = self("init", "--state-dir", str(self.state), *extra)
        assert r.rc == 0, r.err
        m = re.search(r"AGE-SECRET-KEY-[0-9A-Z-]+", r.out)
        assert m is not None
        self.recovery_key = m.group(0)
        lines = r.out.splitlines()
        i = next(i for i, ln in enumerate(lines) if "SIGNING KEY FINGERPRINT" in ln)
        self.fingerprint = lines[i + 2].strip()
        return r

    @property
    def vault(self) -> Vault:
        return Vault(self.state)

    def catalog(self) -> Catalog:
        return Catalog(self.vault.catalog_path)

    def write(self, name: str, data: bytes | None = None) -> Path:
        path = self.tmp / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(2000) if data is None else data)
        return path

    def ingest(self, patient: str, *files: Path, date: str | None = None) -> list[str]:
        extra = ["--date", date] if date else []
        r = self("ingest", *map(str, files), "--patient", patient, *extra)
        assert r.rc == 0, r.err
        return re.findall(r"as document ([0-9a-f]+)", r.out)

    def drive(self, name: str) -> Path:
        root = self.tmp / f"drive-{name}"
        root.mkdir()
        r = self("drive", "enroll", str(root), "--name", name)
        assert r.rc == 0, r.err
        return root

    def documents(self, patient: str) -> list[tuple[str, str]]:
        """(doc id, object path) of a patient's documents."""
        with self.catalog() as cat:
            row = cat.patient_by_lookup(self.vault.lookup("patient", patient))
            assert row is not None
            return [(d.doc_id, d.object_path) for d in cat.documents(row.id)]


def make_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Cli:
    monkeypatch.delenv("COLDVAULT_CONFIG", raising=False)
    monkeypatch.delenv("COLDVAULT_NEW_PASSPHRASE_FILE", raising=False)
    c = Cli(tmp_path, capsys)
    monkeypatch.setenv("COLDVAULT_PASSPHRASE_FILE", str(c.passphrase_file))
    return c


@pytest.fixture
def cv(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    return make_cli(tmp_path, capsys, monkeypatch)


def assert_one_error(r: Result, code: int, *needles: str) -> str:
    """Exactly one ``coldvault: error:`` line; other lines are a hint or indented details."""
    assert r.rc == code, (r.rc, r.err)
    errors = r.error_lines()
    assert len(errors) == 1, r.err
    for ln in r.err.splitlines():
        assert ln.startswith(("coldvault: error:", "hint: ", " ")), ln
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ("bogus = 1\n", "vault.bogus"),
        ("[[source]]\nname = 's'\npath = '{tmp}'\npattern = '(?P<patient>['\n", "pattern"),
        ("[[source]]\nname = 's'\npath = '{tmp}/nowhere'\npattern = '(?P<patient>x)'\n", "path"),
    ],
    ids=["unknown-key", "bad-regex", "missing-folder"],
)
def test_malformed_config_names_file_and_key(cv: Cli, body: str, key: str) -> None:
    cv.init()
    text = cv.config.read_text()
    if body.startswith("[[source]]"):
        text += "\n" + body.format(tmp=cv.tmp)
    else:
        text = text.replace("[vault]\n", "[vault]\n" + body, 1)
    cv.config.write_text(text)
    line = assert_one_error(cv("status"), 2, str(cv.config), key)
    if key != "vault.bogus":
        assert f"source[1].{key}" in line


def test_toml_syntax_error(cv: Cli) -> None:
    cv.config.write_text("[vault\nstate_dir = '/x'\n")
    assert_one_error(cv("status"), 2, str(cv.config), "TOML", "line 1")


def test_several_config_problems_are_all_listed(cv: Cli) -> None:
    cv.config.write_text("[vault]\nstate_dir = 'relative'\nbogus = 1\ncopies = 'two'\n")
    r = cv("status")
    assert_one_error(r, 2, str(cv.config))
    assert "vault.bogus" in r.err and "vault.copies" in r.err


def test_no_config(cv: Cli) -> None:
    r = cv("status", config=cv.tmp / "missing.toml")
    assert_one_error(r, 2, "missing.toml", "does not exist")
    assert "hint: " in r.err


# --- init ------------------------------------------------------------------------------------


def test_init_refuses_to_overwrite(cv: Cli) -> None:
    cv.init()
    config_before = cv.config.read_bytes()
    identity_before = (cv.state / "identity.age").read_bytes()
    r = cv("init", "--state-dir", str(cv.state))
    assert_one_error(r, 2, "already exists")
    assert cv.config.read_bytes() == config_before
    # Another configuration file, the same state folder: the vault is not overwritten either.
    other = cv.tmp / "other.toml"
    r = cv("init", "--state-dir", str(cv.state), config=other)
    assert_one_error(r, 5, "vault already exists")
    assert (cv.state / "identity.age").read_bytes() == identity_before
    assert not other.exists()


def test_empty_passphrase_file(cv: Cli) -> None:
    empty = cv.tmp / "empty"
    empty.write_bytes(b"\n")
    r = cv("init", "--state-dir", str(cv.state), "--passphrase-file", str(empty))
    assert_one_error(r, 2, "empty")
    assert not cv.config.exists() and not (cv.state / "vault.json").exists()
    cv.init()
    f = cv.write("a.pdf")
    cv.ingest("1", f)
    assert_one_error(cv("restore", "1", "--passphrase-file", str(empty)), 2, "empty")


# --- passphrases and keys --------------------------------------------------------------------


def test_wrong_passphrase(cv: Cli) -> None:
    cv.init()
    cv.ingest("1001", cv.write("a.pdf"))
    wrong = cv.tmp / "wrong"
    wrong.write_text("not the passphrase\n")
    new = cv.tmp / "new"
    new.write_text("a brand new passphrase\n")
    out = cv.tmp / "out"
    assert_one_error(cv("restore", "1001", "--to", str(out), "--passphrase-file", str(wrong)), 4)
    assert not out.exists()
    before = {p.name: p.read_bytes() for p in cv.state.iterdir() if p.is_file()}
    r = cv("key", "passwd", "--passphrase-file", str(wrong), "--new-passphrase-file", str(new))
    assert_one_error(r, 4, "wrong passphrase")
    after = {p.name: p.read_bytes() for p in cv.state.iterdir() if p.is_file()}
    assert after["identity.age"] == before["identity.age"]
    assert after["vault.json"] == before["vault.json"]
    assert cv("restore", "1001", "--to", str(out)).rc == 0  # the old passphrase still works


def test_key_passwd_and_show_recipient(cv: Cli) -> None:
    cv.init()
    data = os.urandom(3000)
    cv.ingest("1001", cv.write("a.pdf", data))
    r = cv("key", "show-recipient")
    assert r.rc == 0
    recipient = r.out.strip()
    assert recipient == cv.vault.info.master_recipient
    assert recipient.startswith("age1pq1")  # post-quantum by default
    new = cv.tmp / "new"
    new.write_text("a brand new passphrase\n")
    r = cv("key", "passwd", "--new-passphrase-file", str(new))
    assert r.rc == 0 and "Passphrase changed" in r.out
    assert cv("key", "show-recipient").out.strip() == recipient  # same master, new passphrase
    assert_one_error(cv("restore", "1001", "--to", str(cv.tmp / "o1")), 4)
    r = cv("restore", "1001", "--to", str(cv.tmp / "o2"), "--passphrase-file", str(new))
    assert r.rc == 0
    assert tree(cv.tmp / "o2") == {"1001/a.pdf": data}


def test_classic_vault_recipient(cv: Cli) -> None:
    cv.init("--classic")
    recipient = cv("key", "show-recipient").out.strip()
    assert recipient.startswith("age1") and not recipient.startswith("age1pq")


def test_malformed_identity_file(cv: Cli) -> None:
    cv.init()
    cv.ingest("1001", cv.write("a.pdf"))
    (cv.state / "identity.age").write_bytes(b"this is not an age file\n" * 4)
    r = cv("restore", "1001", "--to", str(cv.tmp / "out"))
    assert_one_error(r, 5, "identity file")
    assert "hint: " in r.err


# --- restore ---------------------------------------------------------------------------------


def test_restore_unknown_patient(cv: Cli) -> None:
    cv.init()
    cv.ingest("1001", cv.write("a.pdf"))
    assert_one_error(cv("restore", "9999", "--to", str(cv.tmp / "out")), 3, "9999")
    assert_one_error(cv("ls", "9999"), 3)


def test_damaged_objects_in_spool_are_named_and_the_rest_restored(cv: Cli) -> None:
    cv.init()
    files = {f"doc{i}.pdf": os.urandom(4000 + i) for i in range(3)}
    cv.ingest("1001", *(cv.write(n, d) for n, d in files.items()))
    docs = cv.documents("1001")
    (flip_id, flip_obj), (trunc_id, trunc_obj), _ = docs
    data = bytearray((cv.vault.spool / flip_obj).read_bytes())
    data[len(data) // 2] ^= 0x01
    (cv.vault.spool / flip_obj).write_bytes(bytes(data))
    with open(cv.vault.spool / trunc_obj, "r+b") as f:
        f.truncate(200)
    out = cv.tmp / "out"
    r = cv("restore", "1001", "--to", str(out), "--reason", "demande du patient")
    assert r.rc == 1
    errors = r.error_lines()
    assert len(errors) == 2
    assert any(flip_id in e for e in errors) and any(trunc_id in e for e in errors)
    restored = tree(out / "1001")
    assert len(restored) == 1
    assert next(iter(restored.values())) in files.values()
    assert not [p for p in (out / "1001").iterdir() if p.name.startswith(".")]  # no temp files


def test_restore_takes_a_good_copy_when_another_is_damaged(cv: Cli) -> None:
    cv.init()
    files = {f"doc{i}.pdf": os.urandom(4000 + i) for i in range(2)}
    cv.ingest("1001", *(cv.write(n, d) for n, d in files.items()))
    a, b = cv.drive("A"), cv.drive("B")
    assert cv("drive", "sync").rc == 0
    for _doc, obj in cv.documents("1001"):
        assert not (cv.vault.spool / obj).exists()
        # Damaged on A (the first drive restore looks at), intact on B.
        data = bytearray((a / "coldvault" / obj).read_bytes())
        data[len(data) // 2] ^= 0x01
        (a / "coldvault" / obj).write_bytes(bytes(data))
    out = cv.tmp / "out"
    r = cv("restore", "1001", "--to", str(out), "--reason", "test")
    assert r.rc == 0, r.err
    assert tree(out / "1001") == files
    # With B away, the damage is reported by document id and file name.
    shutil.move(b, cv.tmp / "away")
    r = cv("restore", "1001", "--to", str(cv.tmp / "out2"), "--reason", "test")
    assert r.rc == 1
    assert sorted(e.split("(", 1)[1].split(")")[0] for e in r.error_lines()) == sorted(files)


def test_a_damaged_manifest_is_replaced_at_the_next_sync(cv: Cli) -> None:
    cv.init()
    files = {f"doc{i}.pdf": os.urandom(3000 + i) for i in range(3)}
    cv.ingest("1001", *(cv.write(n, d) for n, d in files.items()))
    a, b = cv.drive("A"), cv.drive("B")
    assert cv("drive", "sync").rc == 0
    cv.ingest("1001", cv.write("later.pdf", b"%PDF later"))
    assert cv("drive", "sync").rc == 0
    shutil.move(b, cv.tmp / "away")  # only A is plugged in from now on
    manifests = sorted((a / "coldvault" / "manifests").iterdir())
    assert len(manifests) == 2
    data = bytearray(manifests[0].read_bytes())
    data[len(data) // 2] ^= 0x04  # a bit flipped by the stick
    manifests[0].write_bytes(bytes(data))
    r = cv("verify")
    assert r.rc == 1 and "PROBLEMS" in r.out + r.err
    (_, a_obj), *_ = cv.documents("1001")
    assert not (cv.vault.spool / a_obj).exists()
    r = cv("restore", "1001", "--to", str(cv.tmp / "early"), "--reason", "t")
    assert_one_error(r, 3, "not plugged in: B")
    assert "drive A cannot be used" in r.err and "coldvault drive sync" in r.err
    # The next sync checks every copy and replaces the chain with one full manifest.
    assert cv("drive", "sync").rc == 0
    assert [p.name for p in (a / "coldvault" / "manifests").iterdir()] == ["00000003.txt"]
    assert cv("verify").rc == 0
    out = cv.tmp / "out"
    assert cv("restore", "1001", "--to", str(out), "--reason", "t").rc == 0
    assert len(tree(out / "1001")) == 4
    key = cv.tmp / "key.txt"
    key.write_text(cv.recovery_key + "\n")
    r = cv(
        "recover", "--drive", str(a), "--to", str(cv.tmp / "rec"),
        "--recovery-key-file", str(key), "--fingerprint", cv.fingerprint,
    )  # fmt: skip
    assert r.rc == 0, r.err
    assert tree(cv.tmp / "rec" / "1001") == tree(out / "1001")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts a small tmpfs)")
def test_restore_into_a_full_folder_is_one_clear_error(cv: Cli) -> None:
    import subprocess

    cv.init()
    cv.ingest("1001", cv.write("big.pdf", os.urandom(200_000)))
    small = cv.tmp / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        r = cv("restore", "1001", "--to", str(small), "--reason", "test")
        assert_one_error(r, 6, "cannot write the restored documents into", "No space left")
        assert [p.name for p in (small / "1001").iterdir()] == []  # no half file, no temp
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_restore_never_writes_outside_the_folder(cv: Cli) -> None:
    cv.init()
    cv.ingest("1001", cv.write("a.pdf"))
    doc_id, rel = cv.documents("1001")[0]
    # Replace the object with one whose stored name tries to climb out of the restore folder.
    vault = cv.vault
    with cv.catalog() as cat:
        row = cat.patient_by_lookup(vault.lookup("patient", "1001"))
        assert row is not None
        recipient = age.parse_recipient(row.recipient)
        payload = b"evil payload"
        buf = io.BytesIO()
        meta = objects.DocumentMeta(doc_id, row.key_id, "../../evil.txt", 0, "")
        objects.write_object(io.BytesIO(payload), len(payload), meta, [recipient], buf)
        (vault.spool / rel).write_bytes(buf.getvalue())
        with cat.transaction():
            cat.add_item(
                rel, "object", len(buf.getvalue()), hashlib.sha256(buf.getvalue()).hexdigest()
            )
    base = cv.tmp / "deep" / "er"
    out = base / "out"
    r = cv("restore", "1001", "--to", str(out))
    assert r.rc == 0, r.err
    assert tree(base) == {"out/1001/evil.txt": payload}
    assert [p.name for p in cv.tmp.rglob("evil*")] == ["evil.txt"]


def test_patient_id_cannot_climb_out_either(cv: Cli) -> None:
    cv.init()
    data = os.urandom(1000)
    cv.ingest("../../escape", cv.write("a.pdf", data))
    out = cv.tmp / "a" / "b" / "out"
    r = cv("restore", "../../escape", "--to", str(out))
    assert r.rc == 0, r.err
    assert tree(cv.tmp / "a") == {"b/out/escape/a.pdf": data}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../evil.txt", "evil.txt"),
        ("/etc/passwd", "passwd"),
        ("..\\..\\win.ini", "win.ini"),
        ("..", "fallback"),
        ("", "fallback"),
        ("a/..", "fallback"),
        (".hidden", "hidden"),
        ("bad\x00na\nme:*.pdf", "bad_na_me__.pdf"),
        ("compte rendu é.pdf", "compte rendu é.pdf"),
    ],
)
def test_safe_name(name: str, expected: str) -> None:
    got = safe_name(name, "fallback")
    assert got == expected
    assert "/" not in got and got not in (".", "..")


def test_place_file_never_overwrites(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.pdf").write_bytes(b"old")
    placed = []
    for content in (b"one", b"two"):
        tmp = folder / ".tmp"
        tmp.write_bytes(content)
        placed.append(place_file(tmp, folder, "a.pdf"))
    assert [p.name for p in placed] == ["a (1).pdf", "a (2).pdf"]
    assert (folder / "a.pdf").read_bytes() == b"old"
    assert placed[1].read_bytes() == b"two"
    assert not (folder / ".tmp").exists()


# --- ingest ----------------------------------------------------------------------------------


def test_ingest_of_a_symlink_is_refused(cv: Cli) -> None:
    cv.init()
    target = cv.write("secret.pdf", b"not to be archived through a link")
    link = cv.tmp / "in" / "link.pdf"
    link.symlink_to(target)
    r = cv("ingest", str(link), "--patient", "1001")
    assert_one_error(r, 1, "link.pdf", "symbolic link (not followed)")
    assert target.exists()
    with cv.catalog() as cat:
        assert cat.counts()["documents"] == 0
    assert not list((cv.vault.spool / "objects").rglob("*.age"))


def test_ingest_of_a_missing_file_says_so(cv: Cli) -> None:
    cv.init()
    r = cv("ingest", str(cv.tmp / "nope.pdf"), "--patient", "1")
    assert_one_error(r, 1, "nope.pdf: no such file")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--born", "2999-01-01"], "born: 2999-01-01 is in the future"),
        (["--born", "1990-01-01", "--died", "1980-01-01"], "died before being born"),
    ],
)
def test_patient_set_refuses_impossible_facts(cv: Cli, args: list[str], needle: str) -> None:
    cv.init()
    assert_one_error(cv("patient", "set", "42", *args), 2, needle, "nothing recorded")
    with cv.catalog() as cat:
        assert cat.patients() == []


def test_ingest_bad_date_is_a_usage_error(cv: Cli) -> None:
    cv.init()
    r = cv("ingest", str(cv.write("a.pdf")), "--patient", "1", "--date", "31/31/2020")
    assert_one_error(r, 2, "not a date")


# --- drives ----------------------------------------------------------------------------------


def test_drive_sync_without_a_drive(cv: Cli) -> None:
    cv.init()
    cv.ingest("1", cv.write("a.pdf"))
    assert_one_error(cv("drive", "sync"), 3, "no enrolled drive")
    root = cv.drive("A")
    shutil.move(root, cv.tmp / "away")
    r = cv("drive", "sync")
    assert_one_error(r, 3, "plugged")
    assert_one_error(cv("drive", "sync", "A"), 3, "'A'")
    assert_one_error(cv("drive", "sync", "Nope"), 2, "Nope")
    assert_one_error(cv("verify"), 3)


def test_foreign_drive_is_refused(cv: Cli) -> None:
    other = Vault.create(cv.tmp / "other-state", b"another vault passphrase").vault
    theirs = cv.tmp / "theirs"
    theirs.mkdir()
    from coldvault.drives.station import enroll

    with Catalog(other.catalog_path) as ocat:
        enroll(other, ocat, theirs, "Theirs", is_directory=True)
    cv.init()
    cv.ingest("1001", cv.write("a.pdf"))
    before = tree(theirs)
    # Enrolling a drive of another vault is refused.
    assert_one_error(cv("drive", "enroll", str(theirs), "--name", "Mine"), 5, "another vault")
    assert tree(theirs) == before
    # An enrolled folder whose drive was swapped for another vault's: refused, nothing written.
    mine = cv.drive("A")
    shutil.rmtree(mine)
    shutil.copytree(theirs, mine)
    r = cv("drive", "sync", "A")
    assert r.rc == 5, r.err
    assert tree(mine) == before
    assert not list((mine / "coldvault" / "objects").rglob("*.age"))


def test_recover_with_a_foreign_or_malformed_key(cv: Cli) -> None:
    cv.init()
    cv.ingest("1001", cv.write("a.pdf"))
    root = cv.drive("A")
    assert cv("drive", "sync").rc == 0
    other = Vault.create(cv.tmp / "other-state", b"another vault passphrase")
    foreign = cv.tmp / "foreign.txt"
    foreign.write_text(other.recovery_key + "\n")
    garbage = cv.tmp / "garbage.txt"
    garbage.write_text("AGE-SECRET-KEY-NOTAKEY\n")
    for keyfile in (foreign, garbage):
        out = cv.tmp / f"out-{keyfile.stem}"
        r = cv(
            "recover",
            "--drive",
            str(root),
            "--to",
            str(out),
            "--recovery-key-file",
            str(keyfile),
            "--fingerprint",
            cv.fingerprint,
        )
        assert_one_error(r, 4)
        assert not out.exists() or tree(out) == {}
    # A recovery with the wrong fingerprint is refused before anything is decrypted.
    good = cv.tmp / "good.txt"
    good.write_text(cv.recovery_key + "\n")
    r = cv(
        "recover",
        "--drive",
        str(root),
        "--to",
        str(cv.tmp / "out-fp"),
        "--recovery-key-file",
        str(good),
        "--fingerprint",
        "0" * len(cv.fingerprint),
    )
    assert_one_error(r, 1, "fingerprint")
    r = cv(
        "recover",
        "--drive",
        str(root),
        "--to",
        str(cv.tmp / "out-ok"),
        "--recovery-key-file",
        str(good),
        "--fingerprint",
        cv.fingerprint,
    )
    assert r.rc == 0, r.err
    assert list(tree(cv.tmp / "out-ok").keys()) == ["1001/a.pdf"]


# --- listing and status ----------------------------------------------------------------------


def test_status_json_shape(cv: Cli) -> None:
    cv.init()
    cv.ingest("1001", cv.write("a.pdf"), cv.write("b.pdf"))
    cv.ingest("1002", cv.write("c.pdf"))
    cv.drive("A")
    r = cv("status", "--json")
    assert r.rc == 0
    st = json.loads(r.out)
    assert set(st) == {
        "patients",
        "documents",
        "unsorted",
        "spool",
        "pending",
        "drives",
        "warnings",
        "alerts",
    }
    assert (st["patients"], st["documents"], st["unsorted"]) == (2, 3, 0)
    assert st["spool"]["objects"] >= 3 and st["spool"]["bytes"] > 6000
    assert [d["name"] for d in st["drives"]] == ["A"]
    assert isinstance(st["warnings"], list)
    assert cv("drive", "sync").rc == 0
    st = json.loads(cv("status", "--json").out)
    assert st["drives"][0]["lacking"] == 0 and st["drives"][0]["last_seen"]
    r = cv("drive", "list", "--json")
    assert r.rc == 0 and json.loads(r.out)[0]["name"] == "A"


def test_ls_unlock_shows_names_and_plain_ls_does_not(cv: Cli) -> None:
    cv.init()
    cv.ingest("1001", cv.write("compte rendu é.pdf"), date="2021-03-04")
    r = cv("ls", "1001")
    assert r.rc == 0 and "compte rendu" not in r.out and "2021-03-04" in r.out
    r = cv("ls", "1001", "--unlock")
    assert r.rc == 0 and "compte rendu é.pdf" in r.out
    r = cv("ls", "--unlock")
    assert r.rc == 0 and "1001" in r.out
    assert "1001" not in cv("ls").out
    listed = json.loads(cv("ls", "1001", "--unlock", "--json").out)
    assert listed[0]["name"] == "compte rendu é.pdf" and listed[0]["copies"] == []


# --- help ------------------------------------------------------------------------------------


def _all_commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [path]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):  # the top group loads its commands lazily
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        if isinstance(cmd, click.Group):
            out += _all_commands(cmd, (*path, name))
        else:
            out.append((*path, name))
    return out


def test_help_for_every_command(cv: Cli) -> None:
    commands = _all_commands(cli_group)
    assert ("purge",) in commands and ("key", "passwd") in commands
    for path in commands:
        r = cv(*path, "--help", config=cv.tmp / "no-config-needed.toml")
        assert r.rc == 0, (path, r.err)
        assert "Usage: coldvault" in r.out, path


def test_unknown_command_and_option_are_usage_errors(cv: Cli) -> None:
    r = cv("frobnicate")
    assert r.rc == 2 and "No such command" in r.err
    r = cv("status", "--frob")
    assert r.rc == 2 and "No such option" in r.err


# --- lazily loaded commands -------------------------------------------------------------------


def test_every_command_is_listed_with_the_module_that_defines_it() -> None:
    import importlib

    from coldvault.cli.main import COMMAND_MODULES

    defined: dict[str, str] = {}
    for module in sorted(set(COMMAND_MODULES.values())):
        for command in importlib.import_module(f"coldvault.cli.{module}").COMMANDS:
            assert command.name is not None
            defined[command.name] = module
    assert defined == COMMAND_MODULES


def test_version_imports_no_command_module_and_a_command_only_its_own() -> None:
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from coldvault.cli.main import cli\n"
        "try:\n"
        "    cli(sys.argv[1:], prog_name='coldvault')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m.rsplit('.', 1)[1] for m in sys.modules\n"
        "             if m.startswith('coldvault.cli.') and m.endswith('_cmd')))\n"
    )

    def loaded(*args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, check=True
        )
        return out.stdout.strip().splitlines()[-1]

    assert loaded("--version") == "[]"
    assert loaded("restore", "--help") == "['restore_cmd']"
    # Help lists every command, so it loads them all.
    from coldvault.cli.main import COMMAND_MODULES

    assert loaded("--help").count("_cmd") == len(set(COMMAND_MODULES.values()))
