"""Replay: a bounded reservoir of past files' examples, and which batch slots it fills.

- `Allotment`: how many of a micro-batch's `data.batch_size` slots (units) are replayed. The
  run's slots are counted nominally, `batch_size x accumulate` per optimizer step, so micro-batch
  `part` of step `t` (0-based) holds slots [s, s + b) with s = (t x accumulate + part) x b, and
  gets floor(f x (s + b)) - floor(f x s) replayed ones: exact fractions, a pure function of the
  global step, adding up to `data.replay_fraction` of all slots (0.25 at batch 8: exactly 2 per
  micro-batch; 0.05: one slot in 20 over the run). The checkpoint interval cannot change it.
- `Reservoir`: at most `data.replay_buffer_size` examples of the files finished earlier in the run
  (reservoir sampling, Vitter's algorithm R, each file's draw seeded by the run seed and its
  ordinal). A file's trained examples (never its held-out probe) are offered when the file ends,
  done, skipped or abandoned. The examples kept of a file are written once, as their exact lines,
  to an immutable segment `DIR/replay/<ordinal>-<name>.jsonl`; the reservoir's state (in every
  checkpoint, `replay.json`) is which segment line fills each slot. A segment is deleted only when
  neither the run nor any retained checkpoint refers to it, so falling back to an older
  checkpoint still finds its reservoir.
- Which examples a micro-batch replays is a pure function of (run seed, step, part) and the
  reservoir, so a restarted run draws exactly what an uninterrupted one draws.
"""

from __future__ import annotations

import json
import logging
import math
from fractions import Fraction
from pathlib import Path

import numpy as np

from lit_continual import atomic
from lit_continual.data.file_index import FileIndex
from lit_continual.data.holdout import probe_name
from lit_continual.data.records import BadLine, RecordSpec, parse_line
from lit_continual.ledger import FileRecord

REPLAY_DIR = "replay"  # under the base dir
STATE_FILE = "replay.json"  # in each checkpoint directory
VERSION = 1
RESERVOIR_STREAM = 0x726573  # "res": the reservoir's random stream of a file
DRAW_STREAM = 0x647261  # "dra": the replay draw's random stream of a step
MAX_PACKED_DRAWS = 64  # a packed replay unit takes at most this many examples

log = logging.getLogger("lit_continual")


class Allotment:
    """Replayed slots per micro-batch (see the module docstring)."""

    def __init__(self, fraction: float, batch_size: int, accumulate: int) -> None:
        self.fraction = Fraction(repr(float(fraction)))  # 0.05 is exactly 1/20
        self.batch_size, self.accumulate = batch_size, accumulate

    def replayed(self, step: int, part: int) -> int:
        """Replayed units of micro-batch `part` of optimizer step `step` (0-based)."""
        start = (step * self.accumulate + part) * self.batch_size
        return math.floor(self.fraction * (start + self.batch_size)) - math.floor(self.fraction * start)

    def new_units(self, step: int) -> list[int]:
        """New (not replayed) units of each micro-batch of optimizer step `step`."""
        return [self.batch_size - self.replayed(step, part) for part in range(self.accumulate)]

    def steps(self, units: int, first_step: int, active: bool) -> int:
        """Optimizer steps that `units` new units take from step `first_step` (0-based) on."""
        if not active or self.fraction == 0:
            return math.ceil(units / (self.batch_size * self.accumulate))
        steps = 0
        while units > 0:
            units -= sum(self.new_units(first_step + steps))
            steps += 1
        return steps


