"""LR schedules for unbounded runs: each preset's factor at given steps, the same LR (and the same
adapter) across a restart mid-file, a re-warm per file for cosine_per_file, and no loss spike at
file boundaries with the default schedule."""

from __future__ import annotations

import csv
import json
import math
import time
from itertools import pairwise
from pathlib import Path

import pytest
from safetensors.torch import load_file

from lit_continual import faults, schedule
from lit_continual.config.compose import groups
from lit_continual.schedule import FileSpan
from tests.conftest import newest, train_here, trainer_state, write_jsonl

LR = 3e-3
# One thread: this machine's 2 cores are shared, and 2 OpenMP threads next to another busy process
# slow each other down many times over (DESIGN.md).
QUIET = ("logging.every_n_steps=1", "trainer.num_threads=1", f"optim.lr={LR}", "daemon.exit_when_idle=true")
FILE_STEPS, STEPS, STOP_AT = 10, 20, 14  # two 10-step files (80 lines at batch 8), stopped inside the second
# Keys that make every phase of each schedule happen within those 20 steps.
SCHEDULES = {
    "warmup_constant": ["scheduler.warmup_steps=4"],
    "constant": [],
    "inverse_sqrt": ["scheduler.warmup_steps=4", "scheduler.timescale=2"],
    "wsd": ["scheduler.warmup_steps=4", "scheduler.decay_start=12", "scheduler.decay_steps=6", "scheduler.floor=0.1"],
    "cosine_per_file": ["scheduler.warmup_steps=3", "scheduler.floor=0.1"],
}
# Lightning's LearningRateMonitor reads the LR in its on_train_batch_start: it must see the re-warm too.
LOGGERS = {"cosine_per_file": ("callbacks=lr_monitor", "logger=csv")}


def test_each_schedule_gives_its_documented_factor_at_given_steps():
    # `step` = completed steps: the step logged as N trains at lr x f(N - 1).
    assert [schedule.warmup_constant(s, warmup_steps=4) for s in (0, 1, 3, 10_000)] == [0.25, 0.5, 1.0, 1.0]
    assert [schedule.constant(s) for s in (0, 10_000)] == [1.0, 1.0]
    assert [schedule.inverse_sqrt(s, warmup_steps=4) for s in (0, 3, 15, 63)] == [0.25, 1.0, 0.5, 0.25]
    assert schedule.inverse_sqrt(9, warmup_steps=4, timescale=2) == 0.5  # halves 3 x timescale after warmup
    assert [schedule.inverse_sqrt(s) for s in (0, 3)] == [1.0, 0.5]  # no warmup: 1 / sqrt(step + 1)
    wsd = {"warmup_steps": 2, "decay_start": 10, "decay_steps": 4, "floor": 0.1}
    assert [schedule.wsd(s, **wsd) for s in (0, 1, 9, 10, 11, 13, 14, 10_000)] == pytest.approx(
        [0.5, 1.0, 1.0, 1.0, 0.1 + 0.9 * 0.5, 0.1 + 0.9 * (1 - math.sqrt(0.75)), 0.1, 0.1])
    second_file = FileSpan(first_step=11, steps=10)  # steps 11-20 as logged: completed steps 10-19
    cosine = [schedule.cosine_per_file(s, file=second_file, warmup_steps=2) for s in (10, 11, 12, 16, 19, 20)]
    assert cosine == pytest.approx([0.5, 1.0, 1.0, 0.5, 0.5 * (1 + math.cos(math.pi * 7 / 8)), 0.0])
    assert cosine[4] > 0, "the file's last step still trains"
    assert schedule.cosine_per_file(3, warmup_steps=2) == 1.0  # no file known yet: warm, no end
    assert schedule.takes_file(schedule.cosine_per_file) and not schedule.takes_file(schedule.wsd)


def _kwargs(overrides: list[str]) -> dict:
    return {item.split("=")[0].split(".")[1]: json.loads(item.split("=")[1]) for item in overrides}


def _expected_lr(name: str, step: int) -> float:
    """The LR of logged step `step` in the two-file run, from the schedule function itself."""
    function, keys = getattr(schedule, name), _kwargs(SCHEDULES[name])
    if schedule.takes_file(function):
        first = 1 if step <= FILE_STEPS else FILE_STEPS + 1
        keys["file"] = FileSpan(first_step=first, steps=FILE_STEPS)
    return LR * function(step - 1, **keys)


def _two_files(base: Path) -> None:
    now = time.time()
    write_jsonl(base / "inbox" / "a.jsonl", FILE_STEPS * 8, seed=1, mtime=now - 20)
    write_jsonl(base / "inbox" / "b.jsonl", FILE_STEPS * 8, seed=2, mtime=now - 10)


