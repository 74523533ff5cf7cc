"""The inbox folder: which files are waiting, which have settled, and claiming the next one.

Scanning is amortised so that a backlog of 100,000 files costs what 10 do: the listing is
cached and re-read only when the directory changed (its mtime; within a moment of a change
every poll, since coarse timestamps can hide a second change in the same tick), at most once
per `poll_seconds`, and never more often than keeps scanning under ~2 % of wall time. Our own
claims update the cache directly. Settling is judged by re-stat'ing the queue from its head up
to the first settled file.

A file is claimed by an atomic rename into the hidden `inbox/.claimed/` (same filesystem), so
whatever later appears at the old path is a new delivery by construction; see `claims`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lit_continual")

SUFFIX = ".jsonl"
IGNORED_SUFFIXES = (".tmp", ".part")
CHANGE_WINDOW = 2.0  # seconds after a directory change during which every poll rescans
SCAN_SHARE = 0.02  # at most this share of wall time goes to rescanning a big inbox
SAFETY_RESCAN = 60.0  # rescan at least this often even if the directory looks unchanged


@dataclass
class Seen:
    """What this process last observed of one inbox entry, and since when (monotonic)."""

    inode: int
    size: int
    mtime_ns: int
    since: float

    def signature(self) -> tuple[int, int, int]:
        return self.inode, self.size, self.mtime_ns


class Inbox:
    """`DIR/inbox/*.jsonl`, oldest first (mtime, then name); a file is ready once settled."""

    def __init__(self, base_dir: Path, settle_seconds: float, poll_seconds: float = 0.5) -> None:
        self.dir = base_dir / "inbox"
        self.settle_seconds = settle_seconds
        self.poll_seconds = poll_seconds
        self.scans = 0  # full directory scans so far (tests count them)
        self._seen: dict[str, Seen] = {}
        self._order: list[str] = []
        self._dir_signature: tuple | None = None
        self._checked = self._scanned = self._changed = -1e18
        self._scan_cost = 0.0
        self._warned: set[str] = set()
        self.ignored: set[tuple[str, int]] = set()  # (name, inode) of files left where they are

    # -- listing --------------------------------------------------------------------------

    def waiting(self) -> list[str]:
        """Names of the `*.jsonl` files waiting (settling ones included), oldest first."""
        self._refresh()
        return list(self._queue())

    def has_waiting(self) -> bool:
        """Any file waiting? (Stops at the first: cheap with a big backlog.)"""
        self._refresh()
        return next(self._queue(), None) is not None

    def _queue(self):
        """Waiting names, oldest first, lazily: a big backlog is never walked whole per call."""
        ignored = self.ignored
        for name in self._order:
            if not ignored or (name, self._seen[name].inode) not in ignored:
                yield name

    def count(self) -> int:
        """How many files are waiting, from the cache (never scans: safe under any lock)."""
        return len(self._order)

    def expect_change(self) -> None:
        """We put a file back into the inbox: list it again at the next look."""
        self._checked, self._changed = -1e18, time.monotonic()

    def forget(self, name: str) -> None:
        """`name` left the inbox through us (claimed or moved): update the cache, no rescan."""
        if self._seen.pop(name, None) is not None:
            self._order.remove(name)

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.poll_seconds:
            return
        self._checked = now
        try:
            stat = os.stat(self.dir)
        except FileNotFoundError:
            self.dir.mkdir(parents=True, exist_ok=True)  # an operator removed it
            stat = os.stat(self.dir)
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
        if signature != self._dir_signature:
            self._dir_signature, self._changed = signature, now
        recent = now - self._changed < CHANGE_WINDOW or self._scanned < self._changed
        due = recent or now - self._scanned > SAFETY_RESCAN
        if due and now - self._scanned >= self._scan_cost / SCAN_SHARE:
            self._scan(now)

    def _scan(self, now: float) -> None:
        started = time.perf_counter()
        seen: dict[str, Seen] = {}
        try:
            with os.scandir(self.dir) as listing:
                entries = list(listing)
        except FileNotFoundError:  # removed between the stat and the listing: empty until re-made
            entries = []
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
                continue
            if not name.endswith(SUFFIX):
                self._warn_ignored(name)
                continue
            old = self._seen.get(name)
            if old is not None and old.inode == entry.inode():
                seen[name] = old  # same file: its settle clock keeps running
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            seen[name] = Seen(st.st_ino, st.st_size, st.st_mtime_ns, now)
        self._seen = seen
        self._order = sorted(seen, key=lambda n: (seen[n].mtime_ns, n))
        self._scanned = now
        self._scan_cost = time.perf_counter() - started
        self.scans += 1

    def _warn_ignored(self, name: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning("Ignoring inbox/%s: only *%s files are trained", name, SUFFIX)

    # -- settling -------------------------------------------------------------------------

    def next_ready(self, skip: set[str] = frozenset()) -> str | None:
        """The oldest waiting file that has settled, or None.

        Settled means: this process saw the same inode, size and mtime at least
        `settle_seconds` apart on its own monotonic clock. An mtime in the past proves nothing
        (a lagging file-server clock, `cp -p`, rsync keep old mtimes on files still growing).
        """
        self._refresh()
        now = time.monotonic()  # after a rescan that may have just started watching a file
        gone, ready = [], None
        for name in self._queue():
            if name in skip:
                continue
            seen = self._seen[name]
            try:
                st = os.lstat(self.dir / name)
            except FileNotFoundError:
                gone.append(name)
                continue
            if (st.st_ino, st.st_size, st.st_mtime_ns) != seen.signature():
                self._seen[name] = Seen(st.st_ino, st.st_size, st.st_mtime_ns, now)
                continue
            if now - seen.since >= self.settle_seconds:
                ready = name
                break
        for name in gone:
            self.forget(name)
        return ready

