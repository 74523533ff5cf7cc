"""Graceful stop requests: the `.stop` file, SIGTERM and SIGINT. A second signal exits at once."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("lit_continual")


class StopRequest:
    """Answers "should the run stop now?" The daemon never deletes `.stop` itself."""

    def __init__(self, stop_file: Path) -> None:
        self.stop_file = stop_file
        self.signal: int | None = None

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
        return self.signal is not None or self.stop_file.exists()

    @property
    def reason(self) -> str:
        if self.signal is not None:
            return signal.Signals(self.signal).name
        return f"{self.stop_file.name} file"
