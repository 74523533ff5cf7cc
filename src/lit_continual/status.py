"""`status/training_status.json`: what the run is doing now, rewritten atomically.

An output only: nothing ever reads it back to decide anything.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from lit_continual import atomic

log = logging.getLogger("lit_continual")

MAX_WARNINGS = 20
STATES = ("starting", "training", "idle", "pausing", "paused", "skipping", "stopping", "stopped", "error")
# A daemon in one of these states should be alive (`lit-continual status` exits 4 if not).
LIVE_STATES = ("starting", "training", "idle", "pausing", "paused", "skipping", "stopping")


class Status:
    """Holds the status fields; writes them on every state change and once a second."""

    def __init__(self, base_dir: Path, heartbeat_seconds: float = 1.0) -> None:
        self.path = base_dir / "status" / "training_status.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.heartbeat_seconds = heartbeat_seconds
        self.queue_size: Callable[[], int] = lambda: 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_failed = False
        self.fields: dict = {
            "pid": os.getpid(), "status": "starting", "current_step": 0, "total_steps": 0,
            "batch_number": 0, "batch_queue_size": 0, "current_file": None, "loss": None,
            "learning_rate": None, "tokens_per_second": None, "last_checkpoint": None,
            "error": None, "warnings": [], "base_dir": str(base_dir.resolve()),
            "last_step_at": None, "last_checkpoint_at": None, "last_snapshot": None,
            "last_consolidated": None, "metrics_port": None, "files_done": 0, "files_failed": 0,
            "files_skipped": 0, "nonfinite_steps": 0, "snapshots": 0,
            # The newest evaluation of DIR/eval/*.jsonl and live samples (callbacks/evaluation.py).
            "eval_loss": None, "eval_losses": {}, "eval_step": None, "samples": [],
            # Forgetting of each kept per-file probe at the newest file end (callbacks/forgetting.py).
            "forgetting": {},
            # The base generation trained on (rebase.py; 0 = model.*) and the replay reservoir's size.
            "base_generation": 0, "replay_examples": 0,
            "started_at": now(), "updated_at": None,
        }

    def update(self, write: bool = False, **fields: object) -> None:
        """Change fields; write now if asked or if `status` changed."""
        with self._lock:
            changed = "status" in fields and fields["status"] != self.fields["status"]
            self.fields.update(fields)
        if write or changed:
            self.write()

    def transition(self, from_states: tuple[str, ...], to: str) -> bool:
        """Set `status` to `to` only if it is now one of `from_states` (checked and set under the
        lock: an acknowledgement from the watcher thread never overwrites a newer state)."""
        with self._lock:
            if self.fields["status"] not in from_states or self.fields["status"] == to:
                return False
            self.fields["status"] = to
        self.write()
        return True

    def warn(self, message: str) -> None:
        """Add a standing warning (the run goes on; `error` is for what stopped it)."""
        with self._lock:
            if message in self.fields["warnings"]:
                return
            self.fields["warnings"] = [*self.fields["warnings"], message][-MAX_WARNINGS:]
        self.write()

    def write(self) -> None:
        """Rewrite the file atomically. A failure is logged once and never stops training."""
        with self._lock:
            try:
                self.fields["batch_queue_size"] = self.queue_size()
            except OSError:
                pass
            self.fields["updated_at"] = now()
            snapshot = dict(self.fields)
            try:
                atomic.write_json(self.path, snapshot, durable=False)
                self._write_failed = False
            except OSError as err:
                if not self._write_failed:
                    log.warning("Could not write %s: %s", self.path, err)
                self._write_failed = True

    def start_heartbeat(self) -> None:
        """Rewrite the file every `heartbeat_seconds` from a background thread."""
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_seconds):
                self.write()
        self._thread = threading.Thread(target=beat, name="status-heartbeat", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def now() -> str:
    """UTC now, as every time in the status file is written."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
