"""The on-drive layout (brief §5), specified here and in docs/format.md.

Everything coldvault puts on a drive lives in one top folder::

    coldvault/
      vault.json                  marker: which vault and which drive this is (JSON, ASCII)
      LISEZMOI.txt  README.txt    how to get documents back with age, zstd and tar (fr / en)
      objects/<xx>/<object-id>.age       one encrypted object; <xx> = first 2 chars of the id
      objects/<xx>/<object-id>.age.000   ... or numbered parts of a split object (cat joins)
      keys/<key-id>.age           patient identities, encrypted to the master recipient
      catalog/                    encrypted catalog snapshots
      journal/                    audit journal
      manifests/                  signed manifests

Every name coldvault generates is portable to FAT32 and exFAT (and Windows): ASCII, lowercase
(both filesystems are case-insensitive), no reserved characters, no trailing dot or space, at most
255 characters. Ids are lowercase hex or lowercase base32; nothing derived from a patient appears
in a name. Paths stay short (< 200 characters from the drive's root) for Windows' MAX_PATH.

Directory size on FAT32: a folder holds at most 65,536 entry slots, a long name takes
1 + ceil(len/13) of them. ``max_objects_per_shard`` computes the capacity of one ``objects/<xx>``
folder: with 32-hex ids (``<32 hex>.age``, 4 slots) 16,383 per shard, 4.2 M per drive; with
64-hex ids (7 slots) 9,362 per shard, 2.4 M per drive; base32 ids shard over 1,024 folders.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coldvault.drives import fsio
from coldvault.errors import VaultError

TOP_DIR = "coldvault"
MARKER_FILE = "vault.json"
OBJECTS_DIR = "objects"
KEYS_DIR = "keys"
CATALOG_DIR = "catalog"
JOURNAL_DIR = "journal"
MANIFESTS_DIR = "manifests"
SUBDIRS = (OBJECTS_DIR, KEYS_DIR, CATALOG_DIR, JOURNAL_DIR, MANIFESTS_DIR)
README_FR = "LISEZMOI.txt"
README_EN = "README.txt"
OBJECT_SUFFIX = ".age"
KEY_SUFFIX = ".age"
SHARD_CHARS = 2

FORMAT_NAME = "coldvault-drive"
FORMAT_VERSION = 1
"""Drive layout format this code writes; it reads every version up to this one."""

MAX_NAME_LENGTH = 255
MAX_RELPATH_LENGTH = 200
MAX_MARKER_SIZE = 64 * 1024
FAT_DIR_SLOTS = 65536

_HEX_ID = re.compile(r"[0-9a-f]{8,100}")
_B32_ID = re.compile(r"[a-z2-7]{8,100}")
_MARKER_ID = re.compile(r"[0-9a-z][0-9a-z-]{0,63}")
_RESERVED_CHARS = frozenset('"*/:<>?\\|')
_DOS_DEVICES = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{i}" for i in range(1, 10)]
    + [f"lpt{i}" for i in range(1, 10)]
)


# --- errors ---------------------------------------------------------------------------------


class BadName(VaultError):
    """A name that is not a valid id or not portable to FAT32/exFAT."""


class NotAVaultDrive(VaultError):
    """The drive has no coldvault marker."""


class MarkerDamaged(VaultError):
    """The marker exists but cannot be understood."""


class UnsupportedFormat(VaultError):
    """The drive was written by a newer coldvault (a format version this one does not know)."""


class ForeignDrive(VaultError):
    """The drive belongs to another vault."""


# --- names and paths ----------------------------------------------------------------------


def check_name(name: str, *, allow_upper: bool = False) -> str:
    """Return ``name`` if it is a file name valid on FAT32, exFAT and Windows, else raise BadName.

    Rules: 1..255 printable ASCII characters; none of ``" * / : < > ? \\ |``; no leading space,
    no trailing dot or space; not ``.``/``..``; not a DOS device name (``con``, ``nul.txt``,
    ...); lowercase only unless ``allow_upper`` (the fixed README names), because both
    filesystems are case-insensitive and two names differing in case would collide.
    """
    problem = None
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        problem = "empty or longer than 255 characters"
    elif any(not 0x20 <= ord(c) <= 0x7E for c in name):
        problem = "not printable ASCII"
    elif any(c in _RESERVED_CHARS for c in name):
        problem = "contains a character FAT32 and exFAT reserve"
    elif name in (".", "..") or name.endswith((".", " ")) or name.startswith(" "):
        problem = "dot name, or leading space, or trailing dot or space"
    elif name.split(".", 1)[0].lower() in _DOS_DEVICES:
        problem = "a reserved device name on Windows"
    elif not allow_upper and name != name.lower():
        problem = "contains uppercase letters"
    if problem:
        raise BadName(f"The name {name!r} cannot be used on a drive: {problem}.")
    return name


def check_id(value: str, what: str = "object id") -> str:
    """Return ``value`` if it is a lowercase hex or lowercase base32 id (8..100 chars)."""
    if not isinstance(value, str) or not (_HEX_ID.fullmatch(value) or _B32_ID.fullmatch(value)):
        raise BadName(f"Invalid {what} {value!r}: expected lowercase hex or base32.")
    return value


def shard(object_id: str) -> str:
    """The ``objects/`` sub-folder of an object: the first two characters of its id."""
    return check_id(object_id)[:SHARD_CHARS]


def object_file_name(object_id: str) -> str:
    return check_id(object_id) + OBJECT_SUFFIX


def object_relpath(object_id: str) -> str:
    """``objects/<xx>/<id>.age``, relative to the ``coldvault/`` folder (POSIX separators)."""
    return f"{OBJECTS_DIR}/{shard(object_id)}/{object_file_name(object_id)}"


def key_file_name(key_id: str) -> str:
    return check_id(key_id, "key id") + KEY_SUFFIX


def key_relpath(key_id: str) -> str:
    """``keys/<key-id>.age``, relative to the ``coldvault/`` folder."""
    return f"{KEYS_DIR}/{key_file_name(key_id)}"


def vault_relpath(folder: str, name: str) -> str:
    """``<folder>/<name>`` for one of the layout's folders, with ``name`` checked portable."""
    if folder not in SUBDIRS:
        raise BadName(f"{folder!r} is not a folder of the drive layout.")
    rel = f"{folder}/{check_name(name)}"
    if len(TOP_DIR) + 1 + len(rel) > MAX_RELPATH_LENGTH:
        raise BadName(f"The path {rel!r} is too long for Windows.")
    return rel


