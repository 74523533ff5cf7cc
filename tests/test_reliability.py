"""Reliability in this process: damaged checkpoints, disk errors, non-finite steps, changed config."""

from __future__ import annotations

import errno
import json
import re
import time
from pathlib import Path

import pytest
import torch

from lit_continual.checkpoints import DirectoryCheckpointIO
from lit_continual.module import LoRAModule
from lit_continual.safe_load import load_tensors
from lit_continual.status import Status
from tests.conftest import (
    REPO,
    checkpoints,
    claimed,
    log_text,
    newest,
    one_file,
    status,
    stop_after,
    train_here,
    trainer_state,
    under_inbox,
    write_jsonl,
)

DRAIN = ("daemon.exit_when_idle=true", "data.batch_size=4", "checkpoint.every_n_steps=5")


def _two_files_run(base: Path) -> None:
    now = time.time()
    write_jsonl(base / "inbox" / "a.jsonl", 40, seed=1, mtime=now - 20)
    write_jsonl(base / "inbox" / "b.jsonl", 40, seed=2, mtime=now - 10)
    assert train_here(base, *DRAIN) == 0
    assert [p.name for p in checkpoints(base)] == ["checkpoint-10", "checkpoint-15", "checkpoint-20"]


def _truncate_adapter(ckpt: Path) -> None:
    path = ckpt / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:100])


def _remove_optimizer(ckpt: Path) -> None:
    (ckpt / "optimizer.pt").unlink()


def _break_manifest(ckpt: Path) -> None:
    (ckpt / "manifest.json").write_text("{not json")


@pytest.mark.parametrize("damage", [_truncate_adapter, _remove_optimizer, _break_manifest])
def test_damaged_newest_checkpoint_is_set_aside_and_previous_one_resumes(tmp_path: Path, damage):
    base = tmp_path / "run"
    _two_files_run(base)
    damage(base / "current_model" / "checkpoint-20")
    write_jsonl(base / "inbox" / "c.jsonl", 8, seed=3)
    assert train_here(base, *DRAIN) == 0
    aside = list((base / "current_model" / ".corrupt").iterdir())
    assert len(aside) == 1 and re.fullmatch(r"checkpoint-20\.\d{8}T\d{6}\.\d+Z", aside[0].name)
    text = log_text(base)
    assert "Checkpoint checkpoint-20 is damaged" in text and "falling back" in text
    assert "Resuming from checkpoint: checkpoint-15" in text
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    # checkpoint-15 had b.jsonl half done; b is gone from the inbox, so it is abandoned, not lost silently.
    assert [(r["name"], r["status"]) for r in ledger["files_done"]][-2:] == [("b.jsonl", "abandoned"),
                                                                             ("c.jsonl", "done")]
    assert ledger["files_done"][-1]["first_step"] == 16, "continued from 15, never from scratch"
    assert "b.jsonl is missing: abandoning it with 20 example(s) untrained" in text


