"""Shared helpers: real daemon subprocesses, real files, the newest checkpoint on disk."""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_continual.sample_data import sentence

REPO = Path(__file__).resolve().parents[1]
FAST = ["daemon.settle_seconds=0.1", "daemon.poll_seconds=0.1"]
# A line of our own log (stderr and logs/); anything else printed is a library's noise.
OUR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING|ERROR) ")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_jsonl(path: Path, lines: int, seed: int = 0, bad: dict[int, str] | None = None,
                mtime: float | None = None) -> Path:
    """`lines` valid examples; `bad` maps a 0-based line position to a raw bad line inserted there."""
    rng = random.Random(seed)
    rows = [json.dumps({"text": sentence(rng)}) for _ in range(lines)]
    for position, raw in sorted((bad or {}).items()):
        rows.insert(position, raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


EXACT = ["logging.every_n_steps=1", "checkpoint.every_n_steps=40", "checkpoint.log_history_max=5000"]
EXACT_LINES = 1600  # 200 steps per file at batch 8


def fill_exact(base: Path) -> None:
    """Two 1600-line files (one older than two): the stream every exact-resume test uses."""
    now = time.time()
    write_jsonl(base / "inbox" / "one.jsonl", EXACT_LINES, seed=11, mtime=now - 20)
    write_jsonl(base / "inbox" / "two.jsonl", EXACT_LINES, seed=12, mtime=now - 10)


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run of the exact stream, shared by the resume and kill tests."""
    base = tmp_path_factory.mktemp("reference") / "run"
    fill_exact(base)
    result = run_daemon(base, *EXACT)
    assert result.returncode == 0, result.stdout + result.stderr
    return base


def daemon_cmd(base: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "lit_continual", "daemon", "--base-dir", str(base), *FAST, *overrides]


def run_daemon(base: Path, *overrides: str, timeout: float = 300, fault: str | None = None
               ) -> subprocess.CompletedProcess:
    """Drain the inbox with a real daemon process; `fault` = LIT_CONTINUAL_FAULT (point@step)."""
    env = dict(os.environ)
    env.pop("LIT_CONTINUAL_FAULT", None)
    if fault:
        env["LIT_CONTINUAL_FAULT"] = fault
    return subprocess.run(daemon_cmd(base, "daemon.exit_when_idle=true", *overrides),
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env)


def start_daemon(base: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(daemon_cmd(base, *overrides), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO)


def checkpoints(base: Path) -> list[Path]:
    found = (base / "current_model").glob("checkpoint-*")
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def claimed(base: Path, name: str) -> list[Path]:
    """Where a claimed file sits while it trains: `inbox/.claimed/<claim id>-<name>`."""
    return sorted((base / "inbox" / ".claimed").glob(f"*-{name}"))


def under_inbox(base: Path, name: str) -> bool:
    """Still waiting or claimed (an unfinished file stays under inbox/)."""
    return (base / "inbox" / name).exists() or bool(claimed(base, name))


def newest(base: Path) -> Path:
    return checkpoints(base)[-1]


def trainer_state(ckpt: Path) -> dict:
    return json.loads((ckpt / "trainer_state.json").read_text())


def log_text(base: Path) -> str:
    return "".join(p.read_text() for p in sorted((base / "logs").glob("daemon_*.log")))


def status(base: Path) -> dict:
    return json.loads((base / "status" / "training_status.json").read_text())


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def logged_step(base: Path) -> int:
    """The newest step of a `step N/...` log line (logging.every_n_steps=1 in those tests)."""
    steps = [int(line.split("step ", 1)[1].split("/", 1)[0])
             for line in log_text(base).splitlines() if " INFO step " in line]
    return steps[-1] if steps else 0


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return tmp_path / "run"


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    """In-process runs install SIGTERM/SIGINT handlers; give pytest its own back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def train_here(base: Path, *overrides: str) -> int:
    """Run the library function `train(cfg)` in this process; returns the exit code."""
    from lit_continual.config import compose
    from lit_continual.run import train

    return train(compose([f"base_dir={base}", *FAST, *overrides]))


def trained_once(root: Path, lines: int = 48) -> Path:
    """A base dir whose in-process daemon run trained one `lines`-line file (48: checkpoint-6),
    for a module-scoped fixture (pytest's own signal handlers are given back)."""
    from lit_continual.cli import main

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    base = root / "run"
    write_jsonl(base / "inbox" / "a.jsonl", lines, seed=1)
    assert main(["daemon", "--base-dir", str(base), "daemon.exit_when_idle=true", *FAST]) == 0
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    return base


def copied(base: Path, to: Path) -> Path:
    """A private copy of a trained base dir (its checkpoints still name the shared base model)."""
    import shutil

    copy = to / "run"
    shutil.copytree(base, copy, ignore=shutil.ignore_patterns("tensorboard", "logs"))
    return copy


def one_file(path: Path, *overrides: str) -> list[str]:
    return ["data=inbox_file", f"data.path={path}", *overrides]


def stop_after(monkeypatch, checks: int) -> None:
    """Make the run see a stop request after `checks` looks (a .stop arriving mid-file)."""
    from lit_continual.stop import StopRequest

    counter = itertools.count()
    monkeypatch.setattr(StopRequest, "requested", property(lambda self: next(counter) >= checks))
