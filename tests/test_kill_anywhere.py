"""SIGKILL anywhere, restart, and the final adapter is bit-identical to an uninterrupted run.

Kill steps come from a seeded RNG and are printed, so a failure can be replayed. Each kill uses
the test-only fault hook (LIT_CONTINUAL_FAULT=point@step: the process SIGKILLs itself there).
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_continual.safe_load import load_tensors
from tests.conftest import EXACT, EXACT_LINES, claimed, fill_exact, log_text, newest, run_daemon, trainer_state

KILL_SEED = 2026
LOGGERS = ("logger=[tensorboard,csv]",)  # the CSV log is run state a kill must not corrupt


def kill_plan(seed: int) -> list[str]:
    rng = random.Random(seed)
    return [
        "checkpoint-tmp@40",              # temp dir written and fsynced, not yet renamed
        f"train@{rng.randint(41, 150)}",  # in the middle of an optimizer step
        "retention@40",                   # checkpoint-40 renamed to .trash-*, not yet deleted (at step 160)
        f"step@{rng.randint(161, 199)}",  # after a step, before any checkpoint
        "before-delete@200",              # end-of-file checkpoint durable, inbox delete not done
        f"step@{rng.randint(201, 399)}",  # in file two
    ]


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("killed") / "run"
    fill_exact(base)
    plan = kill_plan(KILL_SEED)
    print(f"kill plan (seed {KILL_SEED}): {plan}")
    for fault in plan:
        result = run_daemon(base, *EXACT, *LOGGERS, fault=fault)
        assert result.returncode == -signal.SIGKILL, f"{fault} did not fire:\n{result.stdout}{result.stderr}"
        if fault.startswith("before-delete"):
            # An archiver's hard link and a chmod change the trained file's ctime: still not new.
            (trained,) = claimed(base, "one.jsonl")
            os.link(trained, base / "archived-one.jsonl")
            os.chmod(trained, 0o600)
    result = run_daemon(base, *EXACT, *LOGGERS)
    assert result.returncode == 0, result.stdout + result.stderr
    return base


def test_final_adapter_bit_identical_after_kills(reference, killed):
    mine = load_file(newest(killed) / "adapter_model.safetensors")
    theirs = load_file(newest(reference) / "adapter_model.safetensors")
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    mine_opt = load_tensors(newest(killed) / "optimizer.pt")["state"]
    theirs_opt = load_tensors(newest(reference) / "optimizer.pt")["state"]
    assert all(torch.equal(mine_opt[i]["exp_avg_sq"], theirs_opt[i]["exp_avg_sq"]) for i in theirs_opt)


def test_each_example_trained_exactly_once_and_same_steps(reference, killed):
    ledger = json.loads((newest(killed) / "ledger.json").read_text())
    done = [(r["name"], r["first_step"], r["last_step"], r["examples_trained"]) for r in ledger["files_done"]]
    assert done == [("one.jsonl", 1, 200, EXACT_LINES), ("two.jsonl", 201, 400, EXACT_LINES)]
    assert ledger["examples_trained_total"] == 2 * EXACT_LINES
    got = [(e["step"], e["loss"]) for e in trainer_state(newest(killed))["log_history"]]
    expected = [(e["step"], e["loss"]) for e in trainer_state(newest(reference))["log_history"]]
    assert got == expected


def test_interrupted_delete_is_finished_not_retrained(killed):
    text = log_text(killed)
    assert "inbox/one.jsonl was already trained (steps 1-200): deleting it" in text
    assert not [p for p in (killed / "inbox").rglob("*") if not p.is_dir()]


def test_no_temp_or_trash_left_and_tensorboard_not_doubled(killed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert not [p for p in (killed / "current_model").iterdir() if p.name.startswith(".")]
    events = EventAccumulator(str(killed / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 401))


def test_unrelated_kills_never_trip_the_crash_guard(killed):
    assert not (killed / "failed").exists() or not list((killed / "failed").iterdir())
    assert "died while training" in log_text(killed)


def test_csv_log_after_kills_keeps_the_runs_curve(reference, killed):
    """Rows a killed process wrote after its last checkpoint stay; the resumed process writes
    those steps again, and the last row of each step is the uninterrupted run's value."""
    with open(killed / "csv" / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["train/loss"]]
    last = {int(r["step"]): float(r["train/loss"]) for r in rows}
    expected = {e["step"]: e["loss"] for e in trainer_state(newest(reference))["log_history"]}
    assert sorted(last) == sorted(expected) and len(rows) > len(expected), "kills mid-file repeat some steps"
    assert all(abs(last[step] - loss) <= 1e-6 for step, loss in expected.items())
