"""SIGKILL anywhere, restart, and the final adapter is bit-identical to an uninterrupted run.

`make test` runs the kill test with replay, probes and a rebase on (the last one here, at every
kind of kill point); `make soak` also runs the 400-step one on the exact stream and the soaks.

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
from tests.conftest import (
    EXACT,
    EXACT_LINES,
    claimed,
    fill_exact,
    log_text,
    newest,
    run_daemon,
    trainer_state,
    write_jsonl,
)

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


@pytest.mark.slow
def test_final_adapter_bit_identical_after_kills(reference, killed):
    mine = load_file(newest(killed) / "adapter_model.safetensors")
    theirs = load_file(newest(reference) / "adapter_model.safetensors")
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    mine_opt = load_tensors(newest(killed) / "optimizer.pt")["state"]
    theirs_opt = load_tensors(newest(reference) / "optimizer.pt")["state"]
    assert all(torch.equal(mine_opt[i]["exp_avg_sq"], theirs_opt[i]["exp_avg_sq"]) for i in theirs_opt)


@pytest.mark.slow
def test_each_example_trained_exactly_once_and_same_steps(reference, killed):
    ledger = json.loads((newest(killed) / "ledger.json").read_text())
    done = [(r["name"], r["first_step"], r["last_step"], r["examples_trained"]) for r in ledger["files_done"]]
    assert done == [("one.jsonl", 1, 200, EXACT_LINES), ("two.jsonl", 201, 400, EXACT_LINES)]
    assert ledger["examples_trained_total"] == 2 * EXACT_LINES
    got = [(e["step"], e["loss"]) for e in trainer_state(newest(killed))["log_history"]]
    expected = [(e["step"], e["loss"]) for e in trainer_state(newest(reference))["log_history"]]
    assert got == expected


@pytest.mark.slow
def test_interrupted_delete_is_finished_not_retrained(killed):
    text = log_text(killed)
    assert "inbox/one.jsonl was already trained (steps 1-200): deleting it" in text
    assert not [p for p in (killed / "inbox").rglob("*") if not p.is_dir()]


@pytest.mark.slow
def test_no_temp_or_trash_left_and_tensorboard_not_doubled(killed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert not [p for p in (killed / "current_model").iterdir() if p.name.startswith(".")]
    events = EventAccumulator(str(killed / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 401))


@pytest.mark.slow
def test_unrelated_kills_never_trip_the_crash_guard(killed):
    assert not (killed / "failed").exists() or not list((killed / "failed").iterdir())
    assert "died while training" in log_text(killed)


@pytest.mark.slow
def test_csv_log_after_kills_keeps_the_runs_curve(reference, killed):
    """Rows a killed process wrote after its last checkpoint stay; the resumed process writes
    those steps again, and the last row of each step is the uninterrupted run's value."""
    with open(killed / "csv" / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["train/loss"]]
    last = {int(r["step"]): float(r["train/loss"]) for r in rows}
    expected = {e["step"]: e["loss"] for e in trainer_state(newest(reference))["log_history"]}
    assert sorted(last) == sorted(expected) and len(rows) > len(expected), "kills mid-file repeat some steps"
    assert all(abs(last[step] - loss) <= 1e-6 for step, loss in expected.items())


# The run state added for learning that lasts, killed at its own moments: three 48-line files
# with 4 examples of each held out as probes (44 trained), a fixed eval file, a quarter of each
# batch replayed once the reservoir holds examples, and a rebase after every second file.
# Steps: a 1-6 (no reservoir yet: 44 / 8), b 7-14 (6 new + 2 replayed per batch: 44 / 6),
# rebase at 14, c 15-22; checkpoints every 4 steps and at file ends.
LASTING = ["eval.holdout_fraction=0.1", "data.replay_fraction=0.25", "data.replay_buffer_size=20",
           "consolidate.rebase_every_files=2", "consolidate.rewarm_steps=4", "logging.every_n_steps=1",
           "checkpoint.every_n_steps=4", *LOGGERS]
LASTING_KILLS = ["checkpoint-tmp@4",  # temp dir written and fsynced, not yet renamed
                 "replay@6",          # a's examples in its replay segment, checkpoint-6 not written
                 "before-delete@6",   # end-of-file checkpoint durable, inbox delete not done
                 "retention@4",       # checkpoint-4 renamed to .trash-* (at step 12), not yet deleted
                 "rebase-base@14",    # gen-1 written in its temp dir, not yet renamed
                 "rebase-swap@14",    # gen-1 in place, the model not yet swapped
                 "rebase-done@14",    # swapped (fresh adapter, empty optimizer), checkpoint-14 not written
                 f"step@{random.Random(KILL_SEED).randint(15, 21)}"]  # on gen 1 with replay, mid-file


