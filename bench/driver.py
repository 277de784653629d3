"""The coldvault side of each scenario, run as its own process so that it is timed like the
tools it is compared with (interpreter start-up and imports included).

    python -m bench.driver create STATE [--classic]
    python -m bench.driver ingest STATE LIST [--workers N] [--batch N] [--known-patients]
    python -m bench.driver floor LIST OUT    (the brief's prototype's per-file work, alone)
    python -m bench.driver enroll STATE ROOT
    python -m bench.driver sync STATE ROOT
    python -m bench.driver restore STATE PATIENT OUT
    python -m bench.driver daemon CONFIG

Each prints one JSON line of in-process figures on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

T_START = time.monotonic()

PASSPHRASE = b"bench passphrase, not a secret"


def _patient(path: Path) -> str:
    return path.name.split("_", 1)[0]


def daemon_batch() -> int:
    """The daemon's ``BATCH_MAX`` (files handed to one ``ingest_batch`` call), read from its
    source: importing the daemon would add its imports to the timed start-up."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("coldvault.daemon")
    try:
        assert spec is not None and spec.origin is not None
        m = re.search(r"^BATCH_MAX = (\d+)", Path(spec.origin).read_text(), re.M)
        return int(m.group(1)) if m else 64
    except (AssertionError, OSError):
        return 64


def cmd_create(a: argparse.Namespace) -> dict[str, Any]:
    from coldvault.age import scrypt
    from coldvault.vault import Vault

    if a.work_factor:  # only the harness's own test lowers it (the real cost is a second)
        scrypt.DEFAULT_WORK_FACTOR = a.work_factor
    created = Vault.create(Path(a.state), PASSPHRASE, classic=a.classic)
    return {"recovery_key": created.recovery_key}


def cmd_ingest(a: argparse.Namespace) -> dict[str, Any]:
    from coldvault import ingest
    from coldvault.catalog.db import Catalog
    from coldvault.ingest import Ingestor, IngestRequest
    from coldvault.vault import Vault

    t_imported = time.monotonic()
    files = [Path(line) for line in Path(a.list).read_text().splitlines() if line]
    vault = Vault(Path(a.state))
    sync_time = 0.0
    real_sync = Ingestor._sync_spool

    def timed_sync(self: Ingestor, *args: Any, **kwargs: Any) -> None:
        nonlocal sync_time
        t = time.perf_counter()
        real_sync(self, *args, **kwargs)
        sync_time += time.perf_counter() - t

    ingest.Ingestor._sync_spool = timed_sync  # type: ignore[method-assign]
    # The catalog's COMMIT fsyncs its write-ahead log (synchronous=FULL): timed apart too, so
    # that "before fsync" excludes both of a commit group's syncs.
    commit_time = 0.0
    real_transaction = Catalog.transaction

    @contextlib.contextmanager
    def timed_transaction(self: Catalog) -> Iterator[Any]:
        nonlocal commit_time
        cm = real_transaction(self)
        conn = cm.__enter__()
        try:
            yield conn
        except BaseException:
            if not cm.__exit__(*sys.exc_info()):
                raise
            return
        t = time.perf_counter()
        cm.__exit__(None, None, None)
        commit_time += time.perf_counter() - t

    Catalog.transaction = timed_transaction  # type: ignore[method-assign]
    archived = errors = 0
    with Catalog(vault.catalog_path) as catalog:
        ing = Ingestor(vault, catalog, workers=a.workers)
        if a.known_patients:  # every patient's key made before the clock starts
            for pid in sorted({a.patient or _patient(f) for f in files}):
                ing.patient_for(pid)
            commit_time = 0.0
        t0 = time.perf_counter()
        try:
            batch = a.batch or daemon_batch()
            for i in range(0, len(files), batch):
                reqs = [
                    IngestRequest(
                        f, source="bench", patient_id=a.patient or _patient(f), kind="bench"
                    )
                    for f in files[i : i + batch]
                ]
                for r in ing.ingest_batch(reqs):
                    if r.doc_id:
                        archived += 1
                    elif r.error is not None:
                        errors += 1
                        print(f"error: {r.error.message}", file=sys.stderr)
        finally:
            ing.close()
        elapsed = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{errors} file(s) failed")
    return {
        "archived": archived,
        "startup_s": t_imported - T_START,
        "ingest_s": elapsed,
        "sync_s": sync_time,
        "commit_s": commit_time,
    }


def cmd_floor(a: argparse.Namespace) -> dict[str, Any]:
    """The per-file work the brief's prototype timed (performance-notes.md: 0.29 ms a 4 KiB
    file on its machine), alone: read the file, zstd level 3, an age file for one X25519
    recipient (coldvault's age code), a new file written. No hashes, tar, metadata, catalog,
    patient keys or sync: what this machine takes for that, to read coldvault's figure by."""
    import zstandard

    from coldvault import age

    files = [Path(line) for line in Path(a.list).read_text().splitlines() if line]
    out = Path(a.out)
    recipient = age.X25519Identity.generate().recipient()
    cctx = zstandard.ZstdCompressor(level=3, write_checksum=True)
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        with open(f, "rb") as src:
            obj = age.encrypt_bytes([recipient], cctx.compress(src.read()))
        with open(out / f"{i}.age", "xb") as dst:
            dst.write(obj)
    return {"files": len(files), "floor_s": time.perf_counter() - t0}


