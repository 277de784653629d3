"""The systemd notify protocol (``Type=notify``): READY, STATUS, STOPPING, WATCHDOG.

This is local IPC over an AF_UNIX datagram socket named by ``$NOTIFY_SOCKET``, never a network
connection. Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(state.encode(), address)
        return True
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False
