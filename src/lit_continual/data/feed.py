"""Which file to train next: the inbox (daemon) or one given file (train.py data=inbox_file).

The feed runs ahead of training (the loader prefetches), so it never writes the ledger's
progress; it only reads it to resume the current file and to number new files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit_continual.data.file_index import FileIndex
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


def _index(path: Path, text_field: str) -> FileIndex:
    index = FileIndex.scan(path, text_field)
    if index.bad_lines:
        shown = "; ".join(f"line {e['line']}: {e['error']}" for e in index.first_errors)
        log.warning("%s: skipped %d bad line(s) of %d (%s)", path.name, index.bad_lines,
                    index.total_lines, shown)
    return index


def _record(path: Path, index: FileIndex, ordinal: int, run_seed: int) -> FileRecord:
    stat = path.lstat()
    return FileRecord(name=path.name, sha256=index.sha256, size=index.size, inode=stat.st_ino,
                      ctime_ns=stat.st_ctime_ns, ordinal=ordinal, examples=index.examples,
                      bad_lines=index.bad_lines, shuffle_seed=shuffle_seed(run_seed, ordinal))


class InboxFeed:
    """Hands out settled inbox files oldest first; the unfinished file of the run comes first."""

    def __init__(self, inbox: Inbox, ledger: callable, seed: int, text_field: str,
                 stop: StopRequest, status: Status, poll_seconds: float, drain: bool) -> None:
        self.inbox, self._ledger, self.seed, self.text_field = inbox, ledger, seed, text_field
        self.stop, self.status, self.poll_seconds, self.drain = stop, status, poll_seconds, drain
        self.finished = False  # no more files will come (drain mode and the inbox is empty)
        self._handed_out: set[tuple] = set()
        self._next_ordinal: int | None = None

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
        path = self.inbox.dir / current.name
        index = _index(path, self.text_field) if path.is_file() else None
        if index is None or index.sha256 != current.sha256:
            untrained = current.examples - current.examples_trained
            why = "is missing" if index is None else "changed (sha256 differs)"
            log.error("inbox/%s %s: abandoning it with %d example(s) untrained",
                      current.name, why, untrained)
            ledger.finish(step=current.first_step or 0, status="abandoned")
            return None
        self._handed_out.add(_identity(path))
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
                return prepared
        return None

    def _prepare(self, path: Path) -> PreparedFile | None:
        if path.is_symlink():
            self.inbox.quarantine(path, "symlink: pipelines must deliver real files")
            return None
        try:
            index = _index(path, self.text_field)
        except FileNotFoundError:
            return None
        except OSError as err:
            self.inbox.quarantine(path, f"unreadable: {err}")
            return None
        if index.examples == 0:
            self.inbox.quarantine(path, "no trainable example", bad_lines=index.bad_lines,
                                  total_lines=index.total_lines, first_errors=index.first_errors)
            return None
        record = _record(path, index, self._next_ordinal, self.seed)
        done = self._ledger().find_done(record)
        if done is not None:
            # Trained and checkpointed, but the process died before the delete: finish the delete.
            log.info("inbox/%s was already trained (steps %s-%s): deleting it",
                     path.name, done.first_step, done.last_step)
            self.inbox.delete(path)
            return None
        return PreparedFile(path, index, record, delete_when_done=True)


class SingleFileFeed:
    """One file given on the command line: train it (or finish it), never delete it."""

    def __init__(self, path: Path, ledger: callable, seed: int, text_field: str) -> None:
        self.path, self._ledger, self.seed, self.text_field = path, ledger, seed, text_field
        self.finished = False

    def next_file(self, block: bool) -> PreparedFile | None:
        if self.finished:
            return None
        self.finished = True
        index = _index(self.path, self.text_field)
        if index.examples == 0:
            raise DataError(f"{self.path}: no trainable example ({index.bad_lines} bad line(s) of "
                            f"{index.total_lines}; first: {index.first_errors[:3]})")
        ledger = self._ledger()
        current = ledger.current
        if current is not None:
            if current.name == self.path.name and current.sha256 == index.sha256:
                return PreparedFile(self.path, index, current, delete_when_done=False)
            raise DataError(
                f"the run has an unfinished file {current.name} ({current.examples_trained}/"
                f"{current.examples} examples trained): finish it first with data.path=<that file>")
        record = _record(self.path, index, ledger.files_started + 1, self.seed)
        return PreparedFile(self.path, index, record, delete_when_done=False)


def _identity(path: Path) -> tuple | None:
    try:
        stat = path.lstat()
    except FileNotFoundError:
        return None
    return (path.name, stat.st_ino, stat.st_mtime_ns, stat.st_size)