def catalog_snapshot_name(created: datetime) -> str:
    """``catalog-YYYYMMDD-HHMMSS.age`` (UTC): snapshots sort by name in time order."""
    return "catalog-" + created.astimezone(UTC).strftime("%Y%m%d-%H%M%S") + ".age"


def vault_dir(root: str | os.PathLike[str]) -> Path:
    """The ``coldvault/`` folder on a drive mounted (or a directory drive) at ``root``."""
    return Path(root) / TOP_DIR


def object_dir(root: str | os.PathLike[str], object_id: str) -> Path:
    return vault_dir(root) / OBJECTS_DIR / shard(object_id)


def object_path(root: str | os.PathLike[str], object_id: str) -> Path:
    """Absolute path of an object (a split object has parts ``<this>.000`` ... instead)."""
    return vault_dir(root) / object_relpath(object_id)


def key_path(root: str | os.PathLike[str], key_id: str) -> Path:
    return vault_dir(root) / key_relpath(key_id)


def fat_dir_slots(name: str) -> int:
    """Directory entry slots a name takes on FAT32 (the short entry plus 13 chars per LFN slot).
    A name that is a valid lowercase 8.3 name still gets one LFN slot (mixed-case flag aside)."""
    return 1 + math.ceil(len(name) / 13)


def max_objects_per_shard(id_length: int, split_parts: int = 1) -> int:
    """How many objects of ids of ``id_length`` chars fit one ``objects/<xx>`` folder on FAT32."""
    name = "x" * id_length + OBJECT_SUFFIX + (".000" if split_parts > 1 else "")
    return (FAT_DIR_SLOTS - 2) // (fat_dir_slots(name) * split_parts)  # minus . and ..


# --- marker ---------------------------------------------------------------------------------

_FIELDS = (
    "format",
    "format_version",
    "vault_id",
    "drive_id",
    "drive_name",
    "verify_key",
    "created",
)