def _history(base: Path) -> dict[int, dict]:
    return {entry["step"]: entry for entry in trainer_state(newest(base))["log_history"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """name -> (uninterrupted run, run stopped by `.stop` after step 14 and restarted), trained
    on first use (inside a test, so its signal handlers are given back)."""
    done: dict[str, tuple[Path, Path]] = {}

    def get(name: str) -> tuple[Path, Path]:
        if name not in done:
            root = tmp_path_factory.mktemp(name)
            straight, interrupted = root / "straight", root / "interrupted"
            opts = (f"scheduler={name}", *SCHEDULES[name], *QUIET, *LOGGERS.get(name, ("logger=null",)))
            _two_files(straight)
            _two_files(interrupted)
            assert train_here(straight, *opts) == 0
            with pytest.MonkeyPatch.context() as patch:
                real = faults.point

                def point(where: str, step: int) -> None:  # an operator's .stop right after step 14
                    if where == "step" and step == STOP_AT:
                        (interrupted / ".stop").touch()
                    real(where, step)

                patch.setattr(faults, "point", point)
                assert train_here(interrupted, *opts) == 0
            assert trainer_state(newest(interrupted))["global_step"] == STOP_AT
            (interrupted / ".stop").unlink()
            assert train_here(interrupted, *opts) == 0
            done[name] = straight, interrupted
        return done[name]

    return get


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_lr_is_the_schedule_at_every_step_and_the_same_after_a_restart_mid_file(runs, name):
    straight, interrupted = runs(name)
    want = [_expected_lr(name, step) for step in range(1, STEPS + 1)]
    assert len(set(want)) > 1 or name == "constant", "the test keys must make the schedule move"
    first, second = _history(straight), _history(interrupted)
    assert sorted(first) == sorted(second) == list(range(1, STEPS + 1))
    assert [first[s]["learning_rate"] for s in first] == want
    assert [second[s]["learning_rate"] for s in second] == want  # bit-equal to the uninterrupted run
    assert [second[s]["loss"] for s in second] == [first[s]["loss"] for s in first]
    ours, theirs = (load_file(newest(b) / "adapter_model.safetensors") for b in (interrupted, straight))
    assert all(ours[k].equal(theirs[k]) for k in theirs), "the restarted adapter differs"


def test_cosine_per_file_rewarms_at_each_file_and_resumes_mid_file_from_the_ledger(runs):
    _, interrupted = runs("cosine_per_file")
    lr = {step: entry["learning_rate"] for step, entry in _history(interrupted).items()}
    assert lr[1] == lr[FILE_STEPS + 1] < lr[2] < lr[3] == LR, "each file re-warms from its own first step"
    assert lr[FILE_STEPS] < lr[FILE_STEPS - 1] < LR and lr[STEPS] < lr[STEPS - 1], "and decays to its end"
    ledger = json.loads((newest(interrupted) / "ledger.json").read_text())
    assert [(r["first_step"], r["last_step"]) for r in ledger["files_done"]] == [(1, 10), (11, 20)]
    # The second file began in the stopped process: the restart took its first step from the ledger.
    assert lr[STOP_AT + 1] == _expected_lr("cosine_per_file", STOP_AT + 1)
    with open(interrupted / "csv" / "metrics.csv", newline="") as rows:  # appended across the restart
        monitored = {int(row["step"]) + 1: float(row["lr-AdamW"]) for row in csv.DictReader(rows) if row["lr-AdamW"]}
    assert monitored == lr, "LearningRateMonitor logs the LR each step trains at"


def test_default_schedule_has_no_loss_spike_at_file_boundaries(tmp_path: Path):
    """Gupta et al. 2023's stability gap: a schedule that re-warms at a new file makes its first
    steps worse than the previous file's last. The default (warmup once, then constant) must not:
    for same-distribution files, mean loss of file k+1's first 20 steps <= 1.10 x file k's last 20."""
    assert groups()["scheduler"][0] == "warmup_constant"  # the default
    base = tmp_path / "run"
    now = time.time()
    for k in range(3):  # three 60-step files of one distribution (different sentences)
        write_jsonl(base / "inbox" / f"part{k}.jsonl", 480, seed=20 + k, mtime=now - 30 + k)
    assert train_here(base, *QUIET) == 0  # optim.lr=3e-3 is the default too
    loss = {step: entry["loss"] for step, entry in _history(base).items()}
    files = json.loads((newest(base) / "ledger.json").read_text())["files_done"]
    assert [r["last_step"] - r["first_step"] + 1 for r in files] == [60, 60, 60]
    ratios = []
    for before, after in pairwise(files):
        last = [loss[s] for s in range(before["last_step"] - 19, before["last_step"] + 1)]
        first = [loss[s] for s in range(after["first_step"], after["first_step"] + 20)]
        ratios.append(sum(first) / sum(last))
    print(f"loss continuity (first 20 steps of file k+1 / last 20 of file k): {[round(r, 3) for r in ratios]}")
    assert all(ratio <= 1.10 for ratio in ratios), ratios
