"""A file's life in the run: start, ledger advance per trained batch, checkpoints, end, delete.

Order at a file's last step: ledger marks it done -> checkpoint (durable) -> inbox delete.
A process killed in between finds the file in the ledger's done list and only deletes it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import lightning as L

from lit_continual import checkpoints
from lit_continual.data.stream import ContinualDataModule
from lit_continual.status import Status
from lit_continual.stop import StopRequest

log = logging.getLogger("lit_continual")


class FileLifecycle(L.Callback):
    """Advances the ledger from trained batches and decides when to checkpoint and stop."""

    def __init__(self, datamodule: ContinualDataModule, models_dir: Path, every_n_steps: int,
                 keep: int, stop: StopRequest, status: Status) -> None:
        self.dm, self.models_dir = datamodule, models_dir
        self.every_n_steps, self.keep = every_n_steps, keep
        self.stop, self.status = stop, status
        newest = checkpoints.newest_checkpoint(models_dir)
        self.newest: str | None = newest.name if newest else None
        self.last_saved_step = checkpoints.step_of(newest) if newest else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch["meta"]["first_of_file"]:
            self._file_started(trainer, batch["meta"])

    def _file_started(self, trainer: L.Trainer, meta: dict) -> None:
        ledger = self.dm.ledger
        ledger.begin(meta["file"], step=trainer.global_step + 1)
        record = ledger.current
        remaining = record.examples - record.examples_trained
        end = trainer.global_step + math.ceil(remaining / self.dm.effective_batch)
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
        if meta["file_end"]:
            record = self.dm.ledger.finish(step)
            self.save(trainer)
            log.info("File %s done: steps %s-%d, %d examples", record.name, record.first_step,
                     step, record.examples)
            if meta["delete_when_done"]:
                self.dm.inbox.delete(meta["path"])
            self.status.update(current_file=None, total_steps=step, write=True)
        elif step % self.every_n_steps == 0:
            self.save(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # An epoch ends whenever the feed has nothing ready; stop only if asked or drained.
        if self.stop.requested or self.dm.feed.finished:
            why = self.stop.reason if self.stop.requested else "inbox drained"
            log.info("Stopping (%s) at step %d", why, trainer.global_step)
            self.status.update(status="stopping", write=True)
            self.save(trainer)
            trainer.should_stop = True

    def save(self, trainer: L.Trainer) -> None:
        """Checkpoint the current step (once per step), then apply retention."""
        step = trainer.global_step
        if step == 0 or step == self.last_saved_step:
            return
        path = self.models_dir / f"{checkpoints.PREFIX}{step}"
        trainer.save_checkpoint(path, weights_only=False)
        self.last_saved_step, self.newest = step, path.name
        log.info("Saved checkpoint %s", path.name)
        self.status.update(last_checkpoint=path.name, write=True)
        checkpoints.prune(self.models_dir, self.keep)