def _format_time(t: datetime) -> str:
    if t.tzinfo is None:
        raise ValueError("marker times must be timezone-aware")
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Marker:
    """``coldvault/vault.json``: which vault a drive belongs to and which drive it is.

    JSON object, ASCII, keys sorted::

        {"created": "2024-05-01T12:00:00Z", "drive_id": "...", "drive_name": "Clé lundi",
         "format": "coldvault-drive", "format_version": 1, "vault_id": "...",
         "verify_key": "<the vault's Ed25519 verify key, text form>"}

    Readers accept (and keep, when rewriting) keys they do not know; a ``format_version``
    higher than ``FORMAT_VERSION`` is refused (UnsupportedFormat).
    """

    vault_id: str
    drive_id: str
    drive_name: str
    verify_key: str
    created: datetime
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        problem = _marker_problem(self)
        if problem:
            raise ValueError(problem)
        # Stored to the second in UTC: normalise so that a marker equals itself read back.
        object.__setattr__(self, "created", self.created.astimezone(UTC).replace(microsecond=0))

    def to_json(self) -> bytes:
        doc: dict[str, Any] = dict(self.extra)
        doc.update(
            format=FORMAT_NAME,
            format_version=self.format_version,
            vault_id=self.vault_id,
            drive_id=self.drive_id,
            drive_name=self.drive_name,
            verify_key=self.verify_key,
            created=_format_time(self.created),
        )
        return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Marker:
        """Parse a marker; raises MarkerDamaged or UnsupportedFormat."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _damaged(f"not JSON ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise _damaged("not a coldvault drive marker")
        version = doc.get("format_version")
        if type(version) is not int or version < 1:
            raise _damaged("bad format_version")
        if version > FORMAT_VERSION:
            raise UnsupportedFormat(
                f"This drive was written by a newer version of coldvault (drive format "
                f"{version}); this version reads drive formats up to {FORMAT_VERSION}.",
                hint="Update coldvault on this computer.",
            )
        for k in _FIELDS[2:]:
            if not isinstance(doc.get(k), str):
                raise _damaged(f"missing or invalid {k!r}")
        try:
            created = datetime.strptime(doc["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            return cls(
                vault_id=doc["vault_id"],
                drive_id=doc["drive_id"],
                drive_name=doc["drive_name"],
                verify_key=doc["verify_key"],
                created=created,
                format_version=version,
                extra={k: v for k, v in doc.items() if k not in _FIELDS},
            )
        except ValueError as e:
            raise _damaged(str(e)) from e


def _marker_problem(m: Marker) -> str | None:
    for what, v in (("vault_id", m.vault_id), ("drive_id", m.drive_id)):
        if not isinstance(v, str) or not _MARKER_ID.fullmatch(v):
            return f"invalid {what} {v!r}: lowercase letters, digits and '-', at most 64"
    if not isinstance(m.drive_name, str) or not 0 < len(m.drive_name) <= 100:
        return "drive_name must have 1 to 100 characters"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in m.drive_name):
        return "drive_name contains control characters"
    vk = m.verify_key
    if (
        not isinstance(vk, str)
        or not 0 < len(vk) <= 1000
        or not vk.isascii()
        or not vk.isprintable()
    ):
        return "verify_key must be 1 to 1000 printable ASCII characters"
    if not isinstance(m.created, datetime) or m.created.tzinfo is None:
        return "created must be a timezone-aware datetime"
    if type(m.format_version) is not int or not 1 <= m.format_version <= FORMAT_VERSION:
        return f"format_version must be 1..{FORMAT_VERSION}"
    return None


def _damaged(why: str) -> MarkerDamaged:
    return MarkerDamaged(
        "The coldvault marker on this drive (coldvault/vault.json) is damaged.",
        hint=f"{why}. Run `coldvault verify` on another drive; re-enroll this one if needed.",
    )


def marker_path(root: str | os.PathLike[str]) -> Path:
    return vault_dir(root) / MARKER_FILE


def read_marker(root: str | os.PathLike[str]) -> Marker:
    """Read ``coldvault/vault.json`` from the drive at ``root``.

    Raises NotAVaultDrive (no marker), MarkerDamaged, UnsupportedFormat, or a DriveError."""
    p = marker_path(root)
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_MARKER_SIZE + 1)
    except FileNotFoundError as e:
        raise NotAVaultDrive(
            "This drive is not a coldvault drive (it has no coldvault/vault.json).",
            hint="Enroll it first with `coldvault drive enroll`.",
        ) from e
    except IsADirectoryError as e:
        raise _damaged("vault.json is a folder") from e
    except OSError as e:
        raise fsio.drive_error_from_oserror(e, p) from e
    if len(data) > MAX_MARKER_SIZE:
        raise _damaged("the file is too large")
    return Marker.from_json(data)


def write_marker(root: str | os.PathLike[str], marker: Marker) -> None:
    """Write the marker durably (temp file, fsync, read back, rename, fsync folder)."""
    d = vault_dir(root)
    fsio.make_dirs_durable(d)
    fsio.write_file_atomic(d, MARKER_FILE, marker.to_json())


def check_marker(root: str | os.PathLike[str], vault_id: str) -> Marker:
    """Read the marker and check the drive belongs to vault ``vault_id`` (ForeignDrive if not)."""
    m = read_marker(root)
    if m.vault_id != vault_id:
        raise ForeignDrive(
            f"This drive belongs to another vault (drive {m.drive_name!r}, vault {m.vault_id}).",
            hint="Use a drive enrolled in this vault. Nothing was written on this one.",
        )
    return m


def init_drive(root: str | os.PathLike[str], marker: Marker) -> Path:
    """Create the layout on an empty (or already ours) drive: folders, README texts, and the
    marker last, so that a marker means the layout is complete. Re-running on a drive with the
    same vault and drive id only refreshes the README texts. Returns the ``coldvault/`` folder.
    Raises ForeignDrive, or VaultError if the drive is enrolled as another drive of this vault.
    """
    d = vault_dir(root)
    try:
        existing: Marker | None = check_marker(root, marker.vault_id)
    except NotAVaultDrive:
        existing = None
    if existing is not None and existing.drive_id != marker.drive_id:
        raise VaultError(
            f"This drive is already enrolled in this vault as {existing.drive_name!r}.",
            hint="Use `coldvault drive list` to see the enrolled drives.",
        )
    for sub in SUBDIRS:
        fsio.make_dirs_durable(d / sub)
    for name, text in readme_texts(marker.vault_id, marker.drive_name).items():
        fsio.write_file_atomic(d, name, readme_bytes(text))
    if existing is None:
        write_marker(root, marker)
    return d


# --- README texts ---------------------------------------------------------------------------


def readme_bytes(text: str) -> bytes:
    """How the README files are stored: CRLF line ends (any editor on any system shows them),
    UTF-8 with a byte-order mark (so Windows editors do not show the French accents as junk)."""
    return b"\xef\xbb\xbf" + text.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def readme_texts(vault_id: str, drive_name: str) -> dict[str, str]:
    """The texts of ``LISEZMOI.txt`` (French) and ``README.txt`` (English) for this drive."""
    return {
        README_FR: _FR.format(vault_id=vault_id, drive_name=drive_name),
        README_EN: _EN.format(vault_id=vault_id, drive_name=drive_name),
    }


_EN = """\
COLDVAULT ARCHIVE DRIVE
=======================

