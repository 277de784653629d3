"""Tell the people at the workstation: "you can remove the drive", "drive X not seen for N days".

Always a log line. A desktop notification too, through ``notify-send``, when this process runs
in a graphical session (DISPLAY / WAYLAND_DISPLAY or a user session bus) and the command exists.
Notifying never fails the caller: a missing display or a broken notifier is only logged.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Mapping
from typing import Literal

log = logging.getLogger(__name__)

Urgency = Literal["low", "normal", "critical"]
APP_NAME = "coldvault"
NOTIFY_TIMEOUT_S = 5.0


def graphical_session(env: Mapping[str, str] | None = None) -> bool:
    """True when a desktop session is reachable from this process."""
    e = os.environ if env is None else env
    if e.get("DISPLAY") or e.get("WAYLAND_DISPLAY") or e.get("DBUS_SESSION_BUS_ADDRESS"):
        return True
    runtime = e.get("XDG_RUNTIME_DIR") or f"/run/user/{os.getuid()}"
    return os.path.exists(os.path.join(runtime, "bus"))


def notify(
    summary: str,
    body: str = "",
    *,
    urgency: Urgency = "normal",
    level: int = logging.INFO,
    env: Mapping[str, str] | None = None,
) -> bool:
    """Log ``summary`` (and ``body``), then try a desktop notification.

    Returns True when a desktop notification was sent. Never raises. Keep patient data out of
    ``summary`` and ``body``: they go to the log and to the screen.
    """
    log.log(level, "%s%s", summary, f" — {body}" if body else "")
    try:
        e = dict(os.environ if env is None else env)
        if not graphical_session(e):
            return False
        exe = shutil.which("notify-send", path=e.get("PATH"))
        if exe is None:
            log.debug("notify-send is not installed: no desktop notification")
            return False
        cmd = [exe, f"--app-name={APP_NAME}", f"--urgency={urgency}", "--", summary]
        if body:
            cmd.append(body)
        res = subprocess.run(
            cmd,
            env=e,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=NOTIFY_TIMEOUT_S,
            check=False,
        )
    except Exception as exc:  # timeout, OSError, anything: notifying must never fail the caller
        log.debug("desktop notification failed: %s", exc)
        return False
    if res.returncode != 0:
        log.debug("notify-send exited %d: %s", res.returncode, res.stderr.strip()[:200])
        return False
    return True


def _drive_name(label: str | None) -> str:
    return f"drive {label}" if label else "the backup drive"


def drive_can_be_removed(label: str | None, *, env: Mapping[str, str] | None = None) -> bool:
    """The sync is done and the drive is unmounted: it can be pulled out."""
    name = _drive_name(label)
    return notify(
        f"You can remove {name}.",
        "The copy is finished and verified.",
        env=env,
    )


def drive_sync_failed(
    label: str | None, reason: str, *, env: Mapping[str, str] | None = None
) -> bool:
    """The sync did not finish: tell the person before they pull the drive out."""
    name = _drive_name(label)
    return notify(
        f"The copy to {name} did not finish.",
        reason,
        urgency="critical",
        level=logging.WARNING,
        env=env,
    )


def drive_overdue(label: str | None, days: int, *, env: Mapping[str, str] | None = None) -> bool:
    """An enrolled drive has not been plugged in for ``days`` days."""
    name = _drive_name(label)
    return notify(
        f"{name[0].upper()}{name[1:]} has not been plugged in for {days} days.",
        "Plug it in so that it receives the latest documents.",
        urgency="critical",
        level=logging.WARNING,
        env=env,
    )
