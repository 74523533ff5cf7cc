"""Steady-state training throughput, side by side on identical batches (issue 4, figures 1, 2).

For each model (tiny; SmolLM2-135M when `make smollm2` installed it), in alternating rounds:
- the daemon (a real `lit-continual daemon` process, Lightning) on a file of variable-length
  English from `pydoc_data.topics`, its step times read from its own log;
- a hand-written PyTorch + PEFT loop on the very batches the daemon builds (prebuilt, so the
  loop pays no data cost: the difference is everything the product adds);
- Hugging Face `Trainer` + PEFT on the same prebuilt batches;
  each in a fresh process, like the daemon's, so none runs in a process another has warmed;
- the daemon with `data.packing=true` (non-pad tokens/s against the unpacked daemon and the
  ideal gain 1 / (1 - padding fraction)).
overhead.py measures, inside one process, what the daemon adds per step beyond the model's work.

Usage: python benchmarks/throughput.py [tiny|smollm2 ...]
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SMOLLM2, drain, log_lines, model_available, save, step_times  # noqa: E402

MODELS = {
    # model, batch, max_length, characters per example (min, max), daemon steps, rounds, log every
    "tiny": {"overrides": ["model=tiny"], "batch": 8, "max_length": 256, "chars": (40, 256), "steps": 80,
             "rounds": 5, "log_every": 10},
    "smollm2": {"overrides": SMOLLM2, "batch": 4, "max_length": 128,
                "chars": (120, 560), "steps": 10, "rounds": 5, "log_every": 2},
}


def english_file(path: Path, examples: int, chars: tuple[int, int], seed: int = 0) -> Path:
    """Variable-length pieces of the standard library's pydoc topics (no download)."""
    from pydoc_data.topics import topics

    text = " ".join(" ".join(v.split()) for v in topics.values())
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        for _ in range(examples):
            size = rng.randint(*chars)
            start = rng.randrange(0, len(text) - size)
            handle.write(json.dumps({"text": text[start: start + size]}) + "\n")
    return path


def compose(base: Path, spec: dict, *extra: str):
    from lit_continual.config import compose as compose_config

    return compose_config([f"base_dir={base}", *spec["overrides"], f"data.batch_size={spec['batch']}",
                           f"data.max_length={spec['max_length']}", *extra])


def prebuilt_batches(cfg, data: Path, base: Path, count: int):
    """The daemon's own first `count` batches of `data` (same permutation, same collate)."""
    import os

    import numpy as np

    from lit_continual import components
    from lit_continual.context import RunContext
    from lit_continual.crash_guard import CrashGuard
    from lit_continual.data.file_index import FileIndex
    from lit_continual.data.prepare import shuffle_seed
    from lit_continual.data.stream import ContinualDataModule
    from lit_continual.status import Status
    from lit_continual.stop import StopRequest

    tokenizer = components.model(cfg, base).tokenizer
    dm = ContinualDataModule(cfg, tokenizer, RunContext(base, StopRequest(base / ".stop"), Status(base),
                                                        CrashGuard(base, 3)))
    index = FileIndex.scan(os.open(data, os.O_RDONLY), data.name, dm.spec)
    order = np.random.default_rng(shuffle_seed(cfg.seed, 1)).permutation(index.examples)
    bounds = np.arange(index.examples + 1)
    size = cfg.data.batch_size
    batches = [dm.make_batch(index, order, bounds[i * size: (i + 1) * size + 1]) for i in range(count)]
    for batch in batches:
        batch.pop("real_tokens")
    return batches


def fresh_model(cfg, base: Path):
    import torch

    from lit_continual import components
    from lit_continual.models.lora import apply_lora

    torch.manual_seed(cfg.seed)
    return apply_lora(components.model(cfg, base).model, cfg.lora, cfg.seed)


def hand_loop(cfg, base: Path, batches) -> float:
    """Mean seconds per step (after 2 warm-up steps) of a plain PyTorch + PEFT loop: same loss,
    dropout, clipping, fused AdamW and schedule. A mean, like the daemon's figure from its log."""
    import torch

    from lit_continual import components
    from lit_continual.module import causal_lm_loss

    torch.set_num_threads(cfg.trainer.num_threads)
    model = fresh_model(cfg, base).train()  # LoRA dropout on, as in the daemon
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.lr, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, components.schedule(cfg))
    times = []
    for batch in batches:
        started = time.perf_counter()
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        loss = causal_lm_loss(logits, batch["labels"])  # the same loss the daemon computes
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    return statistics.mean(times[2:])


