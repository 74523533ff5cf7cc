"""The data ledger: which files this run has trained, and exactly where it is in the current one.

It is part of every checkpoint (`ledger.json`), so a restarted process knows the next sample.
It advances only from *trained* batches (see callbacks.files), never from what the data
loader has prefetched.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

LEDGER_VERSION = 1


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
    status: str = "training"  # training | done | abandoned | failed

    def same_file(self, other: FileRecord) -> bool:
        """True if `other` is this very file on disk (same content, inode and ctime)."""
        return (self.name, self.sha256, self.inode, self.ctime_ns) == (
            other.name, other.sha256, other.inode, other.ctime_ns)


@dataclass
class Ledger:
    """Files done (newest `max_done` kept), the file in progress, and run-wide counters."""

    files_done: list[FileRecord] = field(default_factory=list)
    current: FileRecord | None = None
    files_rejected: list[dict] = field(default_factory=list)  # moved to failed/ untrained
    files_started: int = 0
    examples_trained_total: int = 0
    max_done: int = 1000

    def begin(self, record: FileRecord, step: int) -> None:
        """The first batch of `record` is being trained at optimizer step `step`."""
        if self.current is not None and self.current.same_file(record):
            return  # a resumed file: already counted
        record.first_step = step
        self.current = record
        self.files_started = max(self.files_started, record.ordinal)

    def advance(self, examples: int) -> None:
        """`examples` more examples of the current file were trained."""
        assert self.current is not None, "advance() without a current file"
        self.current.examples_trained += examples
        self.examples_trained_total += examples

    def finish(self, step: int, status: str = "done") -> FileRecord:
        """Close the current file at `step` and move it to files_done."""
        assert self.current is not None, "finish() without a current file"
        record, self.current = self.current, None
        record.last_step, record.status = step, status
        self.files_done.append(record)
        del self.files_done[: -self.max_done]
        return record

    def reject(self, name: str, sha256: str | None, reason: str) -> None:
        """Record a file moved to failed/ without training (newest `max_done` kept)."""
        self.files_rejected.append({"name": name, "sha256": sha256, "reason": reason})
        del self.files_rejected[: -self.max_done]

    def find_content(self, sha256: str) -> FileRecord | None:
        """A trained (or in-progress) file of this run with the same content, if any."""
        candidates = self.files_done + ([self.current] if self.current else [])
        return next((r for r in reversed(candidates) if r.sha256 == sha256 and r.status != "failed"), None)

    def find_done(self, record: FileRecord) -> FileRecord | None:
        """The done entry that is this very file (its delete was interrupted), if any."""
        return next((r for r in reversed(self.files_done) if r.same_file(record)), None)

    def to_dict(self) -> dict:
        return {
            "version": LEDGER_VERSION,
            "files_started": self.files_started,
            "examples_trained_total": self.examples_trained_total,
            "current": asdict(self.current) if self.current else None,
            "files_done": [asdict(r) for r in self.files_done],
            "files_rejected": list(self.files_rejected),
        }

    @classmethod
    def from_dict(cls, data: dict, max_done: int = 1000) -> Ledger:
        current = data.get("current")
        return cls(
            files_done=[FileRecord(**r) for r in data.get("files_done", [])],
            current=FileRecord(**current) if current else None,
            files_rejected=list(data.get("files_rejected", [])),
            files_started=int(data.get("files_started", 0)),
            examples_trained_total=int(data.get("examples_trained_total", 0)),
            max_done=max_done,
        )
