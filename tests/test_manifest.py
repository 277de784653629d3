"""Signed drive manifests: encoding, signature checks, and the chain's effective set."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldvault.errors import IntegrityError
from coldvault.manifest import (
    ChainHead,
    Entry,
    Manifest,
    ManifestChainError,
    ManifestFormatError,
    ManifestSignatureError,
    NotVouchedError,
    effective_entries,
    load_manifest,
    load_manifest_folder,
    manifest_digest,
    manifest_filename,
    sign_manifest,
)
from coldvault.signing import SigningKey

KEY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(1, 33)))
T0 = datetime(2026, 3, 1, 20, 15, 3, tzinfo=UTC)


def entry(n: int, data: bytes | None = None) -> Entry:
    oid = hashlib.sha256(str(n).encode()).hexdigest()[:32]
    content = data if data is not None else f"object {n}".encode()
    return Entry(f"objects/{oid[:2]}/{oid}.age", len(content), hashlib.sha256(content).hexdigest())


def first(entries: list[Entry], drive: str = "drive-A") -> Manifest:
    return Manifest("vault-1", drive, 1, T0, full=True, entries=entries)


def test_round_trip_and_exact_format() -> None:
    e1 = Entry("objects/ab/abcd.age", 12, "a" * 64)
    e0 = Entry("keys/k1.age", 0, "b" * 64)
    m = Manifest(
        "vault-1", "drive-A", 1, T0, full=True, entries=[e1, e0], journal_head=(7, "c" * 64)
    )
    data = sign_manifest(m, KEY)
    text = data.decode("ascii")
    signed, sigline = text.rsplit("signature ", 1)
    assert signed == (
        "coldvault-manifest-v1\n"
        "vault vault-1\n"
        "drive drive-A\n"
        "seq 1\n"
        "prev -\n"
        "created 2026-03-01T20:15:03Z\n"
        "kind full\n"
        f"signer {KEY.public().to_text()}\n"
        f"journal 7 {'c' * 64}\n"
        "added 2\n"
        "removed 0\n"
        f"+ {'b' * 64} 0 keys/k1.age\n"
        f"+ {'a' * 64} 12 objects/ab/abcd.age\n"
        "end\n"
    )
    # The signature is plain Ed25519 over every byte up to "end\n".
    KEY.public().verify(signed.encode(), base64.b64decode(sigline))
    loaded = load_manifest(data, KEY.public())
    assert loaded == Manifest(
        "vault-1",
        "drive-A",
        1,
        T0,
        full=True,
        entries=[e0, e1],
        journal_head=(7, "c" * 64),
        signer=KEY.public().to_text(),
    )
    assert loaded.digest == manifest_digest(data) == hashlib.sha256(data).hexdigest()
    assert loaded.lookup("objects/ab/abcd.age") == e1
    assert loaded.lookup("keys/k1.age") == e0
    assert loaded.lookup("objects/ab/abcd.ag") is None
    assert loaded.lookup("zzz") is None


def test_delta_with_removals_round_trips() -> None:
    base = load_manifest(sign_manifest(first([entry(1), entry(2)]), KEY), KEY.public())
    delta = base.successor(T0 + timedelta(days=1), [entry(3)], [entry(1).path])
    loaded = load_manifest(sign_manifest(delta, KEY), KEY.public())
    assert loaded.seq == 2 and loaded.prev == base.digest and not loaded.full
    assert loaded.entries == (entry(3),)
    assert loaded.removed == (entry(1).path,)


def test_only_removals_delta() -> None:
    base = load_manifest(sign_manifest(first([entry(1), entry(2)]), KEY), KEY.public())
    delta = base.successor(T0, [], [entry(1).path, entry(2).path])
    loaded = load_manifest(sign_manifest(delta, KEY), KEY.public())
    assert loaded.entries == () and set(loaded.removed) == {entry(1).path, entry(2).path}


def test_empty_full_manifest() -> None:
    loaded = load_manifest(sign_manifest(first([]), KEY), KEY.public())
    assert loaded.entries == () and loaded.removed == ()


def test_one_changed_byte_breaks_the_signature() -> None:
    data = bytearray(sign_manifest(first([entry(1), entry(2)]), KEY))
    i = data.index(b" 8 objects") + 1  # the size of entry 1 ("object 1" is 8 bytes)
    data[i : i + 1] = b"9"
    with pytest.raises(ManifestSignatureError, match="changed after the vault wrote it"):
        load_manifest(bytes(data), KEY.public())


def test_signed_by_another_key_is_rejected_with_both_fingerprints() -> None:
    data = sign_manifest(first([entry(1)]), OTHER)
    with pytest.raises(ManifestSignatureError) as info:
        load_manifest(data, KEY.public())
    assert OTHER.public().fingerprint() in info.value.message
    assert KEY.public().fingerprint() in info.value.message
    # Without an expected key only integrity is checked, and the signer is reported.
    assert load_manifest(data, None).signer == OTHER.public().to_text()


def test_replacing_the_signer_line_does_not_help_a_forger() -> None:
    data = sign_manifest(first([entry(1)]), OTHER).decode()
    forged = data.replace(OTHER.public().to_text(), KEY.public().to_text()).encode()
    with pytest.raises(ManifestSignatureError):
        load_manifest(forged, KEY.public())


def resign(text: str, key: SigningKey = KEY) -> bytes:
    """Sign arbitrary manifest text, to check the parser rejects what a buggy writer signs."""
    return text.encode() + b"signature " + base64.b64encode(key.sign(text.encode())) + b"\n"


def valid_text(entries: list[Entry] | None = None) -> str:
    data = sign_manifest(first(entries if entries is not None else [entry(1), entry(2)]), KEY)
    return data.decode().rsplit("signature ", 1)[0]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda t: t.replace("added 2", "added 3"),
        lambda t: t.replace("added 2", "added 1"),
        lambda t: t.replace("added 2", "added 02"),
        lambda t: t.replace("removed 0", "removed 1"),
        lambda t: t.replace("seq 1", "seq 0"),
        lambda t: t.replace("prev -", "prev " + "0" * 64),
        lambda t: t.replace("kind full", "kind delta"),
        lambda t: t.replace("kind full", "kind Full"),
        lambda t: t.replace("created 2026-03-01T20:15:03Z", "created 2026-02-30T20:15:03Z"),
        lambda t: t.replace("vault vault-1", "vault vault 1"),
        lambda t: t.replace("end\n", "end\n\n"),
        lambda t: t.replace("end\n", ""),
        lambda t: t.replace("\n", "\r\n"),
        lambda t: t.replace(" objects/", "  objects/"),
        lambda t: t.replace(" objects/", " /objects/", 1),
        lambda t: t.replace(" objects/", " objects//", 1),
        lambda t: t.replace(" objects/", " ../objects/", 1),
        lambda t: t.replace(" objects/", " .hidden/", 1),
        lambda t: t.replace(" 8 objects", " 08 objects", 1),
        lambda t: t.replace(" 8 objects", " -8 objects", 1),
        lambda t: t.replace(" 8 objects", " 99999999999999999999 objects", 1),
        lambda t: t.replace(" 8 objects", " 9223372036854775808 objects", 1),
        lambda t: t.replace("journal -", "journal 1"),
        lambda t: t + "trailing\n",
        lambda t: "\n" + t,
    ],
)
def test_strict_parser_rejects_non_canonical_text(mutate: object) -> None:
    text = valid_text()
    assert callable(mutate)
    bad = mutate(text)
    assert bad != text
    with pytest.raises(ManifestFormatError):
        load_manifest(resign(bad), KEY.public())


def test_parser_rejects_unsorted_duplicate_and_conflicting_entries() -> None:
    text = valid_text()
    lines = text.split("\n")
    plus = [i for i, line in enumerate(lines) if line.startswith("+ ")]
    swapped = list(lines)
    swapped[plus[0]], swapped[plus[1]] = swapped[plus[1]], swapped[plus[0]]
    with pytest.raises(ManifestFormatError, match="out of order"):
        load_manifest(resign("\n".join(swapped)), KEY.public())
    dup = list(lines)
    dup[plus[1]] = dup[plus[0]]
    with pytest.raises(ManifestFormatError, match="out of order or twice"):
        load_manifest(resign("\n".join(dup)), KEY.public())
    # A delta that adds and removes the same path.
    base = load_manifest(sign_manifest(first([entry(1)]), KEY), KEY.public())
    good = sign_manifest(base.successor(T0, [entry(2)], [entry(3).path]), KEY).decode()
    conflict = good.rsplit("signature ", 1)[0].replace(entry(3).path, entry(2).path)
    with pytest.raises(ManifestFormatError, match="both adds and removes"):
        load_manifest(resign(conflict), KEY.public())


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xfe", b"coldvault-manifest-v1\n", b"hello\nsignature " + b"A" * 86 + b"==\n"],
)
def test_garbage_is_a_format_error(data: bytes) -> None:
    with pytest.raises(ManifestFormatError):
        load_manifest(data, KEY.public())


def test_truncated_manifest_is_rejected() -> None:
    data = sign_manifest(first([entry(i) for i in range(50)]), KEY)
    for cut in (1, 10, 89, 90, len(data) // 2):
        with pytest.raises(IntegrityError):
            load_manifest(data[:-cut], KEY.public())


def test_sign_refuses_what_it_could_not_load() -> None:
    with pytest.raises(ValueError):
        sign_manifest(first([Entry("../etc/passwd", 1, "a" * 64)]), KEY)
    with pytest.raises(ValueError):
        sign_manifest(first([Entry("a b", 1, "a" * 64)]), KEY)
    with pytest.raises(ValueError):
        sign_manifest(first([Entry("x", 1, "A" * 64)]), KEY)
    with pytest.raises(ValueError):
        sign_manifest(first([Entry("x", -1, "a" * 64)]), KEY)
    with pytest.raises(ValueError):
        sign_manifest(first([Entry("x", 1, "a" * 64), Entry("x", 2, "a" * 64)]), KEY)
    with pytest.raises(ValueError):
        sign_manifest(Manifest("v", "d", 1, T0, full=False), KEY)
    with pytest.raises(ValueError):
        sign_manifest(Manifest("v", "d", 2, T0, full=False), KEY)  # no prev
    with pytest.raises(ValueError):
        sign_manifest(Manifest("v", "d", 1, T0, full=True, signer="ed25519:x"), KEY)
    with pytest.raises(ValueError):
        Manifest("v", "d", 1, datetime(2026, 1, 1), full=True)  # naive time


_PATHS = st.from_regex(
    r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,12}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,12}){0,3}", fullmatch=True
)


@settings(max_examples=60, deadline=None)
@given(
    st.dictionaries(
        _PATHS,
        st.tuples(st.integers(0, 2**63 - 1), st.binary(min_size=32, max_size=32)),
        max_size=20,
    ),
    st.sets(_PATHS, max_size=5),
    st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2200, 1, 1)),
)
def test_round_trip_property(
    entries: dict[str, tuple[int, bytes]], removed: set[str], created: datetime
) -> None:
    removed -= set(entries)
    base = load_manifest(sign_manifest(first([]), KEY), KEY.public())
    m = base.successor(
        created.replace(tzinfo=UTC),
        [Entry(p, n, h.hex()) for p, (n, h) in entries.items()],
        removed,
    )
    loaded = load_manifest(sign_manifest(m, KEY), KEY.public())
    assert loaded == m
    for p, (n, h) in entries.items():
        assert loaded.lookup(p) == Entry(p, n, h.hex())


# --- the chain ---------------------------------------------------------------------------


class Drive:
    """A drive's manifest history as the drive station would write it."""

    def __init__(self, initial: list[Entry], drive: str = "drive-A", key: SigningKey = KEY):
        self.key = key
        self.files: dict[str, bytes] = {}
        self._write(first(initial, drive))

    def _write(self, m: Manifest) -> None:
        data = sign_manifest(m, self.key)
        self.files[manifest_filename(m.seq)] = data
        self.head = load_manifest(data, self.key.public())

    def sync(
        self, added: Sequence[Entry] = (), removed: Sequence[str] = (), full: bool = False
    ) -> None:
        self._write(self.head.successor(T0, added, removed, full=full))

    def items(self, reverse: bool = True) -> list[tuple[str, bytes]]:
        return sorted(self.files.items(), reverse=reverse)  # any order must do


