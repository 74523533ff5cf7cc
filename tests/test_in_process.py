"""The library function `train(cfg)` in this process: accumulation, unfinished and vanished files."""

from __future__ import annotations

import itertools
import json
import signal
from pathlib import Path

import pytest
import torch

from lit_continual.config import compose
from lit_continual.run import train
from lit_continual.stop import StopRequest
from tests.conftest import FAST, log_text, newest, trainer_state, write_jsonl


@pytest.fixture(autouse=True)
def keep_signal_handlers():
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def _train(base: Path, *overrides: str) -> int:
    return train(compose([f"base_dir={base}", *FAST, *overrides]))


def _one_file(path: Path, *overrides: str) -> list[str]:
    return ["data=inbox_file", f"data.path={path}", *overrides]


def _stop_after(monkeypatch, checks: int) -> None:
    """Make the run see a stop request after `checks` looks (a .stop arriving mid-file)."""
    counter = itertools.count()
    monkeypatch.setattr(StopRequest, "requested", property(lambda self: next(counter) >= checks))


def test_accumulation_window_never_spans_two_files(tmp_path: Path):
    base = tmp_path / "run"
    a = write_jsonl(tmp_path / "a.jsonl", 50, seed=1)
    b = write_jsonl(tmp_path / "b.jsonl", 13, seed=2)
    opts = ("data.batch_size=4", "trainer.accumulate_grad_batches=3", "logging.every_n_steps=1")
    assert _train(base, *_one_file(a, *opts)) == 0
    assert _train(base, *_one_file(b, *opts)) == 0
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    assert [(r["first_step"], r["last_step"]) for r in ledger["files_done"]] == [(1, 5), (6, 7)]
    optimizer = torch.load(newest(base) / "optimizer.pt", weights_only=True)
    assert {int(s["step"]) for s in optimizer["state"].values()} == {7}
    assert [e["step"] for e in trainer_state(newest(base))["log_history"]] == list(range(1, 8))


def test_unfinished_file_must_be_finished_before_another(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    a = write_jsonl(tmp_path / "a.jsonl", 400, seed=1)
    b = write_jsonl(tmp_path / "b.jsonl", 40, seed=2)
    _stop_after(monkeypatch, 20)
    assert _train(base, *_one_file(a)) == 0
    stopped_at = trainer_state(newest(base))["global_step"]
    assert 0 < stopped_at < 50
    monkeypatch.undo()
    assert _train(base, *_one_file(b)) == 2
    assert "unfinished file a.jsonl" in log_text(base)
    assert _train(base, *_one_file(a)) == 0
    assert trainer_state(newest(base))["global_step"] == 50


def test_vanished_current_file_is_abandoned_and_logged(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "gone.jsonl", 400, seed=1)
    _stop_after(monkeypatch, 20)
    assert _train(base) == 0
    trained = json.loads((newest(base) / "ledger.json").read_text())["current"]["examples_trained"]
    monkeypatch.undo()
    (base / "inbox" / "gone.jsonl").unlink()
    write_jsonl(base / "inbox" / "next.jsonl", 16, seed=2)
    assert _train(base, "daemon.exit_when_idle=true") == 0
    assert f"inbox/gone.jsonl is missing: abandoning it with {400 - trained} example(s) untrained" in log_text(base)
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    assert [(r["name"], r["status"]) for r in ledger["files_done"]] == [("gone.jsonl", "abandoned"),
                                                                        ("next.jsonl", "done")]


def test_file_with_no_valid_example_is_an_error_in_train_py(tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"nope": 1}\n')
    assert _train(tmp_path / "run", *_one_file(bad)) == 2
    assert bad.read_text() == '{"nope": 1}\n', "train.py never moves or deletes its input"
    assert "no trainable example" in log_text(tmp_path / "run")
