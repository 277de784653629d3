"""Where the scenarios write: a fresh, journaled ext4 filesystem, as on a practice's workstation.

Every contender's output (coldvault's state and spool, the anchors' archives and repositories,
restored files) goes to one filesystem made for the run: a sparse image in the workdir,
``mkfs.ext4`` with its defaults (journaled, as every Linux distribution makes it) and
loop-mounted with direct I/O, so that the page cache holds each block once.

Why not the workdir's own filesystem: its state is not the workstation's and depends on what
ran before. On an ext4 without a journal (this project's build VMs), the kernel will not reuse
an inode freed in the last 60 to 300 seconds and scans past every such inode on each file it
creates (``find_inode_bit`` -> ``recently_deleted``): right after a previous run's files were
deleted, ingesting 2,000 notes spent 4.5 s in the kernel instead of 0.5 s.

Without root (no loop mount), the outputs go to ``WORKDIR/out`` and the report says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

GiB = 1 << 30


@dataclass(frozen=True)
class Disk:
    path: Path
    #: What it is, for the report ("ext4 (journaled), loop-mounted image, made for this run").
    description: str


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True)


def _fstype(path: Path) -> str:
    try:
        found = _run("findmnt", "-n", "-o", "FSTYPE", "-T", str(path)).stdout.split()
    except OSError:  # no findmnt (util-linux)
        found = []
    return found[0] if found else "unknown"  # (a mount point mounted over lists twice)


def _release(mnt: Path, img: Path) -> None:
    """Unmount and detach what a previous (perhaps interrupted) run left."""
    if os.path.ismount(mnt):
        _run("umount", str(mnt))
    if img.exists():
        listed = _run("losetup", "-j", str(img)).stdout
        for line in listed.splitlines():
            _run("losetup", "-d", line.split(":", 1)[0])
        img.unlink(missing_ok=True)


def attach(img: Path) -> tuple[str, bool]:
    """A loop device for ``img`` and whether it does direct I/O: with it the page cache holds
    each block once (not once for the filesystem and once for the image file), and a read
    after dropping a file's cached pages reaches the disk, as on a real device."""
    dev = _run("losetup", "--find", "--show", "--direct-io=on", str(img))
    direct = dev.returncode == 0
    if not direct:  # the workdir's filesystem may not take O_DIRECT
        dev = _run("losetup", "--find", "--show", str(img))
    if dev.returncode != 0:
        raise RuntimeError(f"losetup failed: {dev.stderr.strip()}")
    return dev.stdout.strip(), direct


def detach(device: str) -> None:
    _run("losetup", "-d", device)


@contextlib.contextmanager
def workstation_disk(
    workdir: Path, size: int, log: Callable[[str], None] = lambda s: None
) -> Iterator[Disk]:
    """A filesystem made for this run (removed at the end), or ``WORKDIR/out`` without root."""
    img = workdir / "workstation.img"
    mnt = workdir / "workstation"
    tools = all(shutil.which(t) for t in ("mkfs.ext4", "losetup", "mount", "umount"))
    if os.geteuid() != 0 or not tools:
        out = workdir / "out"
        out.mkdir(parents=True, exist_ok=True)
        why = "not root" if os.geteuid() != 0 else "mkfs.ext4 or losetup missing"
        yield Disk(out, f"the workdir's own filesystem ({_fstype(out)}; {why}: no loop mount)")
        return
    _release(mnt, img)
    mnt.mkdir(parents=True, exist_ok=True)
    with open(img, "wb") as fh:
        fh.truncate(size)
    made = _run("mkfs.ext4", "-q", "-F", "-L", "cv-bench", str(img))
    if made.returncode != 0:
        raise RuntimeError(f"mkfs.ext4 failed: {made.stderr.strip()}")
    try:
        device, direct = attach(img)
    except RuntimeError:
        img.unlink(missing_ok=True)
        raise
    try:
        # noinit_itable: no kernel thread zeroing inode tables in the background during runs.
        mounted = _run("mount", "-o", "noinit_itable", device, str(mnt))
        if mounted.returncode != 0:
            raise RuntimeError(f"cannot mount the bench filesystem: {mounted.stderr.strip()}")
        log(f"outputs on a fresh ext4 at {mnt} ({device})")
        try:
            yield Disk(
                mnt,
                "ext4 (journaled, mkfs defaults), made for this run: a loop-mounted sparse "
                f"image{' with direct I/O' if direct else ''} on the workdir's disk",
            )
        finally:
            _run("umount", str(mnt))
    finally:
        detach(device)
        img.unlink(missing_ok=True)


def image_size(corpus_bytes: int) -> int:
    """Room for one contender's outputs at a time, and churn (the image is sparse)."""
    return 16 * GiB + 3 * corpus_bytes
