"""Tests in this folder run only inside User-Mode Linux against real kernel vfat
(tests/test_drives_vfat_uml.py starts them through tests/tools/uml-vfat-run.sh). Elsewhere they
are not collected at all, so the normal run neither runs nor skips them."""

from __future__ import annotations

import os

if not os.environ.get("COLDVAULT_FAT_MOUNT"):
    collect_ignore_glob = ["test_*.py"]
