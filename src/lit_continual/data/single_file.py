"""train.py's one file (data=inbox_file): trained or finished as the run's next segment, never deleted."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from lit_continual.claims import Claim, open_held
from lit_continual.data.file_index import IndexCancelled
from lit_continual.data.prepare import DataError, FeedRules, PreparedFile, file_record, index_file, rejection
from lit_continual.disposal import KEEP
from lit_continual.ledger import FileRecord, Ledger
from lit_continual.stop import StopRequest

log = logging.getLogger("lit_continual")


class SingleFileFeed:
    """One file given on the command line: train it (or finish it), never delete it."""

    def __init__(self, path: Path, ledger: Callable[[], Ledger], rules: FeedRules, stop: StopRequest) -> None:
        self.path, self._ledger, self.rules, self.stop = path, ledger, rules, stop
        self.finished = False
        self.already_skipped = False  # this very file was skipped by an operator earlier in the run
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
                return self._live(PreparedFile(claim, index, current))
            raise DataError(
                f"the run has an unfinished file {current.name} ({current.examples_trained}/"
                f"{current.examples} examples trained): finish it first with data.path=<that file>")
        skipped = next((r for r in reversed(ledger.files_done) if r.sha256 == index.sha256), None)
        if skipped is not None and skipped.status == "skipped":
            log.warning("%s was skipped by an operator at step %s (%d of %d examples trained): not training it "
                        "again", self.path, skipped.last_step, skipped.examples_trained, skipped.examples)
            self.already_skipped = True
            claim.close()
            return None
        record = file_record(claim, index, ledger.files_started + 1, self.rules)
        record.claimed_as = None
        return self._live(PreparedFile(claim, index, record))

    def _live(self, prepared: PreparedFile) -> PreparedFile:
        prepared.handle = 1
        self.live[1] = prepared
        return prepared

    def look_ahead(self) -> None:
        """Nothing to look ahead to."""

    def queue_size(self) -> int:
        return 0

    def decide(self, handle: int, abandoned: str | None) -> str:
        """train.py never deletes or moves its file."""
        return KEEP

    def finish(self, handle: int, record: FileRecord) -> None:
        self.live.pop(handle).claim.close()

    def close(self) -> None:
        """Nothing runs in the background."""
