"""What running the daemon costs an operator (issue 4, figures 3-7): file switch, arrival
latency, checkpoint bytes and save/load time, idle CPU, memory after many files.

Usage: python benchmarks/operations.py
"""

from __future__ import annotations

import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    SMOLLM2,
    cli,
    cpu_seconds,
    drain,
    log_lines,
    model_available,
    proc_status,
    save,
    stamp,
    start,
    wait_log,
    wait_status,
)


def _files(inbox: Path, count: int, lines: int) -> None:
    cli("sample-data", str(inbox), "--files", str(count), "--lines", str(lines), "--prefix", "f")
    now = time.time()
    for i, path in enumerate(sorted(inbox.glob("f_*.jsonl"), key=lambda p: int(p.stem.split("_")[1]))):
        os.utime(path, (now - 1000 + i, now - 1000 + i))


def file_switch(work: Path) -> dict:
    """Last step of file k -> first step of file k+1, against the end-of-file checkpoint write alone."""
    base = work / "switch"
    _files(base / "inbox", 4, 400)
    drain(base)
    lines = log_lines(base)
    switches, writes = [], []
    for k in range(1, 4):
        end = 50 * k
        saved = next(line for line in lines if f"Saved checkpoint checkpoint-{end} in" in line)
        write_s = float(re.search(r" in (\d+) ms", saved).group(1)) / 1000
        nxt = next(line for line in lines if f"File f_{k + 1}.jsonl (#" in line)
        switches.append(stamp(nxt) - (stamp(saved) - write_s))
        writes.append(write_s)
    return {"file_switch_s": round(statistics.median(switches), 3),
            "end_of_file_checkpoint_write_s": round(statistics.median(writes), 3),
            "file_switch_minus_write_s": round(statistics.median(
                s - w for s, w in zip(switches, writes, strict=True)), 3)}


def arrival_latency(work: Path, settle: float) -> float:
    base = work / f"arrival-{settle}"
    proc = start(base, f"daemon.settle_seconds={settle}")
    try:
        wait_status(base, "idle")
        cli("sample-data", str(base / "staging"), "--files", "1", "--lines", "80")
        landed = time.time()
        (base / "staging" / "batch_1.jsonl").rename(base / "inbox" / "batch_1.jsonl")
        first = stamp(wait_log(base, "INFO File batch_1.jsonl (#"))
        (base / ".stop").touch()
        proc.wait(timeout=120)
        return first - landed
    finally:
        proc.kill()


def stop_latency(work: Path) -> float:
    """Seconds from `.stop` in the middle of a file to the daemon's exit, checkpoint included."""
    base = work / "stop"
    cli("sample-data", str(base / "inbox"), "--files", "1", "--lines", "8000")
    proc = start(base, "daemon.settle_seconds=0")
    try:
        wait_log(base, "INFO step 50/")
        asked = time.monotonic()
        (base / ".stop").touch()
        proc.wait(timeout=120)
        return time.monotonic() - asked
    finally:
        proc.kill()


def idle_cpu(work: Path, seconds: float = 30) -> float:
    """CPU seconds per minute used by an idle daemon (empty inbox)."""
    base = work / "idle"
    proc = start(base)
    try:
        wait_status(base, "idle")
        time.sleep(2)
        before = cpu_seconds(proc.pid)
        time.sleep(seconds)
        used = cpu_seconds(proc.pid) - before
        (base / ".stop").touch()
        proc.wait(timeout=60)
        return used * 60 / seconds
    finally:
        proc.kill()


def memory_after_files(work: Path) -> dict:
    """RSS after 3 and after 30 small files through one daemon process."""
    base = work / "memory"
    _files(base / "inbox", 30, 40)
    proc = start(base, "daemon.settle_seconds=0")
    try:
        wait_log(base, "File f_3.jsonl done")
        after_3 = proc_status(proc.pid, "VmRSS")
        wait_log(base, "File f_30.jsonl done")
        after_30 = proc_status(proc.pid, "VmRSS")
        (base / ".stop").touch()
        proc.wait(timeout=60)
    finally:
        proc.kill()
    return {"rss_mb_after_3_files": round(after_3, 1), "rss_mb_after_30_files": round(after_30, 1),
            "rss_growth_3_to_30": round(after_30 / after_3 - 1, 4)}


def checkpoint_figures(work: Path, model: str, overrides: list[str]) -> dict:
    """Checkpoint bytes against trainable params x 4 bytes x 3 (weights + 2 Adam moments), save/load time."""
    from lit_continual.checkpoints import DirectoryCheckpointIO

    base = work / f"ckpt-{model}"
    cli("sample-data", str(base / "inbox"), "--files", "1", "--lines", "16")
    drain(base, *overrides, "data.batch_size=4", "data.max_length=64")
    ckpt = max((base / "current_model").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    trainable = re.search(r": (\d+) trainable of", "\n".join(log_lines(base))).group(1)
    pattern = re.compile(r"Saved checkpoint .* in (\d+) ms")
    saved = [float(m.group(1)) for line in log_lines(base) if (m := pattern.search(line))]
    started = time.perf_counter()
    DirectoryCheckpointIO(None, "").load_checkpoint(ckpt)
    load_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in ckpt.iterdir())
    adapter = (ckpt / "adapter_model.safetensors").stat().st_size
    budget = int(trainable) * 12
    return {f"{model}_trainable_params": int(trainable), f"{model}_checkpoint_bytes": size,
            f"{model}_params_x12_bytes": budget, f"{model}_checkpoint_over_params_x12": round(size / budget, 3),
            f"{model}_within_1.1x_plus_1MB": size <= 1.1 * budget + 2**20,
            f"{model}_adapter_bytes": adapter, f"{model}_checkpoint_over_adapter": round(size / adapter, 2),
            f"{model}_checkpoint_save_ms": statistics.median(saved),
            f"{model}_checkpoint_load_ms": round(load_s * 1000, 1)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results = {**file_switch(work),
                   "arrival_latency_s_settle_2": round(arrival_latency(work, 2.0), 2),
                   "arrival_latency_s_settle_0.2": round(arrival_latency(work, 0.2), 2),
                   "stop_to_exit_s": round(stop_latency(work), 2),
                   "idle_cpu_s_per_minute": round(idle_cpu(work), 3),
                   **memory_after_files(work),
                   **checkpoint_figures(work, "tiny", ["model=tiny"])}
        if model_available("smollm2"):
            results.update(checkpoint_figures(work, "smollm2", SMOLLM2))
    save("operations", results)


if __name__ == "__main__":
    main()