def cmd_enroll(a: argparse.Namespace) -> dict[str, Any]:
    from coldvault.catalog.db import Catalog
    from coldvault.drives.station import enroll
    from coldvault.vault import Vault

    vault = Vault(Path(a.state))
    with Catalog(vault.catalog_path) as catalog:
        row = enroll(vault, catalog, Path(a.root), "bench", is_directory=True)
    return {"drive_id": row.drive_id}


def cmd_sync(a: argparse.Namespace) -> dict[str, Any]:
    from coldvault.catalog.db import Catalog
    from coldvault.drives.station import Station
    from coldvault.vault import Vault

    vault = Vault(Path(a.state))
    with Catalog(vault.catalog_path) as catalog:
        # copies=2 with one drive: the spool is kept, so every run starts from the same state.
        report = Station(vault, catalog, copies=2).sync(Path(a.root))
    if not report.complete:
        raise SystemExit(f"sync incomplete: {report}")
    return {"copied": report.copied, "bytes": report.bytes}


class _FirstWrite:
    """Wraps a destination file: records when the first plaintext byte is written."""

    def __init__(self, dst: Any, marks: dict[str, float]) -> None:
        self._dst = dst
        self._marks = marks

    def write(self, data: Any) -> int:
        if "first_byte" not in self._marks and len(data):
            self._marks["first_byte"] = time.monotonic()
        return int(self._dst.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dst, name)


def cmd_restore(a: argparse.Namespace) -> dict[str, Any]:
    from coldvault import objects
    from coldvault.catalog.db import Catalog
    from coldvault.vault import Vault

    marks: dict[str, float] = {"imported": time.monotonic()}
    real_read = objects.read_object

    def read_object(src: Any, identities: Any, dst: Any) -> objects.OpenedDocument:
        return real_read(src, identities, _FirstWrite(dst, marks))  # type: ignore[arg-type]

    objects.read_object = read_object
    vault = Vault(Path(a.state))
    with Catalog(vault.catalog_path) as catalog:
        row = catalog.patient_by_lookup(vault.lookup("patient", a.patient))
        assert row is not None
        docs = catalog.documents(row.id)
        marks["catalog"] = time.monotonic()
        master = vault.unlock(PASSPHRASE)
        marks["unlocked"] = time.monotonic()
        try:
            from coldvault.restore import restore_patient
        except ImportError:
            restore_patient = None  # type: ignore[assignment]
        if restore_patient is not None:
            _ref, report = restore_patient(vault, catalog, master, a.patient, Path(a.out))
            restored = len(report.restored)
            if report.damaged or report.unavailable:
                raise SystemExit(f"restore incomplete: {report}")
            how = "coldvault.restore.restore_patient"
        else:  # before coldvault.restore existed: the same steps by hand
            from coldvault import keys

            key = keys.open_patient_key(
                (vault.spool / "keys" / f"{row.key_id}.age").read_bytes(), [master]
            )
            assert key.identity is not None
            out = Path(a.out)
            out.mkdir(parents=True, exist_ok=True)
            for d in docs:
                with (
                    open(vault.spool / d.object_path, "rb") as src,
                    open(out / d.doc_id, "wb") as dst,
                ):
                    read_object(src, [key.identity], dst)
            restored = len(docs)
            how = "objects.read_object"
    marks["done"] = time.monotonic()
    return {
        "documents": len(docs),
        "restored": restored,
        "how": how,
        "marks": {k: v - T_START for k, v in marks.items()},
        "t_start_monotonic": T_START,
        "marks_monotonic": marks,
    }


def cmd_daemon(a: argparse.Namespace) -> dict[str, Any]:
    import logging

    from coldvault.config import load_config
    from coldvault.daemon import Daemon

    logging.basicConfig(level=logging.WARNING)
    code = Daemon(load_config(Path(a.config)), watch_drives=False).run()
    return {"exit": code}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench.driver")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("create")
    s.add_argument("state")
    s.add_argument("--classic", action="store_true")
    s.add_argument("--work-factor", type=int, default=0, help="scrypt log2(N) of the passphrase")
    s = sub.add_parser("ingest")
    s.add_argument("state")
    s.add_argument("list")
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--batch", type=int, default=0, help="files per call (default: the daemon's)")
    s.add_argument("--patient", help="file every document under this patient id")
    s.add_argument(
        "--known-patients", action="store_true", help="make every patient's key before timing"
    )
    s = sub.add_parser("floor")
    s.add_argument("list")
    s.add_argument("out")
    s = sub.add_parser("enroll")
    s.add_argument("state")
    s.add_argument("root")
    s = sub.add_parser("sync")
    s.add_argument("state")
    s.add_argument("root")
    s = sub.add_parser("restore")
    s.add_argument("state")
    s.add_argument("patient")
    s.add_argument("out")
    s = sub.add_parser("daemon")
    s.add_argument("config")
    a = p.parse_args(argv)
    fn = globals()[f"cmd_{a.cmd}"]
    print(json.dumps(fn(a)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
