"""The vault's state folder on the workstation, and what it holds.

<state_dir>/            mode 0700
  vault.json            vault id, master recipient, generation, verify key (no secrets)
  identity.age          master identity, age-encrypted with the passphrase (scrypt)
  signing.key           Ed25519 signing key of the daemon (0600, clear: it opens nothing)
  lookup.key            HMAC key for pseudonymous lookups (0600, clear: it opens nothing)
  catalog.sqlite        the catalog (WAL)
  spool/                mirrors the drive layout: objects/<2 hex>/<id>.age, keys/<id>.age
  journal/              hash-chained audit journal segments
  records/              destruction records
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from coldvault import age, keys
from coldvault.errors import ColdvaultError, VaultError
from coldvault.fsutil import fsync_dir, private_dir, write_atomic

log = logging.getLogger(__name__)

#: A purge's new master before the switch, and the replaced one until drives catch up.
NEXT_MASTER = "identity.next.age"
PREVIOUS_MASTER = "identity.previous.age"

VAULT_FORMAT = 1


@dataclass(frozen=True)
class VaultInfo:
    vault_id: str
    created: str
    master_recipient: str
    post_quantum: bool
    master_generation: int
    verify_key: str
    format: int = VAULT_FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"


@dataclass(frozen=True)
class Created:
    vault: Vault
    recovery_key: str
    fingerprint: str


class Vault:
    """An opened state folder. Opening needs no secret; :meth:`unlock` needs the passphrase."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir)
        self.info = self._read_info()
        self._lookup_key: bytes | None = None

    def _read_info(self) -> VaultInfo:
        path = self.state_dir / "vault.json"
        try:
            st = path.stat()
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise VaultError(
                f"no vault at {self.state_dir}",
                hint="run 'coldvault init' first, or check state_dir in the configuration",
            ) from None
        except (OSError, ValueError) as exc:
            raise VaultError(f"cannot read {path}: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != VAULT_FORMAT:
            raise VaultError(f"{path} is not a vault file this version of coldvault knows")
        try:
            info = VaultInfo(**raw)
        except TypeError:
            raise VaultError(f"{path} is malformed") from None
        self._info_stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        return info

    def reload_info(self) -> bool:
        """Read vault.json again if it changed (a purge in another process rotated the master);
        True if the master recipient changed. Long-running processes call it before sealing
        anything to the master."""
        try:
            st = (self.state_dir / "vault.json").stat()
        except OSError:
            return False
        if (st.st_ino, st.st_mtime_ns, st.st_size) == self._info_stamp:
            return False
        before = self.info.master_recipient
        self.info = self._read_info()
        return self.info.master_recipient != before

    @contextlib.contextmanager
    def rotation_lock(self, *, exclusive: bool) -> Iterator[None]:
        """Held shared while sealing anything to the master (an ingest batch), exclusive while
        a purge rotates it: a batch never seals to a master that is being replaced."""
        fd = os.open(
            self.state_dir / ".rotation.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    # --- paths ---------------------------------------------------------------------------
    @property
    def identity_path(self) -> Path:
        return self.state_dir / "identity.age"

    @property
    def signing_key_path(self) -> Path:
        return self.state_dir / "signing.key"

    @property
    def catalog_path(self) -> Path:
        return self.state_dir / "catalog.sqlite"

    @property
    def spool(self) -> Path:
        return self.state_dir / "spool"

    @property
    def journal_dir(self) -> Path:
        return self.state_dir / "journal"

    @property
    def records_dir(self) -> Path:
        return self.state_dir / "records"

    # --- keys ----------------------------------------------------------------------------
    def master_recipient(self) -> keys.AnyRecipient:
        return age.parse_recipient(self.info.master_recipient)

    def unlock(self, passphrase: bytes) -> keys.AnyIdentity:
        try:
            data = self.identity_path.read_bytes()
        except OSError as exc:
            raise VaultError(f"cannot read the vault identity file: {exc.strerror}") from None
        identity = keys.unseal_master(data, passphrase)
        if str(identity.recipient()) != self.info.master_recipient:
            following = self._interrupted_switch(passphrase)
            if following is None:
                raise VaultError("the identity file does not belong to this vault")
            return following
        return identity

    def _interrupted_switch(self, passphrase: bytes) -> keys.AnyIdentity | None:
        """A purge recorded its new master in vault.json, then stopped before it became
        ``identity.age``: finish the switch."""
        path = self.state_dir / NEXT_MASTER
        if not path.exists():
            return None
        identity = keys.unseal_master(path.read_bytes(), passphrase)
        if str(identity.recipient()) != self.info.master_recipient:
            return None
        log.warning(
            "finished the master key switch of an interrupted purge: print the new recovery "
            "sheet with 'coldvault key recovery-sheet' and destroy the old one"
        )
        self.switch_master()
        return identity

    def switch_master(self) -> None:
        """``identity.next.age`` becomes ``identity.age``; the current one is kept as
        ``identity.previous.age`` (until every drive has the re-sealed keys). At every instant
        ``identity.age`` exists."""
        current = self.identity_path
        keep = self.state_dir / ".tmp-previous"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(keep)
        os.link(current, keep)
        os.replace(keep, self.state_dir / PREVIOUS_MASTER)
        os.replace(self.state_dir / NEXT_MASTER, current)
        fsync_dir(self.state_dir)

    def unlock_all(self, passphrase: bytes) -> list[keys.AnyIdentity]:
        """The master, plus the previous / next one while a purge's rotation is unfinished."""
        identities = [self.unlock(passphrase)]
        for name in (PREVIOUS_MASTER, NEXT_MASTER):
            path = self.state_dir / name
            if path.exists():
                try:
                    identities.append(keys.unseal_master(path.read_bytes(), passphrase))
                except (OSError, ColdvaultError):
                    continue  # sealed with an older passphrase: not needed to open the keys
        return identities

    def change_passphrase(self, old: bytes, new: bytes) -> None:
        identities = self.unlock_all(old)
        write_atomic(self.identity_path, keys.seal_master(identities[0], self.info.vault_id, new))
        for extra, name in zip(
            identities[1:], ("identity.previous.age", "identity.next.age"), strict=False
        ):
            path = self.state_dir / name
            if path.exists():
                write_atomic(path, keys.seal_master(extra, self.info.vault_id, new))

    def lookup_key(self) -> bytes:
        if self._lookup_key is None:
            try:
                self._lookup_key = bytes.fromhex(
                    (self.state_dir / "lookup.key").read_text().strip()
                )
            except (OSError, ValueError):
                raise VaultError("the vault's lookup key is missing or damaged") from None
        return self._lookup_key

    def lookup(self, purpose: str, value: str) -> str:
        """A keyed hash: finds a patient or a source file without storing it in clear."""
        msg = f"{purpose}\0{value}".encode()
        return hmac.new(self.lookup_key(), msg, hashlib.sha256).hexdigest()

    def update_info(self, **changes: object) -> None:
        self.info = replace(self.info, **changes)  # type: ignore[arg-type]
        write_atomic(self.state_dir / "vault.json", self.info.to_json(), 0o644)
        st = (self.state_dir / "vault.json").stat()
        self._info_stamp = (st.st_ino, st.st_mtime_ns, st.st_size)

    # --- creation ------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        state_dir: Path,
        passphrase: bytes,
        *,
        classic: bool = False,
        master: keys.AnyIdentity | None = None,
        vault_id: str | None = None,
        lookup_key: bytes | None = None,
    ) -> Created:
        """Create a new vault (or, with ``master``/``vault_id``, re-create one from recovery)."""
        from coldvault.signing import SigningKey

        state_dir = Path(state_dir)
        if (state_dir / "vault.json").exists():
            raise VaultError(
                f"a vault already exists in {state_dir}; coldvault will not overwrite it"
            )
        private_dir(state_dir)
        os.chmod(state_dir, 0o700)
        for sub in ("spool/objects", "spool/keys", "journal", "records"):
            private_dir(state_dir / sub)
        identity = master or keys.generate_identity(classic)
        vault_id = vault_id or secrets.token_hex(16)
        signing = SigningKey.generate()
        signing.save(state_dir / "signing.key")
        write_atomic(state_dir / "lookup.key", (lookup_key or os.urandom(32)).hex().encode())
        write_atomic(state_dir / "identity.age", keys.seal_master(identity, vault_id, passphrase))
        info = VaultInfo(
            vault_id=vault_id,
            created=datetime.now(UTC).replace(microsecond=0).isoformat(),
            master_recipient=str(identity.recipient()),
            post_quantum=isinstance(identity, age.HybridIdentity),
            master_generation=1,
            verify_key=signing.public().to_text(),
        )
        # vault.json last: its presence marks a complete vault.
        write_atomic(state_dir / "vault.json", info.to_json(), 0o644)
        vault = cls(state_dir)
        return Created(vault, str(identity), signing.public().fingerprint())
