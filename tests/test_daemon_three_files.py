"""The seed guide's Option A, end to end: three 1000-line files through one daemon process."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_continual.safe_load import load_tensors
from tests.conftest import checkpoints, log_text, newest, run_daemon, status, trainer_state, write_jsonl

BAD_LINES = {5: "{not json", 300: "[1, 2, 3]", 600: '{"text": ""}', 900: '{"title": "no text"}'}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, object]:
    """c, a, b written oldest first (names out of order); b has 4 bad lines; junk has none valid."""
    base = tmp_path_factory.mktemp("three") / "run"
    now = time.time()
    write_jsonl(base / "inbox" / "c_first.jsonl", 1000, seed=1, mtime=now - 300)
    write_jsonl(base / "inbox" / "a_second.jsonl", 1000, seed=2, mtime=now - 200)
    write_jsonl(base / "inbox" / "b_third.jsonl", 1000, seed=3, bad=BAD_LINES, mtime=now - 100)
    junk = base / "inbox" / "junk.jsonl"
    junk.write_bytes(b"not json\n\n[1]\n")
    ignored = [base / "inbox" / n for n in (".hidden.jsonl", "late.jsonl.part", "late.jsonl.tmp")]
    for path in ignored:
        write_jsonl(path, 10)
    result = run_daemon(base)
    assert result.returncode == 0, result.stdout + result.stderr
    return base, result


def test_files_end_at_exact_global_steps_oldest_first(run):
    base, _ = run
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    done = [(r["name"], r["first_step"], r["last_step"], r["examples"]) for r in ledger["files_done"]]
    assert done == [("c_first.jsonl", 1, 125, 1000), ("a_second.jsonl", 126, 250, 1000),
                    ("b_third.jsonl", 251, 375, 1000)]
    assert ledger["current"] is None


def test_retention_keeps_newest_three_complete_checkpoints(run):
    base, _ = run
    assert [p.name for p in checkpoints(base)] == ["checkpoint-250", "checkpoint-300", "checkpoint-375"]
    assert not [p for p in (base / "current_model").iterdir() if p.name.startswith(".")]
    for ckpt in checkpoints(base):
        assert trainer_state(ckpt)["global_step"] == int(ckpt.name.split("-")[1])
        for name in ("adapter_model.safetensors", "adapter_config.json", "optimizer.pt",
                     "scheduler.pt", "trainer_state.json", "ledger.json"):
            assert (ckpt / name).is_file(), f"{ckpt.name} lacks {name}"


def test_inbox_emptied_and_ignored_names_left_alone(run):
    base, _ = run
    left = sorted(p.name for p in (base / "inbox").iterdir())
    assert left == [".claimed", ".hidden.jsonl", "late.jsonl.part", "late.jsonl.tmp"]
    assert not list((base / "inbox" / ".claimed").iterdir()), "every claimed file was trained and deleted"


def test_file_without_valid_example_moved_to_failed_byte_identical(run):
    base, _ = run
    assert (base / "failed" / "junk.jsonl").read_bytes() == b"not json\n\n[1]\n"
    report = json.loads((base / "failed" / "junk.jsonl.error.json").read_text())
    assert report["file"] == "junk.jsonl" and report["reason"] == "no trainable example"
    assert report["bad_lines"] == 2 and report["total_lines"] == 2
    assert [e["line"] for e in report["first_errors"]] == [1, 3]


def test_bad_lines_skipped_and_logged_with_line_numbers(run):
    base, _ = run
    text = log_text(base)
    assert "b_third.jsonl: 4 bad line(s) of 1004" in text
    for line in (6, 301, 601, 901):
        assert f"line {line}:" in text


def test_optimizer_and_scheduler_continue_across_files(run):
    base, _ = run
    for ckpt in checkpoints(base):
        step = int(ckpt.name.split("-")[1])
        optimizer = load_tensors(ckpt / "optimizer.pt")
        scheduler = load_tensors(ckpt / "scheduler.pt")
        assert {int(s["step"]) for s in optimizer["state"].values()} == {step}
        assert scheduler["last_epoch"] == step
        load_tensors(ckpt / "run_state.pt")


def test_log_history_grows_across_files_and_model_learns(run):
    base, _ = run
    history = trainer_state(newest(base))["log_history"]
    assert [e["step"] for e in history] == list(range(10, 371, 10))
    assert set(history[0]) >= {"step", "loss", "learning_rate"}
    first = statistics.mean(e["loss"] for e in history if e["step"] <= 30)
    late = statistics.mean(e["loss"] for e in history if 200 <= e["step"] <= 250)
    assert late < 0.8 * first, (first, late)


def test_loss_continues_smoothly_between_files(run):
    base, _ = run
    history = trainer_state(newest(base))["log_history"]
    for end in (125, 250):
        before = statistics.mean(e["loss"] for e in history if end - 50 < e["step"] <= end)
        after = statistics.mean(e["loss"] for e in history if end < e["step"] <= end + 50)
        assert after <= 1.10 * before, (end, before, after)


def test_resume_line_logged_at_each_later_file_start(run):
    base, _ = run
    text = log_text(base)
    assert "Resuming from checkpoint: checkpoint-125" in text
    assert "Resuming from checkpoint: checkpoint-250" in text
    for needle in ("Saved checkpoint checkpoint-100", "Removed checkpoint checkpoint-100",
                   "Deleted inbox/c_first.jsonl", "File a_second.jsonl done: steps 126-250",
                   "Stopping (inbox drained) at step 375", "Config: model.name=tiny"):
        assert needle in text


def test_status_file_has_every_key_and_final_state(run):
    base, _ = run
    st = status(base)
    for key in ("pid", "status", "current_step", "total_steps", "batch_number", "batch_queue_size",
                "current_file", "loss", "learning_rate", "updated_at", "error"):
        assert key in st
    assert st["status"] == "stopped" and st["current_step"] == 375 == st["total_steps"]
    assert st["batch_number"] == 3 and st["batch_queue_size"] == 0 and st["current_file"] is None
    assert st["updated_at"].endswith("+00:00") and isinstance(st["loss"], float)


def test_checkpoint_holds_adapter_only_never_base_weights(run):
    base, _ = run
    ckpt = newest(base)
    tensors = load_file(ckpt / "adapter_model.safetensors")
    assert tensors and all("lora_" in key for key in tensors)
    base_bytes = sum(p.stat().st_size for p in (base / "base_model").glob("*.safetensors"))
    adapter_bytes = (ckpt / "adapter_model.safetensors").stat().st_size
    ckpt_bytes = sum(p.stat().st_size for p in ckpt.iterdir())
    assert ckpt_bytes < base_bytes / 2
    assert ckpt_bytes < 4 * adapter_bytes  # adapter + Adam moments (2x) + small state


def test_adapter_loads_with_stock_peft_offline(run):
    from peft import AutoPeftModelForCausalLM

    base, _ = run
    config = json.loads((newest(base) / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str((base / "base_model").resolve())
    model = AutoPeftModelForCausalLM.from_pretrained(newest(base), local_files_only=True)
    saved = load_file(newest(base) / "adapter_model.safetensors")
    live = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(live) == len(saved)
    key = sorted(saved)[0]
    live_key = key.replace(".weight", ".default.weight")
    assert torch.equal(live[live_key], saved[key])


def test_tensorboard_has_one_curve_against_global_step(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base, _ = run
    events = EventAccumulator(str(base / "tensorboard"))
    events.Reload()
    steps = [e.step for e in events.Scalars("train/loss")]
    assert steps == list(range(10, 371, 10))
    assert "train/learning_rate" in events.Tags()["scalars"]
