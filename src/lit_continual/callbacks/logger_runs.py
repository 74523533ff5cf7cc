"""The run ids of loggers that can continue a run (MLflow, W&B), kept in every checkpoint."""

from __future__ import annotations

import lightning as L

from lit_continual import checkpoints


class LoggerRuns(L.Callback):
    """Saves `continued_run_id` of each named logger that has one, in every checkpoint.

    Lightning starts the loggers' experiments in its setup, before callback state is restored,
    so the ids are handed back when the loggers are built (components.loggers), not here.
    """

    def __init__(self, loggers: dict[str, object]) -> None:
        self.loggers = {name: lg for name, lg in loggers.items() if hasattr(lg, "continue_run")}

    @property
    def state_key(self) -> str:
        return checkpoints.LOGGER_RUNS_KEY

    def state_dict(self) -> dict:
        ids = {name: lg.continued_run_id for name, lg in self.loggers.items()}
        return {name: run_id for name, run_id in ids.items() if run_id}

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing: the ids were read from the checkpoint before the loggers started."""
