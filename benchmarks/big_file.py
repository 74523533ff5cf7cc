"""A 2 GB JSONL file: index time, index size, peak memory against a small file, and a stop
during its index pass (issue 4).

Lines have a fixed length (LINE_BYTES, stated in the results). The daemon indexes the file
(one pass: sha256, offsets, validation), trains 200 steps, and is stopped; its peak RSS
(VmHWM) is compared with the same daemon on a 2,000-line file of the same lines. Then the
same file goes to a fresh base dir and `.stop` is created while the first index pass runs:
the process must exit within the 10 s stop promise.

Usage: python benchmarks/big_file.py [size_gb]
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log_lines, proc_status, save, start, wait_log  # noqa: E402

from lit_continual.sample_data import sentence  # noqa: E402

LINE_BYTES = 1000
STEPS = 200


def write_lines(path: Path, count: int) -> None:
    """`count` JSONL lines of exactly LINE_BYTES bytes (newline included)."""
    rng = random.Random(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pool = []
    for _ in range(1000):
        text = ""
        while len(text) < LINE_BYTES:
            text += sentence(rng) + " "
        head = json.dumps({"text": ""})
        line = json.dumps({"text": text[: LINE_BYTES - len(head) - 1]}) + "\n"
        assert len(line.encode()) == LINE_BYTES
        pool.append(line)
    with open(path, "w") as handle:
        for start_at in range(0, count, 1000):
            handle.writelines(pool[: min(1000, count - start_at)])


def run(base: Path) -> dict:
    proc = start(base, "daemon.settle_seconds=0", "checkpoint.every_n_steps=100000")
    try:
        wait_log(base, f"INFO step {STEPS}/", timeout=1800)
        peak = proc_status(proc.pid, "VmHWM")
        (base / ".stop").touch()
        proc.wait(timeout=120)
    finally:
        proc.kill()
    indexed = next(line for line in log_lines(base) if " Indexed " in line)
    match = re.search(r": (\d+) examples in ([\d.]+) s \(([\d.]+) MB read, index ([\d.]+) MB\)", indexed)
    return {"examples": int(match.group(1)), "index_s": float(match.group(2)), "file_mb": float(match.group(3)),
            "index_mb": float(match.group(4)), "peak_rss_mb": round(peak, 1)}


def _logged(base: Path, word: str, name: str) -> bool:
    """A log line `<word> <name>`, the name perhaps with a claim prefix (`.claimed/<id>-<name>`)."""
    pattern = re.compile(rf" INFO {word} \S*{re.escape(name)}")
    return any(pattern.search(line) for line in log_lines(base))


def _status(base: Path) -> str | None:
    try:
        return json.loads((base / "status" / "training_status.json").read_text())["status"]
    except (OSError, ValueError, KeyError):
        return None


def wait_index_pass(base: Path, name: str, timeout: float = 600) -> str:
    """Return once the index pass of `name` runs, and how that was known.

    The daemon logs `Indexing <name>` when a pass starts; a daemon that does not falls back
    to: still `starting` 3 s after its model line (the pass starts within a second of that
    line and takes 10-30 s on 2 GB). The stop then comes a few seconds into the pass, so an
    uncancellable pass can still exit within 10 s: the results also say whether it ran to its end.
    """
    deadline, model_seen = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        if _logged(base, "Indexing", name):
            return "log line"
        if model_seen is None and any(" INFO Model " in line for line in log_lines(base)):
            model_seen = time.monotonic()
        if model_seen is not None and time.monotonic() - model_seen >= 3 and _status(base) == "starting":
            return "model line + 3 s"
        time.sleep(0.05)
    raise TimeoutError(f"no index pass of {name} in {timeout}s")


def stop_during_index(base: Path, name: str) -> dict:
    """Seconds from `.stop` during the first index pass of inbox/`name` to the process exit."""
    proc = start(base, "daemon.settle_seconds=0")
    try:
        detected = wait_index_pass(base, name)
        if _logged(base, "Indexed", name):
            raise RuntimeError(f"the index pass of {name} ended before the stop: nothing to measure")
        asked = time.monotonic()
        (base / ".stop").touch()
        code = proc.wait(timeout=600)
        seconds = time.monotonic() - asked
    finally:
        proc.kill()
    return {"stop_during_index_s": round(seconds, 2), "stop_during_index_exit_code": code,
            "stop_during_index_pass_finished": _logged(base, "Indexed", name),
            "stop_during_index_detected_by": detected}


def move_big_file(source: Path, target: Path) -> None:
    """Move the big file out of a used base dir: inbox/<name>, or a claimed copy under inbox/
    whose name ends in <name> (such as `.claimed/<claim id>-<name>`)."""
    found = next(p for p in (source / "inbox").rglob(f"*{target.name}") if p.is_file())
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(found, target)


def main() -> None:
    size_gb = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        work = Path(tmp)
        write_lines(work / "small" / "inbox" / "small.jsonl", 2000)
        small = run(work / "small")
        started = time.monotonic()
        write_lines(work / "big" / "inbox" / "big.jsonl", int(size_gb * 1e9 / LINE_BYTES))
        generate_s = time.monotonic() - started
        big = run(work / "big")
        move_big_file(work / "big", work / "stop" / "inbox" / "big.jsonl")
        stopped = stop_during_index(work / "stop", "big.jsonl")
    save("big_file", {
        "line_bytes": LINE_BYTES, "big_file_mb": big["file_mb"], "big_examples": big["examples"],
        "generate_s": round(generate_s, 1), "index_s": big["index_s"],
        "index_mb_per_s": round(big["file_mb"] / big["index_s"], 1),
        "index_bytes_per_example": round(big["index_mb"] * 1e6 / big["examples"], 2),
        "peak_rss_mb_small_file": small["peak_rss_mb"], "peak_rss_mb_big_file": big["peak_rss_mb"],
        "peak_rss_growth_mb": round(big["peak_rss_mb"] - small["peak_rss_mb"], 1),
        "steps_trained_each": STEPS, **stopped,
    })


if __name__ == "__main__":
    main()
