"""`lit-continual verify` (alias `report`): PASS on a healthy run; on a damaged copy, FAIL naming
the damaged item; what needs an operator is listed without failing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from lit_continual.cli import main
from lit_continual.safe_load import load_tensors
from lit_continual.verification.counters import _optimizer
from tests.conftest import FAST, newest, write_jsonl
from tests.test_logs_and_report import logging_and_signals_restored

CHECKS = ("checkpoints-complete", "global-step", "retention", "optimizer-step", "scheduler-step", "log-errors",
          "inbox-trained", "adapter-loads", "replay", "base-generations")


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Path:
    """A real run: two good files (one with a bad line), one rejected file, a stray .txt."""
    base = tmp_path_factory.mktemp("verify") / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 16, seed=1, bad={2: "not json"})
    write_jsonl(base / "inbox" / "b.jsonl", 16, seed=2)
    write_jsonl(base / "inbox" / "junk.jsonl", 0, bad={0: "[1]", 1: "{oops"})
    (base / "inbox" / "notes.txt").write_text("not training data\n")
    with logging_and_signals_restored():
        code = main(["daemon", "--base-dir", str(base), "daemon.exit_when_idle=true", *FAST, "data.batch_size=4",
                     "checkpoint.every_n_steps=2"])
    assert code == 0
    return base


@pytest.fixture
def copy(healthy: Path, tmp_path: Path) -> Path:
    return shutil.copytree(healthy, tmp_path / "run", symlinks=True)


def verify(base: Path, capsys, command: str = "verify") -> tuple[int, str]:
    code = main([command, "--base-dir", str(base)])
    return code, capsys.readouterr().out


def check_line(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(("PASS ", "FAIL ")) and f" {name}: " in line)


def rewrite(ckpt: Path, name: str, data: bytes) -> None:
    """Replace a checkpoint file and vouch for it in the manifest (damage the manifest cannot see)."""
    (ckpt / name).write_bytes(data)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_healthy_run_passes_every_check_and_lists_what_needs_an_operator(healthy: Path, capsys):
    code, out = verify(healthy, capsys)
    assert code == 0, out
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith(("PASS ", "FAIL "))] == [
        f"PASS {name}" for name in CHECKS]
    assert out.rstrip().endswith("RESULT: PASS")
    assert "  - failed/junk.jsonl: no trainable example (2 bad line(s) of 2)" in out
    assert "  - a.jsonl (#1): 1 bad line(s) left out of training" in out
    assert "  - inbox/notes.txt: not a *.jsonl file, never trained" in out
    rejection = next(line for line in out.splitlines() if line.startswith("  - documented input rejection: "))
    assert "ERROR Moved inbox/junk.jsonl to failed/junk.jsonl: no trainable example" in rejection
    assert "1 documented input rejection(s)" in check_line(out, "log-errors")
    assert f"on {healthy / 'base_model'}, with the weights it holds" in check_line(out, "adapter-loads")
    assert "optimizer step 8 = global step 8 - 0 non-finite skip(s)" in check_line(out, "optimizer-step")


def test_report_is_an_alias_and_the_report_file_is_written(healthy: Path, capsys):
    code, out = verify(healthy, capsys)
    written = (healthy / "verification_report.txt").read_text()
    alias_code, alias_out = verify(healthy, capsys, "report")
    assert code == alias_code == 0
    assert written == out
    undated = [line for line in out.splitlines() if not line.startswith("Date: ")]
    assert undated == [line for line in alias_out.splitlines() if not line.startswith("Date: ")]


def test_json_names_every_check(healthy: Path, capsys):
    assert main(["verify", "--base-dir", str(healthy), "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["result"] == "PASS" and [c["name"] for c in found["checks"]] == list(CHECKS)
    assert any(item.startswith("failed/junk.jsonl") for item in found["needs_operator"])


def test_truncated_optimizer_fails_complete_naming_it(copy: Path, capsys):
    target = newest(copy) / "optimizer.pt"
    size = target.stat().st_size
    os.truncate(target, size - 7)
    code, out = verify(copy, capsys)
    assert code == 1 and out.rstrip().endswith("RESULT: FAIL")
    assert check_line(out, "checkpoints-complete") == (
        f"FAIL checkpoints-complete: {newest(copy).name}: optimizer.pt has {size - 7} bytes, manifest says {size}")
    assert check_line(out, "optimizer-step").startswith("PASS"), "the intact older checkpoints still agree"


def test_truncated_optimizer_vouched_for_by_its_manifest_fails_the_step_check(copy: Path, capsys):
    ckpt = newest(copy)
    rewrite(ckpt, "optimizer.pt", (ckpt / "optimizer.pt").read_bytes()[:-7])
    code, out = verify(copy, capsys)
    assert code == 1
    assert check_line(out, "checkpoints-complete").startswith("PASS")
    assert check_line(out, "optimizer-step").startswith(f"FAIL optimizer-step: {ckpt.name}: cannot read it")


def test_optimizer_step_that_disagrees_with_the_global_step_fails(copy: Path, capsys):
    ckpt = newest(copy)
    optimizer = load_tensors(ckpt / "optimizer.pt")
    for state in optimizer["state"].values():
        state["step"] = torch.tensor(5.0)
    rewrite(ckpt, "optimizer.pt", saved(optimizer))
    code, out = verify(copy, capsys)
    assert code == 1
    assert check_line(out, "optimizer-step") == (
        f"FAIL optimizer-step: {ckpt.name}: optimizer step 5 != global step 8 - 0 non-finite skip(s) = 8")


def test_non_finite_skips_are_a_documented_offset(copy: Path, capsys):
    ckpt = newest(copy)
    optimizer = load_tensors(ckpt / "optimizer.pt")
    for state in optimizer["state"].values():
        state["step"] = torch.tensor(6.0)
    rewrite(ckpt, "optimizer.pt", saved(optimizer))
    run_state = load_tensors(ckpt / "run_state.pt")
    run_state["callbacks"]["NonFiniteGuard"]["skipped_total"] = 2
    rewrite(ckpt, "run_state.pt", saved(run_state))
    code, out = verify(copy, capsys)
    assert code == 0, out
    assert f"{ckpt.name}: optimizer step 6 = global step 8 - 2 non-finite skip(s)" in check_line(out, "optimizer-step")


def test_float32_saturation_and_sgd(tmp_path: Path):
    """AdamW's float32 count stops at 2^24; SGD keeps none (not applicable)."""
    ckpt = tmp_path / "checkpoint-16777300"
    ckpt.mkdir()
    (ckpt / "run_state.pt").write_bytes(saved({"callbacks": {}}))
    (ckpt / "optimizer.pt").write_bytes(saved({"state": {0: {"step": torch.tensor(2.0**24 + 1)}},
                                               "param_groups": [{"betas": (0.9, 0.999)}]}))
    problem, said = _optimizer(ckpt, 16777300)
    assert problem is None and "(float32: it stays at 2^24)" in said
    (ckpt / "optimizer.pt").write_bytes(saved({"state": {0: {"step": torch.tensor(2.0**24 + 1, dtype=torch.float64)}},
                                               "param_groups": [{"betas": (0.9, 0.999)}]}))
    assert "optimizer step 16777217 != " in _optimizer(ckpt, 16777300)[0], "float64 counts exactly"
    (ckpt / "optimizer.pt").write_bytes(saved({"state": {0: {"momentum_buffer": torch.zeros(2)}},
                                               "param_groups": [{"momentum": 0.9}]}))
    assert _optimizer(ckpt, 16777300) == (None, None)


