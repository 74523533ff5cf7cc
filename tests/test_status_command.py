"""`lit-continual status` (exit 0 healthy, 1 error, 2 no run here, 4 dead daemon; never takes the
lock) and `lit-continual history` (one row per file of the ledger)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from lit_continual import lock
from lit_continual.cli import main
from lit_continual.lock import RunLock, process_start
from tests.conftest import FAST, wait_for, write_jsonl
from tests.test_logs_and_report import logging_and_signals_restored


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A real run of two files (4 steps each) with a fixed eval file (scored at steps 4 and 8), stopped."""
    base = tmp_path_factory.mktemp("status") / "run"
    now = time.time()
    write_jsonl(base / "inbox" / "first.jsonl", 16, seed=5, mtime=now - 20)
    write_jsonl(base / "inbox" / "second.jsonl", 16, seed=6, mtime=now - 10)
    write_jsonl(base / "eval" / "fixed.jsonl", 8, seed=7)
    with logging_and_signals_restored():
        code = main(["daemon", "--base-dir", str(base), "daemon.exit_when_idle=true", *FAST, "data.batch_size=4",
                     "checkpoint.every_n_steps=4", "logging.every_n_steps=2"])
    assert code == 0
    return base


@pytest.fixture
def copy(stopped: Path, tmp_path: Path) -> Path:
    return shutil.copytree(stopped, tmp_path / "run", symlinks=True)


def cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


def set_status(base: Path, **fields: object) -> None:
    path = base / "status" / "training_status.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def write_holder(base: Path, pid: int, start_time: int | None) -> None:
    """`.lock` as RunLock writes it, for a process that may be gone."""
    (base / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "2026-01-01T00:00:00",
                                            "start_time": start_time, "boot_id": lock._boot_id(),
                                            "pid_ns": lock._pid_ns()}))


def test_stopped_run_is_healthy(stopped: Path, capsys):
    code, out = cli(capsys, "status", "--base-dir", str(stopped))
    assert code == 0, out
    rows = dict(line.split(None, 1) for line in out.splitlines()[1:] if line.startswith("  ") and "  " in line[2:])
    assert rows["status"].startswith("stopped  (exit 0: healthy)")
    assert rows["daemon"].startswith("not running (no process holds the lock (/proc/locks; last holder pid ")
    assert rows["checkpoint"].startswith("checkpoint-8 (newest on disk)")
    assert "0 waiting in inbox/" in out
    code, out = cli(capsys, "status", "--base-dir", str(stopped), "--json")
    found = json.loads(out)
    assert code == 0 and found["exit_code"] == 0 and found["alive"] is False
    assert found["status"]["status"] == "stopped" and found["status"]["current_step"] == 8
    assert found["newest_checkpoint"] == {"name": "checkpoint-8", "step": 8}
    assert 0 <= found["seconds_since_last_step"] < 600


def test_error_status_exits_1(copy: Path, capsys):
    set_status(copy, status="error", error="RuntimeError: boom")
    code, out = cli(capsys, "status", "--base-dir", str(copy))
    assert code == 1
    assert "RuntimeError: boom" in out and "(exit 1: the status is error" in out


def test_live_status_with_a_dead_holder_exits_4(copy: Path, capsys, monkeypatch):
    set_status(copy, status="training")
    write_holder(copy, dead_pid(), 12345)
    code, out = cli(capsys, "status", "--base-dir", str(copy))
    assert code == 4, out
    assert "NOT RUNNING" in out and "the status says 'training' but no process holds the lock" in out
    monkeypatch.setattr(lock, "LOCK_TABLE", copy / "no-lock-table")  # no /proc/locks: pid and start time decide
    code, out = cli(capsys, "status", "--base-dir", str(copy), "--json")
    assert code == 4 and json.loads(out)["liveness"].endswith("is gone (or is another process now: its start "
                                                              "time differs)")


def test_a_reused_pid_is_not_the_holder(copy: Path, capsys, monkeypatch):
    monkeypatch.setattr(lock, "LOCK_TABLE", copy / "no-lock-table")
    set_status(copy, status="idle")
    write_holder(copy, os.getpid(), process_start(os.getpid()) + 1)  # this pid, but not the process that locked
    assert cli(capsys, "status", "--base-dir", str(copy))[0] == 4
    write_holder(copy, os.getpid(), process_start(os.getpid()))
    code, out = cli(capsys, "status", "--base-dir", str(copy))
    assert code == 0 and "running (pid " in out


