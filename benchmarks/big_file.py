"""A 2 GB JSONL file: index time, index size, and peak memory against a small file (issue 4).

Lines have a fixed length (LINE_BYTES, stated in the results). The daemon indexes the file
(one pass: sha256, offsets, validation), trains 200 steps, and is stopped; its peak RSS
(VmHWM) is compared with the same daemon on a 2,000-line file of the same lines.

Usage: python benchmarks/big_file.py [size_gb]
"""

from __future__ import annotations

import json
import random
import re
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
    save("big_file", {
        "line_bytes": LINE_BYTES, "big_file_mb": big["file_mb"], "big_examples": big["examples"],
        "generate_s": round(generate_s, 1), "index_s": big["index_s"],
        "index_mb_per_s": round(big["file_mb"] / big["index_s"], 1),
        "index_bytes_per_example": round(big["index_mb"] * 1e6 / big["examples"], 2),
        "peak_rss_mb_small_file": small["peak_rss_mb"], "peak_rss_mb_big_file": big["peak_rss_mb"],
        "peak_rss_growth_mb": round(big["peak_rss_mb"] - small["peak_rss_mb"], 1),
        "steps_trained_each": STEPS,
    })


if __name__ == "__main__":
    main()
