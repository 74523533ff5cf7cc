"""Consolidation: the adapter merged in fp32 into a standalone model (child process, atomic),
equal to the PeftModel, loadable without peft; bf16 bases; retention; what triggers it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from lit_continual import consolidation, snapshots
from lit_continual.cli import main
from tests.conftest import REPO, copied, trained_once

T0 = datetime(2026, 12, 1, 10, 0, 30)
INPUT_IDS = [[1, 74, 71, 78, 78, 81, 35, 90, 81, 84, 78, 70, 2]]
# Loads the consolidated model where `import peft` fails, and saves its logits.
NO_PEFT = """
import sys
sys.modules["peft"] = None  # import peft -> ImportError, as if it were not installed
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
try:
    import peft  # noqa: F401
    raise SystemExit("peft is importable")
except ImportError:
    pass
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], local_files_only=True).eval()
with torch.no_grad():
    logits = model(torch.tensor({ids})).logits
save_file({{"logits": logits}}, sys.argv[2])
print(type(model).__name__, model.dtype)
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A base dir whose run trained one 48-line file: checkpoint-6."""
    return trained_once(tmp_path_factory.mktemp("consolidation"))


@pytest.fixture
def base(trained: Path, tmp_path: Path) -> Path:
    return copied(trained, tmp_path)


def peft_logits(adapter: Path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((adapter / "adapter_config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"], dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        return model(torch.tensor(INPUT_IDS)).logits


def test_consolidated_model_equals_the_peft_model_and_loads_without_peft(base: Path, tmp_path: Path, capsys):
    from safetensors.torch import load_file

    assert main(["consolidate", "--base-dir", str(base), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    out = base / "consolidated" / "step-6"
    assert (result["ok"], result["path"], result["step"], result["by"]) == (True, str(out), 6, "command")
    assert sorted(os.listdir(out)) == ["chat_template.jinja", "config.json", "consolidation.json",
                                       "generation_config.json", "model.safetensors", "tokenizer.json",
                                       "tokenizer_config.json"]
    assert "peft" not in (out / "config.json").read_text().lower()
    assert sorted(os.listdir(base / "consolidated")) == ["step-6"], "no staging or .tmp- directory is left"
    saved = tmp_path / "logits.safetensors"
    child = subprocess.run([sys.executable, "-c", NO_PEFT.format(ids=INPUT_IDS), str(out), str(saved)],
                           capture_output=True, text=True, cwd=REPO, timeout=120)
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.split() == ["LlamaForCausalLM", "torch.float32"]
    reference = peft_logits(base / "current_model" / "checkpoint-6")
    diff = (load_file(saved)["logits"] - reference).abs().max().item()
    print(f"consolidation {result['seconds']:.2f} s, logits max abs diff {diff:.2e}")
    assert diff < 1e-4
    assert (reference - _base_logits(base)).abs().max().item() > 1e-3, "the adapter is not a no-op"


def _base_logits(base: Path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base / "base_model", dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor(INPUT_IDS)).logits


def test_a_bf16_base_is_merged_in_fp32_then_saved_as_bf16(base: Path, tmp_path: Path):
    import torch
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    bf16 = tmp_path / "bf16-base"
    AutoModelForCausalLM.from_pretrained(base / "base_model").to(torch.bfloat16).save_pretrained(bf16)
    snapshots.copy_tokenizer(base / "base_model", bf16)
    source = Path(shutil.copytree(base / "current_model" / "checkpoint-6", tmp_path / "elsewhere" / "checkpoint-6"))
    config = json.loads((source / "adapter_config.json").read_text())
    (source / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(bf16)}))
    assert consolidation.target_dtype(source, bf16) == "bfloat16"

    out = consolidation.consolidate(base, checkpoint=source)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    with safe_open(out / "model.safetensors", "pt") as weights:
        saved = {key: weights.get_tensor(key) for key in weights.keys()}
    assert {value.dtype for value in saved.values()} == {torch.bfloat16}

    fp32 = AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.float32)
    expected = PeftModel.from_pretrained(fp32, source).merge_and_unload().to(torch.bfloat16).state_dict()
    assert saved.keys() == expected.keys()
    assert all(torch.equal(saved[key], expected[key]) for key in saved), "fp32 merge, then one cast"
    base_weights = AutoModelForCausalLM.from_pretrained(bf16, dtype=torch.bfloat16).state_dict()
    assert any(not torch.equal(saved[key], base_weights[key]) for key in saved), "the adapter is merged"


def test_the_dtype_is_the_runs_base_dtype(base: Path):
    checkpoint = base / "current_model" / "checkpoint-6"
    assert consolidation.target_dtype(checkpoint, base / "base_model") == "float32"
    run_config = json.loads((checkpoint / "run_config.json").read_text())
    run_config["model"]["dtype"] = "bfloat16"  # model=hf model.dtype=bfloat16 on an fp32 directory
    (checkpoint / "run_config.json").unlink()  # a hard link could be shared: write a new file
    (checkpoint / "run_config.json").write_text(json.dumps(run_config))
    assert consolidation.target_dtype(checkpoint, base / "base_model") == "bfloat16"


def test_a_kill_during_consolidation_leaves_no_partial_directory(base: Path, monkeypatch):
    monkeypatch.setenv("LIT_CONTINUAL_FAULT", "consolidate-tmp@6")  # SIGKILL before the rename
    with pytest.raises(consolidation.ConsolidationError, match=r"checkpoint-6 failed \(child exit -9\)"):
        consolidation.consolidate(base)
    root = base / "consolidated"
    assert consolidation.listing(base) == [] and not (root / "step-6").exists()
    left = sorted(p.name for p in root.iterdir())
    assert [name.rsplit("-", 1)[0] for name in left] == [".failed-step-6.json".rsplit("-", 1)[0], ".tmp-step-6"]
    assert consolidation.prune(base, keep=3) == []
    assert [p.name for p in root.iterdir()] == [".failed-step-6.json"], "the killed child's .tmp- dir is deleted"


def test_keep_deletes_all_but_the_newest_consolidated_models(base: Path):
    root = base / "consolidated"
    for name in ("step-40", "step-5", "step-12", "step-1", ".tmp-step-3-99", ".tmp-source-step-3-99"):
        (root / name).mkdir(parents=True)
    assert [p.name for p in consolidation.prune(base, keep=2)] == ["step-1", "step-5"]
    assert sorted(os.listdir(root)) == ["step-12", "step-40"]


def test_consolidate_command_fails_in_one_line_without_a_checkpoint_or_its_base(base: Path, tmp_path: Path,
                                                                                  capsys):
    (tmp_path / "empty").mkdir()
    assert main(["consolidate", "--base-dir", str(tmp_path / "empty")]) == 1
    assert main(["consolidate", "--base-dir", str(tmp_path / "nowhere")]) == 2
    config = base / "current_model" / "checkpoint-6" / "adapter_config.json"
    moved = {**json.loads(config.read_text()), "base_model_name_or_path": str(tmp_path / "moved")}
    config.unlink()
    config.write_text(json.dumps(moved))
    shutil.rmtree(base / "base_model")
    assert main(["consolidate", "--base-dir", str(base)]) == 1
    assert [line for line in capsys.readouterr().err.splitlines() if line.startswith("lit-continual")] == [
        f"lit-continual consolidate: no checkpoint yet in {tmp_path / 'empty' / 'current_model'}",
        f"lit-continual consolidate: {tmp_path / 'nowhere'} does not exist (not a base dir)",
        f"lit-continual consolidate: consolidating checkpoint-6: the base model {tmp_path / 'moved'} named in "
        "checkpoint-6/adapter_config.json is missing"]


def test_by_default_the_daemon_consolidates_each_scheduled_snapshot_once(base: Path):
    trigger = consolidation.Trigger(base, None)
    assert trigger.due(T0) is None
    snapshots.take(base, now=T0)  # asked for, not scheduled
    assert trigger.due(T0) is None
    scheduled = snapshots.take(base, now=T0 + timedelta(minutes=1), scheduled=True)
    assert trigger.due(T0) == scheduled
    (base / "consolidated" / "step-6").mkdir(parents=True)
    assert trigger.due(T0) is None
    shutil.rmtree(base / "consolidated" / "step-6")
    (base / "consolidated" / ".failed-step-6.json").write_text("{}")
    assert trigger.due(T0) is None, "a failed merge waits for the next scheduled snapshot"
    assert consolidation.Trigger(base, "never").due(T0 + timedelta(days=9)) is None


def test_a_cron_consolidation_schedule_takes_the_newest_checkpoint(base: Path):
    trigger = consolidation.Trigger(base, "0 4 * * *")
    assert trigger.due(T0) is None, "a new schedule has missed nothing"
    assert trigger.due(T0 + timedelta(days=1)) == base / "current_model" / "checkpoint-6"
    trigger.mark(T0 + timedelta(days=1))
    assert trigger.due(T0 + timedelta(days=1, minutes=1)) is None
