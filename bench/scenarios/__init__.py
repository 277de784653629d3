"""The scenarios; each is ``run(ctx) -> ScenarioResult``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import driver, driver_env, measure, rmtree, tool
from bench.corpus import CorpusSpec


@dataclass
class Context:
    workdir: Path
    #: Where every contender writes (see bench/disk.py): scratch folders and vault templates.
    out: Path
    corpus: Path
    spec: CorpusSpec
    runs: int
    cores: int
    catalog_docs: int
    idle_seconds: float
    idle_files: int
    log: Callable[[str], None] = print
    #: The harness's own test: a cheap passphrase KDF and short daemon polls (figures are
    #: then meaningless for restore's first byte; nothing else changes).
    fast: bool = False
    _vaults: dict[str, Path] = field(default_factory=dict)

    def scratch(self, name: str) -> Path:
        p = self.out / "scratch" / name
        rmtree(p)
        p.mkdir(parents=True)
        return p

    def vault_template(self, classic: bool) -> Path:
        """An empty vault (created once: scrypt at its real cost takes a second)."""
        key = "classic" if classic else "pq"
        if key not in self._vaults:
            path = self.out / "templates" / f"vault-{key}"
            rmtree(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            args = ["create", str(path)] + (["--classic"] if classic else [])
            if self.fast:
                args += ["--work-factor", "10"]
            measure(driver(*args), env=driver_env())
            self._vaults[key] = path
        return self._vaults[key]

    def fresh_vault(self, where: Path, classic: bool = False) -> Path:
        import shutil

        rmtree(where)
        shutil.copytree(self.vault_template(classic), where, symlinks=True)
        return where

    def x25519_recipient(self) -> str:
        """An age recipient for the anchors (``age -r``): the classic vault's master."""
        import json

        tpl = self.vault_template(classic=True)
        return str(json.loads((tpl / "vault.json").read_text())["master_recipient"])


def file_list(ctx: Context, name: str, files: list[Path]) -> Path:
    path = ctx.workdir / "lists" / f"{name}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{f}\n" for f in files))
    return path


def per_file_script(list_path: Path, out: Path, recipient: str) -> str:
    """One ``zstd -3 | age`` pipeline per file (what a script would do)."""
    tool("age")
    tool("zstd")
    return (
        f"i=0; while IFS= read -r f; do i=$((i+1)); "
        f'zstd -3 -q -c -- "$f" | age -r {recipient} > {out}/$i.zst.age; '
        f"done < {list_path}"
    )


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
