"""Crash-loop guard: a file that kills the process at the same step again and again is set aside.

`DIR/.in_progress` holds the optimizer step being trained now (one small pwrite per step, no
fsync: a killed process's writes survive in the page cache). A process that starts and finds
it non-empty knows its predecessor died there; `DIR/.crashes.json` counts deaths in a row at
the same file and step. Deaths at different steps (an operator's kill -9, a reboot) reset the
count, so they never trip it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from lit_continual import atomic

log = logging.getLogger("lit_continual")

RECORD_BYTES = 512


class CrashGuard:
    """Knows where the previous process died and whether a file has crashed too often."""

    def __init__(self, base_dir: Path, max_crashes: int) -> None:
        self.marker = base_dir / ".in_progress"
        self.history_path = base_dir / ".crashes.json"
        self.max_crashes = max_crashes
        self.history: dict | None = None
        self._fd: int | None = None
        self._write_failed = False

    def start(self) -> None:
        """Count a crash if the previous process died while training; open the marker."""
        previous = _read_json(self.marker)
        history = _read_json(self.history_path)
        if previous:
            same = history and all(history.get(k) == previous[k] for k in ("file", "sha256", "step"))
            history = {**previous, "count": history["count"] + 1 if same else 1}
            try:
                atomic.write_json(self.history_path, history)
            except OSError as err:  # disk full at start: count in memory, never crash on it
                log.error("Could not write %s: %s", self.history_path.name, err)
            log.warning("The previous process died while training %s at step %d (%d time(s) in a row "
                        "at that step)", previous["file"], previous["step"], history["count"])
        self.history = history
        self._fd = os.open(self.marker, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)

    def poisoned(self, name: str, sha256: str) -> dict | None:
        """The crash record if file (name, sha256) has crashed `max_crashes` times in a row."""
        h = self.history
        if h and h["file"] == name and h["sha256"] == sha256 and h["count"] >= self.max_crashes:
            return h
        return None

    def training(self, step: int, name: str, sha256: str) -> None:
        """Optimizer step `step` of file `name` is about to run."""
        if self.history and step > self.history["step"]:
            self.clear_history()  # got past the step that crashed: the streak is broken
        record = json.dumps({"file": name, "sha256": sha256, "step": step, "pid": os.getpid()})
        self._write(record)

    def idle(self) -> None:
        """Not training (between files, stopping): a death now is not a file's fault."""
        self._write("")

    def clear_history(self) -> None:
        self.history = None
        self.history_path.unlink(missing_ok=True)

    def close(self, clean: bool) -> None:
        """Clean: the process ends normally, nothing to count. Not clean: keep the marker."""
        if self._fd is not None:
            if clean:
                self.idle()
            os.close(self._fd)
            self._fd = None

    def _write(self, text: str) -> None:
        if self._fd is None:
            return
        try:
            os.pwrite(self._fd, text.encode().ljust(RECORD_BYTES), 0)
            self._write_failed = False
        except OSError as err:  # a full disk must not stop training; the guard is best effort then
            if not self._write_failed:
                log.error("Could not write %s: %s (the crash-loop guard cannot count this step)",
                          self.marker.name, err)
            self._write_failed = True


def _read_json(path: Path) -> dict | None:
    try:
        text = path.read_text().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None
