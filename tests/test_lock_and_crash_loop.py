"""One daemon per base dir (flock), and a file that keeps killing the process is set aside."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import REPO, daemon_cmd, log_text, newest, run_daemon, start_daemon, status, wait_for, write_jsonl


def _tree(base: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in base.rglob("*") if p.is_file()}


def test_second_daemon_exits_3_naming_the_holder_and_writes_nothing(base: Path):
    holder = start_daemon(base)
    try:
        wait_for(lambda: (base / "status" / "training_status.json").exists() and status(base)["status"] == "idle",
                 120, "first daemon idle")
        time.sleep(1.2)  # let the heartbeat settle so the snapshot is not racing it
        before = {k: v for k, v in _tree(base).items() if "status" not in k and "logs" not in k}
        second = subprocess.run(daemon_cmd(base), capture_output=True, text=True, timeout=60, cwd=REPO)
        assert second.returncode == 3
        assert f"is locked by pid {holder.pid}" in second.stderr
        script = subprocess.run([sys.executable, "train.py", "data=inbox_file", f"data.path={REPO / 'README.md'}",
                                 f"base_dir={base}", f"hydra.run.dir={base.parent / 'hydra'}"],
                                capture_output=True, text=True, timeout=60, cwd=REPO)
        assert script.returncode == 3 and "locked" in script.stderr
        after = {k: v for k, v in _tree(base).items() if "status" not in k and "logs" not in k}
        assert after == before
        assert status(base)["pid"] == holder.pid
        assert f"pid {holder.pid}" not in log_text(base).split("starting", 1)[1].replace(
            f"(pid {holder.pid}, version", ""), "the refused process must not log into DIR"
        # A daemon killed while idle leaves its lock file, but the OS released the flock.
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    write_jsonl(base / "inbox" / "after.jsonl", 16)
    result = run_daemon(base)
    assert result.returncode == 0, result.stdout + result.stderr
    assert newest(base).name == "checkpoint-2"
    assert json.loads((base / ".lock").read_text())["pid"] != holder.pid


def test_file_that_kills_the_process_three_times_at_one_step_goes_to_failed(base: Path):
    now = time.time()
    poison = write_jsonl(base / "inbox" / "poison.jsonl", 160, seed=1, mtime=now - 20)
    poison_bytes = poison.read_bytes()
    write_jsonl(base / "inbox" / "healthy.jsonl", 40, seed=2, mtime=now - 10)
    for attempt in range(3):
        result = run_daemon(base, "checkpoint.every_n_steps=5", fault="train@12")
        assert result.returncode == -signal.SIGKILL, (attempt, result.stdout + result.stderr)
    # The fault hook fires by step, whatever the file; the 4th process runs without it.
    result = run_daemon(base, "checkpoint.every_n_steps=5")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (base / "failed" / "poison.jsonl").read_bytes() == poison_bytes
    report = json.loads((base / "failed" / "poison.jsonl.error.json").read_text())
    assert "died 3 times in a row while training step 12" in report["reason"]
    assert report["crash"]["step"] == 12 and report["crash"]["count"] == 3
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    assert [(r["name"], r["status"]) for r in ledger["files_done"]] == [("poison.jsonl", "failed"),
                                                                        ("healthy.jsonl", "done")]
    assert not (base / "inbox" / "healthy.jsonl").exists()
