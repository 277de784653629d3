"""The scrypt (passphrase) recipient type."""

from __future__ import annotations

import os
import re

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from coldvault.age.format import FILE_KEY_SIZE, Stanza, b64decode, b64encode
from coldvault.errors import AgeHeaderError

STANZA_TYPE = "scrypt"
_LABEL = b"age-encryption.org/v1/scrypt"
_ZERO_NONCE = bytes(12)
_WORK_FACTOR_RE = re.compile(r"[1-9][0-9]*")

#: The work factor (log2 N) used when encrypting: age's default, about a second on a PC.
DEFAULT_WORK_FACTOR = 18
#: The largest work factor accepted when decrypting (age's own bound): 2^22 * 1 KiB = 4 GiB.
MAX_WORK_FACTOR = 22


def _wrap_key(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    kdf = Scrypt(salt=_LABEL + salt, length=32, n=1 << log_n, r=8, p=1)
    return kdf.derive(passphrase)


class ScryptRecipient:
    def __init__(self, passphrase: bytes, work_factor: int | None = None) -> None:
        # Read the module default at call time, so that a test (or a caller) can lower it.
        if work_factor is None:
            work_factor = DEFAULT_WORK_FACTOR
        if not 1 <= work_factor <= 30:
            raise ValueError("scrypt work factor out of range")
        self._passphrase = passphrase
        self.work_factor = work_factor

    def wrap(self, file_key: bytes) -> list[Stanza]:
        salt = os.urandom(16)
        key = _wrap_key(self._passphrase, salt, self.work_factor)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza(STANZA_TYPE, [b64encode(salt).decode("ascii"), str(self.work_factor)], body)]


class ScryptIdentity:
    def __init__(self, passphrase: bytes, max_work_factor: int = MAX_WORK_FACTOR) -> None:
        self._passphrase = passphrase
        self.max_work_factor = max_work_factor

    def unwrap(self, stanzas: list[Stanza]) -> bytes | None:
        for s in stanzas:
            if s.type != STANZA_TYPE:
                continue
            if len(stanzas) != 1:
                raise AgeHeaderError("an scrypt stanza must be the only one in the header")
            if len(s.args) != 2:
                raise AgeHeaderError("malformed scrypt recipient stanza")
            salt = b64decode(s.args[0])
            if len(salt) != 16:
                raise AgeHeaderError("malformed scrypt recipient stanza")
            if not _WORK_FACTOR_RE.fullmatch(s.args[1]):
                raise AgeHeaderError("malformed scrypt work factor")
            log_n = int(s.args[1])
            if log_n > self.max_work_factor:
                raise AgeHeaderError(
                    f"scrypt work factor {log_n} is above the limit {self.max_work_factor}"
                )
            if len(s.body) != FILE_KEY_SIZE + 16:
                raise AgeHeaderError("malformed scrypt recipient stanza")
            key = _wrap_key(self._passphrase, salt, log_n)
            try:
                return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, s.body, None)
            except InvalidTag:
                return None
        return None
