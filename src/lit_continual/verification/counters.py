"""The optimizer's and the scheduler's own step counters against the global step.

AdamW counts the updates it applied: global step - the steps NonFiniteGuard skipped (their
update was dropped, see callbacks/nonfinite.py) - a recorded offset (an adopted or rebased
optimizer whose count started elsewhere: `run_state.pt` callbacks[OFFSET_STATE][OFFSET_FIELD]).
Its count is a float32 tensor: past 2^24 adding 1 no longer changes it, so it stays at 2^24.
SGD keeps no count (not applicable). The LR scheduler's `last_epoch` is the global step itself.
"""

from __future__ import annotations

from pathlib import Path

from lit_continual import checkpoints
from lit_continual.callbacks.step_offset import FIELD as OFFSET_FIELD
from lit_continual.callbacks.step_offset import STATE_KEY as OFFSET_STATE
from lit_continual.safe_load import load_tensors
from lit_continual.verification import Check, verdict
from lit_continual.verification.state import NO_CHECKPOINT
from lit_continual.verification.survey import Survey

FLOAT32_EXACT = 2**24
NONFINITE_STATE = "NonFiniteGuard"  # its state_key; it stores skipped_total


def optimizer_step(survey: Survey) -> Check:
    """AdamW `step` = global step - non-finite skips - recorded offset, in every intact checkpoint."""
    name = "optimizer-step"
    if not survey.intact:
        return Check(name, False, NO_CHECKPOINT)
    problems, shown = [], []
    for path in survey.intact:
        try:
            problem, said = _optimizer(path, checkpoints.step_of(path))
        except Exception as err:  # a file the manifest vouches for but torch cannot read
            problem, said = f"{path.name}: cannot read it: {type(err).__name__}: {str(err).splitlines()[0]}", None
        problems += [problem] if problem else []
        shown += [said] if said else []
    if not shown and not problems:
        return Check(name, True, "not applicable: the optimizer keeps no step count (e.g. SGD)")
    passed = f"{shown[-1]}; {len(survey.intact)} checkpoint(s) checked" if shown else ""
    return verdict(name, problems, passed)


def _optimizer(path: Path, step: int) -> tuple[str | None, str | None]:
    """(problem, what was compared) for one checkpoint; (None, None) if it keeps no count."""
    import torch

    optimizer = load_tensors(path / checkpoints.OPTIMIZER)
    callbacks = load_tensors(path / checkpoints.RUN_STATE).get("callbacks") or {}
    skipped = int((callbacks.get(NONFINITE_STATE) or {}).get("skipped_total", 0))
    offset = int((callbacks.get(OFFSET_STATE) or {}).get(OFFSET_FIELD, 0))
    expected = step - skipped - offset
    counts = [s["step"] for s in optimizer["state"].values() if "step" in s]
    if not counts:
        keeps_count = any("betas" in group for group in optimizer["param_groups"])
        if keeps_count and expected > 0:
            return f"{path.name}: {checkpoints.OPTIMIZER} holds no step count at global step {step}", None
        return None, None
    float32 = any(isinstance(c, torch.Tensor) and c.dtype == torch.float32 for c in counts)
    seen = min(expected, FLOAT32_EXACT) if float32 else expected
    values = sorted({float(c) for c in counts})
    formula = f"global step {step} - {skipped} non-finite skip(s)" + (f" - offset {offset}" if offset else "")
    saturated = " (float32: it stays at 2^24)" if float32 and expected > FLOAT32_EXACT else ""
    if values != [float(seen)]:
        found = ", ".join(f"{v:.0f}" for v in values)
        return f"{path.name}: optimizer step {found} != {formula} = {seen}{saturated}", None
    return None, f"{path.name}: optimizer step {seen} = {formula}{saturated}"


def scheduler_step(survey: Survey) -> Check:
    """The LR scheduler's `last_epoch` = the global step (the LR is a function of the step)."""
    name = "scheduler-step"
    if not survey.intact:
        return Check(name, False, NO_CHECKPOINT)
    problems, compared = [], 0
    for path in survey.intact:
        step = checkpoints.step_of(path)
        try:
            last = load_tensors(path / checkpoints.SCHEDULER).get("last_epoch")
        except Exception as err:
            problems.append(f"{path.name}: cannot read it: {type(err).__name__}: {str(err).splitlines()[0]}")
            continue
        if last is None:
            continue
        compared += 1
        if int(last) != step:
            problems.append(f"{path.name}: scheduler last_epoch {int(last)} != global step {step}")
    if not compared and not problems:
        return Check(name, True, "not applicable: the scheduler keeps no last_epoch")
    return verdict(name, problems, f"last_epoch = global step in {compared} checkpoint(s) "
                                   f"({survey.newest.name}: {checkpoints.step_of(survey.newest)})")
