"""What the operator's commands cost (issue 10): snapshot time against checkpoint size, with
hard links and with copies; how long training waits for a snapshot it is asked for;
consolidation time and the merged model's logit difference from the PeftModel;
`lit-continual pause` to status `paused`.

One real daemon trains the tiny model on a long file while the snapshot and pause commands
run against it; its checkpoints then feed the consolidation and the size sweep, in which
`snapshots.take` runs in this process on synthetic checkpoints (the real one's files with
the adapter and optimizer files replaced by random bytes, manifest rewritten) and copies are
forced by an `os.link` that refuses (EXDEV), as across filesystems.

Usage: python benchmarks/operator_commands.py
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, cli, log_lines, save, stamp, start, wait_log, wait_status  # noqa: E402

MIB = 2**20
# Checkpoint sizes of the sweep (None: the tiny run's own checkpoint, about 0.45 MiB).
SIZES_MIB = (None, 17, 170, 1024)
REPEATS = 5  # snapshot sizes (median); consolidation runs 3 times
SNAPSHOTS_ASKED, SNAPSHOT_COMMANDS, PAUSES = 5, 3, 5
DAEMON = ["daemon.settle_seconds=0.1", "daemon.poll_seconds=0.1", "logging.every_n_steps=1",
          "checkpoint.every_n_steps=10000", "snapshot.schedule=null"]
STEP = re.compile(r" INFO step (\d+)/")


def command(base: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lit_continual", *args, "--base-dir", str(base)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=True)


def status(base: Path) -> str | None:
    try:
        return json.loads((base / "status" / "training_status.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def current_step(base: Path) -> int:
    steps = [int(m.group(1)) for line in log_lines(base) if (m := STEP.search(line))]
    return steps[-1] if steps else 0


def wait_steps(base: Path, more: int) -> None:
    """Until the daemon has logged `more` steps beyond its current one."""
    target = current_step(base) + more
    wait_log(base, f" INFO step {target}/", timeout=120)


# -- a training daemon: snapshots asked for, pauses ------------------------------------------


def daemon_session(work: Path) -> tuple[Path, dict]:
    """Ask a training daemon for snapshots, then pause and resume it; stop it."""
    base = work / "run"
    cli("sample-data", str(base / "inbox"), "--files", "1", "--lines", "8000")
    proc = start(base, *DAEMON)
    try:
        wait_log(base, " INFO step 30/", timeout=180)
        asked = [ask_snapshot(base, by_command=False) for _ in range(SNAPSHOTS_ASKED)]
        asked += [ask_snapshot(base, by_command=True) for _ in range(SNAPSHOT_COMMANDS)]
        paused = [pause_and_resume(base) for _ in range(PAUSES)]
        (base / ".stop").touch()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    return base, {**snapshot_waits(base, asked), **pause_figures(base, paused)}


def ask_snapshot(base: Path, by_command: bool) -> dict:
    """A snapshot of the training daemon, asked by `lit-continual snapshot` or by the request
    file that command leaves (then no process start competes with training for the 2 cores)."""
    from lit_continual import controls

    wait_steps(base, 15)
    started = time.monotonic()
    if by_command:
        result = json.loads(command(base, "snapshot", "--json").stdout)
    else:
        request = controls.ask(base, controls.SNAPSHOT)
        result = controls.wait(base, controls.SNAPSHOT, request, alive=lambda: True, poll=0.01, timeout=60)
    assert result["ok"], result
    return {"by_command": by_command, "seconds": time.monotonic() - started, "take_s": result["seconds"],
            "step": result["step"]}


def snapshot_waits(base: Path, asked: list[dict]) -> dict:
    """Step-to-step time around each snapshot asked by a request file (from the log), less the
    median of the 10 step times before it (a baseline that follows the machine's load)."""
    lines = log_lines(base)
    steps = [(i, stamp(line)) for i, line in enumerate(lines) if STEP.search(line)]
    requests = [a for a in asked if not a["by_command"]]
    gaps, waits, saves = [], [], []
    for ask in requests:
        index = next(i for i, line in enumerate(lines)
                     if "INFO Requested snapshot:" in line and f"(step {ask['step']})" in line)
        before = [s for s in steps if s[0] < index]
        after = min(s for s in steps if s[0] > index)
        gaps.append(after[1] - before[-1][1])
        waits.append(gaps[-1] - statistics.median(b[1] - a[1] for a, b in zip(before[-11:-1], before[-10:],
                                                                                strict=True)))
        saved = [ln for ln in lines[before[-1][0]:after[0]] if "Saved checkpoint" in ln]
        saves.append(float(re.search(r" in (\d+) ms", saved[-1]).group(1)) / 1000)
    first = min(i for i, line in enumerate(lines) if "INFO Requested snapshot:" in line)
    plain = [b[1] - a[1] for a, b in zip(steps, steps[1:], strict=False) if b[0] < first]
    return {"median_step_s": round(statistics.median(plain[5:]), 4),
            "snapshot_step_gaps_s": [round(g, 4) for g in gaps],
            "snapshot_training_wait_s": round(statistics.median(waits), 4),
            "snapshot_training_waits_s": [round(w, 4) for w in waits],
            "snapshot_wait_checkpoint_write_s": round(statistics.median(saves), 4),
            "snapshot_wait_take_s": round(statistics.median(a["take_s"] for a in requests), 4),
            "snapshot_request_answered_s": round(statistics.median(a["seconds"] for a in requests), 3),
            "snapshot_command_s": round(statistics.median(a["seconds"] for a in asked if a["by_command"]), 3)}


def pause_and_resume(base: Path) -> dict:
    """`lit-continual pause` while training: seconds until the status file says paused."""
    wait_steps(base, 10)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "lit_continual", "pause", "--base-dir", str(base)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while status(base) != "paused":
        if time.monotonic() - started > 60:
            raise TimeoutError("never paused")
        time.sleep(0.005)
    paused = time.monotonic() - started
    proc.wait(timeout=60)
    returned = time.monotonic() - started
    time.sleep(0.5)
    command(base, "resume")
    wait_status(base, "training", timeout=60)
    return {"to_paused_s": paused, "command_s": returned}


def pause_figures(base: Path, paused: list[dict]) -> dict:
    """Also the daemon's own part, from its log: `.pause seen` -> `Paused at step`."""
    lines = log_lines(base)
    seen = [stamp(line) for line in lines if ".pause seen" in line]
    held = [stamp(line) for line in lines if "INFO Paused at step" in line]
    to_paused = [p["to_paused_s"] for p in paused]
    return {"pause_to_paused_s": round(statistics.median(to_paused), 3),
            "pause_to_paused_max_s": round(max(to_paused), 3),
            "pause_to_paused_all_s": [round(t, 3) for t in to_paused],
            "pause_seen_to_paused_s": round(statistics.median(h - s for s, h in zip(seen, held, strict=True)), 3),
            "pause_command_s": round(statistics.median(p["command_s"] for p in paused), 3)}


# -- consolidation ------------------------------------------------------------------------


def consolidation_figures(base: Path) -> dict:
    """Time of `consolidation.consolidate` (child process included), then the logit difference."""
    from lit_continual import consolidation

    times = []
    for _ in range(3):
        shutil.rmtree(base / "consolidated", ignore_errors=True)
        started = time.perf_counter()
        out = consolidation.consolidate(base)
        times.append(time.perf_counter() - started)
    checkpoint = max((base / "current_model").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return {"consolidate_s": round(statistics.median(times), 2), "consolidate_all_s": [round(t, 2) for t in times],
            "consolidate_step": int(out.name.split("-")[1]),
            "consolidated_bytes": sum(p.stat().st_size for p in out.iterdir()),
            "consolidated_max_abs_logit_diff": logit_difference(out, checkpoint)}


def logit_difference(merged: Path, adapter: Path) -> float:
    """Max |logits| difference, merged model against the PeftModel (fp32), on sample sentences."""
    import random

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lit_continual.sample_data import sentence

    base_path = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
                                     adapter).eval()
    plain = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
    tokenizer, rng = AutoTokenizer.from_pretrained(merged), random.Random(0)
    worst = 0.0
    with torch.no_grad():
        for _ in range(8):
            ids = tokenizer(" ".join(sentence(rng) for _ in range(4)), return_tensors="pt").input_ids
            worst = max(worst, (plain(ids).logits - peft(ids).logits).abs().max().item())
    return float(f"{worst:.3g}")


# -- snapshot time against checkpoint size ------------------------------------------------


def synthetic(source: Path, root: Path, size_mib: int | None) -> Path:
    """A base dir holding a copy of `source` whose adapter (1/3) and optimizer (2/3) files are
    random bytes making the checkpoint `size_mib` MiB, manifest rewritten; None: as it is."""
    out = root / "current_model" / source.name
    shutil.copytree(source, out)
    if size_mib is not None:
        rest = sum(p.stat().st_size for p in out.iterdir()
                   if p.name not in ("adapter_model.safetensors", "optimizer.pt", "manifest.json"))
        total = size_mib * MIB - rest - (out / "manifest.json").stat().st_size
        manifest = json.loads((out / "manifest.json").read_text())
        for name, size in (("adapter_model.safetensors", total // 3), ("optimizer.pt", total - total // 3)):
            manifest["files"][name] = random_file(out / name, size)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    for path in out.iterdir():  # durable, as a checkpoint is when renamed into place: no flush is timed
        with open(path, "rb+") as handle:
            os.fsync(handle.fileno())
    return root


def random_file(path: Path, size: int) -> dict:
    """Write `size` random bytes, fsynced like a checkpoint file; its manifest entry."""
    digest = hashlib.sha256()
    path.unlink()
    with open(path, "wb") as handle:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 * MIB))
            handle.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
        handle.flush()
        os.fsync(handle.fileno())
    return {"size": size, "sha256": digest.hexdigest()}


def refuse_link(src, dst, *args, **kwargs):
    raise OSError(errno.EXDEV, "Invalid cross-device link (forced by the benchmark)")


def time_take(base: Path, copies: bool) -> float:
    """Seconds `snapshots.take` needs (links, or copies where `os.link` refuses)."""
    from lit_continual import snapshots

    shutil.rmtree(base / "snapshots", ignore_errors=True)
    with mock.patch.object(os, "link", refuse_link) if copies else contextlib.nullcontext():
        started = time.perf_counter()
        path = snapshots.take(base, now=datetime(2026, 1, 1, 3, 0))
        seconds = time.perf_counter() - started
    kind = json.loads((path / snapshots.INFO).read_text())["files"]
    assert kind == ("copies" if copies else "hard links"), kind
    shutil.rmtree(base / "snapshots")
    return seconds


def snapshot_sizes(base: Path, work: Path) -> dict:
    source = max((base / "current_model").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    rows = []
    for size in SIZES_MIB:
        root = synthetic(source, work / f"sweep-{size}", size)
        checkpoint = next((root / "current_model").iterdir())
        actual = sum(p.stat().st_size for p in checkpoint.iterdir())
        timed = [(time_take(root, copies=False), time_take(root, copies=True)) for _ in range(REPEATS)]
        link, copy = [t[0] for t in timed], [t[1] for t in timed]  # alternating: no order effect
        rows.append({"checkpoint_mib": round(actual / MIB, 2), "link_s": round(statistics.median(link), 4),
                     "copy_s": round(statistics.median(copy), 4), "link_min_s": round(min(link), 4),
                     "copy_min_s": round(min(copy), 4),
                     "copy_over_link": round(statistics.median(copy) / statistics.median(link), 1),
                     "copy_mib_per_s": round(actual / MIB / statistics.median(copy), 1)})
        shutil.rmtree(root)
    return {"snapshot_sizes": rows}


def print_table(results: dict) -> None:
    print("\n| checkpoint | snapshot, hard links | snapshot, copies | copies / links | copy rate |")
    print("|---|---|---|---|---|")
    for row in results["snapshot_sizes"]:
        print(f"| {row['checkpoint_mib']} MiB | {row['link_s'] * 1000:.1f} ms | {row['copy_s'] * 1000:.1f} ms | "
              f"{row['copy_over_link']}× | {row['copy_mib_per_s']} MiB/s |")


def main() -> None:
    load_before = os.getloadavg()
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        base, results = daemon_session(work)
        results.update(consolidation_figures(base))
        results.update(snapshot_sizes(base, work))
    results.update({"load_average_1min_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
                    "cpus": os.cpu_count(), "benchmark_s": round(time.monotonic() - started, 1)})
    save("operator_commands", results)
    print_table(results)


if __name__ == "__main__":
    main()
