"""Learning-rate schedules: pure functions of the global step (nanoGPT style), no hidden state."""

from __future__ import annotations

from collections.abc import Callable

from omegaconf import DictConfig


def lr_factor(cfg: DictConfig) -> Callable[[int], float]:
    """Multiplier of optim.lr for the optimizer step that follows `step` completed steps."""
    warmup = int(cfg.warmup_steps)
    if cfg.name in ("warmup_constant", "constant"):
        return lambda step: min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    raise ValueError(f"scheduler.name={cfg.name!r}: unknown schedule (warmup_constant, constant)")
