"""Base generations: the base models a run trains on after each rebase (`consolidate.rebase_every_files`).

Generation 0 is the configured base (`model.*`), never copied. Generation k >= 1 is
`DIR/base_models/gen-<k>/`: a plain Hugging Face model directory (weights, config, tokenizer)
plus `generation.json` (provenance). A checkpoint names its generation twice: trainer_state.json
`base_generation`, and adapter_config.json `base_model_name_or_path` (the directory itself, so
stock PEFT loads it). Snapshots keep both; consolidated models record `base_model`.

A generation is deleted only when no checkpoint, snapshot or consolidated model refers to it;
the newest generation on disk is always kept (it is either the run's base or the leftover of a
killed rebase, which the rebase replaces when it runs again). No torch here: `collect` runs
after snapshot and consolidation pruning, in commands that answer in under a second.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from lit_continual import layout

log = logging.getLogger("lit_continual")

ROOT = "base_models"
NAME = re.compile(r"^gen-(\d+)$")
INFO = "generation.json"
# Where referring directories live, and the file of each that names its base model.
SNAPSHOTS, CONSOLIDATED, CONSOLIDATION_INFO = "snapshots", "consolidated", "consolidation.json"


def directory(base_dir: Path, generation: int) -> Path:
    """`DIR/base_models/gen-<k>` (k >= 1; generation 0 is the configured base, not in there)."""
    return Path(base_dir) / ROOT / f"gen-{generation}"


def listing(base_dir: Path) -> list[Path]:
    """The generation directories on disk, oldest first."""
    root = Path(base_dir) / ROOT
    found = [p for p in root.iterdir() if NAME.match(p.name) and p.is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def number(path: Path) -> int:
    return int(NAME.match(path.name).group(1))


def of_path(recorded: str | None) -> int | None:
    """The generation a recorded base model path names (`.../base_models/gen-<k>`), or None."""
    if not recorded:
        return None
    path = Path(recorded)
    match = NAME.match(path.name)
    return int(match.group(1)) if match and path.parent.name == ROOT else None


def of_checkpoint(path: Path) -> int:
    """The base generation a checkpoint (or snapshot) was trained on: trainer_state.json
    `base_generation`, else the generation its adapter_config.json names, else 0."""
    state = layout.read_json(path / layout.TRAINER_STATE) or {}
    if isinstance(state.get("base_generation"), int):
        return state["base_generation"]
    adapter = layout.read_json(path / layout.ADAPTER_CONFIG) or {}
    return of_path(adapter.get("base_model_name_or_path")) or 0


def referrers(base_dir: Path) -> list[Path]:
    """Every checkpoint, snapshot and consolidated model directory (damaged ones included)."""
    base_dir = Path(base_dir)
    found = list(layout.checkpoint_dirs(base_dir))
    for name in (SNAPSHOTS, CONSOLIDATED):
        root = base_dir / name
        if root.is_dir():
            found += [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return found


def referenced(base_dir: Path) -> set[int]:
    """The generations something on disk still needs (by any of the names it records)."""
    used: set[int] = set()
    for path in referrers(base_dir):
        state = layout.read_json(path / layout.TRAINER_STATE) or {}
        adapter = layout.read_json(path / layout.ADAPTER_CONFIG) or {}
        merged = layout.read_json(path / CONSOLIDATION_INFO) or {}
        names = [of_path(adapter.get("base_model_name_or_path")), of_path(merged.get("base_model"))]
        if isinstance(state.get("base_generation"), int):
            names.append(state["base_generation"])
        used |= {k for k in names if k}
    return used


def collect(base_dir: Path) -> list[Path]:
    """Delete the generations nothing refers to (never the newest) and leftovers of killed
    writes; the deleted directories. Lock holders only (the daemon, or a command without one)."""
    root = Path(base_dir) / ROOT
    if not root.is_dir():
        return []
    for child in root.iterdir():
        if child.name.startswith((".tmp-", ".trash-")) and child.is_dir():
            shutil.rmtree(child, ignore_errors=True)
    found = listing(base_dir)
    used = referenced(base_dir)
    removed = []
    for path in found[:-1]:
        if number(path) in used:
            continue
        trash = root / f".trash-{path.name}"
        os.rename(path, trash)
        shutil.rmtree(trash)
        removed.append(path)
        log.info("Removed base generation %s: no checkpoint, snapshot or consolidated model refers to it",
                 path.name)
    return removed


def disk_usage(base_dir: Path) -> dict[str, int]:
    """Bytes per generation directory on disk (by name)."""
    return {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) for p in listing(base_dir)}
