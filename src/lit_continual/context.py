"""The run context: what every part of a run shares, passed as one object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lit_continual.crash_guard import CrashGuard
from lit_continual.status import Status
from lit_continual.stop import StopRequest


@dataclass(frozen=True)
class RunContext:
    base_dir: Path  # the run's home (inbox/, current_model/, status/, ...)
    stop: StopRequest  # "should the run stop now?" (.stop file, SIGTERM, SIGINT)
    status: Status  # status/training_status.json
    guard: CrashGuard  # which file and step the process is in, for the crash loop rule
    ops: Any = None  # operations.Operations: pause/skip/snapshot/consolidate requests and schedules

    @property
    def models_dir(self) -> Path:
        return self.base_dir / "current_model"
