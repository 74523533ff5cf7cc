"""Restarts continue the same run: exact losses, same final step, same adapter (torchtune-style)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_continual.safe_load import load_tensors
from tests.conftest import (
    EXACT,
    EXACT_LINES,
    fill_exact,
    log_text,
    logged_step,
    newest,
    run_daemon,
    start_daemon,
    status,
    trainer_state,
    under_inbox,
    wait_for,
)

LINES = EXACT_LINES


def _stop_when(base: Path, proc, step: int, how: str) -> float:
    wait_for(lambda: logged_step(base) >= step or proc.poll() is not None, 120, f"step {step}")
    asked = time.monotonic()
    if how == "stop-file":
        (base / ".stop").touch()
    else:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, proc.stdout.read()
    return time.monotonic() - asked


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> tuple[Path, list[float]]:
    """Stopped by .stop in file one, by SIGTERM in file two, then drained by a third process."""
    base = tmp_path_factory.mktemp("interrupted") / "run"
    fill_exact(base)
    latencies = []
    proc = start_daemon(base, *EXACT)
    latencies.append(_stop_when(base, proc, 50, "stop-file"))
    assert status(base)["status"] == "stopped"
    first_stop = trainer_state(newest(base))["global_step"]
    assert 50 <= first_stop < 200, "the stop must land inside file one"
    assert under_inbox(base, "one.jsonl"), "an unfinished file stays under inbox/"
    (base / ".stop").unlink()
    proc = start_daemon(base, *EXACT)
    latencies.append(_stop_when(base, proc, 260, "sigterm"))
    result = run_daemon(base, *EXACT)
    assert result.returncode == 0, result.stdout
    return base, latencies


def test_stop_mid_file_then_restart_ends_at_same_global_step(reference, interrupted):
    base, latencies = interrupted
    assert trainer_state(newest(base))["global_step"] == trainer_state(newest(reference))["global_step"] == 400
    assert max(latencies) < 10, latencies
    assert not [p for p in (base / "inbox").rglob("*") if not p.is_dir()], "every file trained and deleted"


def test_per_step_losses_equal_uninterrupted_run(reference, interrupted):
    base, _ = interrupted
    expected = trainer_state(newest(reference))["log_history"]
    got = trainer_state(newest(base))["log_history"]
    assert [e["step"] for e in got] == [e["step"] for e in expected] == list(range(1, 401))
    for mine, theirs in zip(got, expected, strict=False):
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-5, abs=1e-5), mine["step"]
        assert mine["learning_rate"] == pytest.approx(theirs["learning_rate"], rel=1e-12)


def test_final_adapter_bit_identical_to_uninterrupted_run(reference, interrupted):
    base, _ = interrupted
    mine = load_file(newest(base) / "adapter_model.safetensors")
    theirs = load_file(newest(reference) / "adapter_model.safetensors")
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_restart_logs_resume_and_keeps_optimizer_and_scheduler_in_step(interrupted):
    base, _ = interrupted
    text = log_text(base)
    assert text.count("lit-continual starting") == 3
    resumed = [line for line in text.splitlines() if "Resuming from checkpoint: checkpoint-" in line]
    assert len(resumed) >= 4
    ckpt = newest(base)
    optimizer = load_tensors(ckpt / "optimizer.pt")
    assert {int(s["step"]) for s in optimizer["state"].values()} == {400}
    assert load_tensors(ckpt / "scheduler.pt")["last_epoch"] == 400


def test_tensorboard_is_one_curve_across_restarts(interrupted):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base, _ = interrupted
    assert len(list((base / "tensorboard").glob("events.out.tfevents.*"))) == 3  # one per process
    events = EventAccumulator(str(base / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 401))


def test_each_example_trained_once_per_file(interrupted):
    base, _ = interrupted
    import json

    ledger = json.loads((newest(base) / "ledger.json").read_text())
    done = [(r["name"], r["first_step"], r["last_step"], r["examples"]) for r in ledger["files_done"]]
    assert done == [("one.jsonl", 1, 200, LINES), ("two.jsonl", 201, 400, LINES)]
    assert ledger["examples_trained_total"] == 2 * LINES
