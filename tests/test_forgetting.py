"""Per-file probes and the forgetting matrix: held-out examples never trained, fewer steps,
probe files, DIR/eval/forgetting.json after each file, the bounded set of kept probes, where
forgetting shows (loggers, status, history) and a kill at a file end that redoes its row."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from lit_continual.data.holdout import held_out_positions, training_order
from lit_continual.safe_load import load_tensors
from tests.conftest import checkpoints, log_text, newest, run_daemon, status, train_here, write_jsonl

PROBES = ["eval.holdout_fraction=0.1", "eval.max_probes=3", "logging.every_n_steps=1"]
# name: (lines, steps): 40 lines: 4 held out, 36 trained in ceil(36/8) = 5 steps; 24: 2 out, 3 steps;
# 16: 1 out, 2 steps. At most 3 probes: after file 4, the newest 2 and the oldest stay.
FILES = {"a.jsonl": (40, 5), "b.jsonl": (24, 3), "c.jsonl": (24, 3), "d.jsonl": (16, 2)}
ENDS = [5, 8, 11, 13]


def _matrix(base: Path) -> dict:
    return json.loads((base / "eval" / "forgetting.json").read_text())


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> tuple[Path, dict, dict]:
    """Four files with probes, killed right after the last file's row was written (before its
    checkpoint), then restarted: (base, the matrix the killed process left, the inbox lines)."""
    base = tmp_path_factory.mktemp("probes") / "run"
    now, lines = time.time(), {}
    for number, (name, (count, _)) in enumerate(FILES.items()):
        path = write_jsonl(base / "inbox" / name, count, seed=20 + number, mtime=now - 30 + number)
        lines[name] = path.read_text().splitlines(keepends=True)
    killed = run_daemon(base, *PROBES, fault=f"step@{ENDS[-1]}")
    assert killed.returncode == -9, killed.stdout + killed.stderr
    left = _matrix(base)
    assert [r["after_file"] for r in left["rows"]] == [1, 2, 3, 4], "row 4 written before the kill"
    assert [c.name for c in checkpoints(base)][-1] == f"checkpoint-{ENDS[-2]}"
    assert train_here(base, "daemon.exit_when_idle=true", *PROBES) == 0  # in this process: no second start-up
    return base, left, lines


def test_held_out_examples_are_the_seeded_choice_in_probe_files_and_steps_count_the_rest(killed_and_resumed):
    base, _, lines = killed_and_resumed
    assert [c.name for c in checkpoints(base)][-1] == f"checkpoint-{ENDS[-1]}"
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    records = {r["name"]: r for r in ledger["files_done"]}
    log = log_text(base)
    first = 1
    for name, (count, steps) in FILES.items():
        record = records[name]
        held = math.floor(0.1 * count)
        assert (record["status"], record["examples"], record["held_out"]) == ("done", count, held)
        assert record["examples_trained"] == count - held
        assert (record["first_step"], record["last_step"]) == (first, first + steps - 1)
        assert f"File {name} (#{record['ordinal']}): {count} examples" in log
        assert f"{held} held out as its probe, {count - held} left, steps {first}-{first + steps - 1}" in log
        first += steps
        view = SimpleNamespace(**record)
        positions = held_out_positions(view)
        assert not np.isin(training_order(view, True), positions).any(), "held-out examples are never trained"
        probe = base / "eval" / "probes" / f"{record['ordinal']}-{name[:-6]}.jsonl"
        if name == "b.jsonl":
            assert not probe.exists(), "dropped: at most eval.max_probes are kept"
        else:
            assert probe.read_text().splitlines(keepends=True) == [lines[name][p] for p in positions]
    assert status(base)["total_steps"] == ENDS[-1]


def test_forgetting_matrix_rows_columns_first_values_and_the_redone_row(killed_and_resumed):
    base, left, _ = killed_and_resumed
    matrix = _matrix(base)
    assert matrix["version"] == 1
    assert [(c["ordinal"], c["name"], c["probe"], c["ended_after"]) for c in matrix["columns"]] == [
        (1, "a.jsonl", "1-a.jsonl", None), (2, "b.jsonl", "2-b.jsonl", 4), (3, "c.jsonl", "3-c.jsonl", None),
        (4, "d.jsonl", "4-d.jsonl", None)]
    rows = matrix["rows"]
    assert [(r["after_file"], r["name"], r["step"]) for r in rows] == [
        (k + 1, name, step) for k, (name, step) in enumerate(zip(FILES, ENDS, strict=True))], "no duplicated row"
    assert [list(r["losses"]) for r in rows] == [["1"], ["1", "2"], ["1", "2", "3"], ["1", "3", "4"]]
    assert all(0 < loss < 20 for row in rows for loss in row["losses"].values())
    assert [c["first"] for c in matrix["columns"]] == [rows[j]["losses"][str(j + 1)] for j in range(4)]
    assert matrix == left, "the redone row has the values of the one the killed process wrote"
    # The run state holds only the kept columns and the newest row.
    state = load_tensors(newest(base) / "run_state.pt")["callbacks"]["Forgetting"]
    assert state["latest"] == rows[-1] and state["pending"] is None
    assert [(c["ordinal"], c["first"]) for c in state["columns"]] == [(c["ordinal"], c["first"])
                                                                        for c in matrix["columns"] if c["ordinal"] != 2]
    firsts = {c["ordinal"]: c["first"] for c in matrix["columns"]}
    assert status(base)["forgetting"] == {f"{j}-{n}": pytest.approx(rows[-1]["losses"][str(j)] - firsts[j], abs=1e-5)
                                          for j, n in ((1, "a"), (3, "c"), (4, "d"))}
    log = log_text(base)
    assert log.count("forgetting after file #4 (step 13): 1-a=") == 2  # the killed run's and the redo
    assert "Probe 2-b.jsonl dropped after file #4 (eval.max_probes=3): its column ends" in log


def test_history_shows_forgetting_and_held_out_examples(killed_and_resumed):
    from lit_continual.commands.history import gather, render

    base, _, _ = killed_and_resumed
    found, matrix = gather(base), _matrix(base)
    rows = {r["name"]: r for r in found["files"]}
    for column, after in zip(matrix["columns"], (4, 3, 4, 4), strict=True):
        row = rows[column["name"]]
        losses = matrix["rows"][after - 1]["losses"]
        assert row["forgetting"] == pytest.approx(losses[str(column["ordinal"])] - column["first"], abs=1e-5)
        assert row["forgetting_after"] == after
        assert row["held_out"] == math.floor(0.1 * row["examples"])
    table = render(found)
    assert "36 (+4 probe)" in table and "15 (+1 probe)" in table and "forgetting" in table


def test_forgetting_scalars_and_the_matrix_image_in_tensorboard(killed_and_resumed):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base, _, _ = killed_and_resumed
    events = EventAccumulator(str(base / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("forgetting/1-a")] == ENDS
    assert [e.step for e in events.Scalars("forgetting/2-b")] == ENDS[1:3]
    assert [e.step for e in events.Scalars("probes/loss")] == ENDS
    images = events.Images("forgetting/matrix")
    assert [e.step for e in images] == ENDS, "once per file end (the killed process's last one purged)"
    assert images[-1].height == images[-1].width > 0


def test_kept_probes_newest_half_and_evenly_spaced_older():
    from lit_continual.forgetting import kept_probes

    assert kept_probes([1, 2, 3], 5) == [1, 2, 3]
    assert kept_probes([1, 2, 3], 2) == [1, 3]
    assert kept_probes(list(range(1, 12)), 1) == [11]
    assert kept_probes(list(range(1, 12)), 6) == [1, 4, 8, 9, 10, 11]
    kept: list[int] = []
    for ordinal in range(1, 101):  # one probe more per file: the older half stays spread out
        kept = kept_probes(kept + [ordinal], 10)
    assert len(kept) == 10 and kept[-5:] == [96, 97, 98, 99, 100] and kept[0] == 1
    assert max(np.diff(kept[:6])) < 40


def test_heatmap_is_an_rgb_picture_of_forgetting():
    from lit_continual.forgetting import heatmap

    doc = {"columns": [{"ordinal": 1, "first": 2.0}, {"ordinal": 2, "first": 3.0}],
           "rows": [{"after_file": 1, "losses": {"1": 2.0}}, {"after_file": 2, "losses": {"1": 2.5, "2": 3.0}}]}
    img = heatmap(doc)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3 and img.shape[0] == img.shape[1]
    cell = img.shape[0] // 2
    assert tuple(img[0, 0]) == (255, 255, 255)  # no forgetting: white
    assert tuple(img[cell, 0]) == (214, 39, 40)  # the largest forgetting: red
    assert tuple(img[0, cell]) == (96, 96, 96)  # no value (file 2 not yet trained): grey


def test_a_row_a_stop_interrupts_is_evaluated_when_the_run_restarts(tmp_path: Path, monkeypatch):
    """A .stop during the probe evaluation at file 1's end: the run stops at that step with the
    row pending in its checkpoint; the next process evaluates it (same weights) before training."""
    import lit_continual.evaluation as evaluation

    base, now = tmp_path / "run", time.time()
    write_jsonl(base / "inbox" / "one.jsonl", 40, seed=1, mtime=now - 10)
    write_jsonl(base / "inbox" / "two.jsonl", 16, seed=2, mtime=now - 5)
    real, calls = evaluation.token_loss_sum, []

    def stopping(logits, labels):
        calls.append(1)
        (base / ".stop").touch()
        return real(logits, labels)

    run = ["daemon.exit_when_idle=true", "eval.holdout_fraction=0.1", "eval.batch_size=1"]
    monkeypatch.setattr(evaluation, "token_loss_sum", stopping)
    assert train_here(base, *run) == 0
    assert len(calls) == 1 and [c.name for c in checkpoints(base)] == ["checkpoint-5"]
    state = load_tensors(newest(base) / "run_state.pt")["callbacks"]["Forgetting"]
    assert state["pending"]["after_file"] == 1 and state["latest"] is None
    assert not (base / "eval" / "forgetting.json").exists()
    monkeypatch.setattr(evaluation, "token_loss_sum", real)
    (base / ".stop").unlink()
    assert train_here(base, *run) == 0
    matrix = _matrix(base)
    assert [(r["after_file"], r["step"], list(r["losses"])) for r in matrix["rows"]] == [(1, 5, ["1"]),
                                                                                       (2, 7, ["1", "2"])]
    rows = matrix["rows"]
    assert [c["first"] for c in matrix["columns"]] == [rows[0]["losses"]["1"], rows[1]["losses"]["2"]]
    log = log_text(base)
    assert "Forgetting evaluation after file #1 interrupted by a stop request: it runs when the run restarts" in log
    assert log.index("forgetting after file #1 (step 5)") < log.index("File two.jsonl (#2)")
