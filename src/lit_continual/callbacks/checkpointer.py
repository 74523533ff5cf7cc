"""The checkpointer: a Lightning `ModelCheckpoint` (so `trainer.checkpoint_callback` is it)
whose saving and retention logic is ours.

It keeps ModelCheckpoint's API (`every_n_train_steps`, `save_top_k`, `dirpath`,
`last_model_path`, `best_model_path`, `best_k_models`) and replaces what would break a
guarantee of the run (each override says which):
- it saves at every file end and at a stop, not only every N steps (exactly-once: a file's
  inbox copy is deleted only after a checkpoint past its last step is durable);
- retention is "the directories on disk are the truth": the newest `save_top_k` complete
  checkpoints by step, also after `every_n_train_steps` changed between runs and including
  the one the run resumed from (stock ModelCheckpoint keeps its top-k in memory, keyed by
  its arguments, and never deletes `trainer.ckpt_path`: disk would grow without bound);
- `last_model_path`/`_last_global_step_saved` come from disk at setup, so they are right
  right after a restart (stock restores neither);
- a failed write (disk full, I/O error) is retried with backoff, never raised into fit();
- no monitor and a fixed layout: `DIR/current_model/checkpoint-<step>` (verify, snapshots
  and the operators' `ls | sort | tail` rely on it).
"""

from __future__ import annotations

import errno
import logging
import shutil
import time
from pathlib import Path
from weakref import proxy

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_continual import checkpoints, generations
from lit_continual.context import RunContext
from lit_continual.data.batch import INFO
from lit_continual.status import now
from lit_continual.storage import Backoff, StorageFault, retry

log = logging.getLogger("lit_continual")


class CheckpointListener:
    """Implemented by callbacks that act once a checkpoint is durable (the inbox delete)."""

    def on_checkpoint_saved(self, trainer: L.Trainer, step: int) -> None:
        """A checkpoint of `step` is durable."""

    def after_checkpoint(self, trainer: L.Trainer) -> None:
        """The checkpointer is done with this step (saved, or gave up at a stop request): a
        stop asked for while it was writing is acted on now, before the next batch."""


class Checkpointer(ModelCheckpoint):
    """Writes `checkpoint-<step>/` every N steps, at each file end and at a stop; keeps the newest k."""

    def __init__(self, ctx: RunContext, every_n_train_steps: int, save_top_k: int, min_free_mb: float,
                 backoff: Backoff) -> None:
        # monitor="step"/mode="max" only satisfies the parent's rule that save_top_k > 1 needs a
        # monitor: the newest checkpoints are the best ones, and retention below is ours.
        super().__init__(dirpath=ctx.models_dir, every_n_train_steps=every_n_train_steps,
                         save_top_k=save_top_k, monitor="step", mode="max")
        self.ctx, self.min_free_mb, self.backoff = ctx, min_free_mb, backoff

    @property
    def state_key(self) -> str:
        # Stable whatever the arguments (the parent's key changes with every_n_train_steps).
        return "ModelCheckpoint"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Not the parent's: it warns that the directory is not empty, which is how a run resumes.
        self.dirpath = str(self.ctx.models_dir)
        self._refresh(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        info = batch[INFO]
        if not info.window_end:
            return  # mid accumulation window: no optimizer step has completed
        step = trainer.global_step
        if info.file_end or trainer.should_stop or step % self._every_n_train_steps == 0:
            self.save(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.should_stop:  # a stop decided while idle: the run's last step is saved
            self.save(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        """The run has no validation loop; saving is driven by steps, file ends and stops."""

    def state_dict(self) -> dict:
        return {}  # the directories on disk are the truth: nothing to restore from a checkpoint

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing: `setup` reads the checkpoints on disk."""

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Checkpoint the current step (once per step), apply retention, tell the listeners.

        Any failure while writing is a storage fault (disk full raises SafetensorError or
        RuntimeError, not only OSError): earlier checkpoints stay intact, the write is retried
        with a doubling backoff and never blamed on the data file. False if a stop request
        ended the retries before a checkpoint could be written.
        """
        step = trainer.global_step
        if step == 0 or step == self._last_global_step_saved:
            return True
        _require_finite(pl_module)
        path = self.ctx.models_dir / f"{checkpoints.PREFIX}{step}"

        def attempt() -> float:
            self._check_free_space()
            started = time.perf_counter()
            trainer.save_checkpoint(path, weights_only=False)
            return time.perf_counter() - started

        saved, seconds = retry(attempt, f"checkpoint {path.name}", self.backoff, self.ctx.stop, self.ctx.status)
        if not saved:
            self._tell(trainer, lambda listener: listener.after_checkpoint(trainer))
            return False
        self._last_global_step_saved, self._last_checkpoint_saved = step, str(path)
        log.info("Saved checkpoint %s in %.0f ms", path.name, seconds * 1000)
        self.ctx.status.update(last_checkpoint=path.name, last_checkpoint_at=now(), write=True)
        try:
            checkpoints.prune(self.ctx.models_dir, self.save_top_k)
            generations.collect(self.ctx.base_dir)  # base generations no kept checkpoint needs any more
        except OSError as err:  # retention is retried after the next checkpoint
            log.error("Could not remove old checkpoints or base generations: %s", err)
        self._refresh(trainer)
        for logger in trainer.loggers:
            logger.after_save_checkpoint(proxy(self))
        self._tell(trainer, lambda listener: listener.on_checkpoint_saved(trainer, step))
        self._tell(trainer, lambda listener: listener.after_checkpoint(trainer))
        return True

    @staticmethod
    def _tell(trainer: L.Trainer, call) -> None:
        for callback in trainer.callbacks:
            if isinstance(callback, CheckpointListener):
                call(callback)

    def _refresh(self, trainer: L.Trainer) -> None:
        """ModelCheckpoint's attributes from the complete checkpoints on disk."""
        kept = checkpoints.complete_checkpoints(self.ctx.models_dir)
        self.best_k_models = {str(p): torch.tensor(float(checkpoints.step_of(p))) for p in kept}
        self.last_model_path = self.best_model_path = self.kth_best_model_path = ""
        if kept:
            self.last_model_path = self.best_model_path = str(kept[-1])
            self.kth_best_model_path = str(kept[0])
            self.best_model_score = self.best_k_models[str(kept[-1])]
            self._last_global_step_saved = max(self._last_global_step_saved, checkpoints.step_of(kept[-1]))

    def _check_free_space(self) -> None:
        free_mb = shutil.disk_usage(self.ctx.models_dir).free / 2**20
        if free_mb < self.min_free_mb:
            raise StorageFault(errno.ENOSPC, f"only {free_mb:.0f} MiB free in {self.ctx.models_dir}, "
                                             f"checkpoint.min_free_mb={self.min_free_mb}")


def newest_name(trainer: L.Trainer) -> str | None:
    """The newest complete checkpoint's directory name, as the checkpointer knows it."""
    path = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
    return Path(path).name if path else None


def _require_finite(pl_module: L.LightningModule) -> None:
    """Non-finite weights are never checkpointed (the guard should make this unreachable)."""
    for name, param in pl_module.named_parameters():
        if param.requires_grad and not bool(torch.isfinite(param).all()):
            raise FloatingPointError(f"parameter {name} is not finite: refusing to checkpoint it")