def test_disk_full_while_checkpointing_is_retried_and_loses_nothing(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 40, seed=1)
    calls = {"n": 0}
    write = DirectoryCheckpointIO._write

    def flaky(self, ckpt, out):
        calls["n"] += 1
        if calls["n"] in (2, 3):  # the checkpoint at step 10 fails twice, mid-write
            (out / "partial.bin").write_bytes(b"x" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(self, ckpt, out)

    seen = []
    status_write = Status.write

    def record(self):
        seen.append((self.fields["status"], self.fields["error"]))
        status_write(self)

    monkeypatch.setattr(DirectoryCheckpointIO, "_write", flaky)
    monkeypatch.setattr(Status, "write", record)
    assert train_here(base, *DRAIN, "daemon.retry_initial_seconds=0.05", "daemon.retry_max_seconds=0.1") == 0
    assert any(s == "error" and "No space left" in (e or "") for s, e in seen)
    assert [p.name for p in checkpoints(base)] == ["checkpoint-5", "checkpoint-10"]
    assert not [p for p in (base / "current_model").iterdir() if p.name.startswith(".")]
    assert log_text(base).count("Could not write checkpoint checkpoint-10") == 2
    assert not (base / "inbox" / "a.jsonl").exists()
    assert status(base)["status"] == "stopped" and status(base)["error"] is None


def test_free_space_shortfall_is_reported_and_a_stop_gives_up_keeping_the_file(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 40, seed=1)
    stop_after(monkeypatch, 60)
    assert train_here(base, *DRAIN, "checkpoint.min_free_mb=1e12", "daemon.retry_initial_seconds=0.01") == 0
    text = log_text(base)
    assert "checkpoint.min_free_mb=1000000000000.0" in text and "giving up on writing checkpoint" in text
    assert not checkpoints(base)
    assert under_inbox(base, "a.jsonl"), "never deleted without its checkpoint"


def _nan_at(monkeypatch, steps: set[int] | None) -> None:
    original = LoRAModule.training_step

    def training_step(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        if steps is None or self.trainer.global_step + 1 in steps:
            return loss * float("nan")
        return loss

    monkeypatch.setattr(LoRAModule, "training_step", training_step)


def test_non_finite_steps_are_skipped_and_never_checkpointed(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    data = write_jsonl(tmp_path / "a.jsonl", 40, seed=1)
    _nan_at(monkeypatch, {3, 4})
    assert train_here(base, *one_file(data, "data.batch_size=4", "logging.every_n_steps=1")) == 0
    ckpt = newest(base)
    assert trainer_state(ckpt)["global_step"] == 10
    optimizer = load_tensors(ckpt / "optimizer.pt")
    assert {int(s["step"]) for s in optimizer["state"].values()} == {8}  # 10 steps, 2 skipped
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(ckpt / "adapter_model.safetensors").values())
    text = log_text(base)
    assert "Non-finite loss or gradient at step 3: optimizer step skipped (1 in a row, 1 in all)" in text
    assert "at step 4: optimizer step skipped (2 in a row, 2 in all)" in text
    # Skipped steps have no loss entry (never NaN in trainer_state.json: jq must read it).
    assert [e["step"] for e in trainer_state(ckpt)["log_history"]] == [1, 2, 5, 6, 7, 8, 9, 10]
    assert "NaN" not in (ckpt / "trainer_state.json").read_text()


def test_too_many_non_finite_steps_stop_with_error(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    data = write_jsonl(tmp_path / "a.jsonl", 40, seed=1)
    _nan_at(monkeypatch, None)
    assert train_here(base, *one_file(data, "data.batch_size=4", "daemon.max_nonfinite=3")) == 1
    assert status(base)["status"] == "error" and "3 consecutive non-finite" in status(base)["error"]
    assert not checkpoints(base)


def test_changed_run_config_is_refused_naming_each_key(tmp_path: Path):
    base = tmp_path / "run"
    first = write_jsonl(tmp_path / "a.jsonl", 16, seed=1)
    second = write_jsonl(tmp_path / "b.jsonl", 16, seed=2)
    assert train_here(base, *one_file(first)) == 0
    assert train_here(base, *one_file(second, "lora.r=16", "data.max_length=64")) == 2
    assert "lora.r (8 -> 16)" in status(base)["error"] and "data.max_length (256 -> 64)" in status(base)["error"]
    assert train_here(base, *one_file(second, "optim.lr=1e-4")) == 2
    assert "optim.lr" in status(base)["error"] and "run.allow_config_change=true" in status(base)["error"]
    assert train_here(base, *one_file(second, "lora.r=16", "run.allow_config_change=true")) == 2
    assert train_here(base, *one_file(second, "optim.lr=1e-4", "run.allow_config_change=true",
                                      "checkpoint.keep=5", "logging.every_n_steps=1")) == 0
    assert trainer_state(newest(base))["global_step"] == 4


def test_current_file_with_changed_content_is_abandoned(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    path = write_jsonl(base / "inbox" / "a.jsonl", 400, seed=1)
    stop_after(monkeypatch, 20)
    assert train_here(base) == 0
    monkeypatch.undo()
    assert not path.exists()  # claimed: moved to inbox/.claimed/
    write_jsonl(claimed(base, "a.jsonl")[0], 400, seed=99)  # rewritten in place while the daemon was down
    assert train_here(base, "daemon.exit_when_idle=true") == 0
    assert "inbox/a.jsonl changed (sha256 differs): abandoning it" in log_text(base)
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    assert [(r["name"], r["status"]) for r in ledger["files_done"]] == [("a.jsonl", "abandoned"), ("a.jsonl", "done")]


def test_no_trust_remote_code_in_src():
    # torch.load is covered by ruff (TID251: only lit_continual.safe_load may call it).
    for path in (REPO / "src").rglob("*.py"):
        assert "trust_remote_code=True" not in path.read_text(), path


def test_changed_optimizer_settings_are_the_ones_used_after_a_resume(tmp_path: Path):
    """Restoring optimizer.pt / scheduler.pt must not bring back the old lr, betas or decay."""
    base = tmp_path / "run"
    first = write_jsonl(tmp_path / "a.jsonl", 16, seed=1)
    second = write_jsonl(tmp_path / "b.jsonl", 16, seed=2)
    settings = ("scheduler=constant", "logging.every_n_steps=1", "checkpoint.keep=5")
    assert train_here(base, *one_file(first, *settings)) == 0
    assert train_here(base, *one_file(second, *settings, "run.allow_config_change=true", "optim.lr=1e-4",
                                      "optim.betas=[0.8,0.99]", "optim.weight_decay=0.01")) == 0
    lrs = {e["step"]: e["learning_rate"] for e in trainer_state(newest(base))["log_history"]}
    assert lrs == {1: 3e-3, 2: 3e-3, 3: 1e-4, 4: 1e-4}
    group = load_tensors(newest(base) / "optimizer.pt")["param_groups"][0]
    assert (tuple(group["betas"]), group["weight_decay"], group["lr"]) == ((0.8, 0.99), 0.01, 1e-4)
