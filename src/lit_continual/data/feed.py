"""Which file to train next: the inbox (daemon) or one given file (train.py data=inbox_file).

The feed runs ahead of training (the loader prefetches), so it never writes the ledger's
progress; it only reads it to resume the current file and to number new files.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit_continual.crash_guard import CrashGuard
from lit_continual.data.file_index import FileIndex, IndexCancelled
from lit_continual.data.records import RecordSpec
from lit_continual.inbox import Inbox
from lit_continual.ledger import FileRecord
from lit_continual.status import Status
from lit_continual.stop import StopRequest

log = logging.getLogger("lit_continual")


class DataError(RuntimeError):
    """The single file given to train.py cannot be trained; the message says why."""


@dataclass
class PreparedFile:
    """An indexed file ready to batch, starting at `record.examples_trained`."""

    path: Path
    index: FileIndex
    record: FileRecord
    delete_when_done: bool


def shuffle_seed(run_seed: int, ordinal: int) -> int:
    """The permutation seed of the run's `ordinal`-th file: deterministic, distinct per file."""
    return int(np.random.SeedSequence([run_seed, ordinal]).generate_state(1, np.uint64)[0] >> 1)


def _index(path: Path, rules: FeedRules, cancelled: Callable[[], bool] = lambda: False) -> FileIndex:
    started = time.monotonic()
    index = FileIndex.scan(path, rules.spec, rules.max_line_bytes, rules.measure, cancelled)
    index_bytes = index.offsets.nbytes + (index.lengths.nbytes if index.lengths is not None else 0)
    log.info("Indexed %s: %d examples in %.2f s (%.1f MB read, index %.1f MB)", path.name, index.examples,
             time.monotonic() - started, index.size / 1e6, index_bytes / 1e6)
    if index.bad_lines:
        shown = "; ".join(f"line {e['line']}: {e['error']}" for e in index.first_errors)
        log.warning("%s: %d bad line(s) of %d (%s)", path.name, index.bad_lines, index.total_lines, shown)
    return index


def _record(path: Path, index: FileIndex, ordinal: int, run_seed: int) -> FileRecord:
    stat = path.lstat()
    return FileRecord(name=path.name, sha256=index.sha256, size=index.size, inode=stat.st_ino,
                      ctime_ns=stat.st_ctime_ns, mtime_ns=stat.st_mtime_ns, ordinal=ordinal,
                      examples=index.examples, bad_lines=index.bad_lines,
                      shuffle_seed=shuffle_seed(run_seed, ordinal))


def _line_report(index: FileIndex | None) -> dict:
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


@dataclass
class FeedRules:
    """How the feed reads and judges files (from the data.* and daemon.* config)."""

    seed: int
    spec: RecordSpec
    max_line_bytes: int
    max_bad_fraction: float
    skip_duplicates: bool = False
    measure: Callable[[list[dict]], list[int]] | None = None  # token lengths, when packing


