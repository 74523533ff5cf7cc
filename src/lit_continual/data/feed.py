"""Which file to train next: the inbox (daemon) or one given file (train.py data=inbox_file).

The feed runs ahead of training (the loader prefetches), so it never writes the ledger's
progress; it only reads it to resume the current file and to number new files. Order: the
run's unfinished file, then files already claimed (in claim order), then the inbox (oldest
first). The next file is claimed and indexed in the background while the current one trains.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit_continual.claims import Claim, Claims, NotAFile, claimed_name, open_held
from lit_continual.crash_guard import CrashGuard
from lit_continual.data.file_index import FileIndex, IndexCancelled, Judge
from lit_continual.data.records import RecordSpec
from lit_continual.inbox import Inbox
from lit_continual.ledger import FileRecord, Ledger
from lit_continual.status import Status
from lit_continual.stop import StopRequest
from lit_continual.storage import Backoff, StorageFault, retry

log = logging.getLogger("lit_continual")


class DataError(RuntimeError):
    """The single file given to train.py cannot be trained; the message says why."""


@dataclass
class PreparedFile:
    """An indexed, claimed file ready to batch, starting at `record.examples_trained`."""

    claim: Claim
    index: FileIndex
    record: FileRecord
    delete_when_done: bool
    handle: int = 0  # how batches refer to it (batch contents are deep-copied by Lightning)


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


def file_record(claim: Claim, index: FileIndex, ordinal: int, run_seed: int) -> FileRecord:
    st = claim.stat
    return FileRecord(name=claim.name, sha256=index.sha256, size=index.size, inode=st.st_ino,
                      ctime_ns=st.st_ctime_ns, mtime_ns=st.st_mtime_ns, ordinal=ordinal,
                      examples=index.examples, bad_lines=index.bad_lines,
                      shuffle_seed=shuffle_seed(run_seed, ordinal), claimed_as=claim.claimed_as)


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


class SingleFileFeed:
    """One file given on the command line: train it (or finish it), never delete it."""

    def __init__(self, path: Path, ledger: Callable[[], Ledger], rules: FeedRules, stop: StopRequest) -> None:
        self.path, self._ledger, self.rules, self.stop = path, ledger, rules, stop
        self.finished = False
        self.live: dict[int, PreparedFile] = {}

    def next_file(self, block: bool) -> PreparedFile | None:
        if self.finished:
            return None
        self.finished = True
        fd, st = open_held(self.path)
        claim = Claim(self.path.name, self.path, fd, True, st)
        try:
            index = index_file(claim, self.rules, lambda: self.stop.requested)
        except IndexCancelled:
            return None
        reason = rejection(index, self.rules.max_bad_fraction)
        if reason is not None:
            raise DataError(f"{self.path}: {reason} (first errors: {index.first_errors[:3]})")
        ledger = self._ledger()
        current = ledger.current
        if current is not None:
            if current.name == self.path.name and current.sha256 == index.sha256:
                return self._live(PreparedFile(claim, index, current, delete_when_done=False))
            raise DataError(
                f"the run has an unfinished file {current.name} ({current.examples_trained}/"
                f"{current.examples} examples trained): finish it first with data.path=<that file>")
        record = file_record(claim, index, ledger.files_started + 1, self.rules.seed)
        record.claimed_as = None
        return self._live(PreparedFile(claim, index, record, delete_when_done=False))

    def _live(self, prepared: PreparedFile) -> PreparedFile:
        prepared.handle = 1
        self.live[1] = prepared
        return prepared

    def look_ahead(self) -> None:
        """Nothing to look ahead to."""

    def queue_size(self) -> int:
        return 0

    def finish(self, handle: int, record: FileRecord, abandoned: str | None) -> None:
        """Close the file; train.py never deletes it."""
        self.live.pop(handle).claim.close()


class InboxFeed:
    """Hands out settled inbox files in order; the unfinished file of the run comes first."""

    def __init__(self, inbox: Inbox, claims: Claims, ledger: Callable[[], Ledger], rules: FeedRules,
                 stop: StopRequest, status: Status, guard: CrashGuard, step: Callable[[], int],
                 backoff: Backoff, drain: bool) -> None:
        self.inbox, self.claims, self._ledger, self.rules = inbox, claims, ledger, rules
        self.stop, self.status, self.guard, self._step = stop, status, guard, step
        self.backoff, self.drain = backoff, drain
        self._drained = False  # drain mode found the inbox empty
        self.live: dict[int, PreparedFile] = {}
        self._handles = itertools.count(1)
        self._next_ordinal: int | None = None
        self._pending: list[Claim] = []  # claimed, not handed out, in claim order
        self._looked = -1e18
        # The next file is claimed and indexed in the background while the current one trains,
        # so a big file does not stall the run at the switch. One at a time: bounded memory.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-ahead")
        self._ahead: tuple[Claim, Future] | None = None

    # -- handing out ----------------------------------------------------------------------

    def next_file(self, block: bool) -> PreparedFile | None:
        """The next file to train; None if there is none now (block=False) or a stop came."""
        if self._next_ordinal is None:
            self._next_ordinal = self._ledger().files_started + 1
            self._pending = self._recover_claimed()
            resumed = self._resume_current()
            if resumed is not None:
                return resumed
        while not self.stop.requested:
            prepared = self._next_prepared()
            if prepared is not None:
                return prepared
            if self._ahead is not None or self._pending:
                continue  # the next claimed file was rejected: try the one after it
            if self.drain and not self.inbox.has_waiting():
                self._drained = True
            if self._drained or not block:
                return None
            self.status.update(status="idle", current_file=None)
            time.sleep(self.inbox.poll_seconds)
        return None

    def _next_prepared(self) -> PreparedFile | None:
        ahead, self._ahead = self._ahead, None
        claim = ahead[0] if ahead else (self._pending.pop(0) if self._pending else self._claim_next())
        if claim is None:
            return None
        try:
            index = ahead[1].result() if ahead else index_file(claim, self.rules, lambda: self.stop.requested)
        except IndexCancelled:
            self._pending.insert(0, claim)  # a stop came: it stays claimed for the next run
            return None
        except OSError as err:
            self._reject(claim, f"unreadable: {err}")
            return None
        prepared = self._judge(claim, index)
        if prepared is not None:
            self.look_ahead(force=True)
        return prepared

    def look_ahead(self, force: bool = False) -> None:
        """Claim and index the next file in the background, if none is being prepared.

        Called at every optimizer step's first micro-batch: a file that lands while another
        trains is indexed before the switch. At most once per poll interval.
        """
        now = time.monotonic()
        if self._ahead is not None or (not force and now - self._looked < self.inbox.poll_seconds):
            return
        self._looked = now
        claim = self._pending.pop(0) if self._pending else self._claim_next()
        if claim is not None:
            future = self._pool.submit(index_file, claim, self.rules, lambda: self.stop.requested)
            self._ahead = (claim, future)

    @property
    def finished(self) -> bool:
        """No more files will come: drain mode found the inbox empty, and nothing is claimed.

        Asked at an epoch end, after the last batch's callbacks: a file disposed of there may
        have put new content back in the queue (a claimed file rewritten in place)."""
        return self._drained and not self._pending and self._ahead is None

    def queue_size(self) -> int:
        """Files waiting: in the inbox and claimed but not started (from caches, no scan)."""
        return self.inbox.count() + len(self._pending) + (self._ahead is not None)

    # -- claiming and judging -------------------------------------------------------------

    def _claim_next(self) -> Claim | None:
        while (name := self.inbox.next_ready()) is not None:
            self.inbox.forget(name)
            try:
                claim = self.claims.claim(name)
            except FileNotFoundError:
                log.warning("inbox/%s disappeared before it could be claimed", name)
                continue
            except NotAFile as err:
                self._reject_path(Path(err.filename), name, err.strerror)
                continue
            except OSError as err:
                self._reject_path(self.inbox.dir / name, name, f"unreadable: {err}")
                continue
            if claim.in_place:
                self.inbox.ignored.add((name, claim.stat.st_ino))  # held here: not a new delivery
            return claim
        return None

    def _judge(self, claim: Claim, index: FileIndex) -> PreparedFile | None:
        reason = rejection(index, self.rules.max_bad_fraction)
        if reason is not None:
            self._reject(claim, reason, index)
            return None
        if self._poisoned(claim, index):
            return None
        record = file_record(claim, index, self._next_ordinal, self.rules.seed)
        ledger = self._ledger()
        done = ledger.find_done_in_place(record)
        if done is not None:
            # Trained and checkpointed by a process that died before the delete: finish the delete.
            log.info("inbox/%s was already trained (steps %s-%s): deleting it", claim.name, done.first_step,
                     done.last_step)
            self._delete(claim, done)
            return None
        twin = ledger.find_content(index.sha256)
        if twin is not None and self.rules.skip_duplicates:
            self._reject(claim, f"duplicate of {twin.name} (file #{twin.ordinal}, steps {twin.first_step}-"
                                f"{twin.last_step}) and daemon.skip_duplicates=true", index)
            return None
        if twin is not None:
            log.info("inbox/%s has the same content as %s (file #%d): training it again as a new file",
                     claim.name, twin.name, twin.ordinal)
        self._next_ordinal += 1
        return self._live(PreparedFile(claim, index, record, delete_when_done=True))

    def _live(self, prepared: PreparedFile) -> PreparedFile:
        prepared.handle = next(self._handles)
        self.live[prepared.handle] = prepared
        return prepared

    def _poisoned(self, claim: Claim, index: FileIndex) -> bool:
        crash = self.guard.poisoned(claim.name, index.sha256)
        if crash is None:
            return False
        self._reject(claim, f"the process died {crash['count']} times in a row while training step "
                            f"{crash['step']} of this file", index, crash=crash)
        self.guard.clear_history()
        return True

    # -- after a restart ------------------------------------------------------------------

    def _recover_claimed(self) -> list[Claim]:
        """Entries of `.claimed/` left by an earlier process: finish deletes, keep the rest."""
        ledger, pending = self._ledger(), []
        for claimed_as in self.claims.pending():
            try:
                claim = self.claims.reopen(claimed_as)
            except FileNotFoundError:
                continue
            except NotAFile as err:
                self._reject_path(Path(err.filename), claimed_name(claimed_as), err.strerror)
                continue
            done = ledger.find_claimed(claimed_as)
            if done is not None:
                log.info("inbox/%s was already trained (steps %s-%s): deleting it", claim.name,
                         done.first_step, done.last_step)
                self._delete(claim, done)
            else:
                pending.append(claim)
        return pending

    def _resume_current(self) -> PreparedFile | None:
        ledger = self._ledger()
        current = ledger.current
        if current is None:
            return None
        claim = self._current_claim(current)
        index = None
        if claim is not None:
            try:
                index = index_file(claim, self.rules, lambda: self.stop.requested)
            except IndexCancelled:
                self._pending.insert(0, claim)
                return None
        if index is None or index.sha256 != current.sha256:
            why = "is missing" if index is None else "changed (sha256 differs)"
            log.error("inbox/%s %s: abandoning it with %d example(s) untrained", current.name, why,
                      current.examples - current.examples_trained)
            ledger.finish(step=self._step(), status="abandoned")
            if claim is not None:
                self._requeue(self.claims.reclaim(claim))  # the new content is a new delivery
            return None
        if self._poisoned(claim, index):
            ledger.finish(step=self._step(), status="failed")
            return None
        current.claimed_as = claim.claimed_as  # a file from a 0.1 base dir is claimed now
        return self._live(PreparedFile(claim, index, current, delete_when_done=True))

    def _current_claim(self, current: FileRecord) -> Claim | None:
        """The unfinished file: its `.claimed/` entry, or (a base dir from 0.1, or an inbox that
        refuses renames) the first claim of that name, else `inbox/<name>`, claimed now."""
        for claim in self._pending:
            if (claim.claimed_as == current.claimed_as if current.claimed_as is not None
                    else claim.name == current.name):
                self._pending.remove(claim)
                return claim
        if current.claimed_as is not None or current.name != Path(current.name).name or current.name.startswith("."):
            return None  # gone; and a name from a ledger never leaves the inbox
        try:
            claim = self.claims.claim(current.name)
        except (FileNotFoundError, NotAFile):
            return None
        if claim.in_place:
            self.inbox.ignored.add((claim.name, claim.stat.st_ino))
        return claim

    def _requeue(self, claim: Claim | None) -> None:
        if claim is not None:
            self._pending.append(claim)

    # -- disposal -------------------------------------------------------------------------

    def finish(self, handle: int, record: FileRecord, abandoned: str | None) -> None:
        """The file's end-of-file checkpoint is durable: delete it, or set it aside."""
        prepared = self.live.pop(handle)
        claim = prepared.claim
        if abandoned == "changed":
            self._requeue(self.claims.reclaim(claim))
        elif abandoned is not None:
            self._reject(claim, f"could not be read while training: {abandoned}", prepared.index)
        elif claim.modified():
            self._reject(claim, "modified while being trained: it grew or was rewritten after it was claimed "
                                "(the claimed content was trained)", prepared.index)
        else:
            self._delete(claim, record)

    def _delete(self, claim: Claim, record: FileRecord) -> None:
        problem = self.claims.delete(claim)
        if problem is None:
            self.inbox.ignored.discard((claim.name, claim.stat.st_ino))
            return
        where = claim.claimed_as or claim.name
        message = (f"inbox/{where} was trained (steps {record.first_step}-{record.last_step}) but cannot be "
                   f"deleted ({problem}): it is ignored while it stays there")
        log.error("%s", message)
        self.status.warn(message)
        self.inbox.ignored.add((claim.name, claim.stat.st_ino))

    def _reject(self, claim: Claim, reason: str, index: FileIndex | None = None, **details: object) -> None:
        claim.close()
        sha256 = index.sha256 if index else None
        kept = self._ledger().find_kept(claim.name, claim.stat.st_ino, sha256)
        if kept is not None:  # copied to failed/ by an earlier process; still here, undeletable
            self._left_in_inbox(claim.name, claim.stat.st_ino, f"already in failed/ ({kept['reason']})")
            return
        self._reject_path(claim.path, claim.name, reason, index, **details)

    def _reject_path(self, path: Path, name: str, reason: str, index: FileIndex | None = None,
                     **details: object) -> None:
        sha256 = index.sha256 if index else None
        kept = self._quarantine(path, name, reason, index, **details)
        if kept is None:
            self._ledger().reject(name, sha256, reason)
            return
        inode = _inode(path)
        self._ledger().reject(name, sha256, reason, kept_inode=inode)
        self._left_in_inbox(name, inode, f"copied to failed/ but cannot be removed ({kept})")

    def _left_in_inbox(self, name: str, inode: int | None, why: str) -> None:
        message = f"inbox/{name} was {why}: it is ignored while it stays there"
        log.error("%s", message)
        self.status.warn(message)
        if inode is not None:
            self.inbox.ignored.add((name, inode))

    def _quarantine(self, path: Path, name: str, reason: str, index: FileIndex | None = None,
                    **details: object) -> str | None:
        """Move to failed/ (storage faults retried); why the original stayed, or None."""
        def attempt() -> str | None:
            try:
                return self.claims.quarantine(path, name, reason, **line_report(index), **details)
            except FileNotFoundError:
                return None  # gone already: nothing to keep
            except Exception as err:
                raise StorageFault(f"failed/{name}.error.json") from err

        done, kept = retry(attempt, f"the failed/ report of {name}", self.backoff, self.stop, self.status)
        return kept if done else None


def _inode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except OSError:
        return None
