"""A file's life in the run: start, ledger advance per trained batch, checkpoints, end, delete.

Order at a file's last step: ledger marks it done -> checkpoint (durable) -> inbox delete.
A process killed in between finds the file in the ledger's done list and only deletes it.
"""

from __future__ import annotations

import errno
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from lit_continual import checkpoints, faults
from lit_continual.crash_guard import CrashGuard
from lit_continual.data.stream import ContinualDataModule
from lit_continual.status import Status
from lit_continual.stop import StopRequest
from lit_continual.storage import Backoff, StorageFault, retry

log = logging.getLogger("lit_continual")


@dataclass
class SavePolicy:
    """When and how checkpoints are written (checkpoint.* and daemon.retry_* config)."""

    every_n_steps: int
    keep: int
    min_free_mb: float
    retry_initial_seconds: float
    retry_max_seconds: float


class FileLifecycle(L.Callback):
    """Advances the ledger from trained batches and decides when to checkpoint and stop."""

    def __init__(self, datamodule: ContinualDataModule, models_dir: Path, policy: SavePolicy,
                 stop: StopRequest, status: Status, guard: CrashGuard) -> None:
        self.dm, self.models_dir, self.policy = datamodule, models_dir, policy
        self.stop, self.status, self.guard = stop, status, guard
        self.backoff = Backoff(policy.retry_initial_seconds, policy.retry_max_seconds)
        newest = checkpoints.newest_checkpoint(models_dir)
        self.newest: str | None = newest.name if newest else None
        self.last_saved_step = checkpoints.step_of(newest) if newest else None

    def on_train_start(self, trainer, pl_module) -> None:
        self.status.update(batch_number=self.dm.ledger.files_started)  # the restored run's count

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        meta = batch["meta"]
        if meta["first_of_file"]:
            self._file_started(trainer, meta)
        if meta["window_start"]:
            step = trainer.global_step + 1
            self.guard.training(step, meta["file"].name, meta["file"].sha256)
            faults.point("train", step)

    def _file_started(self, trainer: L.Trainer, meta: dict) -> None:
        ledger = self.dm.ledger
        ledger.begin(meta["file"], step=trainer.global_step + 1)
        record = ledger.current
        remaining = record.examples - record.examples_trained
        end = trainer.global_step + meta["file_steps_left"]
        if self.newest is not None:
            log.info("Resuming from checkpoint: %s", self.newest)
        log.info("File %s (#%d): %d examples, %d left, steps %d-%d", record.name, record.ordinal,
                 record.examples, remaining, trainer.global_step + 1, end)
        self.status.update(status="training", current_file=record.name, total_steps=end,
                           current_step=trainer.global_step, batch_number=record.ordinal, write=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        meta = batch["meta"]
        self.dm.ledger.advance(meta["examples"])
        if not meta["window_end"]:
            return
        step = trainer.global_step
        self.status.update(current_step=step)
        faults.point("step", step)
        if meta["file_end"]:
            self._file_finished(trainer, pl_module, meta)
        elif step % self.policy.every_n_steps == 0:
            self.save(trainer, pl_module)
        if self.stop.requested:  # stop at this step, not after the one the loader already fetched
            self._stop(trainer, pl_module, self.stop.reason)

    def _file_finished(self, trainer: L.Trainer, pl_module: L.LightningModule, meta: dict) -> None:
        step, abandoned = trainer.global_step, meta["abandoned"]
        record = self.dm.ledger.finish(step, status="abandoned" if abandoned else "done")
        record.disposal = self.dm.feed.decide(meta["handle"], abandoned)  # in the checkpoint: replayed after a kill
        self.guard.idle()
        if not self.save(trainer, pl_module):
            return  # stop requested while the checkpoint kept failing: the file stays claimed
        if abandoned:
            log.error("File %s abandoned at step %d with %d example(s) untrained: it could not be read as "
                      "it was claimed", record.name, step, record.examples - record.examples_trained)
        else:
            log.info("File %s done: steps %s-%d, %d examples", record.name, record.first_step, step,
                     record.examples)
        faults.point("before-delete", step)
        self.dm.feed.finish(meta["handle"], record)
        self.status.update(current_file=None, total_steps=step, write=True)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # An epoch ends whenever the feed has nothing ready; stop only if asked or drained.
        self.guard.idle()
        if self.stop.requested or self.dm.feed.finished:
            self._stop(trainer, pl_module, self.stop.reason if self.stop.requested else "inbox drained")

    def _stop(self, trainer: L.Trainer, pl_module: L.LightningModule, why: str) -> None:
        if trainer.should_stop:
            return  # already stopping (at a step end; the epoch end comes next)
        log.info("Stopping (%s) at step %d", why, trainer.global_step)
        self.status.update(status="stopping", write=True)
        self.guard.idle()
        self.save(trainer, pl_module)
        trainer.should_stop = True

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Checkpoint the current step (once per step), then apply retention.

        Any failure while writing is a storage fault (disk full raises SafetensorError or
        RuntimeError, not only OSError): earlier checkpoints stay intact, the write is retried
        with a doubling backoff and never blamed on the data file. False if a stop request
        ended the retries before a checkpoint could be written.
        """
        step = trainer.global_step
        if step == 0 or step == self.last_saved_step:
            return True
        _require_finite(pl_module)
        path = self.models_dir / f"{checkpoints.PREFIX}{step}"

        def attempt() -> float:
            self._check_free_space()
            started = time.perf_counter()
            trainer.save_checkpoint(path, weights_only=False)
            return time.perf_counter() - started

        saved, seconds = retry(attempt, f"checkpoint {path.name}", self.backoff, self.stop, self.status)
        if not saved:
            return False
        self.last_saved_step, self.newest = step, path.name
        log.info("Saved checkpoint %s in %.0f ms", path.name, seconds * 1000)
        self.status.update(last_checkpoint=path.name, write=True)
        try:
            checkpoints.prune(self.models_dir, self.policy.keep)
        except OSError as err:  # retention is retried after the next checkpoint
            log.error("Could not remove old checkpoints: %s", err)
        return True

    def _check_free_space(self) -> None:
        free_mb = shutil.disk_usage(self.models_dir).free / 2**20
        if free_mb < self.policy.min_free_mb:
            raise StorageFault(errno.ENOSPC, f"only {free_mb:.0f} MiB free in {self.models_dir}, "
                                             f"checkpoint.min_free_mb={self.policy.min_free_mb}")


def _require_finite(pl_module: L.LightningModule) -> None:
    """Non-finite weights are never checkpointed (the guard should make this unreachable)."""
    for name, param in pl_module.named_parameters():
        if param.requires_grad and not bool(torch.isfinite(param).all()):
            raise FloatingPointError(f"parameter {name} is not finite: refusing to checkpoint it")