def hf_trainer(cfg, base: Path, batches) -> float:
    """Mean seconds per step (after 2 warm-up steps) of Hugging Face Trainer + PEFT (its default
    optimizer, fused AdamW) on the same prebuilt batches."""
    import torch
    from transformers import Trainer, TrainerCallback, TrainingArguments

    torch.set_num_threads(cfg.trainer.num_threads)
    stamps: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.perf_counter())

    args = TrainingArguments(output_dir=str(base / "hf"), per_device_train_batch_size=1, max_steps=len(batches),
                             learning_rate=cfg.optim.lr, lr_scheduler_type="constant", max_grad_norm=1.0,
                             save_strategy="no", report_to=[], logging_strategy="no", disable_tqdm=True,
                             use_cpu=True, dataloader_num_workers=0, remove_unused_columns=False, seed=cfg.seed)
    trainer = Trainer(model=fresh_model(cfg, base), args=args, train_dataset=list(batches),
                      data_collator=lambda items: items[0], callbacks=[Clock()])
    stamps.append(time.perf_counter())
    trainer.train()
    return (stamps[-1] - stamps[2]) / (len(stamps) - 3)


def daemon_round(work: Path, spec: dict, data: Path, *extra: str) -> tuple[float, float]:
    """(seconds per step, non-pad tokens/s) of a daemon process, from its log, first interval skipped."""
    base = work / f"daemon-{time.monotonic_ns()}"
    (base / "inbox").mkdir(parents=True)
    (base / "inbox" / data.name).write_bytes(data.read_bytes())
    drain(base, *spec["overrides"], f"data.batch_size={spec['batch']}", f"data.max_length={spec['max_length']}",
          f"logging.every_n_steps={spec['log_every']}", "checkpoint.every_n_steps=100000", *extra)
    steps = step_times(base)[1:]
    per_step = (steps[-1][1] - steps[0][1]) / (steps[-1][0] - steps[0][0])
    tokens = [float(line.split("tokens/s=")[1].split()[0]) for line in log_lines(base) if "tokens/s=" in line][1:]
    return per_step, statistics.median(tokens)


def loop_round(loop: str, name: str, data: Path, work: Path) -> float:
    """Seconds per step of the hand loop or HF Trainer, each in a fresh process like the daemon's."""
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--loop", loop, name, str(data), str(work / "hand")],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def run_loop(loop: str, name: str, data: Path, base: Path) -> None:
    """Child process of loop_round: build the daemon's batches, run one loop, print seconds per step."""
    spec = MODELS[name]
    cfg = compose(base, spec)
    batches = prebuilt_batches(cfg, data, base, spec["steps"])
    print({"hand": hand_loop, "hf_trainer": hf_trainer}[loop](cfg, base, batches))


def padding_fraction(batches) -> float:
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    return 1 - real / sum(b["attention_mask"].numel() for b in batches)


def bench_model(name: str) -> dict:
    spec = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        examples = spec["batch"] * (spec["steps"] + 2)
        data = english_file(work / "data" / "english.jsonl", examples, spec["chars"])
        cfg = compose(work / "hand", spec)
        batches = prebuilt_batches(cfg, data, work / "hand", spec["steps"])
        contestants = {
            "daemon": lambda: daemon_round(work, spec, data),
            "hand": lambda: (loop_round("hand", name, data, work), None),
            "hf_trainer": lambda: (loop_round("hf_trainer", name, data, work), None),
            "daemon_packed": lambda: daemon_round(work, spec, data, "data.packing=true"),
        }
        names = list(contestants)
        rounds = {key: [] for key in names}
        tokens = {"daemon": [], "daemon_packed": []}  # non-pad tokens/s, from the daemons' logs
        for r in range(spec["rounds"]):  # alternate, and rotate who goes first: load and memory state drift
            for key in names[r % len(names):] + names[:r % len(names)]:
                seconds, tok = contestants[key]()
                rounds[key].append(seconds)
                if tok is not None:
                    tokens[key].append(tok)
        pad = padding_fraction(batches)
        ms = {k: [round(v * 1000, 1) for v in values] for k, values in rounds.items()}
        med = {k: statistics.median(v) for k, v in rounds.items()}
        packed_gain = statistics.median(tokens["daemon_packed"]) / statistics.median(tokens["daemon"])
        result = {
            "model": name, "batch": spec["batch"], "max_length": spec["max_length"],
            "ms_per_step_rounds": ms,
            "daemon_over_hand_speed": round(med["hand"] / med["daemon"], 3),
            "daemon_overhead_ms_per_step": round((med["daemon"] - med["hand"]) * 1000, 1),
            "daemon_over_hf_trainer_speed": round(med["hf_trainer"] / med["daemon"], 3),
            "padding_fraction": round(pad, 3),
            "daemon_nonpad_tokens_per_s": round(statistics.median(tokens["daemon"])),
            "packed_nonpad_tokens_per_s": round(statistics.median(tokens["daemon_packed"])),
            "packing_gain": round(packed_gain, 3), "packing_ideal_gain": round(1 / (1 - pad), 3),
            "packing_gain_over_ideal": round(packed_gain * (1 - pad), 3),
        }
    return result


def main() -> None:
    if sys.argv[1:2] == ["--loop"]:
        loop, name, data, base = sys.argv[2:6]
        run_loop(loop, name, Path(data), Path(base))
        return
    names = sys.argv[1:] or list(MODELS)
    for name in names:
        if not model_available(name):
            continue
        save(f"throughput_{name}", bench_model(name))


if __name__ == "__main__":
    main()
