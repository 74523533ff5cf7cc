"""One pass over an inbox file: sha256, byte offsets of the valid lines, bad-line report.

The file is never held in memory; examples are read back by offset when their batch is built.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lit_continual.data.records import BadLine, parse_line

MAX_REPORTED_ERRORS = 10


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

    @property
    def examples(self) -> int:
        return len(self.offsets)

    @classmethod
    def scan(cls, path: Path, text_field: str) -> FileIndex:
        """Read `path` once; blank lines are ignored, invalid ones counted with their line number."""
        digest = hashlib.sha256()
        offsets: list[int] = []
        total = bad = 0
        errors: list[dict] = []
        position = 0
        with open(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                digest.update(raw)
                start, position = position, position + len(raw)
                if not raw.strip():
                    continue
                total += 1
                try:
                    parse_line(raw, text_field)
                except BadLine as err:
                    bad += 1
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append({"line": number, "error": str(err)})
                    continue
                offsets.append(start)
        return cls(path, digest.hexdigest(), position, np.asarray(offsets, dtype=np.int64),
                   total, bad, errors)

    def read(self, positions: np.ndarray, text_field: str) -> list[dict]:
        """The records at example positions `positions` (indices into offsets)."""
        records = []
        with open(self.path, "rb") as handle:
            for pos in positions:
                handle.seek(int(self.offsets[pos]))
                records.append(parse_line(handle.readline(), text_field))
        return records
