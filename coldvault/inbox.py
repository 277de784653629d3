"""The unsorted inbox across a master rotation.

A document no source rule could file is encrypted to the vault's master recipient (nobody else
could open it), so a purge's master rotation must carry it over: each unsorted object is
re-encrypted to the new master (the age payload is decrypted and encrypted again, unchanged)
before the old master can be destroyed. The new ciphertext replaces the object under the same
path in the spool; drives get it at their next sync like any changed item (their old copy no
longer matches the catalog's hash).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, cast

from coldvault import age, keys
from coldvault.catalog.db import Catalog, DocumentRow
from coldvault.errors import IntegrityError, NotAvailable
from coldvault.fsutil import atomic_writer
from coldvault.hashio import HashingReader, HashingWriter
from coldvault.restore import Located, Restorer
from coldvault.vault import Vault

log = logging.getLogger(__name__)

CHUNK = 1 << 20


@dataclass(frozen=True)
class InboxObject:
    document: DocumentRow
    located: Located


def locate_inbox(
    vault: Vault, catalog: Catalog, masters: list[keys.AnyIdentity]
) -> list[InboxObject]:
    """Every unsorted document's object, from the spool or a plugged-in drive.

    Raises :class:`NotAvailable` naming the drives to plug in when some are on none of them: a
    rotation without them would leave them sealed to a master about to be destroyed.
    """
    restorer = Restorer(vault, catalog, masters)
    found: list[InboxObject] = []
    missing: list[DocumentRow] = []
    for doc in catalog.documents(unsorted=True):
        loc = restorer.locate(doc.object_path)
        if loc is None:
            missing.append(doc)
        else:
            found.append(InboxObject(doc, loc))
    if missing:
        drives = sorted({n for d in missing for n in restorer.holders(d.object_path)})
        raise NotAvailable(
            f"{len(missing)} document(s) of the unsorted inbox are only on drives that are not "
            "plugged in; the purge re-encrypts them to the new master key, so it needs them",
            hint=f"plug in one of: {', '.join(drives) or '?'} (or file the documents with "
            "'coldvault assign'), then run the purge again",
        )
    return found


def reseal_inbox(
    vault: Vault,
    catalog: Catalog,
    objects: Sequence[InboxObject],
    identities: Sequence[age.Identity],
    recipient: age.Recipient,
) -> int:
    """Re-encrypt each unsorted object to ``recipient``; returns how many. An object already
    sealed to ``recipient`` (a resumed purge) is encrypted again all the same."""
    done = 0
    for obj in objects:
        rel = obj.document.object_path
        item = catalog.item(rel)
        final = vault.spool / rel
        final.parent.mkdir(parents=True, exist_ok=True)
        with obj.located.open() as raw, atomic_writer(final, 0o600) as out:
            src = HashingReader(raw)
            buffered = io.BufferedReader(src, CHUNK)
            plain = age.decrypt_reader(identities, cast(BinaryIO, buffered))
            sink = HashingWriter(out)
            with age.encrypt_writer([recipient], cast(BinaryIO, sink)) as enc:
                while chunk := plain.read(CHUNK):
                    enc.write(chunk)
            while buffered.read(CHUNK):  # the hash covers the whole file
                pass
            if item is not None and (src.size, src.hash.hexdigest()) != (item[1], item[2]):
                raise IntegrityError(
                    f"the unsorted object {rel} ({obj.located.where}) does not match the "
                    "catalog: it was damaged or replaced"
                )
            if obj.located.vouched is not None:
                obj.located.vouched.check(rel, src.size, src.hash.hexdigest())
        with catalog.transaction():
            catalog.conn.execute(
                "UPDATE items SET size = ?, sha256 = ?, in_spool = 1 WHERE path = ?",
                (sink.size, sink.hash.hexdigest(), rel),
            )
        done += 1
    if done:
        log.info("re-encrypted %d unsorted document(s) to the new master key", done)
    return done
