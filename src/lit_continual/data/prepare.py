"""A claimed file made ready to train: its index, its ledger record, and the rules that judge it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lit_continual.claims import Claim
from lit_continual.data.file_index import FileIndex, Judge
from lit_continual.data.holdout import holdout_count
from lit_continual.data.records import RecordSpec
from lit_continual.ledger import FileRecord

log = logging.getLogger("lit_continual")


class DataError(RuntimeError):
    """The single file given to train.py cannot be trained; the message says why."""


@dataclass
class PreparedFile:
    """An indexed, claimed file ready to batch, starting at `record.examples_trained`."""

    claim: Claim
    index: FileIndex
    record: FileRecord
    handle: int = 0  # how batches refer to it (batch contents are deep-copied by Lightning)
    # Its training order and unit bounds, once batching started: what was trained of it (the
    # first `record.examples_trained` of `order`) is offered to the replay reservoir at its end.
    order: np.ndarray | None = None
    bounds: np.ndarray | None = None


def shuffle_seed(run_seed: int, ordinal: int) -> int:
    """The permutation seed of the run's `ordinal`-th file: deterministic, distinct per file."""
    return int(np.random.SeedSequence([run_seed, ordinal]).generate_state(1, np.uint64)[0] >> 1)


@dataclass
class FeedRules:
    """How the feed reads and judges files (from the data.* and daemon.* config)."""

    seed: int
    spec: RecordSpec
    max_line_bytes: int
    max_bad_fraction: float
    skip_duplicates: bool = False
    judge: Judge | None = None  # renders/tokenizes each line at index time; token length when packing
    holdout_fraction: float = 0.0  # eval.holdout_fraction: examples of each file held out as its probe
    holdout_max: int = 200  # eval.holdout_max


def index_file(claim: Claim, rules: FeedRules, cancelled: Callable[[], bool]) -> FileIndex:
    """The index pass over a claimed file (cancellable by a stop request)."""
    started = time.monotonic()
    log.info("Indexing %s (%.1f MB)", claim.name, claim.stat.st_size / 1e6)
    index = FileIndex.scan(claim.fd, claim.name, rules.spec, rules.max_line_bytes, rules.judge, cancelled)
    log.info("Indexed %s: %d examples in %.2f s (%.1f MB read, index %.1f MB)", claim.name, index.examples,
             time.monotonic() - started, index.size / 1e6, index.nbytes / 1e6)
    if index.bad_lines:
        shown = "; ".join(f"line {e['line']}: {e['error']}" for e in index.first_errors)
        log.warning("%s: %d bad line(s) of %d (%s)", claim.name, index.bad_lines, index.total_lines, shown)
    return index


def file_record(claim: Claim, index: FileIndex, ordinal: int, rules: FeedRules) -> FileRecord:
    st = claim.stat
    return FileRecord(name=claim.name, sha256=index.sha256, size=index.size, inode=st.st_ino,
                      ctime_ns=st.st_ctime_ns, mtime_ns=st.st_mtime_ns, ordinal=ordinal,
                      examples=index.examples, bad_lines=index.bad_lines,
                      shuffle_seed=shuffle_seed(rules.seed, ordinal), claimed_as=claim.claimed_as,
                      formats=dict(index.formats),
                      held_out=holdout_count(index.examples, rules.holdout_fraction, rules.holdout_max))


def line_report(index: FileIndex | None) -> dict:
    """The bad-line fields of a failed/<name>.error.json."""
    if index is None:
        return {"bad_lines": 0, "total_lines": 0, "first_errors": []}
    return {"bad_lines": index.bad_lines, "total_lines": index.total_lines, "first_errors": index.first_errors}


def rejection(index: FileIndex, max_bad_fraction: float) -> str | None:
    """Why an indexed file must not be trained, or None."""
    if index.total_lines == 0:
        return "empty file (no non-blank line)"
    if index.examples == 0:
        return "no trainable example"
    if index.bad_lines / index.total_lines > max_bad_fraction:
        return (f"{index.bad_lines} of {index.total_lines} lines are bad "
                f"({index.bad_lines / index.total_lines:.1%} > data.max_bad_fraction={max_bad_fraction})")
    return None
