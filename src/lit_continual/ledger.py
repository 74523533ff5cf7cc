"""The data ledger: which files this run has trained, and exactly where it is in the current one.

It is part of every checkpoint (`ledger.json`), so a restarted process knows the next sample.
It advances only from *trained* batches (see callbacks.files), never from what the data
loader has prefetched.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

LEDGER_VERSION = 1

log = logging.getLogger("lit_continual")


@dataclass
class FileRecord:
    """One inbox file as the run saw it. `examples_trained` is the data position."""

    name: str
    sha256: str
    size: int
    inode: int
    ctime_ns: int
    ordinal: int
    examples: int
    bad_lines: int
    shuffle_seed: int
    examples_trained: int = 0
    mtime_ns: int = 0
    first_step: int | None = None
    last_step: int | None = None
    rebased_to: int | None = None  # the base generation a rebase at this file's last step made (rebase.py)
    status: str = "training"  # training | done | skipped (by an operator) | abandoned | failed
    # Where the file was claimed: `.claimed/<claim id>-<name>` under the inbox; None if it was
    # trained where it was delivered (an inbox that refuses renames, or a run from version 0.1).
    claimed_as: str | None = None
    # What becomes of the claimed file once its end-of-file checkpoint is durable, decided before
    # that checkpoint so a restart replays it: delete | failed: <reason> | changed | keep.
    disposal: str | None = None
    # When this run started and finished training the file (UTC, ISO 8601).
    started_at: str | None = None
    finished_at: str | None = None
    formats: dict[str, int] = field(default_factory=dict)  # valid examples per detected format
    held_out: int = 0  # examples held out as the file's probe (never trained; data/holdout.py)
    replayed: int = 0  # past examples replayed in its batches (data/replay.py; not its own)

    @property
    def trainable(self) -> int:
        """Examples the file trains: its valid examples less the held-out ones."""
        return self.examples - self.held_out

    def same_file(self, other: FileRecord) -> bool:
        """True if `other` is this very claim (or, for in-place claims, the same inode and content)."""
        if self.claimed_as is not None or other.claimed_as is not None:
            return self.claimed_as == other.claimed_as and self.sha256 == other.sha256
        return (self.name, self.sha256, self.inode) == (other.name, other.sha256, other.inode)


@dataclass
class Ledger:
    """Files done (newest `max_done` kept), the file in progress, and run-wide counters."""

    files_done: list[FileRecord] = field(default_factory=list)
    current: FileRecord | None = None
    files_rejected: list[dict] = field(default_factory=list)  # moved to failed/ untrained
    files_started: int = 0
    examples_trained_total: int = 0
    examples_replayed_total: int = 0  # past examples replayed (data/replay.py), not counted above
    # Files finished per status (done, skipped, abandoned, failed) and rejected, over the whole
    # run: files_done and files_rejected keep only the newest `max_done`.
    counts: dict[str, int] = field(default_factory=dict)
    max_done: int = 1000

    def begin(self, record: FileRecord, step: int) -> None:
        """The first batch of `record` is being trained at optimizer step `step`."""
        if self.current is not None and self.current.same_file(record):
            return  # a resumed file: already counted
        if self.current is not None:  # never silently overwrite an unfinished file's record
            log.error("%s was left unfinished with %d example(s) untrained: recorded as abandoned",
                      self.current.name, self.current.trainable - self.current.examples_trained)
            self.finish(step - 1, status="abandoned")
        record.first_step, record.started_at = step, _now()
        self.current = record
        self.files_started = max(self.files_started, record.ordinal)

    def advance(self, examples: int, replayed: int = 0) -> None:
        """`examples` more examples of the current file were trained, with `replayed` past ones."""
        assert self.current is not None, "advance() without a current file"
        self.current.examples_trained += examples
        self.examples_trained_total += examples
        self.current.replayed += replayed
        self.examples_replayed_total += replayed

    def finish(self, step: int, status: str = "done") -> FileRecord:
        """Close the current file at `step` and move it to files_done."""
        assert self.current is not None, "finish() without a current file"
        record, self.current = self.current, None
        record.last_step, record.status, record.finished_at = step, status, _now()
        self.counts[status] = self.counts.get(status, 0) + 1
        self.files_done.append(record)
        del self.files_done[: -self.max_done]
        return record

    def reject(self, name: str, sha256: str | None, reason: str, kept_inode: int | None = None,
               counted: bool = True) -> None:
        """Record a file moved to failed/ without training (newest `max_done` kept).

        `kept_inode`: it was copied to failed/ but the original could not be removed (an inbox
        that refuses unlink); a later process recognises it and leaves it alone."""
        if counted:  # not for a file already counted as finished (trained, then moved to failed/)
            self.counts["rejected"] = self.counts.get("rejected", 0) + 1
        entry = {"name": name, "sha256": sha256, "reason": reason}
        if kept_inode is not None:
            entry["kept_inode"] = kept_inode
        self.files_rejected.append(entry)
        del self.files_rejected[: -self.max_done]

    def find_kept(self, name: str, inode: int, sha256: str | None) -> dict | None:
        """The rejection of this very file left undeletable in the inbox, if any."""
        return next((r for r in reversed(self.files_rejected) if r.get("kept_inode") == inode
                     and (r["name"], r["sha256"]) == (name, sha256)), None)

    def find_content(self, sha256: str) -> FileRecord | None:
        """A trained (or in-progress) file of this run with the same content, if any."""
        candidates = self.files_done + ([self.current] if self.current else [])
        return next((r for r in reversed(candidates) if r.sha256 == sha256 and r.status not in ("failed", "skipped")),
                    None)

    def find_done_in_place(self, record: FileRecord) -> FileRecord | None:
        """The done (or skipped) entry trained in place (an inbox that refuses renames) that is this very
        file: same name, inode and sha256 (its delete was interrupted or refused), if any. ctime
        and mtime are not compared: a hard link, chmod or touch must not make it new again."""
        return next((r for r in reversed(self.files_done) if r.status in ("done", "skipped") and r.claimed_as is None
                     and (r.name, r.inode, r.sha256) == (record.name, record.inode, record.sha256)), None)

    def find_legacy_done(self, name: str, inode: int, ctime_ns: int) -> FileRecord | None:
        """The newest done entry if a version-0.1 process trained it in place and died before
        deleting it: that version's own rule (name, inode, ctime), checked before any claim."""
        newest = self.files_done[-1] if self.files_done else None
        if (newest is not None and newest.status == "done" and newest.claimed_as is None
                and (newest.name, newest.inode, newest.ctime_ns) == (name, inode, ctime_ns)):
            return newest
        return None

    def find_claimed(self, claimed_as: str) -> FileRecord | None:
        """The finished entry (done, abandoned or failed) of the claim `claimed_as`, if any."""
        return next((r for r in reversed(self.files_done) if r.claimed_as == claimed_as), None)

    def to_dict(self) -> dict:
        return {
            "version": LEDGER_VERSION,
            "files_started": self.files_started,
            "examples_trained_total": self.examples_trained_total,
            "examples_replayed_total": self.examples_replayed_total,
            "counts": dict(self.counts),
            "current": asdict(self.current) if self.current else None,
            "files_done": [asdict(r) for r in self.files_done],
            "files_rejected": list(self.files_rejected),
        }

    @classmethod
    def from_dict(cls, data: dict, max_done: int = 1000) -> Ledger:
        current = data.get("current")
        done = [FileRecord(**r) for r in data.get("files_done", [])]
        counts = data.get("counts")
        if counts is None:  # a ledger from before the counts: what its kept entries say
            counts = {}
            for status in [r.status for r in done] + ["rejected"] * len(data.get("files_rejected", [])):
                counts[status] = counts.get(status, 0) + 1
        return cls(
            counts=dict(counts),
            files_done=done,
            current=FileRecord(**current) if current else None,
            files_rejected=list(data.get("files_rejected", [])),
            files_started=int(data.get("files_started", 0)),
            examples_trained_total=int(data.get("examples_trained_total", 0)),
            examples_replayed_total=int(data.get("examples_replayed_total", 0)),
            max_done=max_done,
        )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