def test_effective_set_folds_additions_and_removals() -> None:
    d = Drive([entry(1), entry(2)])
    d.sync([entry(3)])
    d.sync([entry(4)], [entry(2).path])
    d.sync()  # an empty sync still advances the chain
    vs = effective_entries(d.items(), KEY.public(), vault_id="vault-1", drive_id="drive-A")
    assert dict(vs) == {e.path: e for e in (entry(1), entry(3), entry(4))}
    assert vs.head == ChainHead(4, d.head.digest)
    assert vs.vouches(entry(3).path, entry(3).size, entry(3).sha256)
    vs.check(entry(4).path, entry(4).size, entry(4).sha256.upper())
    assert effective_entries(d.items(reverse=False), KEY.public()).keys() == vs.keys()


def test_purged_object_put_back_is_rejected() -> None:
    d = Drive([entry(1), entry(2)])
    d.sync([], [entry(1).path])  # the purge
    vs = effective_entries(d.items(), KEY.public())
    # The original ciphertext is still vouched for by manifest 1, but not by the newest state.
    assert load_manifest(d.files[manifest_filename(1)], KEY.public()).lookup(entry(1).path)
    assert not vs.vouches(entry(1).path, entry(1).size, entry(1).sha256)
    with pytest.raises(NotVouchedError, match="not written by this vault"):
        vs.check(entry(1).path, entry(1).size, entry(1).sha256)