def test_file_both_in_inbox_and_ledger_fails_naming_it(copy: Path, capsys):
    write_jsonl(copy / "inbox" / "a.jsonl", 16, seed=1, bad={2: "not json"})  # the very bytes trained
    write_jsonl(copy / "inbox" / "b.jsonl", 16, seed=99)  # a new delivery under a trained name: fine
    code, out = verify(copy, capsys)
    assert code == 1
    line = check_line(out, "inbox-trained")
    assert line.startswith("FAIL inbox-trained: inbox/a.jsonl is already in the ledger (steps 1-4, done, sha256 ")
    assert "b.jsonl" not in line


def test_error_line_in_todays_log_fails_naming_it(copy: Path, capsys):
    from datetime import datetime

    log = copy / "logs" / f"daemon_{datetime.now():%Y%m%d}.log"
    with open(log, "a", encoding="utf-8") as handle:
        handle.write("2026-01-01 00:00:00,000 ERROR Could not remove old checkpoints: disk on fire\n")
    code, out = verify(copy, capsys)
    assert code == 1
    assert check_line(out, "log-errors") == (f"FAIL log-errors: logs/{log.name}: 2026-01-01 00:00:00,000 ERROR "
                                             "Could not remove old checkpoints: disk on fire")


def test_too_many_checkpoints_fail_retention(copy: Path, capsys):
    ckpt = newest(copy)
    config = json.loads((ckpt / "run_config.json").read_text())
    config["callbacks"]["model_checkpoint"]["save_top_k"] = 2
    rewrite(ckpt, "run_config.json", json.dumps(config).encode())
    code, out = verify(copy, capsys)
    assert code == 1
    assert check_line(out, "retention").startswith("FAIL retention: 3 checkpoints (checkpoint-4, checkpoint-6, "
                                                   "checkpoint-8) > save_top_k=2")