def test_a_killed_daemon_not_yet_reaped_is_dead(copy: Path, capsys, monkeypatch):
    monkeypatch.setattr(lock, "LOCK_TABLE", copy / "no-lock-table")
    set_status(copy, status="training")
    child = subprocess.Popen(["sleep", "30"])
    try:
        write_holder(copy, child.pid, process_start(child.pid))
        assert cli(capsys, "status", "--base-dir", str(copy))[0] == 0
        os.kill(child.pid, signal.SIGKILL)
        wait_for(lambda: Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", 10,
                 "a zombie")
        assert cli(capsys, "status", "--base-dir", str(copy))[0] == 4
    finally:
        child.kill()
        child.wait()


def test_status_never_takes_the_lock_and_sees_its_holder(copy: Path, capsys, monkeypatch):
    set_status(copy, status="idle")
    with RunLock(copy):
        def refuse(*args):
            raise AssertionError("status must not flock the base dir")

        monkeypatch.setattr(fcntl, "flock", refuse)
        code, out = cli(capsys, "status", "--base-dir", str(copy), "--json")
    found = json.loads(out)
    assert code == 0 and found["alive"] is True and found["holder_pid"] == os.getpid()
    assert found["liveness"] == f"pid {os.getpid()} holds the lock (/proc/locks)"


def test_no_run_here_is_one_line_and_exit_2(tmp_path: Path, capsys):
    code, out = cli(capsys, "status", "--base-dir", str(tmp_path / "nowhere"))
    assert code == 2 and f"{tmp_path / 'nowhere'} does not exist" in out and len(out.splitlines()) == 2
    code, out = cli(capsys, "status", "--base-dir", str(tmp_path))
    assert code == 2 and "no daemon has started here" in out


def test_history_has_one_row_per_file(stopped: Path, capsys):
    code, out = cli(capsys, "history", "--base-dir", str(stopped))
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].endswith("(ledger of checkpoint-8, step 8): 2 file(s)")
    assert lines[1].split() == ["#", "file", "sha256", "examples", "steps", "started", "finished", "status", "loss",
                                "eval_loss", "forgetting"]
    first, second = (line.split() for line in lines[2:4])
    assert first[:5] == ["1", "first.jsonl", first[2], "16", "1-4"] and len(first[2]) == 12
    assert second[:5] == ["2", "second.jsonl", second[2], "16", "5-8"]
    assert first[-3:-2] == ["done"] and float(first[-2]) > 0 and float(second[-2]) > 0
    code, out = cli(capsys, "history", "--base-dir", str(stopped), "--json")
    rows = json.loads(out)["files"]
    assert [(r["name"], r["first_step"], r["last_step"], r["loss_step"]) for r in rows] == [
        ("first.jsonl", 1, 4, 4), ("second.jsonl", 5, 8, 8)]
    # The eval loss column: DIR/eval scored at each file's last step.
    assert [float(first[-1]), float(second[-1])] == [round(r["eval_loss"], 4) for r in rows]
    assert rows[0]["sha256"].startswith(first[2]) and len(rows[0]["sha256"]) == 64


def test_history_eval_loss_is_blank_for_a_file_without_an_evaluation(copy: Path, capsys):
    state_path = copy / "current_model" / "checkpoint-8" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["log_history"] = [e for e in state["log_history"] if not ("eval_loss" in e and e["step"] == 4)]
    state_path.write_text(json.dumps(state))
    code, out = cli(capsys, "history", "--base-dir", str(copy))
    first, second = (line.split() for line in out.splitlines()[2:4])
    assert code == 0 and second[-3] == "done" and float(second[-1]) > 0
    assert first[-2] == "done" and len(first) == len(second) - 1, "no evaluation at step 4: the cell is blank"
    code, out = cli(capsys, "history", "--base-dir", str(copy), "--json")
    assert [r["eval_loss"] is None for r in json.loads(out)["files"]] == [True, False]


def test_history_shows_times_and_the_file_in_progress(copy: Path, capsys):
    ledger_path = next((copy / "current_model" / "checkpoint-8").glob("ledger.json"))
    ledger = json.loads(ledger_path.read_text())
    ledger["files_done"][0].update(started_at="2026-01-02T03:04:05+00:00", finished_at="2026-01-02T03:05:06+00:00")
    ledger["current"] = {**ledger["files_done"][1], "name": "third.jsonl", "ordinal": 3, "examples": 40,
                         "examples_trained": 8, "first_step": 7, "last_step": None, "status": "training"}
    ledger_path.write_text(json.dumps(ledger))
    code, out = cli(capsys, "history", "--base-dir", str(copy), "--json")
    rows = json.loads(out)["files"]
    assert rows[0]["started_at"] == "2026-01-02T03:04:05+00:00"
    assert rows[-1]["status"] == "training" and rows[-1]["last_step"] == 8
    code, out = cli(capsys, "history", "--base-dir", str(copy))
    assert code == 0 and "8/40" in out.splitlines()[-1] and "training" in out.splitlines()[-1]
    assert "2026-01-02" in out.splitlines()[2]
