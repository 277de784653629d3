"""The udisks2 client against a REAL udisksd (root): real udevd, a private system bus and a mock
polkit (python-dbusmock) that the test controls. Plus the shipped polkit rule, run in node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from coldvault.drives.mounts import find_mount
from coldvault.drives.udisks import (
    UdisksClient,
    UdisksError,
    UdisksNotAuthorized,
    UdisksUnavailable,
    udisks_running,
)
from tests.drives_fixtures import (  # noqa: F401
    SYSTEM_PYTHON,
    LoopMounts,
    UdisksStack,
    loops_fixture,
    make_ext4,
    no_thread_leak_fixture,
    run,
    udisks_stack_fixture,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
POLKIT_RULES = ROOT / "examples" / "polkit" / "50-coldvault-udisks.rules"
MOUNT = "org.freedesktop.udisks2.filesystem-mount"
MOUNT_SYSTEM = "org.freedesktop.udisks2.filesystem-mount-system"


# --- no daemon needed -----------------------------------------------------------------------


def test_no_bus_is_a_clear_not_available_error(tmp_path: Path) -> None:
    with pytest.raises(UdisksUnavailable) as ei:
        UdisksClient(f"unix:path={tmp_path}/no-such-socket")
    assert "D-Bus" in str(ei.value) and ei.value.hint
    assert ei.value.exit_code == 3
    assert not udisks_running(f"unix:path={tmp_path}/no-such-socket")


def test_polkit_rule_grants_the_service_user_only(tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("needs node to evaluate the polkit JavaScript rule")
    harness = tmp_path / "harness.js"
    harness.write_text(
        """
const fs = require('fs');
let rule = null;
const polkit = {Result: {YES: 'yes', NO: 'no', NOT_HANDLED: null}, addRule: f => { rule = f; }};
eval(fs.readFileSync(process.argv[2], 'utf8'));
const out = JSON.parse(process.argv[3]).map(([user, id, removable]) =>
  rule({id: id, lookup: k => (k === 'drive.removable' ? removable : undefined)}, {user: user}));
console.log(JSON.stringify(out));
"""
    )
    cases = [
        ["coldvault", "org.freedesktop.udisks2.filesystem-mount-other-seat", "true"],
        ["coldvault", "org.freedesktop.udisks2.filesystem-unmount-others", "true"],
        ["coldvault", "org.freedesktop.udisks2.power-off-drive-other-seat", "true"],
        ["coldvault", MOUNT_SYSTEM, "true"],
        ["coldvault", MOUNT_SYSTEM, "false"],  # an internal disk: never
        ["coldvault", "org.freedesktop.udisks2.modify-device", "true"],
        ["coldvault", "org.freedesktop.udisks2.loop-setup", "true"],
        ["alice", MOUNT, "true"],
    ]
    res = subprocess.run(
        [node, str(harness), str(POLKIT_RULES), json.dumps(cases)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(res.stdout) == ["yes", "yes", "yes", "yes", None, None, None, None]


# --- real udisksd -----------------------------------------------------------------------


@pytest.fixture
def drive(
    tmp_path: Path, loops: LoopMounts, udisks_stack: UdisksStack
) -> Iterator[tuple[str, str, UdisksClient]]:
    """An ext4 'drive' on a loop device that udisksd knows: (uuid, devnode, client)."""
    img = tmp_path / "drive.img"
    uuid = make_ext4(img, label="COLDVAULT01")
    node = loops.attach(img)
    udisks_stack.settle()
    client = UdisksClient(udisks_stack.bus_address)
    try:
        wait_until(lambda: client.find_filesystem(uuid), timeout=15)
        yield uuid, node, client
    finally:
        udisks_stack.allow(unknown=True)
        fs = client.find_filesystem(uuid)
        for mp in fs.mountpoints if fs else ():
            run(["umount", mp], check=False)
        client.close()


pytestmark = pytest.mark.usefixtures("no_thread_leak")


@pytest.mark.root
def test_mount_and_unmount_through_udisks(
    drive: tuple[str, str, UdisksClient], udisks_stack: UdisksStack
) -> None:
    uuid, node, client = drive
    fs = client.find_filesystem(uuid.upper())  # FAT UUIDs come in either case
    assert fs is not None and (fs.devnode, fs.fs_label, fs.fs_type) == (node, "COLDVAULT01", "ext4")
    assert fs.mountpoints == () and fs.drive_path is None  # a loop device has no Drive

    mp = client.mount(uuid)
    m = find_mount(devnode=node)
    assert m is not None and m.mountpoint == mp
    assert {"nosuid", "nodev", "noexec"} <= set(m.options.split(","))
    assert client.find_filesystem(uuid).mountpoints == (mp,)  # type: ignore[union-attr]
    assert client.mount(uuid) == mp  # already mounted: the same mount point, no second mount

    assert client.power_off(uuid) is False  # nothing to power off for a loop device
    client.unmount(uuid)
    assert find_mount(devnode=node) is None
    client.unmount(uuid)  # not mounted: nothing to do


@pytest.mark.root
def test_a_mount_made_elsewhere_is_reused(
    drive: tuple[str, str, UdisksClient], tmp_path: Path, loops: LoopMounts
) -> None:
    uuid, node, client = drive
    mp = tmp_path / "automounted by the desktop"
    loops.mount(node, mp)
    wait_until(lambda: client.find_filesystem(uuid).mountpoints, timeout=10)  # type: ignore[union-attr]
    assert client.mount(uuid) == str(mp)


@pytest.mark.root
def test_polkit_refusal_is_not_authorized_with_the_rule_hint(
    drive: tuple[str, str, UdisksClient], udisks_stack: UdisksStack
) -> None:
    uuid, node, client = drive
    udisks_stack.allow()  # polkit says no to everything, even to root
    with pytest.raises(UdisksNotAuthorized) as ei:
        client.mount(uuid)
    assert isinstance(ei.value, UdisksError) and ei.value.exit_code == 6
    assert "50-coldvault-udisks.rules" in (ei.value.hint or "")
    assert find_mount(devnode=node) is None


@pytest.mark.root
def test_unknown_drive_is_a_clear_error(udisks_stack: UdisksStack) -> None:
    with UdisksClient(udisks_stack.bus_address) as client, pytest.raises(UdisksError) as ei:
        client.mount("00000000-0000-0000-0000-00000000dead")
    assert "not known" in str(ei.value)
    assert udisks_running(udisks_stack.bus_address)


# --- as the unprivileged service user ------------------------------------------------------

_AS_SERVICE_USER = """
import json, sys
from coldvault.drives.udisks import UdisksClient, UdisksError
bus, uuid = sys.argv[1], sys.argv[2]
out = {}
try:
    with UdisksClient(bus) as c:
        out["mountpoint"] = c.mount(uuid)
        c.unmount(uuid)
        out["unmounted"] = True
