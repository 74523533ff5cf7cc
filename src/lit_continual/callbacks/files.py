"""A file's life in the run: start, ledger advance per trained batch, end, delete; and the
decision to stop. Checkpoints are the checkpointer's job (callbacks/checkpointer.py).

Order at a file's last step: the ledger marks it done and its disposal is decided (both are
in the checkpoint) -> the checkpointer saves that step -> once that save is durable, the
checkpointer tells this callback, which deletes (or moves) the inbox copy. A process killed
in between finds the file in the ledger's done list and only deletes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import lightning as L

from lit_continual import faults
from lit_continual.callbacks.checkpointer import CheckpointListener, newest_name
from lit_continual.context import RunContext
from lit_continual.data.batch import INFO, BatchInfo
from lit_continual.data.stream import ContinualDataModule
from lit_continual.disposal import SKIPPED
from lit_continual.ledger import FileRecord
from lit_continual.status import now

log = logging.getLogger("lit_continual")


@dataclass
class _Finished:
    """A file whose last step is trained, waiting for a durable checkpoint of that step."""

    record: FileRecord
    handle: Any
    step: int


class FileLifecycle(CheckpointListener, L.Callback):
    """Advances the ledger from trained batches, finishes files once saved, decides to stop."""

    def __init__(self, datamodule: ContinualDataModule, ctx: RunContext) -> None:
        self.dm, self.ctx = datamodule, ctx
        self.finished: list[_Finished] = []
        # Examples of the optimizer step in progress: the ledger advances by whole steps, so a
        # checkpoint (even one forced mid-window by a user callback's stop) never counts
        # examples whose update was not applied.
        self.window_examples = self.window_replayed = 0
        self.completed = 0  # files this process trained to their end, durably
        self.skipped = 0  # files an operator skipped in this process (durably)

    @property
    def state_key(self) -> str:
        return "FileLifecycle"

    def on_train_start(self, trainer, pl_module) -> None:
        generation = getattr(pl_module, "generation", None)
        self.ctx.status.update(batch_number=self.dm.ledger.files_started, **self._counts(),  # the restored run's
                               base_generation=generation.number if generation is not None else 0,
                               replay_examples=len(self.dm.replay) if self.dm.replay is not None else 0)

    def _counts(self) -> dict[str, int]:
        """Files done, skipped and failed (abandoned and rejected included) over the whole run."""
        counts = self.dm.ledger.counts.get
        return {"files_done": counts("done", 0), "files_skipped": counts("skipped", 0),
                "files_failed": counts("failed", 0) + counts("abandoned", 0) + counts("rejected", 0)}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        info: BatchInfo = batch[INFO]
        if info.file.status == "skipped":
            return  # prefetched before the skip: the module drops it (LoRAModule.on_train_batch_start)
        if info.first_of_file:
            self._file_started(trainer, info)
        if info.window_start:
            step = trainer.global_step + 1
            self.ctx.guard.training(step, info.file.name, info.file.sha256)
            faults.point("train", step)

    def _file_started(self, trainer: L.Trainer, info: BatchInfo) -> None:
        ledger = self.dm.ledger
        ledger.begin(info.file, step=trainer.global_step + 1)
        record = ledger.current
        remaining = record.trainable - record.examples_trained
        end = trainer.global_step + info.file_steps_left
        newest = newest_name(trainer)
        if newest is not None:
            log.info("Resuming from checkpoint: %s", newest)
        formats = ", ".join(f"{kind} {count}" for kind, count in sorted(record.formats.items())) or "unknown"
        held = f", {record.held_out} held out as its probe" if record.held_out else ""
        log.info("File %s (#%d): %d examples (formats: %s)%s, %d left, steps %d-%d", record.name, record.ordinal,
                 record.examples, formats, held, remaining, trainer.global_step + 1, end)
        self.ctx.status.update(status="training", current_file=record.name, total_steps=end,
                               current_step=trainer.global_step, batch_number=record.ordinal, write=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        info: BatchInfo = batch[INFO]
        self.window_examples += info.examples
        self.window_replayed += info.replayed
        if not info.window_end:
            return
        self.dm.ledger.advance(self.window_examples, self.window_replayed)
        self.window_examples = self.window_replayed = 0
        step = trainer.global_step
        self.ctx.status.update(current_step=step, last_step_at=now())
        faults.point("step", step)
        if info.file_end:
            self._file_trained(trainer, info)
        if self.ctx.stop.requested:  # stop at this step, not after the one the loader already fetched
            self._stop(trainer, self.ctx.stop.reason)

    def _file_trained(self, trainer: L.Trainer, info: BatchInfo) -> None:
        step = trainer.global_step
        record = self.dm.ledger.finish(step, status="abandoned" if info.abandoned else "done")
        record.disposal = self.dm.feed.decide(info.handle, info.abandoned)  # in the checkpoint: replayed after a kill
        self._offer_to_replay(record, info.handle, step)
        self.ctx.guard.idle()
        self.finished.append(_Finished(record, info.handle, step))

    def skip(self, trainer: L.Trainer, info: BatchInfo) -> None:
        """An operator skipped the rest of this file: it ends at this step, recorded `skipped`
        with what was trained of it; moved to skipped/ once this step's checkpoint is durable."""
        step = trainer.global_step
        record = self.dm.ledger.finish(step, status="skipped")
        record.disposal = SKIPPED
        self._offer_to_replay(record, info.handle, step)
        self.ctx.guard.idle()
        self.finished.append(_Finished(record, info.handle, step))
        log.info("Skipping %s at step %d: %d of %d examples trained (steps %s-%d)", record.name, step,
                 record.examples_trained, record.examples, record.first_step, step)

    def _offer_to_replay(self, record: FileRecord, handle: Any, step: int) -> None:
        """The file's trained examples join the replay reservoir (before this step's checkpoint,
        which holds the reservoir). A segment that cannot be written leaves the reservoir as it
        was: the run goes on without this file's examples in it."""
        replay, prepared = self.dm.replay, self.dm.feed.live.get(handle)
        if replay is None or prepared is None or prepared.order is None:
            return
        try:
            kept = replay.offer(record, prepared.index, prepared.order[: record.examples_trained])
        except OSError as err:
            log.error("Replay: the examples of %s could not be added to the reservoir: %s: %s", record.name,
                      type(err).__name__, err)
            self.ctx.status.warn(f"replay: {record.name} was not added to the reservoir: {err}")
            return
        self.ctx.status.update(replay_examples=len(replay))
        faults.point("replay", step)
        log.info("Replay: %d of the %d trained examples of %s joined the reservoir (%d of %d slots)", kept,
                 record.examples_trained, record.name, len(replay), replay.capacity)

    def on_checkpoint_saved(self, trainer: L.Trainer, step: int) -> None:
        """A checkpoint of `step` is durable: the files trained up to it leave the inbox."""
        done = [f for f in self.finished if f.step <= step]
        self.finished = [f for f in self.finished if f.step > step]
        for item in done:
            record = item.record
            if record.status == "skipped":
                self.skipped += 1  # the move to skipped/ logs it
            elif record.status == "abandoned":
                log.error("File %s abandoned at step %d with %d example(s) untrained: it could not be read as "
                          "it was claimed", record.name, item.step, record.trainable - record.examples_trained)
            else:
                self.completed += 1
                held = f" (+{record.held_out} held out as its probe)" if record.held_out else ""
                log.info("File %s done: steps %s-%d, %d examples%s", record.name, record.first_step, item.step,
                         record.examples_trained, held)
            faults.point("before-delete", item.step)
            self.dm.feed.finish(item.handle, record)
            self.ctx.status.update(current_file=None, total_steps=item.step, write=True, **self._counts())

    def after_checkpoint(self, trainer: L.Trainer) -> None:
        if self.ctx.stop.requested:  # asked while the checkpoint was being written
            self._stop(trainer, self.ctx.stop.reason)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # An epoch ends whenever the feed has nothing ready; stop only if asked or drained.
        self.ctx.guard.idle()
        if self.ctx.stop.requested or self.dm.feed.finished:
            done = "file done" if self.dm.single_file else "inbox drained"
            self._stop(trainer, self.ctx.stop.reason if self.ctx.stop.requested else done)

    def _stop(self, trainer: L.Trainer, why: str) -> None:
        """Stop at this step; the checkpointer (called after this callback) saves it."""
        if trainer.should_stop:
            return  # already stopping (at a step end; the epoch end comes next)
        log.info("Stopping (%s) at step %d", why, trainer.global_step)
        self.ctx.status.update(status="stopping", write=True)
        self.ctx.guard.idle()
        trainer.should_stop = True
