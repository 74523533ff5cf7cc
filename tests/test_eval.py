"""Held-out evaluation (DIR/eval/*.jsonl) and live samples: when they run, where they show,
and that they never change what is trained."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_continual.safe_load import load_tensors
from tests.conftest import checkpoints, log_text, status, train_here, trainer_state, write_jsonl

# 48 lines = 6 steps at batch 8: file ends at steps 6 and 12; evaluation every 4 steps adds 4 and 8.
RUN = ["daemon.exit_when_idle=true", "logging.every_n_steps=1", "checkpoint.every_n_steps=5"]
EVAL = ["eval.every_n_steps=4", "eval.sample_every_n_steps=5", "eval.sample_max_new_tokens=8",
        "eval.sample_prompts=[The cat,A dog sees]"]
EVAL_STEPS = [4, 6, 8, 12]


def _inbox(base: Path) -> None:
    now = time.time()
    write_jsonl(base / "inbox" / "one.jsonl", 48, seed=1, mtime=now - 20)
    write_jsonl(base / "inbox" / "two.jsonl", 48, seed=2, mtime=now - 10)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """The same stream trained twice: with DIR/eval files, evaluation and samples, and without."""
    root = tmp_path_factory.mktemp("eval")
    with_eval, without = root / "with" / "run", root / "without" / "run"
    for base in (with_eval, without):
        _inbox(base)
    write_jsonl(with_eval / "eval" / "held_out.jsonl", 20, seed=7)
    write_jsonl(with_eval / "eval" / "other.jsonl", 12, seed=8, bad={3: "{not json"})
    (with_eval / "eval" / "notes.txt").write_text("not an eval file")
    assert train_here(with_eval, *RUN, *EVAL) == 0
    assert train_here(without, *RUN) == 0
    return with_eval, without


def test_eval_loss_at_file_ends_and_every_n_steps_in_history_checkpoint_and_status(runs):
    base, _ = runs
    history = trainer_state(checkpoints(base)[-1])["log_history"]
    evals = [e for e in history if "eval_loss" in e]
    assert [e["step"] for e in evals] == EVAL_STEPS
    assert all(set(e["eval_losses"]) == {"held_out", "other"} and 0 < e["eval_loss"] < 20 for e in evals)
    assert all("loss" not in e for e in evals) and all("eval_loss" not in e for e in history if "loss" in e)
    assert [e["step"] for e in history if "loss" in e] == list(range(1, 13)), "training entries unchanged"
    # The file-end evaluation is in that file's end-of-file checkpoint, log_history and callback state.
    first_end = base / "current_model" / "checkpoint-6"
    assert [e["step"] for e in trainer_state(first_end)["log_history"] if "eval_loss" in e] == [4, 6]
    assert load_tensors(first_end / "run_state.pt")["callbacks"]["Evaluation"]["last"]["step"] == 6
    fields = status(base)
    assert fields["eval_step"] == 12 and fields["eval_loss"] == evals[-1]["eval_loss"]
    assert fields["eval_losses"] == evals[-1]["eval_losses"]
    log = log_text(base)
    assert "eval/other.jsonl: 1 bad line(s) of 13 skipped (line 4: not JSON" in log
    assert log.count("eval step ") == len(EVAL_STEPS)


def test_loss_readers_skip_evaluation_entries_and_verify_passes(runs):
    from lit_continual.commands.history import gather
    from lit_continual.report import text, verify

    base, _ = runs
    rows = gather(base)["files"]
    assert [(r["loss_step"], r["eval_loss"] is not None) for r in rows] == [(6, True), (12, True)]
    result = verify(base)
    report = text(result)
    assert result.ok, report
    assert "Loss: first logged" in report and "Eval loss (DIR/eval): first " in report


def test_eval_and_samples_show_in_tensorboard(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base, _ = runs
    events = EventAccumulator(str(base / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("eval/loss")] == EVAL_STEPS
    assert [e.step for e in events.Scalars("eval/held_out/loss")] == EVAL_STEPS
    texts = events.Tensors("samples/2/text_summary")
    assert [e.step for e in texts] == [5, 6, 10, 12]  # every 5 steps and at both file ends
    assert "A dog sees" in texts[-1].tensor_proto.string_val[0].decode()


def test_samples_in_status_and_log(runs):
    base, _ = runs
    samples = status(base)["samples"]
    assert [(s["prompt"], s["step"]) for s in samples] == [("The cat", 12), ("A dog sees", 12)]
    assert all(isinstance(s["completion"], str) for s in samples)
    assert "sample 2 at step 12: A dog sees -> " in log_text(base)


def test_runs_with_and_without_eval_train_bit_identically(runs):
    with_eval, without = runs
    assert [p.name for p in checkpoints(with_eval)] == [p.name for p in checkpoints(without)]
    for a, b in zip(checkpoints(with_eval), checkpoints(without), strict=True):
        for name in ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt"):
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a.name}/{name}"
        assert _position(a) == _position(b)
    train = [[e for e in trainer_state(c)["log_history"] if "loss" in e] for c in (checkpoints(with_eval)[-1],
                                                                                 checkpoints(without)[-1])]
    assert train[0] == train[1]
    assert status(without)["eval_loss"] is None and status(without)["samples"] == []


def _position(checkpoint: Path) -> list:
    """The data position of a checkpoint's ledger (its times and claim ids differ run to run)."""
    ledger = json.loads((checkpoint / "ledger.json").read_text())
    records = ledger["files_done"] + ([ledger["current"]] if ledger.get("current") else [])
    return [(r["name"], r["sha256"], r["examples_trained"], r["first_step"], r["last_step"]) for r in records]


