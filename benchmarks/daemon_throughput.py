"""`make bench`: the figures of the core issue, measured side by side in one run.

- daemon steps/s and tokens/s against a hand-written PyTorch loop on the same model and
  batches (alternating rounds; the ratio is the figure, absolute times are machine noise);
- time from a file landing in the inbox to its first optimizer step (default settle 2 s, and
  settle 0.2 s to show the daemon's own share);
- time from `.stop` mid-file to the process exit;
- checkpoint size against the adapter size (and against the frozen base it never contains).

Writes benchmarks/results/latest.json and prints a table.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
LINES = 2000  # 250 steps per file at batch 8
ROUNDS = 2
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lit_continual", *args], capture_output=True, text=True,
                          cwd=REPO, check=True, **kwargs)


def _stamp(line: str) -> float:
    return datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _log(base: Path) -> list[str]:
    return "".join(p.read_text() for p in sorted((base / "logs").glob("*.log"))).splitlines()


def daemon_round(work: Path) -> dict:
    """Two files through a draining daemon; throughput from its own log timestamps."""
    base = work / f"daemon-{time.monotonic_ns()}"
    _cli("sample-data", str(base / "inbox"), "--files", "2", "--lines", str(LINES))
    _cli("daemon", "--base-dir", str(base), "daemon.exit_when_idle=true", "daemon.settle_seconds=0")
    lines = _log(base)
    first = next(_stamp(line) for line in lines if " INFO File " in line and "examples," in line)
    last = [_stamp(line) for line in lines if " done: steps " in line][-1]
    steps = 2 * LINES // 8
    tokens = [float(m.group(1)) for line in lines if (m := re.search(r"tokens/s=(\d+)", line))]
    return {"steps_per_s": steps / (last - first), "tokens_per_s_logged_median": statistics.median(tokens),
            "base": str(base)}


def raw_round() -> dict:
    """The same model, LoRA, batches and optimizer in a plain PyTorch loop (no Lightning, no I/O)."""
    import torch

    from lit_continual.config import compose
    from lit_continual.data.file_index import FileIndex
    from lit_continual.data.records import Encoder, RecordSpec, collate
    from lit_continual.models import apply_lora, load_base
    from lit_continual.sample_data import write_file

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        cfg = compose([f"base_dir={base}"])
        torch.set_num_threads(cfg.trainer.num_threads)
        model, tokenizer, _ = load_base(cfg, base)
        model = apply_lora(model, cfg.lora, cfg.seed)
        index = FileIndex.scan(write_file(base / "f.jsonl", LINES, 0), RecordSpec())
        fmt = Encoder(tokenizer, cfg.data.max_length)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.optim.lr)
        steps = LINES // 8
        start = time.perf_counter()
        tokens = 0
        for step in range(steps):
            records = index.read(range(step * 8, step * 8 + 8), RecordSpec())
            batch = collate(fmt.encode(records), tokenizer.pad_token_id)
            tokens += int(batch["attention_mask"].sum())
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
        elapsed = time.perf_counter() - start
    return {"steps_per_s": steps / elapsed, "tokens_per_s": tokens / elapsed}


def landing_latency(work: Path, settle: float) -> float:
    """Seconds from a file's rename into inbox/ to the log line of its first step."""
    base = work / f"latency-{settle}"
    proc = subprocess.Popen([sys.executable, "-m", "lit_continual", "daemon", "--base-dir", str(base),
                             f"daemon.settle_seconds={settle}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        status = base / "status" / "training_status.json"
        while not (status.exists() and json.loads(status.read_text())["status"] == "idle"):
            time.sleep(0.05)
        _cli("sample-data", str(base / "staging"), "--files", "1", "--lines", "80")
        landed = time.time()
        (base / "staging" / "batch_1.jsonl").rename(base / "inbox" / "batch_1.jsonl")
        while not any(" INFO File batch_1.jsonl " in line for line in _log(base)):
            time.sleep(0.05)
        started = next(_stamp(line) for line in _log(base) if " INFO File batch_1.jsonl " in line)
        (base / ".stop").touch()
        proc.wait(timeout=60)
        return started - landed
    finally:
        proc.kill()


def stop_latency(work: Path) -> float:
    """Seconds from `.stop` (mid-file) to the daemon's exit, checkpoint included."""
    base = work / "stop"
    _cli("sample-data", str(base / "inbox"), "--files", "1", "--lines", "8000")
    proc = subprocess.Popen([sys.executable, "-m", "lit_continual", "daemon", "--base-dir", str(base),
                             "daemon.settle_seconds=0"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not any(" INFO step 50/" in line for line in (_log(base) if (base / "logs").exists() else [])):
        time.sleep(0.05)
    asked = time.monotonic()
    (base / ".stop").touch()
    proc.wait(timeout=60)
    return time.monotonic() - asked


def checkpoint_sizes(base: Path) -> dict:
    ckpt = max((base / "current_model").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    files = {p.name: p.stat().st_size for p in ckpt.iterdir()}
    base_bytes = sum(p.stat().st_size for p in (base / "base_model").glob("*.safetensors"))
    total = sum(files.values())
    return {"checkpoint_bytes": total, "adapter_bytes": files["adapter_model.safetensors"],
            "checkpoint_over_adapter": total / files["adapter_model.safetensors"],
            "base_model_bytes": base_bytes, "files": files}


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        daemon, raw = [], []
        for _ in range(ROUNDS):  # alternate: machine load drifts
            daemon.append(daemon_round(work))
            raw.append(raw_round())
        sizes = checkpoint_sizes(Path(daemon[-1]["base"]))
        results = {
            "daemon_steps_per_s": [round(r["steps_per_s"], 2) for r in daemon],
            "raw_loop_steps_per_s": [round(r["steps_per_s"], 2) for r in raw],
            "daemon_over_raw_steps_ratio": round(statistics.mean(
                d["steps_per_s"] / r["steps_per_s"] for d, r in zip(daemon, raw, strict=True)), 3),
            "daemon_tokens_per_s_logged_median": round(statistics.median(
                r["tokens_per_s_logged_median"] for r in daemon)),
            "raw_loop_tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in raw)),
            "landing_to_first_step_s_settle_2": round(landing_latency(work, 2.0), 2),
            "landing_to_first_step_s_settle_0.2": round(landing_latency(work, 0.2), 2),
            "stop_to_exit_s": round(stop_latency(work), 2),
            **{k: v for k, v in sizes.items()},
        }
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