class Reservoir:
    """The replay reservoir: which segment line fills each slot, and the segments' records."""

    def __init__(self, base_dir: Path, capacity: int, seed: int, spec: RecordSpec) -> None:
        self.directory = Path(base_dir) / REPLAY_DIR
        self.capacity, self.seed, self.spec = capacity, seed, spec
        self.seen = 0  # examples offered so far (algorithm R's count)
        self.segments: list[str] = []  # segment file names; slots refer to them by index
        self.slot_segment: list[int] = []
        self.slot_line: list[int] = []
        self._records: dict[str, list[dict | None]] = {}  # segment name -> parsed lines (cache)
        self._missing: set[str] = set()

    def __len__(self) -> int:
        return len(self.slot_segment)

    # -- filling --------------------------------------------------------------------------

    def offer(self, record: FileRecord, index: FileIndex, positions: np.ndarray) -> int:
        """Offer the file's trained examples (`positions`, in training order): algorithm R over
        them, seeded by the file; the ones kept are written to the file's segment first. Returns
        how many of them the reservoir now holds. Raises OSError if the segment cannot be written
        (the reservoir is then unchanged)."""
        m = len(positions)
        if m == 0:
            return 0
        rng = np.random.default_rng([self.seed, record.ordinal, RESERVOIR_STREAM])
        slots = len(self)
        fill = min(max(self.capacity - slots, 0), m)
        counts = self.seen + np.arange(fill + 1, m + 1, dtype=np.int64)  # t of each example after the fill
        draws = np.floor(rng.random(m - fill) * counts).astype(np.int64)
        target: dict[int, int] = {}  # slot -> the example of this file that ends up in it
        for i in range(fill):
            target[slots + i] = i
        for i, j in zip(range(fill, m), draws.tolist(), strict=True):
            if j < self.capacity:
                target[j] = i
        kept = sorted(set(target.values()))
        name = probe_name(record)
        if kept:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic.write_bytes(self.directory / name, b"".join(index.raw_lines(positions[kept])))
        line_of = {example: line for line, example in enumerate(kept)}
        if kept:
            if name in self.segments:  # the same file offered again (redone after a restart)
                segment = self.segments.index(name)
            else:
                segment = len(self.segments)
                self.segments.append(name)
            for slot in sorted(target):
                line = line_of[target[slot]]
                if slot < len(self.slot_segment):
                    self.slot_segment[slot], self.slot_line[slot] = segment, line
                else:
                    self.slot_segment.append(segment)
                    self.slot_line.append(line)
            self._records.pop(name, None)
        self.seen += m
        self._drop_unused_segments()
        return len(kept)

    def _drop_unused_segments(self) -> None:
        used = sorted(set(self.slot_segment))
        if len(used) == len(self.segments):
            return
        renumber = {old: new for new, old in enumerate(used)}
        self.segments = [self.segments[i] for i in used]
        self.slot_segment = [renumber[s] for s in self.slot_segment]

    # -- drawing --------------------------------------------------------------------------

    def draw(self, step: int, part: int, count: int, encode, packed_width: int | None = None) -> list[list]:
        """`count` replay units for micro-batch `part` of step `step`, each a list of examples
        `encode(record)` made: one without packing; with packing, examples drawn until the next
        would not fit in `packed_width` tokens. `encode(None)` stands for a record that cannot be
        read (a segment deleted by hand) and must give a zero-weight example."""
        if count == 0 or not len(self):
            return []
        rng = np.random.default_rng([self.seed, DRAW_STREAM, step, part])
        units = []
        for _ in range(count):
            first = encode(self._record(int(rng.integers(len(self)))))
            unit, used = [first], len(first[0])
            if packed_width is not None:
                for _ in range(MAX_PACKED_DRAWS - 1):
                    candidate = encode(self._record(int(rng.integers(len(self)))))
                    if used + len(candidate[0]) > packed_width:
                        break
                    unit.append(candidate)
                    used += len(candidate[0])
            units.append(unit)
        return units

    def _record(self, slot: int) -> dict | None:
        name = self.segments[self.slot_segment[slot]]
        lines = self._records.get(name)
        if lines is None:
            lines = self._load(name)
        line = self.slot_line[slot]
        return lines[line] if line < len(lines) else None

    def _load(self, name: str) -> list[dict | None]:
        path = self.directory / name
        try:
            raw = path.read_bytes().splitlines(keepends=True)
        except OSError as err:
            if name not in self._missing:
                self._missing.add(name)
                log.error("Replay segment %s cannot be read (%s): its examples train with zero weight; "
                          "`lit-continual verify` lists the missing segments", path, err)
            raw = []
        lines: list[dict | None] = []
        for line in raw:
            try:
                lines.append(parse_line(line, self.spec))
            except BadLine:
                lines.append(None)
        self._records[name] = lines
        return lines

    # -- run state ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {"version": VERSION, "capacity": self.capacity, "seen": self.seen, "segments": list(self.segments),
                "slot_segment": list(self.slot_segment), "slot_line": list(self.slot_line)}

    def load_state_dict(self, state: dict) -> None:
        self.seen = int(state.get("seen", 0))
        self.segments = list(state.get("segments", []))
        self.slot_segment = [int(s) for s in state.get("slot_segment", [])]
        self.slot_line = [int(s) for s in state.get("slot_line", [])]
        if len(self.slot_segment) > self.capacity:  # data.replay_buffer_size was lowered
            del self.slot_segment[self.capacity:], self.slot_line[self.capacity:]
            self._drop_unused_segments()
        self._records.clear()


def referenced_segments(checkpoint: Path) -> set[str]:
    """The replay segments checkpoint `checkpoint` refers to (none for one without replay)."""
    try:
        return set(json.loads((checkpoint / STATE_FILE).read_text()).get("segments", []))
    except (OSError, ValueError):
        return set()


def collect_garbage(base_dir: Path, in_use: set[str], checkpoints: list[Path]) -> list[str]:
    """Delete the segments of DIR/replay/ that neither `in_use` (the run's reservoir) nor any
    of `checkpoints` refers to; returns their names."""
    directory = Path(base_dir) / REPLAY_DIR
    if not directory.is_dir():
        return []
    keep = set(in_use)
    for path in checkpoints:
        keep |= referenced_segments(path)
    removed = []
    for path in directory.iterdir():
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            path.unlink(missing_ok=True)  # a write a full disk interrupted (segments are written by this thread)
            continue
        if path.name.startswith(".") or path.name in keep or not path.name.endswith(".jsonl"):
            continue
        try:
            path.unlink()
            removed.append(path.name)
        except OSError as err:
            log.warning("Could not delete the unused replay segment %s: %s", path, err)
    return sorted(removed)


def disk_usage(base_dir: Path) -> tuple[int, int]:
    """(segments, bytes) under DIR/replay/."""
    directory = Path(base_dir) / REPLAY_DIR
    files = [p for p in directory.glob("*.jsonl")] if directory.is_dir() else []
    return len(files), sum(p.stat().st_size for p in files)