except UdisksError as e:
    out["error"] = type(e).__name__
    out["hint"] = e.hint
print(json.dumps(out))
"""


@pytest.fixture
def as_nobody() -> Iterator[list[str]]:
    """Command prefix running Debian's python3 as 'nobody' with coldvault and jeepney copied to
    a world-readable folder (the project's venv may live where 'nobody' cannot read)."""
    if not os.path.exists(SYSTEM_PYTHON) or shutil.which("runuser") is None:
        pytest.skip("needs /usr/bin/python3 and runuser")
    import jeepney

    lib = Path(tempfile.mkdtemp(prefix="cv-nobody-"))
    try:
        os.chmod(lib, 0o755)
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / "coldvault", lib / "coldvault", ignore=ignore)
        shutil.copytree(Path(jeepney.__file__).parent, lib / "jeepney", ignore=ignore)
        (lib / "as_user.py").write_text(_AS_SERVICE_USER)
        yield [
            "runuser",
            "-u",
            "nobody",
            "--",
            "env",
            f"PYTHONPATH={lib}",
            SYSTEM_PYTHON,
            "-B",
            str(lib / "as_user.py"),
        ]
    finally:
        shutil.rmtree(lib, ignore_errors=True)


@pytest.mark.root
def test_service_user_mounts_only_when_polkit_allows(
    drive: tuple[str, str, UdisksClient], udisks_stack: UdisksStack, as_nobody: list[str]
) -> None:
    uuid, node, _client = drive

    def attempt() -> dict[str, str]:
        res = subprocess.run(
            [*as_nobody, udisks_stack.bus_address, uuid],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        return dict(json.loads(res.stdout))

    udisks_stack.allow()
    denied = attempt()
    assert denied["error"] == "UdisksNotAuthorized" and "polkit" in denied["hint"]

    # A loop device counts as a "system" device for udisks (a USB stick asks for
    # filesystem-mount-other-seat instead, which the shipped rule grants unconditionally).
    udisks_stack.allow(MOUNT, "org.freedesktop.udisks2.filesystem-mount-other-seat", MOUNT_SYSTEM)
    ok = attempt()
    assert ok.get("unmounted") is True, ok
    assert ok["mountpoint"].startswith("/media/nobody/")
    assert find_mount(devnode=node) is None