def test_swapped_or_planted_objects_are_rejected() -> None:
    vs = effective_entries(Drive([entry(1)]).items(), KEY.public())
    with pytest.raises(NotVouchedError, match="differs from what the vault wrote"):
        vs.check(entry(1).path, entry(1).size, "0" * 64)
    with pytest.raises(NotVouchedError, match="differs"):
        vs.check(entry(1).path, entry(1).size + 1, entry(1).sha256)
    with pytest.raises(NotVouchedError):
        vs.check("objects/00/planted.age", 1, "0" * 64)


def test_later_entry_for_same_path_replaces_earlier() -> None:
    snap1 = Entry("catalog/snapshot.age", 10, "1" * 64)
    snap2 = Entry("catalog/snapshot.age", 20, "2" * 64)
    d = Drive([snap1])
    d.sync([snap2])
    assert effective_entries(d.items(), KEY.public())["catalog/snapshot.age"] == snap2


def test_missing_middle_manifest_is_a_gap() -> None:
    d = Drive([entry(1)])
    d.sync([entry(2)])
    d.sync([], [entry(1).path])
    d.sync([entry(3)])
    del d.files[manifest_filename(3)]  # the purge's manifest
    with pytest.raises(ManifestChainError, match="number 3 is missing"):
        effective_entries(d.items(), KEY.public())