def test_kill_anywhere_with_replay_probes_and_rebase_is_bit_identical(tmp_path: Path):
    from tests.test_rebase import consistent, daemon_here, fill

    reference, killed = tmp_path / "reference" / "run", tmp_path / "killed" / "run"
    for base in (reference, killed):
        fill(base, "abc")
        write_jsonl(base / "eval" / "fixed.jsonl", 12, seed=99)
    daemon_here(reference, *LASTING)
    print(f"kill plan: {LASTING_KILLS}")
    for fault in LASTING_KILLS:
        result = run_daemon(killed, *LASTING, fault=fault)
        assert result.returncode == -signal.SIGKILL, f"{fault} did not fire:\n{result.stderr[-3000:]}"
        consistent(killed)  # old base + old adapter, or new base + fresh adapter: never a mix
        if fault.startswith("before-delete"):
            # An archiver's hard link and a chmod change the trained file's ctime: still not new.
            (trained,) = claimed(killed, "a.jsonl")
            os.link(trained, killed / "archived-a.jsonl")
            os.chmod(trained, 0o600)
    # The resume that finishes it: a process of its own, as in the field (TensorBoard orders event
    # files by start second, then pid: an in-process run here could sort before the last killed one).
    result = run_daemon(killed, *LASTING)
    assert result.returncode == 0, result.stderr[-3000:]
    consistent(killed)

    mine, theirs = newest(killed), newest(reference)
    assert mine.name == theirs.name == "checkpoint-22"
    ledger = json.loads((mine / "ledger.json").read_text())
    assert [(r["name"], r["first_step"], r["last_step"], r["examples_trained"], r["held_out"])
            for r in ledger["files_done"]] == [("a.jsonl", 1, 6, 44, 4), ("b.jsonl", 7, 14, 44, 4),
                                               ("c.jsonl", 15, 22, 44, 4)]
    assert ledger == json.loads((theirs / "ledger.json").read_text()) | {"files_done": ledger["files_done"]}
    assert [(r["replayed"], r.get("rebased_to")) for r in ledger["files_done"]] == \
        [(r["replayed"], r.get("rebased_to")) for r in json.loads((theirs / "ledger.json").read_text())["files_done"]]
    for name in ("adapter_model.safetensors",):
        a, b = load_file(mine / name), load_file(theirs / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = load_tensors(mine / "optimizer.pt")["state"], load_tensors(theirs / "optimizer.pt")["state"]
    assert a.keys() == b.keys() and all(torch.equal(a[i]["exp_avg_sq"], b[i]["exp_avg_sq"]) for i in a)
    gen_a = load_file(killed / "base_models" / "gen-1" / "model.safetensors")
    gen_b = load_file(reference / "base_models" / "gen-1" / "model.safetensors")
    assert gen_a.keys() == gen_b.keys() and all(torch.equal(gen_a[k], gen_b[k]) for k in gen_a)
    # The replay reservoir, the forgetting matrix, the probes and the losses: the same.
    assert (mine / "replay.json").read_text() == (theirs / "replay.json").read_text()
    for run in (killed, reference):
        assert sorted(p.name for p in (run / "eval" / "probes").iterdir()) == ["1-a.jsonl", "2-b.jsonl", "3-c.jsonl"]
    assert json.loads((killed / "eval" / "forgetting.json").read_text()) == \
        json.loads((reference / "eval" / "forgetting.json").read_text())
    got = [(e["step"], e.get("loss"), e.get("eval_loss")) for e in trainer_state(mine)["log_history"]]
    assert got == [(e["step"], e.get("loss"), e.get("eval_loss")) for e in trainer_state(theirs)["log_history"]]
    assert not [p for p in (killed / "base_models").iterdir() if p.name.startswith(".")]
    # The kinds of kill points of the exact stream: an interrupted delete is finished, not
    # retrained; no temp or trash left; TensorBoard not doubled; the CSV log keeps the curve;
    # kills unrelated to a file never trip the crash guard.
    assert "inbox/a.jsonl was already trained (steps 1-6): deleting it" in log_text(killed)
    assert not [p for p in (killed / "inbox").rglob("*") if not p.is_dir()]
    assert not [p for p in (killed / "current_model").iterdir() if p.name.startswith(".")]
    assert not (killed / "failed").exists() or not list((killed / "failed").iterdir())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(killed / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 23))
    with open(killed / "csv" / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["train/loss"]]
    last = {int(r["step"]): float(r["train/loss"]) for r in rows}
    expected = {e["step"]: e["loss"] for e in trainer_state(theirs)["log_history"] if "loss" in e}
    assert sorted(last) == sorted(expected) and all(abs(last[k] - v) <= 1e-6 for k, v in expected.items())
