"""Migration from a Hugging Face Trainer + PEFT daemon: the daemon refuses its checkpoints
(naming `adopt`), `lit-continual adopt` turns the newest into ours, and the run goes on at the next
step with the Trainer's weights and AdamW moments. The Trainer checkpoints are real: built once
per module with transformers.Trainer + peft on the tiny base."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lit_continual import checkpoints as ckpts
from lit_continual.checkpoints import DirectoryCheckpointIO, UnusableCheckpoints, newest_valid
from lit_continual.cli import main
from lit_continual.config import compose
from lit_continual.lock import RunLock
from lit_continual.safe_load import load_tensors
from lit_continual.sample_data import sentence
from tests.conftest import (
    REPO,
    checkpoints,
    log_text,
    newest,
    status,
    train_here,
    trainer_state,
    under_inbox,
    write_jsonl,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NEXT_LINES = 8  # = data.batch_size: the first step after adoption trains exactly this file


@dataclass
class HFRun:
    base_model: Path  # the tiny base both sides load
    output: Path  # the Trainer's output_dir: checkpoint-2/, checkpoint-4/
    names: list[str]  # trainable parameter names in named_parameters order (= our optimizer's order)
    moments: dict[str, dict[str, torch.Tensor]]  # the Trainer's live AdamW state at step 4, by name
    next_file: Path  # the file the adopted run trains next
    next_loss: float  # the Trainer's own loss on that batch at its step 5 (before the update)


def train_hf(output: Path, base_model: Path, max_steps: int, save_steps: int):
    """A real HF Trainer + PEFT run on the tiny base, laid out as the old daemon did."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from lit_continual.data.records import Encoder, collate

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    torch.manual_seed(0)  # the LoRA init draws from the global generator
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_model),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS,
                                      task_type="CAUSAL_LM"))
    rng = random.Random(0)
    examples = Encoder(tokenizer, 256).encode([{"text": sentence(rng)} for _ in range(32)])
    args = TrainingArguments(output_dir=str(output), max_steps=max_steps, save_steps=save_steps,
                             per_device_train_batch_size=4, learning_rate=1e-3, weight_decay=0.01,
                             report_to=[], use_cpu=True, seed=0, disable_tqdm=True, logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=examples,
                      data_collator=lambda batch: collate(batch, tokenizer.pad_token_id))
    trainer.train()
    return trainer, tokenizer


def live_moments(trainer) -> dict[str, dict[str, torch.Tensor]]:
    """The Trainer's optimizer state keyed by parameter name, from the live objects."""
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    return {names[id(p)]: {k: v.detach().clone() for k, v in trainer.optimizer.state[p].items()}
            for group in trainer.optimizer.param_groups for p in group["params"]}


@pytest.fixture(scope="module")
def hf_run(tmp_path_factory) -> HFRun:
    from lit_continual.data.records import Encoder, collate
    from lit_continual.models import tiny

    root = tmp_path_factory.mktemp("hf")
    base_model = tiny.ensure_saved(compose(["base_dir=/x"]).model, root / "base_model")
    trainer, tokenizer = train_hf(root / "output", base_model, max_steps=4, save_steps=2)
    next_file = write_jsonl(root / "next.jsonl", NEXT_LINES, seed=5)
    records = [json.loads(line) for line in next_file.read_text().splitlines()]
    batch = collate(Encoder(tokenizer, 256).encode(records), tokenizer.pad_token_id)
    with torch.no_grad():
        next_loss = float(trainer.compute_loss(trainer.model, batch))
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    return HFRun(base_model, root / "output", names, live_moments(trainer), next_file, next_loss)


def overrides(hf_run: HFRun) -> list[str]:
    return ["model=hf", f"model.path={hf_run.base_model}", "lora.dropout=0.0", "optim.lr=1e-3",
            "scheduler=constant", f"data.batch_size={NEXT_LINES}", "logging.every_n_steps=1", "logger=null"]


def hf_base(hf_run: HFRun, tmp_path: Path, output: Path | None = None) -> Path:
    """A base dir whose current_model/ holds the Trainer's checkpoint-* directories."""
    base = tmp_path / "run"
    for ckpt in sorted((output or hf_run.output).glob("checkpoint-*")):
        shutil.copytree(ckpt, base / "current_model" / ckpt.name)
    return base