def test_fork_is_rejected() -> None:
    d = Drive([entry(1)])
    base = d.head
    d.sync([entry(2)])
    other = sign_manifest(base.successor(T0, [entry(3)]), KEY)
    files = [*d.items(), ("other-00000002.txt", other)]
    with pytest.raises(ManifestChainError, match="forked"):
        effective_entries(files, KEY.public())
    # An identical copy of the same manifest is not a fork.
    files = [*d.items(), ("copy.txt", d.files[manifest_filename(2)])]
    assert len(effective_entries(files, KEY.public())) == 2


def test_broken_link_is_rejected() -> None:
    d = Drive([entry(1)])
    d.sync([entry(2)])
    # Replace manifest 1 by another valid "number 1": manifest 2 no longer follows it.
    d.files[manifest_filename(1)] = sign_manifest(first([entry(9)]), KEY)
    with pytest.raises(ManifestChainError, match="does not follow"):
        effective_entries(d.items(), KEY.public())


def test_rollback_detected_with_known_head() -> None:
    d = Drive([entry(1)])
    d.sync([], [entry(1).path])
    known = ChainHead(d.head.seq, d.head.digest or "")
    assert len(effective_entries(d.items(), KEY.public(), known_head=known)) == 0
    del d.files[manifest_filename(2)]  # the attacker removes the purge's manifest
    # Without an anchor a truncated chain is indistinguishable from an older drive...
    assert entry(1).path in effective_entries(d.items(), KEY.public())
    # ...with the head the workstation recorded, it is refused.
    with pytest.raises(ManifestChainError, match="newer manifests were removed"):
        effective_entries(d.items(), KEY.public(), known_head=known)
    with pytest.raises(ManifestChainError, match="forked"):
        effective_entries(d.items(), KEY.public(), known_head=ChainHead(1, "0" * 64))


