"""The key hierarchy: the vault master identity (sealed with the passphrase), one identity per
patient (sealed to the master recipient), and master rotation.

- Master identity: a post-quantum hybrid age identity (``--classic``: X25519). Stored as an age
  file encrypted with the passphrase (scrypt), so ``age -d identity.age`` opens it by hand. Its
  text form is the recovery key printed once at ``init``.
- Patient identities: generated when the daemon first meets a patient, written as an age file
  encrypted to the master recipient; the daemon keeps only the public recipient.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from coldvault import age
from coldvault.age import bech32
from coldvault.age.scrypt import ScryptIdentity, ScryptRecipient
from coldvault.errors import (
    AgeError,
    AgeNoMatchError,
    AuthenticationError,
    IntegrityError,
    VaultError,
)

PATIENT_KEY_HEADER = "# coldvault patient key, format 1"
MASTER_KEY_HEADER = "# coldvault vault master identity (recovery key), format 1"

AnyIdentity = age.X25519Identity | age.HybridIdentity
AnyRecipient = age.X25519Recipient | age.HybridRecipient


def generate_identity(classic: bool) -> AnyIdentity:
    return age.X25519Identity.generate() if classic else age.HybridIdentity.generate()


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def master_file_text(identity: AnyIdentity, vault_id: str) -> str:
    return (
        f"{MASTER_KEY_HEADER}\n# vault: {vault_id}\n# created: {_now()}\n"
        f"# recipient: {identity.recipient()}\n{identity}\n"
    )


def seal_master(identity: AnyIdentity, vault_id: str, passphrase: bytes) -> bytes:
    """The identity file: the master identity encrypted with the passphrase (age scrypt)."""
    if not passphrase:
        raise AuthenticationError("the passphrase must not be empty")
    import coldvault.age.scrypt as scrypt  # the work factor is read at call time (tests lower it)

    text = master_file_text(identity, vault_id).encode()
    return age.encrypt_bytes([ScryptRecipient(passphrase, scrypt.DEFAULT_WORK_FACTOR)], text)


def unseal_master(data: bytes, passphrase: bytes) -> AnyIdentity:
    """Open the identity file; a wrong passphrase is an :class:`AuthenticationError`."""
    try:
        text = age.decrypt_bytes([ScryptIdentity(passphrase)], data).decode("utf-8")
    except AgeNoMatchError:
        raise AuthenticationError(
            "wrong passphrase", hint="type the vault passphrase chosen at init"
        ) from None
    except (AgeError, UnicodeDecodeError):
        raise VaultError(
            "the vault identity file is damaged or is not a coldvault identity file",
            hint="recover the vault with the paper recovery key (coldvault recover)",
        ) from None
    return parse_recovery_key(text)


def parse_recovery_key(text: str) -> AnyIdentity:
    """Parse a recovery key as typed from the sheet or read from a file (comments allowed)."""
    try:
        identities = age.parse_identity_file(text)
    except bech32.Bech32Error:
        lines = [ln.strip().replace(" ", "") for ln in text.splitlines()]
        try:
            identities = age.parse_identity_file("\n".join(lines).upper())
        except bech32.Bech32Error:
            raise AuthenticationError(
                "this is not a valid recovery key",
                hint="it starts with AGE-SECRET-KEY-; check each character against the sheet",
            ) from None
    return identities[0]


@dataclass(frozen=True)
class PatientKey:
    key_id: str
    recipient: str
    patient_id: str
    identity: AnyIdentity | None = None
    #: ``recipient`` parsed, when at hand (a new key): parsing a post-quantum one costs.
    recipient_key: AnyRecipient | None = field(default=None, compare=False)


def seal_patient_key(
    identity: AnyIdentity, key_id: str, patient_id: str, master: AnyRecipient
) -> bytes:
    text = (
        f"{PATIENT_KEY_HEADER}\n# key-id: {key_id}\n"
        f"# patient: {json.dumps(patient_id, ensure_ascii=True)}\n"
        f"# created: {_now()}\n# recipient: {identity.recipient()}\n{identity}\n"
    )
    return age.encrypt_bytes([master], text.encode())


def new_patient_key(key_id: str, patient_id: str, master: AnyRecipient) -> tuple[PatientKey, bytes]:
    """A fresh patient identity of the same kind as the master, and its sealed key file."""
    identity = generate_identity(classic=isinstance(master, age.X25519Recipient))
    sealed = seal_patient_key(identity, key_id, patient_id, master)
    recipient = identity.recipient()
    return PatientKey(key_id, str(recipient), patient_id, recipient_key=recipient), sealed


def open_patient_key(data: bytes, masters: list[AnyIdentity]) -> PatientKey:
    """Open a sealed patient key file with the (unlocked) master identity."""
    try:
        text = age.decrypt_bytes(list(masters), data).decode("utf-8")
    except AgeNoMatchError:
        raise AuthenticationError(
            "this patient key cannot be opened with this vault's master key"
        ) from None
    except (AgeError, UnicodeDecodeError):
        raise IntegrityError("a patient key file is damaged") from None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# ") and ": " in line:
            k, _, v = line[2:].partition(": ")
            fields[k] = v
    try:
        identity = age.parse_identity_file(text)[0]
        patient = json.loads(fields["patient"])
        return PatientKey(fields["key-id"], str(identity.recipient()), str(patient), identity)
    except (KeyError, ValueError, bech32.Bech32Error):
        raise IntegrityError("a patient key file is malformed") from None


def reseal_patient_key(data: bytes, old: list[AnyIdentity], new_master: AnyRecipient) -> bytes:
    """Re-encrypt a patient key file to a new master recipient (master rotation)."""
    key = open_patient_key(data, old)
    assert key.identity is not None
    return seal_patient_key(key.identity, key.key_id, key.patient_id, new_master)
