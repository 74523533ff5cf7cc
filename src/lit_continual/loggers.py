"""Loggers that continue one run across restarts (stock ones start over in each process).

- `ContinualCSVLogger`: stock `CSVLogger` deletes an existing metrics.csv when it starts
  and keeps rows in memory until 100 steps have passed; this one appends to the file and
  writes each row when it is logged (`tail -f` works). After a kill, the rows a killed process
  wrote after its last checkpoint stay, and the resumed process writes those steps again (a
  step may appear twice: the later row is the one the run kept).
- `ContinualMLFlowLogger` / `ContinualWandbLogger`: the run id is kept in the run state (each
  checkpoint) by the `LoggerRuns` callback and given back on restart, so metrics go on in the
  same MLflow / W&B run. Points a killed process logged after its last checkpoint stay and
  the resumed steps are logged again (both tools keep the later value per step in charts).
Only TensorBoard purges events after the resume step (its purge_step).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, WandbLogger


class _AppendingWriter(_ExperimentWriter):
    """Keeps an existing metrics.csv (and its columns) instead of deleting it."""

    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                self.metrics_keys = list(csv.DictReader(handle).fieldnames or [])

    def _check_log_dir_exists(self) -> None:
        """Not the parent's: it deletes metrics.csv, which is this run's history."""

    def log_hparams(self, params: dict) -> None:
        """Hyperparameters are in every checkpoint's run_config.json."""


class ContinualCSVLogger(CSVLogger):
    """CSVLogger writing DIR/<name>/metrics.csv, appended across restarts."""

    def __init__(self, save_dir: str, name: str = "csv", version: str = "", **kwargs) -> None:
        super().__init__(save_dir=save_dir, name=name, version=version, **kwargs)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        self.save()  # on disk now, not after flush_logs_every_n_steps (rows would die with a kill)

    @property
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


class ContinualMLFlowLogger(MLFlowLogger):
    """MLFlowLogger whose run id survives restarts (see LoggerRuns)."""

    def __init__(self, *args, tracking_uri: str | None = None, **kwargs) -> None:
        if tracking_uri and tracking_uri.startswith("sqlite:///"):  # SQLite makes the file, not its dir
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(*args, tracking_uri=tracking_uri, **kwargs)

    @property
    def continued_run_id(self) -> str | None:
        return self.run_id  # starts the MLflow run if nothing was logged yet

    def continue_run(self, run_id: str) -> None:
        if not self._initialized:  # not started yet: log into the saved run
            self._run_id = run_id


class ContinualWandbLogger(WandbLogger):
    """WandbLogger whose run id survives restarts (see LoggerRuns)."""

    @property
    def continued_run_id(self) -> str | None:
        return self.experiment.id  # starts the W&B run if nothing was logged yet

    def continue_run(self, run_id: str) -> None:
        if self._experiment is None:
            self._wandb_init.update(id=run_id, resume="allow")
            self._id = run_id

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if self._experiment is not None:  # the process's run ends with fit() (a new fit resumes it)
            self._experiment.finish()
            self._experiment = None
