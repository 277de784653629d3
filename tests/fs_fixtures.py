"""Real filesystems for drive tests: ext4 and exFAT (exfat-fuse) on loop devices, as root.

Recipes from the design testing notes §2 (tried on this machine kind): partitionless images only
(the host kernel has no partition tables), ``mount.exfat-fuse`` needs a block device (losetup
first), and every external command runs without umockdev's LD_PRELOAD. Cleanup (unmount, lazy
if needed, detach the loop device) runs even when a test fails or killed the FUSE process.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_TOOLS = {
    "ext4": ("mkfs.ext4", "losetup", "mount", "umount"),
    "exfat": ("mkfs.exfat", "mount.exfat-fuse", "losetup", "umount"),
    "vfat": ("mkfs.vfat",),
}


def clean_env() -> dict[str, str]:
    """The environment for mount/losetup/UML: without umockdev's preload."""
    return {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "UMOCKDEV_DIR")}


def run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(cmd), capture_output=True, text=True, env=clean_env(), check=check, timeout=timeout
    )


def require(fs: str) -> None:
    """Skip (with the reason) unless root and the tools for ``fs`` are installed."""
    if os.geteuid() != 0:
        pytest.skip("needs root (loop devices and mounts)")
    missing = [t for t in _TOOLS[fs] if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (see .ci/install-system-deps)")
    if fs != "vfat" and not os.path.exists("/dev/loop-control"):
        pytest.skip("needs loop device support (/dev/loop-control)")


def is_mounted(mountpoint: Path) -> bool:
    mp = os.fsencode(str(mountpoint)).replace(b" ", b"\\040")
    with open("/proc/self/mountinfo", "rb") as f:
        return any(line.split(b" ")[4] == mp for line in f)


@dataclass
class LoopDrive:
    """A filesystem image attached to a loop device and mounted at ``mountpoint``."""

    fs: str
    image: Path
    mountpoint: Path
    loop: str = ""
    _pids: list[int] = field(default_factory=list)

    def mount(self) -> None:
        if self.fs == "ext4":
            run("mount", "-t", "ext4", self.loop, str(self.mountpoint))
        else:
            run("mount.exfat-fuse", self.loop, str(self.mountpoint))
        assert is_mounted(self.mountpoint)

    def umount(self) -> None:
        run("umount", str(self.mountpoint))

    def remount(self) -> None:
        """Unmount and mount again, so that nothing can be answered from a cache."""
        self.umount()
        self.mount()

    def fuse_pid(self) -> int:
        """The exfat-fuse daemon serving this drive (it daemonizes: found through /proc)."""
        want = self.loop.encode()
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"mount.exfat-fuse") and want in argv:
                    return int(d)
        raise AssertionError(f"no exfat-fuse process for {self.loop}")

    def kill_fuse(self) -> None:
        """Simulate yanking the drive: the filesystem process dies (ENOTCONN from then on)."""
        pid = self.fuse_pid()
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
                break
            time.sleep(0.01)

    def find_on_device(self, needle: bytes) -> int:
        """Offset on the device of ``needle`` (a unique random pattern of a written file)."""
        with open(self.loop, "rb") as f:
            data = f.read()
        off = data.find(needle)
        assert off >= 0 and data.find(needle, off + 1) < 0, "pattern not found exactly once"
        return off

    def flip_byte(self, offset: int, *, through: str = "device") -> None:
        """Corrupt one byte on the medium, behind the filesystem's page cache: through the loop
        device (coherent with the block device's cache) or through the image file (below it,
        like a medium that changed on its own)."""
        target = self.loop if through == "device" else str(self.image)
        fd = os.open(target, os.O_RDWR)
        try:
            b = os.pread(fd, 1, offset)
            os.pwrite(fd, bytes([b[0] ^ 0x01]), offset)
            os.fsync(fd)
        finally:
            os.close(fd)

    def cleanup(self) -> None:
        mounted = is_mounted(self.mountpoint)
        if mounted and run("umount", str(self.mountpoint), check=False).returncode != 0:
            run("umount", "-l", str(self.mountpoint), check=False)
        if self.loop:
            for _ in range(50):
                if run("losetup", "-d", self.loop, check=False).returncode == 0:
                    break
                time.sleep(0.05)  # a lazily unmounted fs lets go of the device a bit later
            self.loop = ""


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@contextlib.contextmanager
def attach(image: Path, mountpoint: Path, fs: str) -> Iterator[LoopDrive]:
    """Attach an existing image to a loop device and mount it (plugging the drive back in)."""
    require(fs)
    drive = LoopDrive(fs, image, mountpoint)
    try:
        drive.loop = run("losetup", "-f", "--show", str(image)).stdout.strip()
        drive.mount()
        yield drive
    finally:
        drive.cleanup()


@contextlib.contextmanager
def loop_drive(base: Path, fs: str, size_mib: int = 32) -> Iterator[LoopDrive]:
    """Make, attach and mount a fresh ``fs`` ("ext4" or "exfat") image under ``base``."""
    require(fs)
    image, mp = base / f"{fs}.img", base / f"mnt-{fs}"
    mp.mkdir(exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mib << 20)
    if fs == "ext4":
        run("mkfs.ext4", "-q", "-F", "-L", "CVTEST", str(image))
    else:
        run("mkfs.exfat", "-L", "CVTEST", str(image))
    with attach(image, mp, fs) as drive:
        yield drive