def tree(directory: Path) -> dict[str, str]:
    """Every file under `directory` with its sha256."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def assert_moments_equal(optimizer_pt: Path, names: list[str], moments: dict) -> None:
    state = load_tensors(optimizer_pt)["state"]
    assert len(state) == len(names) == len(moments)
    for index, name in enumerate(names):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(state[index][key], moments[name][key], rtol=0, atol=0,
                                       msg=lambda m, n=name, k=key: f"{n} {k}: {m}")


def test_daemon_refuses_a_trainer_checkpoint_leaves_it_in_place_and_names_adopt(hf_run, tmp_path):
    base = hf_base(hf_run, tmp_path)
    before = tree(base / "current_model")
    write_jsonl(base / "inbox" / "a.jsonl", NEXT_LINES)
    assert train_here(base, *overrides(hf_run), "daemon.exit_when_idle=true") == 2
    assert tree(base / "current_model") == before, "the Trainer's checkpoints must stay untouched, in place"
    text = log_text(base)
    assert "written by the Hugging Face Trainer (checkpoint-2, checkpoint-4" in text
    assert f"lit-continual adopt --base-dir {base}" in text and "starting the run at step 0" not in text
    assert status(base)["status"] == "error" and "lit-continual adopt" in status(base)["error"]
    assert under_inbox(base, "a.jsonl"), "nothing trained"


def test_adopted_run_continues_at_the_next_step_with_the_trainers_weights_and_moments(hf_run, tmp_path, capsys):
    base = hf_base(hf_run, tmp_path)
    originals = {name: tree(hf_run.output / name) for name in ("checkpoint-2", "checkpoint-4")}
    assert main(["adopt", "--base-dir", str(base), *overrides(hf_run)]) == 0
    out = capsys.readouterr().out
    assert "Adopted the Hugging Face Trainer's checkpoint-4 as current_model/checkpoint-4" in out
    assert "next step 5 at learning rate 1.000e-03" in out and "rng_state.pth" in out
    models = base / "current_model"
    assert sorted(p.name for p in models.iterdir()) == [".adopted", "checkpoint-4"]
    assert {p.name: tree(p) for p in (models / ".adopted").iterdir()} == originals, "moved untouched"
    ours = models / "checkpoint-4"
    assert ckpts.verify(ours) is None
    assert trainer_state(ours)["global_step"] == 4
    assert json.loads((ours / "ledger.json").read_text())["files_done"] == []
    assert load_tensors(ours / "scheduler.pt")["last_epoch"] == 4
    from safetensors.torch import load_file

    theirs = load_file(hf_run.output / "checkpoint-4" / "adapter_model.safetensors")
    assert load_file(ours / "adapter_model.safetensors").keys() == theirs.keys()
    for name, tensor in load_file(ours / "adapter_model.safetensors").items():
        assert torch.equal(tensor, theirs[name]), name
    assert_moments_equal(ours / "optimizer.pt", hf_run.names, hf_run.moments)

    (base / "inbox").mkdir()
    shutil.copy(hf_run.next_file, base / "inbox" / "next.jsonl")
    assert train_here(base, *overrides(hf_run), "daemon.exit_when_idle=true") == 0
    assert [p.name for p in checkpoints(base)] == ["checkpoint-4", "checkpoint-5"]
    first = trainer_state(newest(base))["log_history"][0]
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    assert first["step"] == 5 and ledger["files_done"][0]["first_step"] == 5
    assert first["learning_rate"] == pytest.approx(1e-3), "our schedule at step 4, not the Trainer's 0"
    difference = abs(first["loss"] - hf_run.next_loss) / hf_run.next_loss
    print(f"first loss after adoption {first['loss']:.6f}, the Trainer's own {hf_run.next_loss:.6f}: "
          f"relative difference {difference:.2e}")
    assert difference < 0.05


def test_adopt_with_another_lora_rank_exits_2_naming_the_parameter_and_writes_nothing(hf_run, tmp_path, capsys):
    base = hf_base(hf_run, tmp_path)
    before = tree(base / "current_model")
    assert main(["adopt", "--base-dir", str(base), *overrides(hf_run), "lora.r=4"]) == 2
    err = capsys.readouterr().err
    assert "base_model.model.model.layers.0." in err and "lora_A.weight: the Hugging Face adapter has shape [8," in err
    assert "lora.r=8 lora.alpha=16" in err, "says which settings the adapter needs"
    assert tree(base / "current_model") == before


class Killed(BaseException):
    """Stands for SIGKILL at that point."""


@pytest.mark.parametrize("kill", ["mid-move", "before-write"])
def test_a_rerun_finishes_an_adoption_killed_after_it_began_moving(hf_run, tmp_path, monkeypatch, kill):
    base = hf_base(hf_run, tmp_path)
    models = base / "current_model"
    if kill == "before-write":
        monkeypatch.setattr(DirectoryCheckpointIO, "_write", lambda *a: (_ for _ in ()).throw(Killed()))
    else:
        import lit_continual.adopt

        rename, calls = lit_continual.adopt.os.rename, []

        def rename_once(src, dst):
            calls.append(src)
            if len(calls) > 1:
                raise Killed()
            rename(src, dst)

        monkeypatch.setattr(lit_continual.adopt.os, "rename", rename_once)
    with pytest.raises(Killed):
        main(["adopt", "--base-dir", str(base), *overrides(hf_run)])
    monkeypatch.undo()
    assert not ckpts.complete_checkpoints(models)
    with pytest.raises(UnusableCheckpoints, match=f"lit-continual adopt --base-dir {base}"):
        newest_valid(models)  # what the daemon does first: it refuses, it does not start at 0
    assert main(["adopt", "--base-dir", str(base), *overrides(hf_run)]) == 0
    assert sorted(p.name for p in (models / ".adopted").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert [p.name for p in checkpoints(base)] == ["checkpoint-4"] and ckpts.verify(models / "checkpoint-4") is None
    assert_moments_equal(models / "checkpoint-4" / "optimizer.pt", hf_run.names, hf_run.moments)
    assert main(["adopt", "--base-dir", str(base), *overrides(hf_run)]) == 0, "a third run: nothing to do"


def test_a_trainer_checkpoint_left_incomplete_by_a_kill_is_skipped_for_the_one_before(hf_run, tmp_path, capsys):
    base = hf_base(hf_run, tmp_path)
    (base / "current_model" / "checkpoint-4" / "optimizer.pt").unlink()  # the Trainer died while saving
    assert main(["adopt", "--base-dir", str(base), *overrides(hf_run)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint-2 as current_model/checkpoint-2" in out and "not used: checkpoint-4" in out
    assert sorted(p.name for p in (base / "current_model" / ".adopted").iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert [p.name for p in checkpoints(base)] == ["checkpoint-2"]


def test_moments_are_matched_by_name_when_the_trainer_split_its_parameter_groups(hf_run, tmp_path, monkeypatch):
    from transformers import Trainer

    rule = Trainer.get_decay_parameter_names
    # HF's grouping rule (shared by the Trainer and adopt) puts lora_B into the no-decay group:
    # its optimizer.pt then lists every lora_A before every lora_B, not our interleaved order.
    monkeypatch.setattr(Trainer, "get_decay_parameter_names",
                        lambda self, model: [n for n in rule(self, model) if "lora_B" not in n])
    trainer, _ = train_hf(tmp_path / "split", hf_run.base_model, max_steps=2, save_steps=2)
    groups = load_tensors(tmp_path / "split" / "checkpoint-2" / "optimizer.pt")["param_groups"]
    assert [len(g["params"]) for g in groups] == [14, 14]
    base = hf_base(hf_run, tmp_path, output=tmp_path / "split")
    assert main(["adopt", "--base-dir", str(base), *overrides(hf_run)]) == 0
    assert_moments_equal(base / "current_model" / "checkpoint-2" / "optimizer.pt", hf_run.names,
                         live_moments(trainer))


DRAIN = ("daemon.exit_when_idle=true", "data.batch_size=4", "checkpoint.every_n_steps=1", "logger=null")


@pytest.fixture(scope="module")
def own_run(tmp_path_factory) -> Path:
    """A lit-continual run of 2 steps with a checkpoint at each (checkpoint-1 is mid-file)."""
    base = tmp_path_factory.mktemp("own") / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 8, seed=1)
    assert train_here(base, *DRAIN) == 0
    assert [p.name for p in checkpoints(base)] == ["checkpoint-1", "checkpoint-2"]
    return base


def test_adopted_loop_state_is_the_one_our_checkpointer_saves_mid_file(own_run):
    from lit_continual.adopt import _loops

    saved = load_tensors(own_run / "current_model" / "checkpoint-1" / "run_state.pt")["loops"]
    assert _loops(1, accumulate=1) == saved


def test_all_damaged_checkpoints_make_the_daemon_exit_2_not_start_over(own_run, tmp_path):
    base = tmp_path / "run"
    shutil.copytree(own_run, base)
    for ckpt in checkpoints(base):
        (ckpt / "optimizer.pt").write_bytes(b"damaged")
    before = tree(base / "current_model")
    write_jsonl(base / "inbox" / "b.jsonl", 8, seed=2)
    for _ in range(2):  # and again: the refusal holds, the damaged ones were not moved away
        assert train_here(base, *DRAIN) == 2
        assert tree(base / "current_model") == before
    text = log_text(base)
    assert (f"none of the 2 checkpoint(s) in {base / 'current_model'} can be resumed (checkpoint-2: optimizer.pt "
            "has 7 bytes") in text
    assert "refusing to start the run over at step 0" in text and f"move {base / 'current_model'} aside" in text
    assert text.count("starting the run at step 0") == 1, "only the very first run (in own_run) started at 0"
    assert status(base)["status"] == "error"
    assert under_inbox(base, "b.jsonl")


def test_leftover_tmp_directories_are_not_checkpoints(tmp_path):
    models = tmp_path / "current_model"
    (models / ".tmp-checkpoint-5-1234").mkdir(parents=True)
    (models / ".tmp-checkpoint-5-1234" / "adapter_model.safetensors").write_bytes(b"partial")
    assert newest_valid(models) is None, "an empty run starts at step 0"


def test_adopt_exits_3_while_the_base_dir_is_locked(hf_run, tmp_path, capsys):
    base = hf_base(hf_run, tmp_path)
    before = tree(base / "current_model")
    with RunLock(base):
        assert main(["adopt", "--base-dir", str(base), *overrides(hf_run)]) == 3
    assert "is locked by pid" in capsys.readouterr().err
    assert tree(base / "current_model") == before


def test_adopt_command_imports_no_torch():
    code = ("import sys, argparse; import lit_continual.commands.adopt as m; "
            "m.add(argparse.ArgumentParser().add_subparsers()); assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