class InboxFeed:
    """Hands out settled inbox files oldest first; the unfinished file of the run comes first."""

    def __init__(self, inbox: Inbox, ledger: callable, rules: FeedRules, stop: StopRequest,
                 status: Status, guard: CrashGuard, poll_seconds: float, drain: bool) -> None:
        self.inbox, self._ledger, self.rules = inbox, ledger, rules
        self.stop, self.status, self.guard = stop, status, guard
        self.poll_seconds, self.drain = poll_seconds, drain
        self.finished = False  # no more files will come (drain mode and the inbox is empty)
        self._handed_out: set[tuple] = set()
        self._next_ordinal: int | None = None
        # The next waiting file is indexed in the background while the current one trains,
        # so a big file does not stall the run at the switch.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-ahead")
        self._ahead: tuple[tuple, Future] | None = None

    def next_file(self, block: bool) -> PreparedFile | None:
        """The next file to train; None if there is none now (block=False) or a stop came."""
        if self._next_ordinal is None:
            self._next_ordinal = self._ledger().files_started + 1
            resumed = self._resume_current()
            if resumed is not None:
                return resumed
        while not self.stop.requested:
            prepared = self._next_ready()
            if prepared is not None:
                return prepared
            if self.drain and not self._untaken():
                self.finished = True
            if self.finished or not block:
                return None
            self.status.update(status="idle", current_file=None)
            time.sleep(self.poll_seconds)
        return None

    def _untaken(self) -> list[Path]:
        return [p for p in self.inbox.waiting() if _identity(p) not in self._handed_out]

    def _resume_current(self) -> PreparedFile | None:
        ledger = self._ledger()
        current = ledger.current
        if current is None:
            return None
        safe = current.name == Path(current.name).name and not current.name.startswith(".")
        path = self.inbox.dir / current.name
        index = (_index(path, self.rules)
                 if safe and path.is_file() and not path.is_symlink() else None)
        if index is None or index.sha256 != current.sha256:
            untrained = current.examples - current.examples_trained
            why = "is missing" if index is None else "changed (sha256 differs)"
            log.error("inbox/%s %s: abandoning it with %d example(s) untrained",
                      current.name, why, untrained)
            ledger.finish(step=current.first_step or 0, status="abandoned")
            return None
        if self._poisoned(path, index, current.name):
            ledger.finish(step=current.first_step or 0, status="failed")
            return None
        self._handed_out.add(_identity(path))
        self._index_ahead()
        return PreparedFile(path, index, current, delete_when_done=True)

    def _next_ready(self) -> PreparedFile | None:
        for path in self.inbox.ready():
            key = _identity(path)
            if key is None or key in self._handed_out:
                continue
            prepared = self._prepare(path)
            if prepared is not None:
                self._handed_out.add(key)
                self._next_ordinal += 1
                self._index_ahead()
                return prepared
        return None

    def _index_ahead(self) -> None:
        """Start indexing the oldest settled file not handed out yet (one at a time)."""
        if self._ahead is not None and not self._ahead[1].done():
            return
        for path in self.inbox.ready():
            key = _identity(path)
            if key is not None and key not in self._handed_out and path.is_file() and not path.is_symlink():
                cancelled = lambda: self.stop.requested  # noqa: E731
                self._ahead = (key, self._pool.submit(_index, path, self.rules, cancelled))
                return

    def _indexed(self, path: Path) -> FileIndex:
        """The index of `path`: from the background pass if it indexed this very file."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == _identity(path):
            return ahead[1].result()
        if ahead is not None:
            self._ahead = ahead  # indexed another file: keep it for later
        return _index(path, self.rules)

    def _reject(self, path: Path, reason: str, index: FileIndex | None = None, **details: object) -> None:
        self.inbox.quarantine(path, reason, **_line_report(index), **details)
        self._ledger().reject(path.name, index.sha256 if index else None, reason)

    def _poisoned(self, path: Path, index: FileIndex, name: str) -> bool:
        crash = self.guard.poisoned(name, index.sha256)
        if crash is None:
            return False
        self._reject(path, f"the process died {crash['count']} times in a row while training step "
                           f"{crash['step']} of this file", index, crash=crash)
        self.guard.clear_history()
        return True

    def _prepare(self, path: Path) -> PreparedFile | None:
        try:
            return self._judge(path)
        except FileNotFoundError:
            log.warning("inbox/%s disappeared before it could be claimed", path.name)
            return None
        except IndexCancelled:
            return None  # a stop came: the file stays in the inbox for the next run

    def _judge(self, path: Path) -> PreparedFile | None:
        if path.is_symlink():
            self._reject(path, "symlink: pipelines must deliver real files (the link was not followed)")
            return None
        if not path.is_file():
            self._reject(path, "not a regular file (a directory or a special file)")
            return None
        try:
            index = self._indexed(path)
        except (FileNotFoundError, IndexCancelled):
            raise
        except OSError as err:
            self._reject(path, f"unreadable: {err}")
            return None
        reason = rejection(index, self.rules.max_bad_fraction)
        if reason is not None:
            self._reject(path, reason, index)
            return None
        if self._poisoned(path, index, path.name):
            return None
        record = _record(path, index, self._next_ordinal, self.rules.seed)
        ledger = self._ledger()
        done = ledger.find_done(record)
        if done is not None:
            # Trained and checkpointed, but the process died before the delete: finish the delete.
            log.info("inbox/%s was already trained (steps %s-%s): deleting it",
                     path.name, done.first_step, done.last_step)
            self.inbox.delete(path)
            return None
        twin = ledger.find_content(index.sha256)
        if twin is not None and self.rules.skip_duplicates:
            self._reject(path, f"duplicate of {twin.name} (file #{twin.ordinal}, steps {twin.first_step}-"
                               f"{twin.last_step}) and daemon.skip_duplicates=true", index)
            return None
        if twin is not None:
            log.info("inbox/%s has the same content as %s (file #%d): training it again as a new file",
                     path.name, twin.name, twin.ordinal)
        return PreparedFile(path, index, record, delete_when_done=True)


class SingleFileFeed:
    """One file given on the command line: train it (or finish it), never delete it."""

    def __init__(self, path: Path, ledger: callable, rules: FeedRules) -> None:
        self.path, self._ledger, self.rules = path, ledger, rules
        self.finished = False

    def next_file(self, block: bool) -> PreparedFile | None:
        if self.finished:
            return None
        self.finished = True
        index = _index(self.path, self.rules)
        reason = rejection(index, self.rules.max_bad_fraction)
        if reason is not None:
            raise DataError(f"{self.path}: {reason} (first errors: {index.first_errors[:3]})")
        ledger = self._ledger()
        current = ledger.current
        if current is not None:
            if current.name == self.path.name and current.sha256 == index.sha256:
                return PreparedFile(self.path, index, current, delete_when_done=False)
            raise DataError(
                f"the run has an unfinished file {current.name} ({current.examples_trained}/"
                f"{current.examples} examples trained): finish it first with data.path=<that file>")
        record = _record(self.path, index, ledger.files_started + 1, self.rules.seed)
        return PreparedFile(self.path, index, record, delete_when_done=False)


def _identity(path: Path) -> tuple | None:
    try:
        stat = path.lstat()
    except FileNotFoundError:
        return None
    return (path.name, stat.st_ino, stat.st_mtime_ns, stat.st_size)
