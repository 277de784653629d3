"""ASCII armor (strict PEM, label "AGE ENCRYPTED FILE"): decoding only.

coldvault never writes armored files; it reads them so that a key or object pasted from an email or
a printout still opens. Whitespace is tolerated only before and after the block, CRLF line ends are
accepted, and the base64 must be canonical and padded.
"""

from __future__ import annotations

import base64
import binascii

from coldvault.errors import AgeError

BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
END = b"-----END AGE ENCRYPTED FILE-----"
COLUMNS = 64
MAX_ARMORED = 64 * 1024 * 1024
_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")


class AgeArmorError(AgeError):
    """Malformed ASCII armor ("armor failure")."""


def looks_armored(prefix: bytes) -> bool:
    return prefix.lstrip(b" \t\r\n").startswith(b"-----BEGIN")


def dearmor(data: bytes) -> bytes:
    if len(data) > MAX_ARMORED:
        raise AgeArmorError("the armored age file is too large")
    lines = [
        line[:-1] if line.endswith(b"\r") else line for line in data.strip(b" \t\r\n").split(b"\n")
    ]
    if len(lines) < 2 or lines[0] != BEGIN or lines[-1] != END:
        raise AgeArmorError("malformed age armor (begin or end line)")
    body = lines[1:-1]
    for i, line in enumerate(body):
        last = i == len(body) - 1
        if not line or len(line) > COLUMNS or (not last and len(line) != COLUMNS):
            raise AgeArmorError("malformed age armor (line length)")
        if not all(c in _CHARS for c in line):
            raise AgeArmorError("malformed age armor (invalid character)")
    joined = b"".join(body)
    if len(joined) % 4:
        raise AgeArmorError("malformed age armor (missing padding)")
    try:
        decoded = base64.b64decode(joined, validate=True)
    except (binascii.Error, ValueError):
        raise AgeArmorError("malformed age armor (base64)") from None
    if base64.b64encode(decoded) != joined:
        raise AgeArmorError("malformed age armor (non-canonical base64)")
    return decoded
