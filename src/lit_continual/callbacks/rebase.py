"""When to rebase (`consolidate.rebase_every_files`), carried out at a file's last optimizer step.

It runs after FileLifecycle (the file's ledger record is finished) and before the checkpointer,
so that step's end-of-file checkpoint already holds the new base generation, the fresh adapter
and the empty optimizer. Fault points (tests): `rebase-base@N` (gen dir written, not yet renamed),
`rebase-swap@N` (gen dir in place, model not yet swapped), `rebase-done@N` (swapped, before the
checkpoint). The rebase state itself lives on the module (LoRAModule.generation).
"""

from __future__ import annotations

import logging
import time

import lightning as L

from lit_continual import faults, rebase
from lit_continual.callbacks.nonfinite import NonFiniteGuard
from lit_continual.callbacks.step_offset import StepOffset
from lit_continual.context import RunContext
from lit_continual.data.batch import INFO, BatchInfo
from lit_continual.data.stream import ContinualDataModule
from lit_continual.storage import Backoff, StorageFault, retry

log = logging.getLogger("lit_continual")


class Rebase(L.Callback):
    """Merges the adapter into a new base generation every `every_files` files done."""

    def __init__(self, ctx: RunContext, datamodule: ContinualDataModule, every_files: int, seed: int, tokenizer,
                 backoff: Backoff) -> None:
        self.ctx, self.dm, self.every_files, self.seed = ctx, datamodule, every_files, seed
        self.tokenizer, self.backoff = tokenizer, backoff

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        info: BatchInfo = batch[INFO]
        ledger = self.dm.ledger  # replaced when a checkpoint is restored: never kept
        if not (info.window_end and info.file_end) or not ledger.files_done:
            return
        record = ledger.files_done[-1]
        done = ledger.counts.get("done", 0)
        if record.status != "done" or record.last_step != trainer.global_step:
            return
        if done - pl_module.generation.files_at_rebase >= self.every_files:
            self.rebase(trainer, pl_module, done)

    def rebase(self, trainer: L.Trainer, pl_module: L.LightningModule, files_done: int) -> None:
        """Merge, write gen k, swap, reset the optimizer, re-warm the LR; recorded in the ledger."""
        step, number = trainer.global_step, pl_module.generation.number + 1
        started = time.perf_counter()
        merged = rebase.merged_weights(pl_module.model)

        def attempt():
            try:
                return rebase.write_generation(self.ctx.base_dir, number, pl_module.model, self.tokenizer, merged, step)
            except Exception as err:  # disk full raises SafetensorError/RuntimeError, not only OSError
                raise StorageFault(f"{type(err).__name__}: {err}") from err

        written, path = retry(attempt, f"base generation gen-{number}", self.backoff, self.ctx.stop, self.ctx.status)
        if not written:
            log.warning("Rebase at step %d not made (a stop request ended the retries): it is made at the next "
                        "file end", step)
            return
        faults.point("rebase-swap", step)
        rebase.swap(pl_module.model, merged, rebase.adapter_seed(self.seed, number))
        rebase.reset_optimizer(trainer.optimizers[0])
        self._restart_step_count(trainer, step)
        pl_module.rebased(rebase.Generation(number, step, files_done), path)
        self.dm.ledger.files_done[-1].rebased_to = number
        self.ctx.status.update(base_generation=number)
        log.info("Rebased at step %d: the adapter merged into base generation %d (%s) in %.0f ms; a fresh adapter "
                 "and optimizer continue from here", step, number, path, (time.perf_counter() - started) * 1000)
        faults.point("rebase-done", step)

    @staticmethod
    def _restart_step_count(trainer: L.Trainer, step: int) -> None:
        """AdamW counts again from 0: `verify` expects global step - skips - offset."""
        skipped = sum(c.skipped_total for c in trainer.callbacks if isinstance(c, NonFiniteGuard))
        for callback in trainer.callbacks:
            if isinstance(callback, StepOffset):
                callback.offset = step - skipped
