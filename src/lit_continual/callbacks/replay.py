"""The replay reservoir as run state: saved in every checkpoint (`replay.json`), restored on
resume, and its segments under DIR/replay/ deleted once nothing refers to them (data/replay.py).

The reservoir is filled by FileLifecycle at each file's end (before that step's checkpoint) and
drawn from by the stream; this callback only carries it across processes.
"""

from __future__ import annotations

import logging

import lightning as L

from lit_continual import checkpoints
from lit_continual.callbacks.checkpointer import CheckpointListener
from lit_continual.context import RunContext
from lit_continual.data.replay import collect_garbage
from lit_continual.data.stream import ContinualDataModule

log = logging.getLogger("lit_continual")


class ReplayBuffer(CheckpointListener, L.Callback):
    """Saves and restores the DataModule's reservoir; removes segments no one refers to."""

    def __init__(self, datamodule: ContinualDataModule, ctx: RunContext) -> None:
        self.dm, self.ctx = datamodule, ctx

    @property
    def state_key(self) -> str:
        return checkpoints.REPLAY_KEY

    def state_dict(self) -> dict:
        return self.dm.replay.state_dict() if self.dm.replay is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        if self.dm.replay is not None and state_dict:
            self.dm.replay.load_state_dict(state_dict)

    def on_train_start(self, trainer, pl_module) -> None:
        if self.dm.replay is not None and len(self.dm.replay):
            log.info("Replay: the reservoir holds %d examples of %d file(s); %s of each batch is replayed",
                     len(self.dm.replay), len(self.dm.replay.segments), self.dm.allotment.fraction)

    def on_checkpoint_saved(self, trainer: L.Trainer, step: int) -> None:
        """Retention just ran: segments that neither the run nor a kept checkpoint uses go."""
        in_use = set(self.dm.replay.segments) if self.dm.replay is not None else set()
        removed = collect_garbage(self.ctx.base_dir, in_use, checkpoints.complete_checkpoints(self.ctx.models_dir))
        if removed:
            log.info("Replay: removed %d segment(s) no checkpoint refers to: %s", len(removed), ", ".join(removed))
