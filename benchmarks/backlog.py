"""Training rate with a long backlog: files/minute with 100,000 one-step files waiting against 10.

Each inbox file holds LINES_PER_FILE examples = one batch at the default data.batch_size,
so it trains in exactly one optimizer step and the rate measures what a file switch costs.
For each backlog size N a fresh base dir gets N such files (distinct content, names and
mtimes in the same increasing order), one daemon process trains them, and the rate is taken
from the daemon's own `File <name> done` log lines between the K-th and the (K+M)-th
finished file (the first K are warm-up). A small backlog is topped up as it drains (a
pipeline delivering as fast as the daemon trains), so both sizes are measured over the same
window of 300 files with their number of files waiting. A window still open after
WINDOW_CAP_S seconds is closed there, so a slow daemon cannot stall the benchmark.

Usage: python benchmarks/backlog.py [N ...]   (default: 10 100000; the ratio is last / first)
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import drain, log_lines, save, stamp, start  # noqa: E402

from lit_continual.sample_data import sentence  # noqa: E402

SIZES = (10, 100_000)
LINES_PER_FILE = 8  # = the default data.batch_size: one optimizer step per file
OVERRIDES = ["model=tiny", "daemon.settle_seconds=0", "daemon.poll_seconds=0.1",
             "logging.every_n_steps=1000", "checkpoint.every_n_steps=1000"]
WINDOW_CAP_S = 240
DONE = re.compile(r" INFO File (\S+) done: steps (\d+)-(\d+)")


def window(count: int) -> tuple[int, int]:
    """(K warm-up files, M measured files); small backlogs are topped up, so the same window fits."""
    return 10, 300


TOP_UP_BELOW = 1000  # backlogs smaller than this are kept at their size while the daemon trains


def top_up(inbox: Path, count: int, stop: threading.Event) -> None:
    """Keep `count` files waiting (a pipeline that delivers as fast as the daemon trains)."""
    rng, number = random.Random(1), 10**9
    while not stop.is_set():
        if sum(1 for _ in inbox.glob("*.jsonl")) < count:
            number += 1
            part = inbox / f"f_{number}.jsonl.part"
            part.write_text("".join(json.dumps({"text": f"File {number}: {sentence(rng)}"}) + "\n"
                                    for _ in range(LINES_PER_FILE)))
            part.rename(part.with_suffix(""))
        else:
            time.sleep(0.005)


def fill_inbox(inbox: Path, count: int) -> float:
    """Write `count` one-step files f_<number>.jsonl, oldest first; return the seconds it took."""
    started = time.monotonic()
    inbox.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    body = "".join(json.dumps({"text": sentence(rng)}) + "\n" for _ in range(LINES_PER_FILE - 1))
    width = max(6, len(str(count)))
    first_ns = time.time_ns() - (count + 60) * 10**9
    for number in range(count):
        path = inbox / f"f_{number:0{width}d}.jsonl"
        # The numbered first line makes every file's content distinct (no duplicate-content path).
        path.write_text(json.dumps({"text": f"File {number}: {sentence(rng)}"}) + "\n" + body)
        mtime = first_ns + number * 10**9
        os.utime(path, ns=(mtime, mtime))
    return time.monotonic() - started


def finished(base: Path) -> list[tuple[float, int]]:
    """(timestamp, optimizer steps) of every `File <name> done` log line, in order."""
    out = []
    for line in log_lines(base):
        match = DONE.search(line)
        if match:
            out.append((stamp(line), int(match.group(3)) - int(match.group(2)) + 1))
    return out


def wait_window(base: Path, proc: subprocess.Popen, first: int, last: int,
                timeout: float = 1800) -> list[tuple[float, int]]:
    """Poll the log until `last` files are done, or WINDOW_CAP_S after the `first`-th one."""
    deadline, opened = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        done = finished(base)
        if len(done) >= last:
            return done
        if len(done) >= first:
            opened = opened or time.monotonic()
            if time.monotonic() - opened >= WINDOW_CAP_S and len(done) > first:
                return done
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited (code {proc.returncode}) after {len(done)} files")
        time.sleep(0.5)
    raise TimeoutError(f"fewer than {first + 1} files done in {timeout}s")


def stop(base: Path, proc: subprocess.Popen) -> float:
    """Create `.stop` and wait for the exit; return the seconds it took."""
    asked = time.monotonic()
    (base / ".stop").touch()
    if proc.wait(timeout=600) != 0:
        raise RuntimeError(f"the daemon exited with code {proc.returncode}")
    return time.monotonic() - asked


def measure(work: Path, count: int, model_dir: Path) -> dict:
    """Files/minute of one daemon process with `count` one-step files waiting."""
    base = work / f"backlog-{count}"
    create_s = fill_inbox(base / "inbox", count)
    shutil.copytree(model_dir, base / "base_model")
    first, measured = window(count)
    load = os.getloadavg()[0]  # other work on the machine slows a switch many times over
    launched = time.time()
    proc = start(base, *OVERRIDES)
    halt = threading.Event()
    feeder = threading.Thread(target=top_up, args=(base / "inbox", count, halt), daemon=True)
    if count < TOP_UP_BELOW:
        feeder.start()
    try:
        done = wait_window(base, proc, first, first + measured)
        halt.set()
        stop_s = stop(base, proc)
    finally:
        halt.set()
        proc.kill()
    span = done[first:first + measured]
    seconds = span[-1][0] - done[first - 1][0]
    return {f"n{count}_create_s": round(create_s, 1), f"n{count}_load_average_at_start": round(load, 2),
            f"n{count}_first_file_done_s": round(done[0][0] - launched, 1),
            f"n{count}_files_measured": len(span), f"n{count}_window_capped": len(span) < measured,
            f"n{count}_steps_per_file": sorted({steps for _, steps in done}),
            f"n{count}_seconds_per_file": round(seconds / len(span), 3),
            f"n{count}_files_per_minute": round(len(span) * 60 / seconds, 1),
            f"n{count}_stop_s": round(stop_s, 2)}


def build_model(work: Path) -> Path:
    """The tiny base model, built once by a daemon on an empty inbox, copied into each base dir."""
    drain(work / "model", "model=tiny")
    return work / "model" / "base_model"


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or list(SIZES)
    results: dict = {"backlog_sizes": sizes, "lines_per_file": LINES_PER_FILE, "window_cap_s": WINDOW_CAP_S}
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        work = Path(tmp)
        model_dir = build_model(work)
        for count in sizes:
            results.update(measure(work, count, model_dir))
    if len(sizes) > 1:
        small, large = results[f"n{sizes[0]}_files_per_minute"], results[f"n{sizes[-1]}_files_per_minute"]
        results["large_over_small_rate"] = round(large / small, 3)
    save("backlog", results)


if __name__ == "__main__":
    main()