def test_a_stop_interrupts_an_evaluation(tmp_path: Path, monkeypatch):
    """A .stop that arrives mid-evaluation ends it between two batches; the run stops at that step."""
    import lit_continual.evaluation as evaluation

    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "one.jsonl", 48, seed=1)
    write_jsonl(base / "eval" / "big.jsonl", 400, seed=3)
    batches, stopped_at = [], []
    real = evaluation.token_loss_sum

    def counting(logits, labels):
        batches.append(time.monotonic())
        if len(batches) == 5:
            (base / ".stop").touch()
            stopped_at.append(time.monotonic())
        return real(logits, labels)

    monkeypatch.setattr(evaluation, "token_loss_sum", counting)
    started = time.monotonic()
    assert train_here(base, "eval.every_n_steps=2", "eval.batch_size=1", "eval.max_examples=null",
                      "logging.every_n_steps=1") == 0
    returned = time.monotonic()
    assert len(batches) == 5, "the evaluation ends at the batch after the stop"
    assert [c.name for c in checkpoints(base)] == ["checkpoint-2"], "the run stops at the evaluated step"
    assert not [e for e in trainer_state(checkpoints(base)[-1])["log_history"] if "eval_loss" in e]
    assert "Evaluation at step 2 interrupted by a stop request" in log_text(base)
    print(f"\nstop during evaluation: {len(batches)} of 400 batches, {returned - stopped_at[0]:.2f} s from .stop "
          f"to train() returning (run {returned - started:.1f} s)")


def test_a_failing_evaluation_is_an_error_in_the_log_and_training_goes_on(tmp_path: Path, monkeypatch):
    from lit_continual.evaluation import Evaluator

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(Evaluator, "evaluate", broken)
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "one.jsonl", 16, seed=1)
    write_jsonl(base / "eval" / "held_out.jsonl", 4, seed=2)
    assert train_here(base, "daemon.exit_when_idle=true") == 0
    assert [c.name for c in checkpoints(base)] == ["checkpoint-2"]
    assert "ERROR Evaluation at step 2 failed: RuntimeError: out of memory (simulated)" in log_text(base)
    assert status(base)["warnings"] == ["evaluation failed at step 2: RuntimeError: out of memory (simulated)"]


# Unit level: the reader, the cache, the loss and the isolation (no Trainer).

@pytest.fixture(scope="module")
def tiny():
    from types import SimpleNamespace

    from lit_continual.models.tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    shape = SimpleNamespace(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            max_position_embeddings=256, initializer_range=0.2, seed=0)
    return build_model(shape, tokenizer), tokenizer


