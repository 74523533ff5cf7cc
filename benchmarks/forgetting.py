"""Forgetting with and without replay: two synthetic domains with no shared words, the tiny
model (init range 0.2, LoRA on all projections), 30 optimizer steps on domain A then 30 on
domain B (the same file in every run, so with replay it takes more steps: 32 at 0.05, 40 at 0.25),
with `data.replay_fraction` 0, 0.05 and 0.25. The eval losses on held-out A and B examples come
from the run's own evaluation at each file end (DIR/eval/A.jsonl, B.jsonl).

    python benchmarks/forgetting.py [--seeds 10] [--json out.json]

Forgetting of A = its eval loss after file B - its eval loss after file A (Avalanche's
definition, for a loss). With --equal-steps, replay 0.25 also runs on a B file cut to 180 lines,
so that B takes the same 30 steps as without replay (equal compute, fewer B examples).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

STEPS, BATCH = 30, 8
WORDS_A = ["apple", "river", "stone", "candle", "forest", "violin", "mirror", "garden", "lantern", "harbor",
           "meadow", "pillow"]
WORDS_B = ["seven", "quartz", "jumbo", "xylem", "fizz", "kudzu", "whisk", "zephyr", "bluff", "oxbow",
           "glyph", "nymph"]
FRACTIONS = (0.0, 0.05, 0.25)


def domain_lines(words: list[str], count: int, rng: random.Random) -> list[str]:
    """Sentences that walk the domain's words in its fixed cyclic order from a random start."""
    lines = []
    for _ in range(count):
        start, length = rng.randrange(len(words)), rng.randint(8, 14)
        lines.append(json.dumps({"text": " ".join(words[(start + i) % len(words)] for i in range(length))}))
    return lines


def write(path: Path, lines: list[str], age: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))


def measure(root: Path, seed: int, fraction: float, threads: int = 2, equal_steps: bool = False) -> dict:
    """One run: {"fraction", "seed", "a_after_a", "b_after_a", "a_after_b", "b_after_b", "forgetting",
    "steps" (the global step at the end of each file)}."""
    from lit_continual.config import compose
    from lit_continual.run import train

    base = root / f"seed{seed}-replay{fraction}{'-equal' if equal_steps else ''}"
    rng = random.Random(seed)
    write(base / "eval" / "A.jsonl", domain_lines(WORDS_A, 32, rng), 0)
    write(base / "eval" / "B.jsonl", domain_lines(WORDS_B, 32, rng), 0)
    write(base / "inbox" / "a.jsonl", domain_lines(WORDS_A, STEPS * BATCH, rng), 20)
    b_lines = round(STEPS * BATCH * (1 - fraction)) if equal_steps else STEPS * BATCH  # equal compute: fewer B lines
    write(base / "inbox" / "b.jsonl", domain_lines(WORDS_B, b_lines, rng), 10)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = train(compose([f"base_dir={base}", f"seed={seed}", "daemon.exit_when_idle=true",
                              "daemon.settle_seconds=0.1", "daemon.poll_seconds=0.1", f"data.batch_size={BATCH}",
                              f"data.replay_fraction={fraction}", f"trainer.num_threads={threads}",
                              "logging.progress_bar=false"]))
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    if code != 0:
        raise RuntimeError(f"the run in {base} exited {code}")
    newest = max((base / "current_model").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    history = json.loads((newest / "trainer_state.json").read_text())["log_history"]
    evals = [e for e in history if "eval_losses" in e]
    after_a, after_b = evals[-2]["eval_losses"], evals[-1]["eval_losses"]
    steps = [e["step"] for e in evals[-2:]]
    return {"fraction": fraction, "seed": seed, "a_after_a": after_a["A"], "b_after_a": after_a["B"],
            "a_after_b": after_b["A"], "b_after_b": after_b["B"], "forgetting": after_b["A"] - after_a["A"],
            "steps": steps, "b_lines": b_lines}


def table(results: list[dict]) -> str:
    """A Markdown table: eval loss on A and B after each file, mean over seeds per replay fraction."""
    keys = ("a_after_a", "b_after_a", "a_after_b", "b_after_b", "forgetting")
    seeds = len({r["seed"] for r in results})
    rows = [f"| replay_fraction | steps (A, B) | after A: loss on A / B | after B: loss on A / B | forgetting of A "
            f"(mean of {seeds} seeds, min–max) |", "|---:|---:|---:|---:|---:|"]
    for fraction, b_lines in sorted({(r["fraction"], r.get("b_lines", STEPS * BATCH)) for r in results},
                                    key=lambda k: (k[0], -k[1])):
        mine = [r for r in results if (r["fraction"], r.get("b_lines", STEPS * BATCH)) == (fraction, b_lines)]
        m = {k: statistics.fmean(r[k] for r in mine) for k in keys}
        low, high = min(r["forgetting"] for r in mine), max(r["forgetting"] for r in mine)
        first, last = mine[0]["steps"]
        label = f"{fraction}" + (f" (B: {b_lines} lines)" if b_lines != STEPS * BATCH else "")
        rows.append(f"| {label} | {first}, {last - first} | {m['a_after_a']:.3f} / {m['b_after_a']:.3f} | "
                    f"{m['a_after_b']:.3f} / {m['b_after_b']:.3f} | {m['forgetting']:.3f} ({low:.3f} to {high:.3f}) |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--json", type=Path, help="write the per-run figures here")
    parser.add_argument("--equal-steps", action="store_true",
                        help=f"also run replay 0.25 with B cut to {round(STEPS * BATCH * 0.75)} lines "
                             "(30 steps, as without replay)")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("lit_continual").setLevel(logging.WARNING)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            for fraction in FRACTIONS:
                results.append(measure(Path(tmp), seed, fraction))
                print(json.dumps(results[-1]), file=sys.stderr)
            if args.equal_steps:
                results.append(measure(Path(tmp), seed, 0.25, equal_steps=True))
                print(json.dumps(results[-1]), file=sys.stderr)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"seeds": args.seeds, "runs": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