def test_full_checkpoint_allows_pruning_older_manifests() -> None:
    d = Drive([entry(1), entry(2)])
    d.sync([entry(3)], [entry(1).path])
    d.sync([entry(2), entry(3), entry(4)], full=True)  # checkpoint restates everything
    d.sync([entry(5)])
    expected = {e.path for e in (entry(2), entry(3), entry(4), entry(5))}
    assert set(effective_entries(d.items(), KEY.public())) == expected
    del d.files[manifest_filename(1)]
    del d.files[manifest_filename(2)]
    assert set(effective_entries(d.items(), KEY.public())) == expected
    # But the part after the checkpoint must be complete.
    del d.files[manifest_filename(3)]
    with pytest.raises(ManifestChainError, match="missing"):
        effective_entries(d.items(), KEY.public())


def test_foreign_key_drive_or_vault_is_rejected() -> None:
    d = Drive([entry(1)])
    with pytest.raises(ManifestSignatureError, match="another key"):
        effective_entries(d.items(), OTHER.public())
    with pytest.raises(ManifestChainError, match="another drive"):
        effective_entries(d.items(), KEY.public(), drive_id="drive-B")
    with pytest.raises(ManifestChainError, match="another vault"):
        effective_entries(d.items(), KEY.public(), vault_id="vault-2")
    b = Drive([entry(2)], drive="drive-B")
    b.sync([entry(3)])
    mixed = [*d.items(), ("00000002.txt", b.files[manifest_filename(2)])]
    with pytest.raises(ManifestChainError, match="copied between drives"):
        effective_entries(mixed, KEY.public())
    # A planted manifest signed by another key is refused even among valid ones.
    planted = sign_manifest(replace(d.head.successor(T0, [entry(8)]), signer=None), OTHER)
    with pytest.raises(ManifestSignatureError):
        effective_entries([*d.items(), ("00000002.txt", planted)], KEY.public())


def test_no_manifest_at_all() -> None:
    with pytest.raises(ManifestChainError, match="No signed manifest"):
        effective_entries([], KEY.public())


def test_load_manifest_folder(tmp_path: Path) -> None:
    d = Drive([entry(1)])
    d.sync([entry(2)])
    folder = tmp_path / "manifests"
    folder.mkdir()
    for name, data in d.files.items():
        (folder / name).write_bytes(data)
    (folder / ".tmp-123-00000003.txt").write_bytes(b"partial")  # a crashed write is ignored
    vs = load_manifest_folder(folder, KEY.public(), drive_id="drive-A")
    assert set(vs) == {entry(1).path, entry(2).path}
    with pytest.raises(ManifestChainError, match="no manifest folder"):
        load_manifest_folder(tmp_path / "nope", KEY.public())
    (folder / "00000003.txt").write_bytes(b"garbage")
    with pytest.raises(ManifestFormatError, match=r"00000003\.txt"):
        load_manifest_folder(folder, KEY.public())


@pytest.mark.parametrize("chunk", [1, 90, 150, 333, 10_000])
def test_chunked_parsing_matches_and_checks_order_across_chunks(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    import coldvault.manifest as manifest_mod

    monkeypatch.setattr(manifest_mod, "_CHUNK", chunk)
    entries = [entry(i) for i in range(40)]
    base = load_manifest(sign_manifest(first(entries), KEY), KEY.public())
    assert base.entries == tuple(sorted(entries))
    # Two adjacent lines swapped anywhere (so also across a chunk boundary) are refused.
    lines = valid_text(entries).split("\n")
    plus = [i for i, line in enumerate(lines) if line.startswith("+ ")]
    for k in range(len(plus) - 1):
        swapped = list(lines)
        swapped[plus[k]], swapped[plus[k + 1]] = swapped[plus[k + 1]], swapped[plus[k]]
        with pytest.raises(ManifestFormatError, match="out of order"):
            load_manifest(resign("\n".join(swapped)), KEY.public())
    # A malformed line anywhere is refused.
    for k in (0, 17, 39):
        bad = list(lines)
        bad[plus[k]] = bad[plus[k]].replace("+ ", "+  ", 1)
        with pytest.raises(ManifestFormatError):
            load_manifest(resign("\n".join(bad)), KEY.public())
