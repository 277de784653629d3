"""Sync to a drive (a loop-mounted ext4 image), read-back verification included, against a
plain ``cp`` + ``sync`` of the same objects (and ``cp`` + ``sync`` + read back)."""

from __future__ import annotations

import shutil
import subprocess

from bench.common import (
    PYTHON,
    ScenarioResult,
    Skip,
    driver,
    driver_env,
    is_root,
    measure,
    paired_runs,
    rmtree,
    tool,
    tree_size,
    warm,
)
from bench.corpus import files_of
from bench.disk import attach, detach
from bench.scenarios import Context, file_list

READ_BACK = (
    "import hashlib, os, sys\n"
    "for dirpath, _, names in os.walk(sys.argv[1]):\n"
    "    for n in names:\n"
    "        fd = os.open(os.path.join(dirpath, n), os.O_RDONLY)\n"
    "        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)\n"
    "        h = hashlib.sha256()\n"
    "        while b := os.read(fd, 1 << 20):\n"
    "            h.update(b)\n"
    "        os.close(fd)\n"
)


def _umount(mnt: object) -> None:
    subprocess.run(["umount", str(mnt)], capture_output=True)


def run(ctx: Context) -> ScenarioResult:
    res = ScenarioResult("sync", "Sync to a loop-mounted ext4 drive, read-back included")
    if not is_root():
        raise Skip("needs root (loop mount)")
    for t in ("mkfs.ext4", "mount", "umount"):
        tool(t)
    scratch = ctx.scratch("sync")
    tpl = scratch / "tpl"
    ctx.fresh_vault(tpl)
    lst = file_list(ctx, "mix", files_of(ctx.corpus / "mix"))
    measure(driver("ingest", str(tpl), str(lst), "--workers", str(ctx.cores)), env=driver_env())
    spool_objects = tpl / "spool" / "objects"
    res.data_files, res.data_bytes = tree_size(tpl / "spool")
    catalog_copy = scratch / "catalog-tpl"
    catalog_copy.mkdir()
    for f in tpl.glob("catalog.sqlite*"):
        shutil.copy2(f, catalog_copy / f.name)
    # The drive's image sits beside the workstation's, on the workdir's disk (not inside it).
    drive = ctx.workdir / "drive"
    rmtree(drive)
    drive.mkdir()
    img = drive / "drive.img"
    mnt = drive / "mnt"
    mnt.mkdir()
    img_size = int(res.data_bytes * 1.3) + 256 * 2**20
    spool_files = files_of(tpl / "spool")

    with open(img, "wb") as fh:
        fh.truncate(img_size)
    attached: list[str] = []

    def release() -> None:
        _umount(mnt)
        while attached:
            detach(attached.pop())

    def prepare(name: str) -> None:
        # A new filesystem on the same image for every run (mkfs discards the old blocks).
        release()
        subprocess.run(
            ["mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", str(img)],
            check=True,
        )
        try:
            device, direct = attach(img)
        except RuntimeError as exc:
            raise Skip(str(exc)) from None
        attached.append(device)
        res.metrics["drive_direct_io"] = direct
        r = subprocess.run(["mount", device, str(mnt)], capture_output=True)
        if r.returncode != 0:
            raise Skip(f"cannot mount the drive image: {r.stderr.decode().strip()}")
        if name == "coldvault":
            for f in tpl.glob("catalog.sqlite*"):
                f.unlink()
            for f in catalog_copy.iterdir():
                shutil.copy2(f, tpl / f.name)
            measure(driver("enroll", str(tpl), str(mnt)), env=driver_env())
        warm(spool_files)

    contenders = [
        ("coldvault", lambda: measure(driver("sync", str(tpl), str(mnt)), env=driver_env())),
        ("cp + sync", lambda: measure(f"cp -r {spool_objects} {mnt}/objects && sync -f {mnt}")),
        (
            "cp + sync + read back",
            lambda: measure(
                f"cp -r {spool_objects} {mnt}/objects && sync -f {mnt} && "
                f"{PYTHON} -c '{READ_BACK}' {mnt}/objects"
            ),
        ),
    ]
    try:
        paired_runs(ctx.runs, contenders, res, prepare, ctx.log)
    finally:
        release()
        rmtree(drive)
        rmtree(scratch)
    res.ratio("coldvault sync vs cp + sync", "coldvault", "cp + sync")
    res.ratio("coldvault sync vs cp + sync + read back", "coldvault", "cp + sync + read back")
    res.notes.append(
        "The drive is an image on the workdir's disk, attached with direct I/O (a loop device "
        "that does not cache the image file): the read-back after dropping cached pages reads "
        "that disk. A USB stick is slower; on it the drive's write speed is the bound."
    )
    return res
