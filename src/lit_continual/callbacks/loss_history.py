"""`log_history` (trainer_state.json), TensorBoard scalars and plain log lines, every N steps.

Each training entry's loss is the mean training loss over the optimizer steps since the
previous entry, so the curve is the same whether or not the process restarted in between.
Evaluation entries (`eval_loss`, no `loss`) are added by callbacks/evaluation.py.
"""

from __future__ import annotations

import logging
import time

import lightning as L
import torch

from lit_continual.callbacks.nonfinite import NonFiniteGuard
from lit_continual.data.batch import INFO, BatchInfo
from lit_continual.status import Status

log = logging.getLogger("lit_continual")


class LossHistory(L.Callback):
    """Owns the loss curve; its state (history + the partial window) is in every checkpoint."""

    def __init__(self, every_n_steps: int, max_entries: int, status: Status, nonfinite: NonFiniteGuard) -> None:
        self.every_n_steps = every_n_steps
        self.nonfinite = nonfinite  # says whether this step's update was skipped
        self.max_entries = max_entries
        self.status = status
        self.log_history: list[dict] = []
        # Sum of step losses since the previous entry (skipped steps excluded). A float32 tensor on
        # the training device: no host sync per step, and the same arithmetic after a restart.
        self._loss_sum = torch.zeros(())
        self._steps = 0
        self._lr = 0.0
        self._tokens = 0
        self._clock = time.monotonic()
        self._clock_steps = 0

    @property
    def state_key(self) -> str:
        return "LossHistory"  # also the key checkpoints.py splits into trainer_state.json

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._lr = optimizer.param_groups[0]["lr"]  # the LR this step actually uses

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        info: BatchInfo = batch[INFO]
        self._tokens += info.tokens
        if not info.window_end:
            return
        if not self.nonfinite.step_skipped:
            self._loss_sum = self._loss_sum.to(pl_module.window_loss.device) + pl_module.window_loss
            self._steps += 1
        self._clock_steps += 1
        if trainer.global_step % self.every_n_steps == 0:
            self._append(trainer, pl_module)

    def _append(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if not self._steps:
            return  # every step since the previous entry was skipped as non-finite: no loss to report
        loss = float(self._loss_sum) / self._steps
        self._loss_sum, self._steps = torch.zeros(()), 0
        entry = {"step": step, "loss": round(loss, 6), "learning_rate": self._lr}
        self.log_history.append(entry)
        del self.log_history[: -self.max_entries]
        elapsed = max(time.monotonic() - self._clock, 1e-9)
        tokens_per_s, steps_per_s = self._tokens / elapsed, self._clock_steps / elapsed
        self._tokens, self._clock_steps, self._clock = 0, 0, time.monotonic()
        for logger in trainer.loggers:
            logger.log_metrics({"train/loss": loss, "train/learning_rate": self._lr,
                                "train/tokens_per_second": tokens_per_s}, step=step)
        self.status.update(loss=entry["loss"], learning_rate=self._lr,
                           tokens_per_second=round(tokens_per_s, 1))
        fields = self.status.fields
        log.info("step %d/%d file=%s loss=%.4f lr=%.3e tokens/s=%.0f steps/s=%.2f", step,
                 fields["total_steps"], fields["current_file"], loss, self._lr, tokens_per_s, steps_per_s)

    def add(self, entry: dict) -> None:
        """Another callback's entry at the current step (an evaluation's `eval_loss`; it has no
        `loss`, as in Hugging Face's trainer_state.json), kept in the same bounded history."""
        self.log_history.append(entry)
        del self.log_history[: -self.max_entries]

    def exclude(self, seconds: float) -> None:
        """Time spent on something else between steps (an evaluation) is not training time:
        tokens/s and steps/s leave it out."""
        self._clock += seconds

    def state_dict(self) -> dict:
        return {"every_n_steps": self.every_n_steps, "log_history": list(self.log_history),
                "pending": {"loss_sum": float(self._loss_sum), "steps": self._steps}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.log_history = list(state_dict["log_history"])
        self._loss_sum = torch.tensor(float(state_dict["pending"]["loss_sum"]), dtype=torch.float32)
        self._steps = int(state_dict["pending"]["steps"])
