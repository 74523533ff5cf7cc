"""Operator requests carried out at the end of an optimizer step (lit_continual/operations.py
sees them): skip the current file, take a snapshot, consolidate, pause.

Each first makes the step durable (the checkpointer saves it, once per step), then acts. A skip
is recorded in the ledger before that checkpoint, like a file end, so a process killed between
the checkpoint and the move to skipped/ replays the move and never retrains the file; the
request's identity is saved too, so the leftover `.skip` of such a kill is not applied to the
next file.
"""

from __future__ import annotations

import logging

import lightning as L

from lit_continual.callbacks.files import FileLifecycle
from lit_continual.data.batch import INFO, BatchInfo
from lit_continual.operations import Operations

log = logging.getLogger("lit_continual")


class OperatorControls(L.Callback):
    """Runs after FileLifecycle (the ledger has advanced) and before the checkpointer."""

    def __init__(self, ops: Operations, lifecycle: FileLifecycle) -> None:
        self.ops, self.lifecycle = ops, lifecycle

    @property
    def state_key(self) -> str:
        return "OperatorControls"

    def state_dict(self) -> dict:
        return {"skip_consumed": self.ops.consumed_skip}

    def load_state_dict(self, state_dict: dict) -> None:
        self.ops.consumed_skip = state_dict.get("skip_consumed")

    def on_train_start(self, trainer, pl_module) -> None:
        self.ops.forget_consumed_skip()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        info: BatchInfo = batch[INFO]
        if not info.window_end or trainer.should_stop or not self.ops.wanted(info.file_end):
            return  # a stop comes first: its checkpoint is written and the requests wait for the next start
        skipping = self.ops.skip_wanted(info.file.name)
        if skipping:
            if info.file_end:
                log.info("Nothing left to skip: %s ended at this step", info.file.name)
            else:
                self.lifecycle.skip(trainer, info)
            self.ops.consumed_skip = self.ops.skip[0]  # saved in the checkpoint below
        if not trainer.checkpoint_callback.save(trainer, pl_module):
            return  # a stop ended the checkpoint's retries: nothing is carried out
        if skipping:
            self.ops.skip_done()
        self.ops.at_boundary(file_end=info.file_end or skipping)
        self.lifecycle.after_checkpoint(trainer)  # a stop that came while paused (or consolidating): at this step
