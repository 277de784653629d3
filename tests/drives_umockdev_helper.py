"""Subprocess helper for the umockdev tests of coldvault.drives.events (not collected by pytest).

Two roles, each in its own process so the pytest process itself never runs under LD_PRELOAD:

``testbed``  run as ``umockdev-wrapper PYTHON_WITH_GI drives_umockdev_helper.py testbed``.
             Owns a UMockdev.Testbed; prints ``{"root": DIR}`` then executes one JSON command
             per stdin line (plug a stick, send a uevent, ...) and answers one JSON line each.
             Needs only the standard library and gi (Debian's python3-gi is enough).

``watch``    run with ``LD_PRELOAD=libumockdev-preload.so.0 UMOCKDEV_DIR=DIR`` by the project's
             Python: the REAL ``PyudevDriveSource`` inside a ``DriveWatcher``; prints every
             DriveEvent as a JSON line, ``{"ready": true}`` once listening, and on stdin EOF stops
             the watcher and prints ``{"stopped": true, "threads": [...]}``.
"""

from __future__ import annotations

import json
import sys
from typing import Any


def _out(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def run_testbed() -> int:
    import gi

    gi.require_version("UMockdev", "1.0")
    from gi.repository import UMockdev

    # NB: never call UMockdev.in_mock_environment() before Testbed.new() (it caches "False")
    tb = UMockdev.Testbed.new()
    _out({"root": tb.get_root_dir()})

    def stick(tb: Any, cmd: dict[str, Any]) -> dict[str, Any]:
        n = int(cmd.get("n", 1))
        uuid = cmd.get("uuid")
        label = cmd.get("label", "COLDVAULT01")
        serial = cmd.get("serial", f"4C53000{n}")
        partitioned = bool(cmd.get("partitioned", True))
        usb_bus = bool(cmd.get("usb", True))
        fs: list[str] = []
        if uuid is not None:
            fs = [
                "ID_FS_UUID", uuid, "ID_FS_LABEL", label, "ID_FS_TYPE", cmd.get("fstype", "vfat"),
                "ID_FS_USAGE", cmd.get("usage", "filesystem"),
            ]  # fmt: skip
        bus = ["ID_BUS", "usb"] if usb_bus else ["ID_BUS", "ata"]
        if usb_bus:
            parent = tb.add_device(
                "usb", f"usb2/2-{n}", None,
                ["idVendor", "0781", "idProduct", "5581", "serial", serial],
                ["DEVTYPE", "usb_device"],
            )  # fmt: skip
            host = tb.add_device(
                "scsi", f"2-{n}:1.0/host{n}/target{n}:0:0/{n}:0:0:0", parent, [],
                ["DEVTYPE", "scsi_device"],
            )  # fmt: skip
        else:
            host = tb.add_device(
                "scsi", f"ata{n}/host{n}/target{n}:0:0/{n}:0:0:0", None, [],
                ["DEVTYPE", "scsi_device"],
            )  # fmt: skip
        d = "sd" + chr(ord("a") + n)
        # the path must contain "/block/" so umockdev links /sys/dev/block/M:m
        disk_props = ["DEVNAME", f"/dev/{d}", "DEVTYPE", "disk", *bus]
        if cmd.get("with_serial", True):
            disk_props += ["ID_SERIAL_SHORT", serial]
        disk = tb.add_device(
            "block", f"block/{d}", host,
            ["size", "60062500", "removable", "1", "dev", f"8:{16 * n}"],
            disk_props + ([] if partitioned else fs),
        )  # fmt: skip
        if not partitioned:
            return {"devnode": f"/dev/{d}", "sysfs": disk}
        part_props = ["DEVNAME", f"/dev/{d}1", "DEVTYPE", "partition", *bus]
        if cmd.get("with_serial", True):
            part_props += ["ID_SERIAL_SHORT", serial]
        part = tb.add_device(
            "block", f"{d}1", disk,
            ["size", "60060000", "partition", "1", "dev", f"8:{16 * n + 1}"],
            part_props + fs,
        )  # fmt: skip
        return {"devnode": f"/dev/{d}1", "sysfs": part, "disk_sysfs": disk}

    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "stick":
                _out({"ok": True, **stick(tb, cmd)})
            elif op == "device":  # any non-block device (input, usb, net ...)
                path = tb.add_device(cmd["subsystem"], cmd["name"], None, cmd.get("attrs", []),
                                     cmd.get("props", []))  # fmt: skip
                _out({"ok": True, "sysfs": path})
            elif op == "uevent":
                tb.uevent(cmd["sysfs"], cmd["action"])
                _out({"ok": True})
            elif op == "set_property":
                tb.set_property(cmd["sysfs"], cmd["key"], cmd["value"])
                _out({"ok": True})
            elif op == "remove_device":
                tb.remove_device(cmd["sysfs"])
                _out({"ok": True})
            elif op == "quit":
                _out({"ok": True})
                break
            else:
                _out({"ok": False, "error": f"unknown op {op}"})
        except Exception as exc:  # report to the test instead of dying silently
            _out({"ok": False, "error": repr(exc)})
    tb.clear()
    del tb
    return 0


def run_watch() -> int:
    import dataclasses
    import threading

    from coldvault.drives.events import DriveWatcher, PyudevDriveSource

    def on_event(ev: Any) -> None:
        _out({"event": dataclasses.asdict(ev)})

    watcher = DriveWatcher(PyudevDriveSource(), on_event, poll_interval=0.1)
    watcher.start()
    _out({"ready": True})
    for _ in sys.stdin:  # until EOF
        pass
    ended = watcher.stop(timeout=5)
    _out({"stopped": ended, "threads": [t.name for t in threading.enumerate()]})
    return 0


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "testbed":
        sys.exit(run_testbed())
    if role == "watch":
        sys.exit(run_watch())
    sys.stderr.write("usage: drives_umockdev_helper.py testbed|watch\n")
    sys.exit(2)
