"""The run ids of loggers that can continue a run (MLflow, W&B), kept in every checkpoint."""

from __future__ import annotations

import lightning as L


class LoggerRuns(L.Callback):
    """Saves `continued_run_id` of each named logger that has one; hands it back on restart.

    Lightning restores callback state before anything is logged, so the logger starts in the
    saved run instead of a new one.
    """

    def __init__(self, loggers: dict[str, object]) -> None:
        self.loggers = {name: lg for name, lg in loggers.items() if hasattr(lg, "continue_run")}

    @property
    def state_key(self) -> str:
        return "LoggerRuns"

    def state_dict(self) -> dict:
        ids = {name: lg.continued_run_id for name, lg in self.loggers.items()}
        return {name: run_id for name, run_id in ids.items() if run_id}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, run_id in state_dict.items():
            if name in self.loggers:
                self.loggers[name].continue_run(run_id)
