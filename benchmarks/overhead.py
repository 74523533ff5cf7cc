"""Where a daemon step's time goes, measured inside one process (issue 4, figures 1 and 8).

Run-to-run noise on this shared machine is ±10-20 % for the same loop, which hides a few
per cent of framework overhead in side-by-side ratios (throughput.py). Here the library
function `lit_continual.run.train` runs in this process with clocks around its parts, so the
product's own cost is measured directly rather than as a difference of two noisy runs:

- model work: forward, backward, gradient clipping and the optimizer step — what the hand
  loop also does, per optimizer step;
- everything else per step (Lightning's loop and hooks, our callbacks, batch building,
  logging): the daemon's overhead over a hand loop, in ms and as a share of the step;
- logging (loss history, TensorBoard, status) and batch building (read by offset, tokenize,
  collate) as shares of fit() time, each timed with perf_counter around the code itself.

Usage: python benchmarks/overhead.py [tiny|smollm2 ...]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import model_available, save  # noqa: E402
from throughput import MODELS, compose, english_file  # noqa: E402


def step_clock():
    """A Lightning callback stamping each phase of every optimizer step (accumulation 1)."""
    import lightning as L

    class StepClock(L.Callback):
        def __init__(self) -> None:
            self.steps: list[dict] = []

        def _mark(self, key: str) -> None:
            if key == "start":
                self.steps.append({})
            self.steps[-1][key] = time.perf_counter()

        def on_train_batch_start(self, *args) -> None:
            self._mark("start")

        def on_before_backward(self, *args) -> None:
            self._mark("forward_done")

        def on_after_backward(self, *args) -> None:
            self._mark("backward_done")

        def on_before_optimizer_step(self, *args) -> None:
            self._mark("clip_start")  # Lightning clips right after this hook, then AdamW updates

    return StepClock()


def timed(spent: dict, owner, name: str, bucket: str):
    """Wrap owner.name to add its wall time to spent[bucket]; return the original."""
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent[bucket] += time.perf_counter() - started

    setattr(owner, name, wrapper)
    return original


def measure(name: str) -> dict:
    import lightning as L
    import torch

    from lit_continual.callbacks.loss_history import LossHistory
    from lit_continual.data.stream import ContinualDataModule
    from lit_continual.run import train
    from lit_continual.status import Status

    spec = MODELS[name]
    clock = step_clock()
    spent = {"logging": 0.0, "batches": 0.0, "fit": 0.0}
    original_init = L.Trainer.__init__

    def init_with_clock(self, *args, **kwargs):
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), clock]
        original_init(self, *args, **kwargs)

    saved = [(L.Trainer, "__init__", original_init),
             (LossHistory, "on_train_batch_end", timed(spent, LossHistory, "on_train_batch_end", "logging")),
             (Status, "update", timed(spent, Status, "update", "logging")),
             (Status, "write", timed(spent, Status, "write", "logging")),
             (ContinualDataModule, "make_batch", timed(spent, ContinualDataModule, "make_batch", "batches")),
             (L.Trainer, "fit", timed(spent, L.Trainer, "fit", "fit"))]
    L.Trainer.__init__ = init_with_clock
    # Lightning runs forward and backward in a closure inside optimizer.step(): the step is over
    # when AdamW.step returns.
    original_step = torch.optim.AdamW.step

    def step_then_mark(self, *args, **kwargs):
        result = original_step(self, *args, **kwargs)
        clock._mark("optimizer_done")
        return result

    saved.append((torch.optim.AdamW, "step", original_step))
    torch.optim.AdamW.step = step_then_mark
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            english_file(base / "inbox" / "english.jsonl", spec["batch"] * (spec["steps"] + 2), spec["chars"])
            train(compose(base, spec, "daemon.exit_when_idle=true", "daemon.settle_seconds=0",
                          "checkpoint.every_n_steps=100000"))
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)
    # Step i spans start_i -> start_{i+1}; the first 2 are warm-up, the last has no successor.
    steps = [(a, b["start"]) for a, b in zip(clock.steps[2:-1], clock.steps[3:], strict=False)]
    span = statistics.mean(nxt - s["start"] for s, nxt in steps)
    model = statistics.mean((s["backward_done"] - s["start"]) + (s["optimizer_done"] - s["clip_start"])
                            for s, _ in steps)
    return {"model": name, "steps_measured": len(steps), "ms_per_step": round(span * 1000, 1),
            "model_work_ms_per_step": round(model * 1000, 1),
            "overhead_ms_per_step": round((span - model) * 1000, 2),
            "overhead_share_of_step": round((span - model) / span, 4),
            "logging_share_of_fit": round(spent["logging"] / spent["fit"], 4),
            "batch_building_share_of_fit": round(spent["batches"] / spent["fit"], 4)}


def main() -> None:
    results = {}
    for name in sys.argv[1:] or list(MODELS):
        if not model_available(name):
            continue
        results[name] = measure(name)
    save("overhead", results)


if __name__ == "__main__":
    main()
