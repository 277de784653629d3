"""Real kernel vfat (FAT32) through User-Mode Linux: runs tests/fat_kernel inside a UML kernel
(the host kernel has no vfat) with a FAT32 image mounted the way udisks mounts it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fs_fixtures import clean_env

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "tests" / "tools" / "uml-vfat-run.sh"

pytestmark = pytest.mark.root


def test_fsio_on_kernel_vfat_inside_uml(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (UML mounts the image inside its own kernel)")
    for tool in ("linux.uml", "mkfs.vfat", "insmod"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool} (apt: user-mode-linux kmod dosfstools)")
    image = tmp_path / "fat32.img"
    with open(image, "wb") as f:
        f.truncate(48 << 20)
    # FAT32 needs >= 65525 clusters: 512-byte clusters on 48 MiB
    subprocess.run(
        ["mkfs.vfat", "-F", "32", "-S", "512", "-s", "1", "-n", "CVTEST", str(image)],
        check=True, capture_output=True, env=clean_env(),
    )  # fmt: skip
    p = subprocess.run(
        [str(RUNNER), str(image), "/mnt/cvfat", "--",
         sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fat_kernel"],
        cwd=ROOT, capture_output=True, text=True, env=clean_env(), timeout=180,
    )  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert " passed" in out and "skipped" not in out, out