This drive holds an archive copy of the medical records of a medical practice,
made by the program coldvault. It contains HEALTH DATA about patients.
Everything on it is encrypted, but keep the drive safe: do not lose it, lend it
or throw it away. A drive that is no longer used must be physically destroyed.

  Vault: {vault_id}
  Drive: {drive_name}

What is in the folder "coldvault"
---------------------------------
  vault.json              which vault and which drive this is (plain text)
  objects/xx/<id>.age     one encrypted document each (xx = first 2 characters of <id>)
  keys/<key-id>.age       one key per patient, encrypted to the vault's master key
  catalog/                encrypted snapshots of the catalog (the list of documents)
  journal/                the audit journal (who archived, restored or destroyed what)
  manifests/              signed lists of the SHA-256 checksums of every object
  LISEZMOI.txt            this text in French

How to get documents back without coldvault
-------------------------------------------
You need the paper recovery key of the vault (one line starting with
AGE-SECRET-KEY-) and three free, standard tools: age (https://age-encryption.org),
zstd and tar. On Debian or Ubuntu: apt install age zstd tar.
Open a terminal in the folder "coldvault" of this drive, then:

1. Type the recovery key, the whole line exactly, into a text file named master.key.

2. Open the key of a patient:
       age -d -i master.key keys/<key-id>.age > patient.key
   or open all the patient keys into one file (age then tries each of them):
       for k in keys/*.age; do age -d -i master.key "$k"; done > patient.key

3. Open a document. This recreates the original file with its original name,
   plus a small coldvault.json that describes it (patient, date, checksum):
       age -d -i patient.key objects/xx/<id>.age | zstd -d | tar -x

4. A document too large for the drive's file system is split into numbered
   parts <id>.age.000, <id>.age.001, ... Join them in order, then open as above:
       cat objects/xx/<id>.age.000 objects/xx/<id>.age.001 ... \\
         | age -d -i patient.key | zstd -d | tar -x
   (on Windows: copy /b <id>.age.000 + <id>.age.001 joined.age)

5. The catalog says which document belongs to which patient and which key opens
   it. The newest file in catalog/ is encrypted to the master key and holds a
   SQLite database inside a zstd-compressed tar:
       age -d -i master.key catalog/<newest>.age | zstd -d | tar -x
   Open the database with sqlite3 or "DB Browser for SQLite".

Which version of age
--------------------
New vaults use post-quantum keys (a recovery key starting with AGE-SECRET-KEY-PQ-1):
they need age 1.3 or later. Older age versions, such as age 1.1 in Debian 12, open
only "classic" vaults (a recovery key starting with AGE-SECRET-KEY-1).
Check your version with: age --version

Keep the recovery key apart from the drives, in a safe place. Without it, or the
passphrase of the vault, nobody can read these documents: not even the practice.
The format is specified in coldvault's docs/format.md and docs/recovery.md.
"""

_FR = """\
DISQUE D'ARCHIVES COLDVAULT
===========================

Ce disque contient une copie d'archive des dossiers médicaux d'un cabinet
médical, faite par le logiciel coldvault. Il contient des DONNÉES DE SANTÉ de
patients. Tout y est chiffré, mais gardez ce disque en lieu sûr : ne le perdez
pas, ne le prêtez pas, ne le jetez pas. Un disque qui ne sert plus doit être
détruit physiquement.

  Coffre : {vault_id}
  Disque : {drive_name}

Contenu du dossier « coldvault »
--------------------------------
  vault.json              quel coffre, quel disque (texte lisible)
  objects/xx/<id>.age     un document chiffré par fichier (xx = 2 premiers caractères de <id>)
  keys/<id-clé>.age       une clé par patient, chiffrée avec la clé maîtresse du coffre
  catalog/                copies chiffrées du catalogue (la liste des documents)
  journal/                le journal d'audit (qui a archivé, restauré, détruit quoi)
  manifests/              listes signées des empreintes SHA-256 de chaque objet
  README.txt              ce texte en anglais

Récupérer des documents sans coldvault
--------------------------------------
Il faut la clé de secours papier du coffre (une ligne qui commence par
AGE-SECRET-KEY-) et trois outils libres et standard : age (https://age-encryption.org),
zstd et tar. Sous Debian ou Ubuntu : apt install age zstd tar.
Ouvrez un terminal dans le dossier « coldvault » de ce disque, puis :

1. Recopiez la clé de secours, toute la ligne, exactement, dans un fichier texte
   nommé master.key.

2. Ouvrez la clé d'un patient :
       age -d -i master.key keys/<id-clé>.age > patient.key
   ou ouvrez toutes les clés des patients dans un seul fichier (age les essaie toutes) :
       for k in keys/*.age; do age -d -i master.key "$k"; done > patient.key

3. Ouvrez un document. Cela recrée le fichier d'origine, avec son nom d'origine,
   et un petit coldvault.json qui le décrit (patient, date, empreinte) :
       age -d -i patient.key objects/xx/<id>.age | zstd -d | tar -x

4. Un document trop gros pour le système de fichiers du disque est découpé en
   morceaux numérotés <id>.age.000, <id>.age.001, ... Recollez-les dans l'ordre,
   puis ouvrez comme ci-dessus :
       cat objects/xx/<id>.age.000 objects/xx/<id>.age.001 ... \\
         | age -d -i patient.key | zstd -d | tar -x
   (sous Windows : copy /b <id>.age.000 + <id>.age.001 joint.age)

5. Le catalogue indique à quel patient appartient chaque document et quelle clé
   l'ouvre. Le fichier le plus récent de catalog/ est chiffré avec la clé
   maîtresse et contient une base SQLite dans une archive tar compressée zstd :
       age -d -i master.key catalog/<le-plus-récent>.age | zstd -d | tar -x
   Ouvrez la base avec sqlite3 ou « DB Browser for SQLite ».

Quelle version de age
---------------------
Les nouveaux coffres utilisent des clés post-quantiques (clé de secours qui
commence par AGE-SECRET-KEY-PQ-1) : il faut age 1.3 ou plus récent. Les versions
plus anciennes, comme age 1.1 de Debian 12, n'ouvrent que les coffres
« classiques » (clé de secours qui commence par AGE-SECRET-KEY-1).
Vérifiez votre version avec : age --version

Gardez la clé de secours à part des disques, en lieu sûr. Sans elle, ou sans la
phrase de passe du coffre, personne ne peut lire ces documents : pas même le cabinet.
Le format est décrit dans docs/format.md et docs/recovery.md de coldvault.
"""
