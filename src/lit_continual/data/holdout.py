"""Per-file probes: a seeded choice of each inbox file's examples that is never trained.

`eval.holdout_fraction` (0 = off) of a file's valid examples, at most `eval.holdout_max`, are
held out when the file is first taken (`FileRecord.held_out`, so a restart or a changed config
splits it the same way). They leave the training order, so the file takes correspondingly
fewer steps, and are written at the file's end to `DIR/eval/probes/<ordinal>-<name>.jsonl`
(the forgetting matrix evaluates them after each later file).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from lit_continual import atomic
from lit_continual.data.file_index import FileIndex
from lit_continual.ledger import FileRecord

PROBES_DIR = Path("eval") / "probes"  # under the base dir
MAX_STEM_BYTES = 200  # of a probe's or replay segment's file name (a file name holds 255 bytes)
HOLDOUT_STREAM = 0x70726F6265  # "probe": the held-out choice's own random stream of the file's seed


def holdout_count(examples: int, fraction: float, maximum: int) -> int:
    """How many of a file's `examples` are held out: floor(fraction x examples), at most
    `maximum`, and always leaving at least one example to train."""
    if fraction <= 0 or examples < 2:
        return 0
    return max(0, min(math.floor(fraction * examples), maximum, examples - 1))


def held_out_positions(record: FileRecord) -> np.ndarray:
    """The example positions (sorted) of `record` that are held out: a pure function of the
    file's shuffle seed and counts."""
    if not record.held_out:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([record.shuffle_seed, HOLDOUT_STREAM])
    return np.sort(rng.choice(record.examples, record.held_out, replace=False)).astype(np.int64)


def training_order(record: FileRecord, shuffle: bool) -> np.ndarray:
    """The file's examples in training order, without the held-out ones (with none held out,
    exactly the order a run without probes trains)."""
    n = record.examples
    order = np.random.default_rng(record.shuffle_seed).permutation(n) if shuffle else np.arange(n)
    held = held_out_positions(record)
    return order[~np.isin(order, held)] if len(held) else order


def probe_name(record: FileRecord) -> str:
    """`<ordinal>-<name>.jsonl` (the inbox name without its .jsonl): unique per file of the run.
    A long name is cut to MAX_STEM_BYTES (a 255-byte inbox name must still give a valid file name;
    the ordinal keeps it unique)."""
    stem = record.name[: -len(".jsonl")] if record.name.endswith(".jsonl") else record.name
    stem = os.fsdecode(os.fsencode(stem.replace("/", "_"))[:MAX_STEM_BYTES])
    return f"{record.ordinal}-{stem}.jsonl"


def write_probe(base_dir: Path, record: FileRecord, index: FileIndex) -> Path | None:
    """Write the file's held-out examples (their exact lines) to its probe file, atomically;
    None if it holds none out. Re-writing after a restart gives the same bytes."""
    positions = held_out_positions(record)
    if not len(positions):
        return None
    directory = Path(base_dir) / PROBES_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / probe_name(record)
    atomic.write_bytes(path, b"".join(index.raw_lines(positions)))
    return path
