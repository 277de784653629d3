"""The C2SP age test vectors (CCTV), read in place: every success and every failure kind."""

from __future__ import annotations

import hashlib
import io
import zlib
from pathlib import Path

import pytest

from coldvault import age
from coldvault.age import AgeArmorError
from coldvault.errors import (
    AgeError,
    AgeHeaderError,
    AgeHMACError,
    AgeNoMatchError,
    AgePayloadError,
)
from tests.conftest import age_vectors_dir

VECTORS = age_vectors_dir()
NAMES = (
    sorted(
        p.name
        for p in VECTORS.iterdir()
        if p.is_file() and "." not in p.name and p.name != "SOURCE"
    )
    if VECTORS
    else []
)
KINDS: dict[str, type[AgeError]] = {
    "header failure": AgeHeaderError,
    "HMAC failure": AgeHMACError,
    "no match": AgeNoMatchError,
    "payload failure": AgePayloadError,
    "armor failure": AgeArmorError,
}


def _load(path: Path) -> tuple[dict[str, list[str]], bytes]:
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    meta: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        meta.setdefault(key, []).append(value)
    if meta.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return meta, body


def _identities(meta: dict[str, list[str]]) -> list[age.Identity]:
    ids: list[age.Identity] = [age.parse_identity(s) for s in meta.get("identity", [])]
    ids += [age.ScryptIdentity(p.encode()) for p in meta.get("passphrase", [])]
    return ids


@pytest.mark.skipif(
    VECTORS is None,
    reason="C2SP age vectors not found (../shared/testvectors/age or $COLDVAULT_AGE_VECTORS)",
)
@pytest.mark.parametrize("name", NAMES)
def test_vector(name: str) -> None:
    assert VECTORS is not None
    meta, body = _load(VECTORS / name)
    expect = meta["expect"][0]
    armored = meta.get("armored") == ["yes"]
    out = io.BytesIO()
    if expect == "success":
        age.decrypt(_identities(meta), io.BytesIO(body), out, armored=armored)
    else:
        # The kinds are sibling classes, so this checks exactly the stated kind.
        with pytest.raises(KINDS[expect]):
            age.decrypt(_identities(meta), io.BytesIO(body), out, armored=armored)
    if "payload" in meta:
        # Only authenticated plaintext may have been released, and all of it must match.
        assert hashlib.sha256(out.getvalue()).hexdigest() == meta["payload"][0]


def test_vectors_present_in_ci() -> None:
    import os

    if (os.environ.get("CI") or os.environ.get("COLDVAULT_REQUIRE_INTEROP")) and VECTORS is None:
        pytest.fail("the age test vectors must be present in CI")
    if VECTORS is not None:  # every kind of vector is there, not a partial copy
        kinds = {_load(VECTORS / n)[0]["expect"][0] for n in NAMES}
        assert {"success", "header failure", "HMAC failure", "no match"} <= kinds, kinds
        assert len(NAMES) > 100