def _files(directory: Path, tokenizer, **kwargs):
    from lit_continual.data.records import Encoder
    from lit_continual.evaluation import EvalFiles

    return EvalFiles(directory, Encoder(tokenizer, 64), 1 << 20, **kwargs)


def test_eval_files_skip_bad_lines_read_any_format_and_reread_on_change(tmp_path: Path, tiny, caplog):
    _, tokenizer = tiny
    rows = [{"text": "The cat sees a dog."}, {"prompt": "Q: 1+1?", "completion": " 2"},
            {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join([json.dumps(r) for r in rows] + ["[1, 2]", '{"text": ""}']) + "\n")
    files = _files(tmp_path, tokenizer)
    with caplog.at_level(logging.WARNING, logger="lit_continual"):
        sets = files.load()
    assert [(s.name, len(s.examples), s.bad_lines) for s in sets] == [("mixed", 3, 2)]
    assert "eval/mixed.jsonl: 2 bad line(s) of 5 skipped (line 4: not a JSON object" in caplog.text
    assert files.load()[0] is sets[0], "an unchanged file is not read again"
    write_jsonl(path, 5, seed=1)
    assert len(files.load()[0].examples) == 5
    assert len(_files(tmp_path, tokenizer, max_examples=2).load()[0].examples) == 2
    path.unlink()
    assert files.load() == [] and files._cache == {}


def test_evaluator_means_tokens_and_isolation_restores_modes_and_generators(tmp_path: Path, tiny):
    from lit_continual.evaluation import Evaluator, isolated

    model, tokenizer = tiny
    write_jsonl(tmp_path / "a.jsonl", 5, seed=1)
    write_jsonl(tmp_path / "b.jsonl", 3, seed=2)
    sets = _files(tmp_path, tokenizer).load()
    model.train()
    model.model.layers[0].eval()  # a submodule deliberately in eval mode stays so
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    with isolated(model):
        assert not model.training
        torch.rand(3), random.random(), np.random.rand()
        whole = Evaluator(batch_size=2, pad_id=tokenizer.pad_token_id).evaluate(model, sets)
        single = Evaluator(batch_size=8, pad_id=tokenizer.pad_token_id).evaluate(model, sets[:1])
    assert torch.equal(before[0], torch.get_rng_state()) and before[1] == random.getstate()
    assert np.array_equal(before[2], np.random.get_state()[1])
    assert model.training and not model.model.layers[0].training and model.lm_head.training
    assert single.losses["a"] == pytest.approx(whole.losses["a"], rel=1e-5)
    a, b = whole.losses["a"], whole.losses["b"]
    assert min(a, b) < whole.loss < max(a, b) and whole.examples == 8
    calls = []
    assert Evaluator(1, tokenizer.pad_token_id).evaluate(model, sets, lambda: calls.append(1) or len(calls) > 2) is None
    assert len(calls) == 3, "interrupted between batches"


def test_sample_prompts_from_a_jsonl_file(tmp_path: Path, tiny, caplog):
    from lit_continual.data.records import Encoder
    from lit_continual.evaluation import isolated
    from lit_continual.samples import SamplePrompts, generate

    model, tokenizer = tiny
    path = tmp_path / "prompts.jsonl"
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "dropped"}]
    path.write_text("\n".join([json.dumps({"prompt": "The cat"}), json.dumps({"messages": chat}), "nope"]) + "\n")
    prompts = SamplePrompts("prompts.jsonl", tmp_path, Encoder(tokenizer, 64))
    with caplog.at_level(logging.WARNING, logger="lit_continual"):
        loaded = prompts.load()
    assert [p.text for p in loaded] == ["The cat", "<|user|>\nHi</s><|assistant|>\n"]
    assert loaded[1].ids[0] == tokenizer.bos_token_id and "1 bad prompt line(s)" in caplog.text
    with isolated(model):
        samples = generate(model, tokenizer, loaded, 5, step=3)
        again = generate(model, tokenizer, loaded, 5, step=3)
    assert samples == again, "greedy: the same completion every time"
    assert [s.step for s in samples] == [3, 3] and all(isinstance(s.completion, str) for s in samples)
    assert SamplePrompts("missing.jsonl", tmp_path, Encoder(tokenizer, 64)).load() == []
