"""One pass over an inbox file: sha256, byte offsets of the valid lines, bad-line report.

The file is never held in memory; examples are read back by offset when their batch is built.
The index costs 8 bytes per example (int64 offset), 12 with packing (+ int32 token length).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lit_continual.data.records import BadLine, RecordSpec, parse_line

MAX_REPORTED_ERRORS = 10
CANCEL_CHECK_LINES = 4096


class IndexCancelled(RuntimeError):
    """A stop request interrupted an index pass."""

MEASURE_CHUNK = 256


@dataclass
class FileIndex:
    """Where each valid example of a file starts, and what was wrong with the other lines."""

    path: Path
    sha256: str
    size: int
    offsets: np.ndarray  # int64 byte offset of each valid line
    total_lines: int  # non-blank lines
    bad_lines: int
    first_errors: list[dict] = field(default_factory=list)
    lengths: np.ndarray | None = None  # int32 token length per example (packing only)

    @property
    def examples(self) -> int:
        return len(self.offsets)

    @classmethod
    def scan(cls, path: Path, spec: RecordSpec, max_line_bytes: int = 64 << 20,
             measure: Callable[[list[dict]], list[int]] | None = None,
             cancelled: Callable[[], bool] = lambda: False) -> FileIndex:
        """Read `path` once; blank lines are ignored, invalid ones counted with their line number.

        A line longer than `max_line_bytes` is a bad line and is skipped without being held in
        memory, so one enormous line cannot exhaust the machine. `measure` (packing) returns the
        token length of each record; it is called on chunks of valid records. `cancelled` is
        polled every few thousand lines (a stop request must not wait for a 2 GB pass).
        """
        digest = hashlib.sha256()
        offsets, lengths = array("q"), array("i")
        records: list[dict] = []
        total = bad = number = position = 0
        errors: list[dict] = []
        with open(path, "rb") as handle:
            while raw := handle.readline(max_line_bytes + 1):
                number += 1
                if number % CANCEL_CHECK_LINES == 0 and cancelled():
                    raise IndexCancelled(f"indexing {path.name} stopped at line {number}")
                digest.update(raw)
                start, position = position, position + len(raw)
                if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                    position += _skip_rest_of_line(handle, digest)
                    problem = f"line longer than data.max_line_bytes={max_line_bytes}"
                elif not raw.strip():
                    continue
                else:
                    try:
                        records.append(parse_line(raw, spec))
                        problem = None
                    except BadLine as err:
                        problem = str(err)
                total += 1
                if problem is None:
                    offsets.append(start)
                    if measure is None:
                        records.clear()
                    elif len(records) >= MEASURE_CHUNK:
                        lengths.extend(measure(records))
                        records.clear()
                    continue
                bad += 1
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append({"line": number, "error": problem})
        if measure is not None and records:
            lengths.extend(measure(records))
        return cls(path, digest.hexdigest(), position, np.frombuffer(offsets, dtype=np.int64), total, bad,
                   errors, np.frombuffer(lengths, dtype=np.int32) if measure is not None else None)

    def read(self, positions: np.ndarray, spec: RecordSpec) -> list[dict]:
        """The records at example positions `positions` (indices into offsets)."""
        records = []
        with open(self.path, "rb") as handle:
            for pos in positions:
                handle.seek(int(self.offsets[pos]))
                records.append(parse_line(handle.readline(), spec))
        return records


def _skip_rest_of_line(handle, digest) -> int:
    """Consume (and hash) the remainder of an overlong line; return how many bytes."""
    skipped = 0
    while chunk := handle.readline(1 << 20):
        digest.update(chunk)
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped
