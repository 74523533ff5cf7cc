"""Non-finite loss or gradient: skip that optimizer step; too many in a row stop the run.

The check runs after backward and before the optimizer (and before gradient clipping). A
skipped step still counts as a global step (the data position and the LR schedule move on),
but AdamW sees no gradient, so its per-parameter `step` lags the global step by the number
of skipped steps (kept in the checkpoint as this callback's state).
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from lit_continual.status import Status

log = logging.getLogger("lit_continual")


class NonFiniteError(RuntimeError):
    """`daemon.max_nonfinite` consecutive non-finite steps: the run stops with status error."""


class NonFiniteGuard(L.Callback):
    """Drops the update of any step whose loss or gradients are not finite."""

    def __init__(self, max_consecutive: int, status: Status | None = None) -> None:
        self.max_consecutive = max_consecutive
        self.status = status  # gets `nonfinite_steps` (the metrics endpoint reads it)
        self.consecutive = 0
        self.skipped_total = 0
        self.step_skipped = False  # whether the update of the step in progress was dropped

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        checks = [torch.isfinite(pl_module.window_loss).all()] + [torch.isfinite(g).all() for g in grads]
        finite = bool(torch.stack(checks).all())  # one host sync per optimizer step
        self.step_skipped = not finite
        if finite:
            self.consecutive = 0
            return
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # AdamW skips parameters without a gradient: no update, no moment change
        self.consecutive += 1
        self.skipped_total += 1
        self._report()
        step = trainer.global_step + 1
        log.warning("Non-finite loss or gradient at step %d: optimizer step skipped (%d in a row, %d in all)",
                    step, self.consecutive, self.skipped_total)
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(f"{self.consecutive} consecutive non-finite steps (daemon.max_nonfinite="
                                 f"{self.max_consecutive}) at step {step}: stopping without a checkpoint")

    def state_dict(self) -> dict:
        return {"consecutive": self.consecutive, "skipped_total": self.skipped_total}

    def load_state_dict(self, state_dict: dict) -> None:
        self.consecutive = int(state_dict["consecutive"])
        self.skipped_total = int(state_dict["skipped_total"])
        self._report()

    def _report(self) -> None:
        if self.status is not None:
            self.status.update(nonfinite_steps=self.skipped_total)
