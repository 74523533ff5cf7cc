"""Graceful stop requests: the `.stop` file, SIGTERM and SIGINT. A second signal exits at once."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

log = logging.getLogger("lit_continual")


class StopRequest:
    """Answers "should the run stop now?" The daemon never deletes `.stop` itself."""

    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file
        self.signal: int | None = None
        self._seen_file = False
        self._watcher: threading.Thread | None = None

    def watch(self, poll_seconds: float) -> None:
        """Look for `.stop` every `poll_seconds` from a background thread, so a request that
        comes and goes while the model loads or within one long step is still seen."""
        def watch() -> None:
            while self.signal is None and not self.look():
                time.sleep(poll_seconds)

        self._watcher = threading.Thread(target=watch, name="stop-watch", daemon=True)
        self._watcher.start()

    def install(self) -> None:
        """Route SIGTERM/SIGINT here. Called again once Lightning has put in its own handlers,
        because Lightning's SIGTERM handler aborts fit() instead of letting us checkpoint."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.signal is not None:
            # Second signal: the user means it. No checkpoint; 130 for SIGINT, 143 for SIGTERM.
            os._exit(128 + signum)
        self.signal = signum
        log.warning("Received %s: stopping after the current optimizer step",
                    signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        """Once seen, a request stays seen: a `.stop` that appears and vanishes within a step
        is still acted on (else the stream stops handing out a file while the run goes on)."""
        return self.signal is not None or self.look()

    def look(self) -> bool:
        """Check for the `.stop` file now (latching)."""
        if not self._seen_file and self.stop_file.exists():
            self._seen_file = True
            log.info("%s seen: stopping after the current optimizer step", self.stop_file.name)
        return self._seen_file

    @property
    def reason(self) -> str:
        if self.signal is not None:
            return signal.Signals(self.signal).name
        return f"{self.stop_file.name} file"
