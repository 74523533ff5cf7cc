"""Rebase (`consolidate.rebase_every_files`): the adapter merged into a new base generation, a
fresh adapter and optimizer continuing the same step, ledger and LR schedule; kill-safe."""

from __future__ import annotations

import json
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_continual import generations, snapshots
from lit_continual.cli import main
from lit_continual.safe_load import load_tensors
from tests.conftest import FAST, checkpoints, log_text, newest, trainer_state, write_jsonl

REBASE = ["consolidate.rebase_every_files=1", "consolidate.rewarm_steps=4", "logging.every_n_steps=1",
          "checkpoint.every_n_steps=4"]
INPUT_IDS = [[1, 74, 71, 78, 78, 81, 35, 90, 81, 84, 78, 70, 2]]
LR, WARMUP = 3.0e-3, 20  # optim/adamw.yaml and scheduler/warmup_constant.yaml


def daemon_here(base: Path, *overrides: str) -> None:
    """Drain the inbox with an in-process daemon (pytest's signal handlers are given back)."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert main(["daemon", "--base-dir", str(base), "daemon.exit_when_idle=true", *FAST, *overrides]) == 0
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def fill(base: Path, names: str, lines: int = 48) -> None:
    """`lines`-line files (48: 6 steps at batch 8), oldest first in the order given."""
    now = time.time()
    for i, name in enumerate(names):
        write_jsonl(base / "inbox" / f"{name}.jsonl", lines, seed=ord(name), mtime=now - 60 + i)


def loss_of(model) -> float:
    """The loss of one fixed batch, with dropout off (the training RNG is not drawn from)."""
    from lit_continual.module import causal_lm_loss

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ids = torch.tensor(INPUT_IDS)
            return float(causal_lm_loss(model(input_ids=ids).logits, ids))
    finally:
        model.train(was_training)


@pytest.fixture(scope="module")
def swaps() -> list[tuple[float, float]]:
    return []


@pytest.fixture(scope="module")
def rebased(tmp_path_factory, swaps) -> Path:
    """Three 6-step files, a rebase at each file end (steps 6, 12, 18), the newest 2 checkpoints
    kept; the loss of a fixed batch is taken right before and right after each swap."""
    from lit_continual import rebase

    original = rebase.swap

    def measured(model, merged, seed):
        before = loss_of(model)
        original(model, merged, seed)
        swaps.append((before, loss_of(model)))

    base = tmp_path_factory.mktemp("rebase") / "run"
    fill(base, "abc")
    rebase.swap = measured
    try:
        daemon_here(base, *REBASE, "checkpoint.keep=2")
    finally:
        rebase.swap = original
    return base


def test_loss_right_after_a_rebase_equals_the_loss_right_before(rebased: Path, swaps):
    assert len(swaps) == 3
    for before, after in swaps:
        assert abs(after - before) <= 1e-4, swaps
    assert len({before for before, _ in swaps}) == 3, "training moved the model between rebases"


def test_a_rebase_makes_a_new_base_generation_with_a_fresh_adapter_and_optimizer(rebased: Path):
    assert [p.name for p in checkpoints(rebased)] == ["checkpoint-16", "checkpoint-18"]
    last, before = newest(rebased), checkpoints(rebased)[0]
    state = trainer_state(last)
    assert (state["base_generation"], state["rebased_at_step"], state["rebase_files_done"]) == (3, 18, 3)
    assert json.loads((rebased / "status" / "training_status.json").read_text())["base_generation"] == 3
    config = json.loads((last / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((rebased / "base_models" / "gen-3").resolve())
    adapter = load_file(last / "adapter_model.safetensors")
    assert all(not t.any() for k, t in adapter.items() if "lora_B" in k), "B restarts at 0"
    assert all(t.any() for k, t in adapter.items() if "lora_A" in k)
    assert load_tensors(last / "optimizer.pt")["state"] == {}, "fresh AdamW moments"
    # Four steps after the rebase at 12, on generation 2: AdamW counts from the rebase.
    assert trainer_state(before)["base_generation"] == 2
    steps = {float(s["step"]) for s in load_tensors(before / "optimizer.pt")["state"].values()}
    assert steps == {4.0}
    ledger = json.loads((last / "ledger.json").read_text())
    assert [(r["name"], r["last_step"], r["rebased_to"]) for r in ledger["files_done"]] == [
        ("a.jsonl", 6, 1), ("b.jsonl", 12, 2), ("c.jsonl", 18, 3)]
    assert "Rebased at step 12: the adapter merged into base generation 2" in log_text(rebased)


def test_the_lr_rewarms_after_each_rebase_and_training_goes_on(rebased: Path):
    history = {e["step"]: e for e in trainer_state(newest(rebased))["log_history"]}
    assert sorted(history) == list(range(1, 19))
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in history.values())
    for step in range(1, 19):
        rebase_step = max([r for r in (6, 12) if r < step], default=None)
        rewarm = 1.0 if rebase_step is None else min(1.0, (step - rebase_step) / 4)
        assert history[step]["learning_rate"] == pytest.approx(LR * min(1.0, step / WARMUP) * rewarm, rel=1e-9)


def test_old_generations_go_once_nothing_refers_to_them(rebased: Path, tmp_path: Path):
    # Kept checkpoints 16 (gen 2) and 18 (gen 3): gen-1 was deleted when checkpoint-6/8/12 went.
    assert [p.name for p in generations.listing(rebased)] == ["gen-2", "gen-3"]
    base = tmp_path / "run"
    shutil.copytree(rebased, base, ignore=shutil.ignore_patterns("tensorboard", "logs"), symlinks=True)
    snapshot = snapshots.take(base)  # of checkpoint-18: generation 3
    fill(base, "d")  # steps 19-24, rebased at 24: checkpoints 24 (gen 4) and 20 (gen 3)
    daemon_here(base, *REBASE, "checkpoint.keep=1")
    assert [p.name for p in checkpoints(base)] == ["checkpoint-24"]
    assert "Base generation 3 from" in log_text(base), "resumed on generation 3"
    assert [p.name for p in generations.listing(base)] == ["gen-3", "gen-4"], "the snapshot keeps gen-3"
    shutil.rmtree(snapshot)
    merged = base / "consolidated" / "step-18"
    merged.mkdir(parents=True)
    (merged / "consolidation.json").write_text(json.dumps({"base_model": str(base / "base_models" / "gen-3")}))
    assert generations.collect(base) == [], "a consolidated model keeps it too"
    shutil.rmtree(merged)
    assert generations.collect(base) == [base / "base_models" / "gen-3"]
    assert [p.name for p in generations.listing(base)] == ["gen-4"]


def test_the_newest_generation_and_leftovers(tmp_path: Path):
    """The newest generation is kept even unreferenced (a killed rebase's, replaced when it runs
    again); temp and trash directories of killed writes go."""
    root = tmp_path / "base_models"
    for name in ("gen-1", "gen-2", ".tmp-gen-3-99", ".trash-gen-0-99"):
        (root / name).mkdir(parents=True)
    assert generations.collect(tmp_path) == [root / "gen-1"]
    assert sorted(p.name for p in root.iterdir()) == ["gen-2"]


def test_a_rebased_checkpoint_and_its_snapshot_load_with_stock_peft_offline(rebased: Path, tmp_path: Path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    base = tmp_path / "run"
    shutil.copytree(rebased, base, ignore=shutil.ignore_patterns("tensorboard", "logs"), symlinks=True)
    ckpt = checkpoints(base)[0]  # checkpoint-16: generation 2 with 4 steps of adapter on top
    snapshot = snapshots.take(base)
    for path in (ckpt, snapshot):
        model = AutoPeftModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        assert model.peft_config["default"].base_model_name_or_path.endswith("base_models/gen-2" if path == ckpt
                                                                           else "base_models/gen-3")
        assert torch.isfinite(model(torch.tensor(INPUT_IDS)).logits).all()
    merged = AutoModelForCausalLM.from_pretrained(rebased / "base_models" / "gen-3", local_files_only=True)
    plain = load_file(rebased / "base_models" / "gen-3" / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in plain)
    assert all(torch.equal(v, plain[k]) for k, v in merged.state_dict().items() if k in plain)


def consistent(base: Path) -> None:
    """Every checkpoint names one generation in both places, and that generation is on disk."""
    for ckpt in checkpoints(base):
        number = trainer_state(ckpt)["base_generation"]
        recorded = json.loads((ckpt / "adapter_config.json").read_text())["base_model_name_or_path"]
        expected = base / "base_models" / f"gen-{number}" if number else base / "base_model"
        assert recorded == str(expected.resolve()) and expected.is_dir(), (ckpt.name, number, recorded)


def test_verify_reports_the_generations_and_fails_a_missing_one(rebased: Path, tmp_path: Path):
    from lit_continual.report import verify

    check = next(c for c in verify(rebased).checks if c.name == "base-generations")
    assert check.ok and check.detail.startswith("checkpoint-18 trains on generation 3; in base_models/: ")
    assert "gen-3 " in check.detail
    copy = tmp_path / "run"
    shutil.copytree(rebased, copy)
    shutil.rmtree(copy / "base_models" / "gen-3")
    check = next(c for c in verify(copy).checks if c.name == "base-generations")
    assert not check.ok and "gen-3 is missing from base_models/ but the newest checkpoint trains on it" in check.detail
