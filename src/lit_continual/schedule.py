"""Learning-rate schedules: pure functions of the global step (nanoGPT style), no hidden state.

Each is a `scheduler._target_`: called with the number of completed optimizer steps, it
returns the multiplier of optim.lr for the next step. Its other keywords are the
scheduler.* keys of its preset.
"""

from __future__ import annotations


def warmup_constant(step: int, warmup_steps: int = 0) -> float:
    """Linear warmup from 0 to 1 over `warmup_steps`, then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def constant(step: int, warmup_steps: int = 0) -> float:
    """1 from the first step (`warmup_steps` is accepted for configs that name it)."""
    return warmup_constant(step, warmup_steps)
