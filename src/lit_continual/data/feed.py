"""Which inbox file to train next, and what becomes of each one afterwards.

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
from pathlib import Path

from lit_continual.claims import Claim, Claims, NotAFile, claimed_name
from lit_continual.context import RunContext
from lit_continual.data.file_index import FileIndex, IndexCancelled
from lit_continual.data.prepare import FeedRules, PreparedFile, file_record, index_file, line_report, rejection
from lit_continual.disposal import CHANGED, DELETE, FAILED, MODIFIED, Disposal
from lit_continual.inbox import Inbox
from lit_continual.ledger import FileRecord, Ledger
from lit_continual.storage import Backoff

log = logging.getLogger("lit_continual")


class InboxFeed:
    """Hands out settled inbox files in order; the unfinished file of the run comes first."""

    def __init__(self, inbox: Inbox, claims: Claims, ledger: Callable[[], Ledger], rules: FeedRules,
                 ctx: RunContext, step: Callable[[], int], backoff: Backoff, drain: bool) -> None:
        self.inbox, self.claims, self._ledger, self.rules = inbox, claims, ledger, rules
        self.stop, self.status, self.guard, self._step = ctx.stop, ctx.status, ctx.guard, step
        self.ops = ctx.ops  # pause and requests are served while idle
        self.backoff, self.drain = backoff, drain
        self.disposal = Disposal(inbox, claims, ledger, ctx.status, ctx.stop, backoff)
        self._drained = False  # drain mode found the inbox empty
        self._closing = False
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
            self._drained = self.drain and not self.inbox.has_waiting()
            if self._drained or not block:
                return None
            self.status.update(status="idle", current_file=None)
            if self.ops is not None:
                self.ops.idle()
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
            future = self._pool.submit(index_file, claim, self.rules, self._cancelled)
            self._ahead = (claim, future)

    def _cancelled(self) -> bool:
        return self._closing or self.stop.requested

    @property
    def finished(self) -> bool:
        """No more files will come: drain mode found the inbox empty, and nothing is claimed.

        Asked at an epoch end, after the last batch's callbacks: a file disposed of there may
        have put new content back in the queue (a claimed file rewritten in place)."""
        return self._drained and not self._pending and self._ahead is None and not self.inbox.has_waiting()

    def queue_size(self) -> int:
        """Files waiting: in the inbox and claimed but not started (from caches, no scan)."""
        return self.inbox.count() + len(self._pending) + (self._ahead is not None)

    # -- claiming and judging -------------------------------------------------------------

    def _claim_next(self) -> Claim | None:
        while (name := self.inbox.next_ready()) is not None:
            self.inbox.forget(name)
            if self._legacy_done(name):
                continue
            try:
                claim = self.claims.claim(name)
            except FileNotFoundError:
                log.warning("inbox/%s disappeared before it could be claimed", name)
                continue
            except OSError as err:  # NotAFile, or unreadable: err.filename is where it sits now
                reason = err.strerror if isinstance(err, NotAFile) else f"unreadable: {err}"
                self.disposal.reject_path(Path(err.filename or self.inbox.dir / name), name, reason)
                continue
            if claim.in_place:
                self.inbox.ignored.add((name, claim.stat.st_ino))  # held here: not a new delivery
            return claim
        return None

    def _legacy_done(self, name: str) -> bool:
        """A file a version-0.1 process trained and died before deleting (its own rule)."""
        try:
            st = os.lstat(self.inbox.dir / name)
        except OSError:
            return False
        done = self._ledger().find_legacy_done(name, st.st_ino, st.st_ctime_ns)
        if done is None:
            return False
        log.info("inbox/%s was already trained (steps %s-%s): deleting it", name, done.first_step, done.last_step)
        self.disposal.delete(self.inbox.dir / name, name, st.st_ino, done)
        return True

    def _judge(self, claim: Claim, index: FileIndex) -> PreparedFile | None:
        reason = rejection(index, self.rules.max_bad_fraction)
        if reason is not None:
            self._reject(claim, reason, index)
            return None
        if self._poisoned(claim, index):
            return None
        record = file_record(claim, index, self._next_ordinal, self.rules)
        ledger = self._ledger()
        done = ledger.find_done_in_place(record) if claim.in_place else None
        if done is not None:
            # Trained (or skipped) in place and checkpointed; its delete or move was interrupted or refused.
            log.info("inbox/%s was already %s (steps %s-%s): %s", claim.name,
                     "skipped" if done.status == "skipped" else "trained", done.first_step, done.last_step,
                     "moving it to skipped/" if done.status == "skipped" else "deleting it")
            claim.close()
            self.disposal.apply(claim.path, claim.name, claim.stat.st_ino, done)
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
        return self._live(PreparedFile(claim, index, record))

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

    def _reject(self, claim: Claim, reason: str, index: FileIndex | None = None, **details: object) -> None:
        self.disposal.reject(claim, reason, index.sha256 if index else None, {**line_report(index), **details})

    # -- after a restart ------------------------------------------------------------------

    def _recover_claimed(self) -> list[Claim]:
        """Entries of `.claimed/` left by an earlier process: replay what the ledger decided for
        a finished one (delete, failed/, back to the inbox); keep the others, in claim order."""
        ledger, pending = self._ledger(), []
        for claimed_as in self.claims.pending():
            path, name = self.inbox.dir / claimed_as, claimed_name(claimed_as)
            finished = ledger.find_claimed(claimed_as)
            if finished is not None:
                if (finished.disposal or DELETE) == DELETE:
                    log.info("inbox/%s was already trained (steps %s-%s): deleting it", name,
                             finished.first_step, finished.last_step)
                self.disposal.apply(path, name, _inode(path) or 0, finished)
                continue
            try:
                pending.append(self.claims.reopen(claimed_as))
            except FileNotFoundError:
                continue
            except OSError as err:
                reason = err.strerror if isinstance(err, NotAFile) else f"unreadable: {err}"
                self.disposal.reject_path(path, name, reason)
        return pending

    def _resume_current(self) -> PreparedFile | None:
        ledger = self._ledger()
        current = ledger.current
        if current is None:
            return None
        claim = self._current_claim(current)
        index, why = None, "is missing"
        if claim is not None:
            try:  # only the bytes that were claimed: a writer may have appended since
                index = FileIndex.scan(claim.fd, claim.name, self.rules.spec, self.rules.max_line_bytes,
                                       self.rules.judge, lambda: self.stop.requested, limit=current.size)
                why = "changed (sha256 differs)"
            except IndexCancelled:
                self._pending.insert(0, claim)
                return None
            except OSError as err:
                why = f"is unreadable ({err})"
        if index is None or index.sha256 != current.sha256:
            log.error("inbox/%s %s: abandoning it with %d example(s) untrained", current.name, why,
                      current.trainable - current.examples_trained)
            record = ledger.finish(step=self._step(), status="abandoned")
            if claim is not None:
                record.disposal = CHANGED if index is not None else f"{FAILED}unreadable when resumed: {why}"
                claim.close()
                self.disposal.apply(claim.path, claim.name, claim.stat.st_ino, record)
            return None
        if self._poisoned(claim, index):  # moved to failed/ already; a replay finds nothing to do
            ledger.finish(step=self._step(), status="failed").disposal = f"{FAILED}crashed the process"
            return None
        current.claimed_as = claim.claimed_as  # a file from a 0.1 base dir is claimed now
        return self._live(PreparedFile(claim, index, current))

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
        except OSError:
            return None
        if claim.in_place:
            self.inbox.ignored.add((claim.name, claim.stat.st_ino))
        return claim

    # -- disposal -------------------------------------------------------------------------

    def decide(self, handle: int, abandoned: str | None) -> str:
        """What to do with the file once its end-of-file checkpoint is durable (recorded in it)."""
        prepared = self.live[handle]
        if abandoned == "changed":
            return CHANGED
        if abandoned is not None:
            return f"{FAILED}could not be read while training: {abandoned}"
        if prepared.claim.modified(prepared.index.size):
            return MODIFIED
        return DELETE

    def finish(self, handle: int, record: FileRecord) -> None:
        """The end-of-file checkpoint is durable: carry out the recorded disposal."""
        prepared = self.live.pop(handle)
        claim = prepared.claim
        claim.close()
        if record.disposal and record.disposal.startswith(FAILED):
            report = line_report(prepared.index)
            self.disposal.reject_path(claim.path, claim.name, record.disposal[len(FAILED):], record.sha256,
                                      report, claim.stat.st_ino, counted=False)  # counted when it finished
            return
        self.disposal.apply(claim.path, claim.name, claim.stat.st_ino, record)

    def close(self) -> None:
        """The run is over: cancel a running look-ahead pass and let its thread go."""
        self._closing = True
        self._pool.shutdown(wait=False, cancel_futures=True)


def _inode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except OSError:
        return None
