"""The operator machinery at odd moments: a clock set back, a disk that refuses the schedule's
state, a control path that is a directory, a command holding the lock, a stop during a merge."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from lit_continual import consolidation, controls, snapshots
from lit_continual.config import compose
from lit_continual.lock import RunLock
from lit_continual.operations import Operations
from lit_continual.status import Status
from lit_continual.stop import StopRequest
from tests.conftest import FAST, REPO, copied, trained_once, write_jsonl


def _ops(base: Path, *overrides: str) -> Operations:
    cfg = compose([f"base_dir={base}", *FAST, *overrides])
    return Operations(cfg, base, Status(base), StopRequest(base / ".stop"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_once(tmp_path_factory.mktemp("ops-faults"))


def test_a_schedule_handled_in_the_future_counts_from_now_after_the_clock_was_set_back(tmp_path: Path):
    state = tmp_path / "snapshots" / ".schedule.json"
    state.parent.mkdir(parents=True)
    ahead = datetime.now() + timedelta(days=2)
    state.write_text(json.dumps({"schedule": "0 3 * * *", "last_handled_epoch": ahead.timestamp()}))
    ops = _ops(tmp_path)
    assert not ops._snapshot_due()
    # counting from now: the next 3 AM is within a day, not after the clock catches up in 2 days
    assert ops._next_snapshot <= datetime.now() + timedelta(days=1)
    assert json.loads(state.read_text())["last_handled_epoch"] < ahead.timestamp()


def test_a_disk_that_refuses_the_schedule_state_never_stops_the_daemon(tmp_path: Path, monkeypatch):
    """A due snapshot whose state cannot be recorded (ENOSPC) is tried once, not at every poll,
    and nothing raises into the training loop."""
    ops = _ops(tmp_path, "snapshot.schedule='* * * * *'")
    ops._next_snapshot = datetime.now() - timedelta(seconds=1)
    taken = []
    monkeypatch.setattr(snapshots, "take_and_prune", lambda *a, **k: taken.append(1) or {"ok": False,
                                                                                          "error": "disk full"})

    def full(self, now=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(snapshots.Schedule, "mark", full)
    ops.idle()
    ops.idle()
    assert taken == [1]


def test_a_control_path_that_is_a_directory_is_reported_not_fatal(tmp_path: Path):
    (tmp_path / ".snapshot").mkdir(parents=True)
    (tmp_path / ".skip").mkdir()
    ops = _ops(tmp_path)
    ops.look()
    ops.idle()  # would raise IsADirectoryError from the request's answer without the guard


def test_two_requests_of_one_kind_share_one_answer(tmp_path: Path):
    (tmp_path / "status").mkdir()
    first, second = controls.ask(tmp_path, controls.SNAPSHOT), controls.ask(tmp_path, controls.SNAPSHOT)
    assert first == second
    controls.answer(tmp_path, controls.SNAPSHOT, first, {"ok": True})
    assert controls.wait(tmp_path, controls.SNAPSHOT, second, alive=lambda: True, timeout=1)["ok"]


def test_a_stop_during_a_consolidation_terminates_the_merge_and_leaves_nothing(trained: Path, tmp_path: Path):
    base = copied(trained, tmp_path)
    started = time.monotonic()
    with pytest.raises(consolidation.ConsolidationError, match="stop request"):
        consolidation.consolidate(base, cancelled=lambda: time.monotonic() - started > 0.3)
    root = base / "consolidated"
    assert not root.exists() or not [p.name for p in root.iterdir() if not p.name.startswith(".failed")]


def test_a_daemon_waits_for_a_command_holding_the_base_dir_not_for_a_daemon(tmp_path: Path):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 16, seed=1)
    cmd = [sys.executable, "-m", "lit_continual", "daemon", "--base-dir", str(base), *FAST,
           "daemon.exit_when_idle=true"]
    with RunLock(base, role="lit-continual consolidate"):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        assert proc.poll() is None  # waiting, not exit 3
    assert proc.wait(timeout=120) == 0
    assert "waiting for `lit-continual consolidate`" in proc.stderr.read()
    proc.stderr.close()
    with RunLock(base):  # a daemon holds it: exit 3 at once
        held = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert held.returncode == 3, held.stderr
