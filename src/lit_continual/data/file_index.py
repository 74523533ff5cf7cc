"""One pass over a claimed file: sha256, byte offset and checksum of each valid line, bad lines.

The file is never held in memory and never reopened by name: the pass and every later read
go through the descriptor held since the claim, and each example's CRC-32 is checked when it
is read back, so a file rewritten in place after its claim is noticed instead of trained.
The index costs 12 bytes per example (int64 offset + uint32 CRC), 16 with packing (+ int32
token length).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lit_continual.data.records import BadLine, RecordSpec, parse_line, parse_line_kind

log = logging.getLogger("lit_continual")

MAX_REPORTED_ERRORS = 10
CANCEL_CHECK_LINES = 4096
READ_CHUNK = 1 << 16


class IndexCancelled(RuntimeError):
    """A stop request interrupted an index pass."""


class FileChanged(OSError):
    """A claimed file's bytes no longer match its index (rewritten or truncated in place)."""


Judge = Callable[[dict], "int | None"]  # raises if the record cannot be tokenized; token length or None


@dataclass
class FileIndex:
    """Where each valid example of a file starts, and what was wrong with the other lines."""

    fd: int  # the claim's descriptor (not owned)
    name: str
    sha256: str
    size: int
    offsets: np.ndarray  # int64 byte offset of each valid line
    crcs: np.ndarray  # uint32 CRC-32 of each valid line's bytes
    total_lines: int  # non-blank lines
    bad_lines: int
    first_errors: list[dict] = field(default_factory=list)
    lengths: np.ndarray | None = None  # int32 token length per example (packing only)
    formats: dict[str, int] = field(default_factory=dict)  # valid examples per detected format

    @property
    def examples(self) -> int:
        return len(self.offsets)

    @property
    def nbytes(self) -> int:
        return self.offsets.nbytes + self.crcs.nbytes + (self.lengths.nbytes if self.lengths is not None else 0)

    @classmethod
    def scan(cls, fd: int, name: str, spec: RecordSpec, max_line_bytes: int = 64 << 20,
             judge: Judge | None = None, cancelled: Callable[[], bool] = lambda: False,
             limit: int | None = None) -> FileIndex:
        """Read the file behind `fd` once; blank lines are ignored, bad ones counted by number.

        Anything that goes wrong with one line (parsing, validation, the `judge` that renders or
        tokenizes it) makes it a bad line with the reason; only reading the file itself can fail
        the pass. A line longer than `max_line_bytes` is skipped without being held in memory.
        `judge` returns the token length (packing) or None. `cancelled` is polled every few
        thousand lines, so a stop never waits for a 2 GB pass. `limit`: read only the first
        `limit` bytes (a resumed file that its writer appended to after the claim).
        """
        digest = hashlib.sha256()
        offsets, crcs, lengths = array("q"), array("I"), array("i")
        total = bad = number = position = 0
        errors: list[dict] = []
        formats: dict[str, int] = {}
        with os.fdopen(os.dup(fd), "rb") as handle:
            handle.seek(0)
            if limit is not None:
                handle = io.BufferedReader(_Limited(handle, limit))
            while raw := handle.readline(max_line_bytes + 1):
                number += 1
                if number % CANCEL_CHECK_LINES == 0 and cancelled():
                    log.info("Index pass of %s stopped by a stop request at line %d", name, number)
                    raise IndexCancelled(f"indexing {name} stopped at line {number}")
                digest.update(raw)
                start, position = position, position + len(raw)
                if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                    position += _skip_rest_of_line(handle, digest)
                    problem, length = f"line longer than data.max_line_bytes={max_line_bytes}", None
                elif not raw.strip():
                    continue
                else:
                    problem, length, kind = _judge_line(raw, spec, judge)
                total += 1
                if problem is None:
                    formats[kind] = formats.get(kind, 0) + 1
                    offsets.append(start)
                    crcs.append(zlib.crc32(raw))
                    if judge is not None and length is not None:
                        lengths.append(length)
                    continue
                bad += 1
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append({"line": number, "error": problem})
        measured = np.frombuffer(lengths, dtype=np.int32) if len(lengths) == len(offsets) and len(lengths) else None
        return cls(fd, name, digest.hexdigest(), position, np.frombuffer(offsets, dtype=np.int64),
                   np.frombuffer(crcs, dtype=np.uint32), total, bad, errors, measured, formats)

    def read(self, positions: np.ndarray, spec: RecordSpec) -> list[dict | BadLine]:
        """The records at example positions `positions`; a record that no longer parses is
        returned as its BadLine. Raises FileChanged if the bytes are not those indexed."""
        records: list[dict | BadLine] = []
        for pos in positions:
            raw = read_line(self.fd, int(self.offsets[pos]))
            if zlib.crc32(raw) != int(self.crcs[pos]):
                raise FileChanged(f"{self.name}: the example at byte {int(self.offsets[pos])} is not what was "
                                  "indexed (the claimed file was rewritten or truncated in place)")
            try:
                records.append(parse_line(raw, spec))
            except BadLine as err:
                records.append(err)
        return records

    def raw_lines(self, positions: np.ndarray) -> list[bytes]:
        """The exact bytes of the lines at example positions `positions`, each ending in a
        newline (probe and replay files keep the user's records as they were delivered).
        Raises FileChanged if the bytes are not those indexed."""
        lines = []
        for pos in positions:
            raw = read_line(self.fd, int(self.offsets[pos]))
            if zlib.crc32(raw) != int(self.crcs[pos]):
                raise FileChanged(f"{self.name}: the example at byte {int(self.offsets[pos])} is not what was "
                                  "indexed (the claimed file was rewritten or truncated in place)")
            lines.append(raw if raw.endswith(b"\n") else raw + b"\n")
        return lines

    def line_number(self, position: int) -> int:
        """1-based line number of example `position` (counts newlines: for error messages only)."""
        offset, count, done = int(self.offsets[position]), 1, 0
        while done < offset:
            chunk = os.pread(self.fd, min(READ_CHUNK, offset - done), done)
            if not chunk:
                break
            count += chunk.count(b"\n")
            done += len(chunk)
        return count


