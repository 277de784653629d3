"""The one exception hierarchy. Every error a user can meet carries a sentence a secretary
understands (``message``), an optional ``hint`` saying what to do, and the exit code the CLI uses.

Exit codes (one table, see docs/cli.md):
  0 ok, 1 a failure was found (verify, audit, damaged object), 2 usage or configuration error,
  3 nothing to do / not available (no drive plugged), 4 authentication (wrong passphrase or
  key), 5 a vault problem (missing or foreign vault, state damaged), 6 a drive problem (full,
  removed, I/O), 70 an internal error (a bug: please report it), 130 interrupted.
"""

from __future__ import annotations


class ColdvaultError(Exception):
    """Base of every error coldvault raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(ColdvaultError):
    """Bad arguments or a request that cannot be understood."""

    exit_code = 2


class ConfigError(ColdvaultError):
    """The configuration file is missing, malformed or inconsistent."""

    exit_code = 2


class NotAvailable(ColdvaultError):
    """Nothing to do, or what is needed is not there (a drive not plugged in)."""

    exit_code = 3


class AuthenticationError(ColdvaultError):
    """A wrong passphrase, recovery key or identity."""

    exit_code = 4


class VaultError(ColdvaultError):
    """The vault or its state folder is missing, foreign or damaged."""

    exit_code = 5


class DriveError(ColdvaultError):
    """A drive is full, was removed, or failed to read or write."""

    exit_code = 6


class IntegrityError(ColdvaultError):
    """Data is damaged, tampered with or not vouched for (exit 1: a failure found)."""

    exit_code = 1


# --- age format errors -------------------------------------------------------------------
# Kept apart so the age package stays usable on its own; the kinds follow the C2SP test
# vectors' `expect` values.


class AgeError(IntegrityError):
    """An age file could not be decrypted."""


class AgeHeaderError(AgeError):
    """The age header is malformed ("header failure")."""


class AgeNoMatchError(AgeError):
    """No recipient stanza could be unwrapped with the given identities ("no match")."""

    exit_code = 4


class AgeHMACError(AgeError):
    """The header MAC does not match ("HMAC failure")."""


class AgePayloadError(AgeError):
    """The encrypted payload is damaged, truncated or extended ("payload failure")."""


EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "failure found": 1,
    "usage or config": 2,
    "not available": 3,
    "authentication": 4,
    "vault": 5,
    "drive": 6,
    "internal": 70,
    "interrupted": 130,
}