def test_moved_base_model_path_is_listed_and_loaded_from_the_base_dir(copy: Path, capsys):
    for ckpt in sorted((copy / "current_model").glob("checkpoint-*")):
        config = json.loads((ckpt / "adapter_config.json").read_text())
        config["base_model_name_or_path"] = "/gone/run/base_model"  # where the base dir used to be
        rewrite(ckpt, "adapter_config.json", json.dumps(config).encode())
    code, out = verify(copy, capsys)
    assert code == 0, out
    assert ("(recorded /gone/run/base_model no longer exists: loaded from here)"
            in check_line(out, "adapter-loads"))
    assert (f"  - {newest(copy).name}: its recorded base model path /gone/run/base_model no longer exists (moved "
            f"base dir?; found at {copy / 'base_model'})") in out
    shutil.rmtree(copy / "base_model")
    code, out = verify(copy, capsys)
    assert code == 1
    assert check_line(out, "adapter-loads") == (f"FAIL adapter-loads: {newest(copy).name}: its base model "
                                                "/gone/run/base_model no longer exists (a moved base dir or base "
                                                "model?): cannot load it")


def test_a_hugging_face_trainer_checkpoint_fails_complete_naming_adopt(copy: Path, capsys):
    foreign = copy / "current_model" / "checkpoint-20"
    foreign.mkdir()
    (foreign / "trainer_state.json").write_text('{"global_step": 20}')
    (foreign / "rng_state.pth").write_bytes(b"")
    code, out = verify(copy, capsys)
    assert code == 1
    assert check_line(out, "checkpoints-complete").startswith(
        "FAIL checkpoints-complete: checkpoint-20: written by the Hugging Face Trainer (no manifest.json): the "
        f"daemon will not start; adopt it: lit-continual adopt --base-dir {copy}")
    assert check_line(out, "retention").startswith("PASS"), "only lit-continual's checkpoints are retained"


def test_missing_base_dir_is_one_line(tmp_path: Path, capsys):
    code, out = verify(tmp_path / "nowhere", capsys)
    assert code == 1
    assert out.splitlines() == [f"FAIL base-dir: {tmp_path / 'nowhere'} does not exist (or is not a directory): "
                                "nothing to verify"]
