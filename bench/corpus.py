"""A deterministic, practice-like corpus (same seed, same bytes, on any machine).

Layout under the corpus folder (file names start with a synthetic patient id, ``P00042_...``):

  mix/scans/     JPEG/PDF-like scans, 100 KB to 20 MB, incompressible (most are small)
  mix/exports/   XML, HL7 and CSV exports from practice software (compress ~5-8x)
  mix/large/     a few files of several hundred MB: an MP4-like video (incompressible) and a
                 DICOM-like series (12-bit pixels in 16-bit words, air around the body)
  big/           one multi-GB CT-like file (the memory scenario)
  small/         thousands of 100 KB documents (half scans, half letters)
  tiny/          4 KiB documents (the per-file overhead)

Incompressible bytes come from a ChaCha20 keystream keyed by the seed (fast and repeatable);
text comes from a seeded :class:`random.Random`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

MiB = 1024 * 1024
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class CorpusSpec:
    seed: int = 2024
    scans_bytes: int = 700 * 1000 * 1000
    exports_bytes: int = 250 * 1000 * 1000
    large_sizes: tuple[int, ...] = (300 * 1000 * 1000, 250 * 1000 * 1000)
    big_size: int = 2 * 1024 * MiB
    small_count: int = 3000
    small_size: int = 100 * 1000
    tiny_count: int = 2000
    tiny_size: int = 4096
    patients: int = 400

    def key(self) -> str:
        blob = json.dumps([GENERATOR_VERSION, asdict(self)], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


PRESETS: dict[str, CorpusSpec] = {
    "full": CorpusSpec(),
    "quick": CorpusSpec(
        scans_bytes=50 * 1000 * 1000,
        exports_bytes=25 * 1000 * 1000,
        large_sizes=(30 * 1000 * 1000, 20 * 1000 * 1000),
        big_size=256 * MiB,
        small_count=500,
        tiny_count=500,
        patients=60,
    ),
    "tiny": CorpusSpec(
        scans_bytes=1_000_000,
        exports_bytes=500_000,
        large_sizes=(2_000_000,),
        big_size=4 * MiB,
        small_count=20,
        small_size=20_000,
        tiny_count=20,
        patients=5,
    ),
}


class Noise:
    """Deterministic incompressible bytes (a ChaCha20 keystream)."""

    def __init__(self, seed: int, label: str) -> None:
        key = hashlib.sha256(f"{seed}:{label}".encode()).digest()
        self._enc = Cipher(algorithms.ChaCha20(key, b"\0" * 16), mode=None).encryptor()

    def bytes(self, n: int) -> bytes:
        return self._enc.update(b"\0" * n)


def _log_uniform(rng: random.Random, lo: float, hi: float) -> int:
    return int(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _scan_sizes(rng: random.Random, budget: int) -> Iterator[int]:
    total = 0
    while total < budget:
        # Most scans are one or two pages; one in ten is a long multi-page PDF.
        size = (
            _log_uniform(rng, 100_000, 2_000_000)
            if rng.random() < 0.9
            else _log_uniform(rng, 2_000_000, 20_000_000)
        )
        size = min(size, budget - total) if budget - total > 100_000 else size
        total += size
        yield size


_WORDS = [
    "patient",
    "consultation",
    "tension",
    "artérielle",
    "glycémie",
    "ordonnance",
    "renouvellement",
    "allergie",
    "pénicilline",
    "antécédents",
    "hypertension",
    "diabète",
    "type",
    "asthme",
    "vaccination",
    "grippe",
    "dépistage",
    "radiographie",
    "thorax",
    "normal",
    "examen",
    "clinique",
    "auscultation",
    "douleur",
    "abdominale",
    "fièvre",
    "toux",
    "traitement",
    "paracétamol",
    "amoxicilline",
    "suivi",
    "biologique",
    "créatinine",
    "cholestérol",
    "courrier",
    "confrère",
    "cardiologue",
    "dermatologue",
    "arrêt",
    "travail",
    "certificat",
    "aptitude",
    "sport",
    "bilan",
    "annuel",
]


def _export_text(rng: random.Random, size: int, kind: str) -> bytes:
    """XML, HL7 or CSV records with random ids, dates, values and free text."""
    parts: list[str] = []
    got = 0
    words = _WORDS
    while got < size:
        pid = rng.randrange(10**7)
        day = f"20{rng.randrange(10, 25)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
        text = " ".join(rng.choice(words) for _ in range(rng.randrange(4, 16)))
        val = rng.randrange(40, 200)
        if kind == "xml":
            rec = (
                f'<observation id="{rng.getrandbits(48):012x}" patient="{pid}">\n'
                f'  <date>{day}</date><code system="LOINC">{rng.randrange(1000, 99999)}-'
                f'{rng.randrange(10)}</code>\n  <value unit="mmHg">{val}</value>\n'
                f"  <note>{text}</note>\n</observation>\n"
            )
        elif kind == "hl7":
            rec = (
                f"MSH|^~\\&|CABINET|MED|LAB|LAB|{day}{rng.randrange(10**6):06d}||ORU^R01|"
                f"{rng.getrandbits(32)}|P|2.5\rPID|1||{pid}^^^CAB||NOM^PRENOM||19"
                f"{rng.randrange(30, 99)}0101|M\rOBX|1|NM|{rng.randrange(1000, 9999)}^GLU||"
                f"{val / 100:.2f}|g/L|0.70-1.10|N|||F\rNTE|1||{text}\r\n"
            )
        else:
            rec = f'{pid};{day};{rng.randrange(100, 999)};{val};{val * 1.1:.1f};"{text}"\n'
        parts.append(rec)
        got += len(rec)
    return "".join(parts).encode()[:size]


def _ct_block(noise: Noise, rng: random.Random, n: int) -> bytes:
    """12-bit pixels in little-endian 16-bit words, with air (zeros) around the body."""
    half = n // 2
    low = noise.bytes(half)
    high = noise.bytes(half).translate(bytes(i & 0x0F for i in range(256)))
    out = bytearray(half * 2)
    out[0::2] = low
    out[1::2] = high
    # Rows of 1024 bytes (512 px): the outer ~35% of each row is air.
    row = 1024
    air = int(row * rng.uniform(0.15, 0.2)) & ~1
    zeros = bytes(air)
    for start in range(0, len(out) - row + 1, row):
        out[start : start + air] = zeros
        out[start + row - air : start + row] = zeros
    return bytes(out) + bytes(n - half * 2)


def _write_stream(path: Path, size: int, chunk: Callable[[int], bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as f:
        left = size
        while left:
            n = min(left, 4 * MiB)
            f.write(chunk(n))
            left -= n
    tmp.rename(path)


def _patient(rng: random.Random, spec: CorpusSpec) -> str:
    return f"P{rng.randrange(spec.patients):05d}"


def generate(root: Path, spec: CorpusSpec, log: Callable[[str], None] = print) -> Path:
    """Make the corpus under ``root/<spec key>`` (reused if it is already complete)."""
    base = root / f"corpus-{spec.key()}"
    done = base / "COMPLETE"
    if done.exists():
        return base
    log(f"generating corpus in {base} (seed {spec.seed})")
    if base.exists():
        import shutil

        shutil.rmtree(base)
    rng = random.Random(spec.seed)
    noise = Noise(spec.seed, "scans")
    for i, size in enumerate(_scan_sizes(rng, spec.scans_bytes)):
        ext = "jpg" if rng.random() < 0.5 else "pdf"
        name = f"{_patient(rng, spec)}_scan_{i:05d}.{ext}"
        _write_stream(base / "mix" / "scans" / name, size, noise.bytes)
    total = 0
    i = 0
    while total < spec.exports_bytes:
        size = min(_log_uniform(rng, 5_000, 5_000_000), spec.exports_bytes - total + 5_000)
        kind = rng.choice(("xml", "hl7", "csv"))
        path = base / "mix" / "exports" / f"{_patient(rng, spec)}_export_{i:05d}.{kind}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_export_text(rng, size, kind))
        total += size
        i += 1
    for j, size in enumerate(spec.large_sizes):
        pid = _patient(rng, spec)
        if j % 2 == 0:
            video = Noise(spec.seed, f"large{j}")
            _write_stream(base / "mix" / "large" / f"{pid}_echo_{j}.mp4", size, video.bytes)
        else:
            ct = Noise(spec.seed, f"large{j}")
            r2 = random.Random(spec.seed + j)
            _write_stream(
                base / "mix" / "large" / f"{pid}_series_{j}.dcm",
                size,
                functools.partial(_ct_block, ct, r2),
            )
    big = Noise(spec.seed, "big")
    rbig = random.Random(spec.seed + 99)
    _write_stream(
        base / "big" / "P00001_ct_scanner.dcm",
        spec.big_size,
        lambda n: _ct_block(big, rbig, n),
    )
    small_noise = Noise(spec.seed, "small")
    for k in range(spec.small_count):
        pid = _patient(rng, spec)
        path = base / "small" / f"{pid}_doc_{k:05d}.{'pdf' if k % 2 == 0 else 'txt'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        if k % 2 == 0:
            path.write_bytes(small_noise.bytes(spec.small_size))
        else:
            path.write_bytes(_export_text(rng, spec.small_size, "xml"))
    for k in range(spec.tiny_count):
        path = base / "tiny" / f"{_patient(rng, spec)}_note_{k:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_export_text(rng, spec.tiny_size, "csv"))
    (base / "spec.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    os.sync()
    done.write_text("ok\n")
    return base


def files_of(folder: Path) -> list[Path]:
    """Regular files under ``folder``, sorted (the order every contender sees)."""
    return sorted(p for p in folder.rglob("*") if p.is_file())


def patient_of(path: Path) -> str:
    return path.name.split("_", 1)[0]
