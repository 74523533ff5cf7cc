"""What held-out evaluation and live samples cost (issue 11), at the eval defaults.

A fresh daemon process drains one N-line training file with an N-line `DIR/eval/held_out.jsonl`
(same kind of lines) and two sample prompts in place. At the defaults the eval file is
evaluated once per file (at its end) in batches of data.batch_size, so the figure is
  (seconds of one evaluation) / (seconds of training the file).
On a shared machine the load changes from minute to minute, so the evaluations are spread
over the file (eval.every_n_steps = steps / EVALS) and both sides are measured over the same
minutes in one process: eval = the mean of the seconds each `eval step` line reports (reading
the file included); train = from the `File ... (#1)` line to the last `eval step` line, minus
all evaluation seconds; samples = from the last `eval step` line to the last `sample` line
(2 prompts x 64 new tokens, at the file's end). The ratio scales with (eval lines / file
lines) and with the number of evaluations per file.

Usage: python benchmarks/evaluation.py [tiny|smollm2] [lines] [rounds]   (default: tiny 1000 3)
"""

from __future__ import annotations

import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOLLM2, drain, log_lines, model_available, save, stamp  # noqa: E402

from lit_continual.sample_data import write_file  # noqa: E402

EVAL_LINE = re.compile(r" INFO eval step (\d+): loss=([\d.]+) .* in ([\d.]+) s$")
PROMPTS = "eval.sample_prompts=[The cat,A dog sees]"


EVALS = 10  # evaluations per file, spread evenly over it


def one_round(work: Path, model: str, lines: int, seed: int) -> dict:
    base = work / f"run-{seed}"
    write_file(base / "inbox" / "one.jsonl", lines, seed=seed)
    write_file(base / "eval" / "held_out.jsonl", lines, seed=seed + 1000)
    steps = -(-lines // 8)  # data.batch_size 8
    overrides = SMOLLM2 if model == "smollm2" else ["model=tiny"]
    drain(base, *overrides, PROMPTS, "logging.every_n_steps=1000", f"eval.every_n_steps={max(1, steps // EVALS)}")
    log = log_lines(base)
    started = stamp(next(line for line in log if " INFO File one.jsonl (#1)" in line))
    evals = [line for line in log if EVAL_LINE.search(line)]
    eval_seconds = [float(EVAL_LINE.search(line).group(3)) for line in evals]
    samples = [line for line in log if " INFO sample " in line]
    train_seconds = stamp(evals[-1]) - started - sum(eval_seconds)
    shutil.rmtree(base, ignore_errors=True)
    return {"train_s": round(train_seconds, 3), "evals": len(evals), "eval_s": round(statistics.mean(eval_seconds), 3),
            "samples_s": round(stamp(samples[-1]) - stamp(evals[-1]), 3) if samples else None,
            "eval_over_train": round(statistics.mean(eval_seconds) / train_seconds, 4)}


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "tiny"
    lines = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    if not model_available(model):
        return
    with tempfile.TemporaryDirectory(prefix="lit-continual-eval-") as tmp:
        results = [one_round(Path(tmp), model, lines, seed) for seed in range(1, rounds + 1)]
    fractions = [r["eval_over_train"] for r in results]
    save(f"evaluation_{model}", {
        "model": model, "file_lines": lines, "eval_lines": lines, "rounds": rounds,
        "eval_over_train_median": statistics.median(fractions), "eval_over_train_range": [min(fractions),
                                                                                         max(fractions)],
        "train_s_median": statistics.median(r["train_s"] for r in results),
        "eval_s_median": statistics.median(r["eval_s"] for r in results),
        "samples_s_median": statistics.median(r["samples_s"] for r in results if r["samples_s"] is not None),
        "rounds_detail": results})


if __name__ == "__main__":
    main()
