"""The library function `train(cfg)` in this process: accumulation, unfinished and vanished files."""

from __future__ import annotations

import json
from pathlib import Path

from lit_continual.run import EXIT_STOPPED
from lit_continual.safe_load import load_tensors
from tests.conftest import claimed, log_text, newest, one_file, stop_after, train_here, trainer_state, write_jsonl


def test_accumulation_window_never_spans_two_files(tmp_path: Path):
    base = tmp_path / "run"
    a = write_jsonl(tmp_path / "a.jsonl", 50, seed=1)
    b = write_jsonl(tmp_path / "b.jsonl", 13, seed=2)
    opts = ("data.batch_size=4", "trainer.accumulate_grad_batches=3", "logging.every_n_steps=1")
    assert train_here(base, *one_file(a, *opts)) == 0
    assert train_here(base, *one_file(b, *opts)) == 0
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    assert [(r["first_step"], r["last_step"]) for r in ledger["files_done"]] == [(1, 5), (6, 7)]
    optimizer = load_tensors(newest(base) / "optimizer.pt")
    assert {int(s["step"]) for s in optimizer["state"].values()} == {7}
    assert [e["step"] for e in trainer_state(newest(base))["log_history"]] == list(range(1, 8))


def test_unfinished_file_must_be_finished_before_another(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    a = write_jsonl(tmp_path / "a.jsonl", 400, seed=1)
    b = write_jsonl(tmp_path / "b.jsonl", 40, seed=2)
    stop_after(monkeypatch, 20)
    assert train_here(base, *one_file(a)) == EXIT_STOPPED  # stopped before the file's end
    stopped_at = trainer_state(newest(base))["global_step"]
    assert 0 < stopped_at < 50
    monkeypatch.undo()
    assert train_here(base, *one_file(b)) == 2
    assert "unfinished file a.jsonl" in log_text(base)
    assert train_here(base, *one_file(a)) == 0
    assert trainer_state(newest(base))["global_step"] == 50


def test_vanished_current_file_is_abandoned_and_logged(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "gone.jsonl", 400, seed=1)
    stop_after(monkeypatch, 20)
    assert train_here(base) == 0
    trained = json.loads((newest(base) / "ledger.json").read_text())["current"]["examples_trained"]
    monkeypatch.undo()
    claimed(base, "gone.jsonl")[0].unlink()
    write_jsonl(base / "inbox" / "next.jsonl", 16, seed=2)
    assert train_here(base, "daemon.exit_when_idle=true") == 0
    assert f"inbox/gone.jsonl is missing: abandoning it with {400 - trained} example(s) untrained" in log_text(base)
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    assert [(r["name"], r["status"]) for r in ledger["files_done"]] == [("gone.jsonl", "abandoned"),
                                                                        ("next.jsonl", "done")]


def test_file_with_no_valid_example_is_an_error_in_train_py(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    assert train_here(tmp_path / "run", *one_file(bad)) == 2
    assert bad.read_text() == '{"nope": 1}\n', "train.py never moves or deletes its input"
    assert "no trainable example" in log_text(tmp_path / "run")
