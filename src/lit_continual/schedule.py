"""Learning-rate schedules: pure functions of the global step (nanoGPT style), no hidden state.

Each is a `scheduler._target_`: called with `step`, the number of completed optimizer steps
(so the step logged as N trains at lr x f(N - 1)), it returns the multiplier of optim.lr for
the next step. Its other keywords are the scheduler.* keys of its preset.

A schedule that also takes `file` (a FileSpan) is given the file being trained at every step
(LoRAModule reads it from the batch; its first step is in the ledger, so a restart mid-file
gets the same span). Every other schedule sees the step alone.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class FileSpan:
    """The steps of the file being trained, as a file-aware schedule sees them."""

    first_step: int  # the file's first optimizer step, 1-based as logged (the ledger's first_step)
    steps: int  # optimizer steps the whole file takes


def takes_file(schedule: Callable[..., float]) -> bool:
    """True if `schedule` wants the file being trained (a `file` keyword) besides the step."""
    try:
        return "file" in inspect.signature(schedule).parameters
    except (TypeError, ValueError):
        return False


def warmup_constant(step: int, warmup_steps: int = 0) -> float:
    """Linear warmup from 0 to 1 over `warmup_steps`, then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def constant(step: int, warmup_steps: int = 0) -> float:
    """1 from the first step (`warmup_steps` is accepted for configs that name it)."""
    return warmup_constant(step, warmup_steps)


def inverse_sqrt(step: int, warmup_steps: int = 0, timescale: int | None = None) -> float:
    """Linear warmup, then 1 / sqrt: sqrt(T / (T + step + 1 - W)) with W = max(warmup_steps, 1) and
    T = timescale (default W), i.e. the classic sqrt(W / (step + 1)) shifted so it starts at 1
    once warm. The factor halves after 3 T more steps; it never reaches 0, so it suits a run
    with no known end."""
    if step + 1 < warmup_steps:
        return (step + 1) / warmup_steps
    warm = max(warmup_steps, 1)
    scale = timescale or warm
    return math.sqrt(scale / (scale + step + 1 - warm))


def wsd(step: int, decay_start: int, decay_steps: int, warmup_steps: int = 0, floor: float = 0.0) -> float:
    """Warmup-stable-decay: linear warmup, 1 until `decay_start` completed steps, then a
    (1 - sqrt) cooldown to `floor` over `decay_steps` steps; `floor` from then on."""
    if step < decay_start:
        return warmup_constant(step, warmup_steps)
    progress = min(1.0, (step - decay_start) / decay_steps)
    return floor + (1.0 - floor) * (1.0 - math.sqrt(progress))


def cosine_per_file(step: int, file: FileSpan | None = None, warmup_steps: int = 0, floor: float = 0.0) -> float:
    """Within each file: linear re-warm over `warmup_steps`, then a cosine from 1 towards
    `floor` that reaches it after the file's last step (every step of the file trains at
    > floor). A file shorter than `warmup_steps` never reaches 1. With no file known yet
    (before the first batch) the file is taken to start at step 0 with no end."""
    if file is None:
        return warmup_constant(step, warmup_steps)
    within = max(0, step - (file.first_step - 1))  # completed steps of this file
    if within + 1 < warmup_steps:
        return (within + 1) / warmup_steps
    progress = min(1.0, max(0.0, (within - warmup_steps) / max(file.steps - warmup_steps, 1)))
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