def _judge_line(raw: bytes, spec: RecordSpec, judge: Judge | None) -> tuple[str | None, int | None, str | None]:
    """(problem or None, token length or None, format or None) of one line."""
    try:
        record, kind = parse_line_kind(raw, spec)
        return None, judge(record) if judge is not None else None, kind
    except BadLine as err:
        return str(err), None, None
    except RecursionError:
        return "cannot be rendered: nested too deeply", None, None
    except Exception as err:  # a chat template's raise_exception, a tokenizer error, ...
        return f"cannot be tokenized: {type(err).__name__}: {err}", None, None


def read_line(fd: int, offset: int) -> bytes:
    """The line starting at `offset` (with its newline), read through the descriptor."""
    parts = []
    while True:
        chunk = os.pread(fd, READ_CHUNK, offset)
        if not chunk:
            break
        end = chunk.find(b"\n")
        if end >= 0:
            parts.append(chunk[: end + 1])
            break
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def _skip_rest_of_line(handle, digest) -> int:
    """Consume (and hash) the remainder of an overlong line; return how many bytes."""
    skipped = 0
    while chunk := handle.readline(1 << 20):
        digest.update(chunk)
        skipped += len(chunk)
        if chunk.endswith(b"\n"):
            break
    return skipped


class _Limited(io.RawIOBase):
    """The first `limit` bytes of a binary file object."""

    def __init__(self, raw, limit: int) -> None:
        self.raw, self.left = raw, limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(min(len(buffer), self.left))
        self.left -= len(data)
        buffer[: len(data)] = data
        return len(data)
