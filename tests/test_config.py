"""The config surface: every group option composes; every bad value is exit 2 naming the key,
before torch is imported (closed schema) or before the model loads (open nodes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lit_continual.config import ConfigError, check_unchanged, compose, prepare
from lit_continual.config.compose import groups
from lit_continual.config.restart import classify
from tests.conftest import REPO, train_here, write_jsonl


def _leaves(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            keys += _leaves(value, f"{prefix}{key}.")
        else:
            keys.append(prefix + key)
    return keys


@pytest.fixture
def needs(tmp_path: Path) -> dict[str, list[str]]:
    """What each option needs to validate on this machine (a file, a model directory)."""
    model_dir = tmp_path / "hf_model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    data = write_jsonl(tmp_path / "one.jsonl", 3)
    smollm2 = [f"model.cache_dir={model_dir}"]
    return {"model=hf": [f"model.path={model_dir}"], "model=smollm2": smollm2, "experiment=smollm2": smollm2,
            "data=inbox_file": [f"data.path={data}"],
            "scheduler=wsd": ["scheduler.decay_start=100", "scheduler.decay_steps=50"]}


def test_every_option_of_every_group_composes_validates_and_is_classified(tmp_path: Path, needs):
    found = groups()
    assert {"model", "lora", "data", "optim", "scheduler", "trainer", "callbacks", "logger", "checkpoint",
            "logging", "daemon", "experiment"} <= set(found)
    choices = [f"{group}={option}" for group, options in found.items() for option in options]
    choices.append("logger=[tensorboard,csv]")
    for choice in choices:
        cfg = prepare(compose([f"base_dir={tmp_path / 'run'}", choice, *needs.get(choice, [])]))
        for key in _leaves(OmegaConf.to_container(cfg, resolve=True)):
            assert classify(key) is not None, f"{choice}: {key} is not classified for restarts"
    assert prepare(compose([f"base_dir={tmp_path}", "experiment=smollm2", *needs["model=smollm2"]])).optim.lr == 2e-4


def test_old_alias_keys_still_work(tmp_path: Path):
    cfg = prepare(compose([f"base_dir={tmp_path}", "checkpoint.every_n_steps=7", "checkpoint.keep=2",
                           "scheduler.name=constant"]))
    assert cfg.callbacks.model_checkpoint.every_n_train_steps == 7 and cfg.callbacks.model_checkpoint.save_top_k == 2
    assert cfg.scheduler._target_ == "lit_continual.schedule.constant"


# Each: overrides, text the message must hold. All are checked in ONE subprocess (imports once).
BAD = [
    (["data.batch_size=0"], "data.batch_size=0"),
    (["data.batch_size=abc"], "data.batch_size='abc': must be an integer"),
    (["data.batchsize=4"], "did you mean `data.batch_size`?"),
    (["+data.batchsize=4"], "did you mean `data.batch_size`?"),
    (["model=hf", "model.path={model_dir}", "model.dtype=fp8"], "model.dtype='fp8'"),
    (["scheduler=cosine"], "scheduler/cosine"),
    (["scheduler.name=cosine"], "scheduler.name='cosine'"),
    (["lora.dropout=1.5"], "lora.dropout"),
    (["optim.lr=-1"], "optim.lr"),
    (["daemon.poll_seconds=0"], "daemon.poll_seconds"),
    (["data.format=csv"], "data.format"),
    (["trainer.max_steps=10"], "trainer.max_steps cannot be set"),
    (["trainer.precision=fp8"], "trainer.precision='fp8'"),
    (["trainer.strategy=ddp"], "trainer.strategy cannot be set"),
    (["trainer.enable_checkpointing=false"], "trainer.enable_checkpointing cannot be set"),
    (["checkpoint.keep=0"], "checkpoint.keep=0"),
    (["callbacks.model_checkpoint.save_top_k=0"], "callbacks.model_checkpoint.save_top_k=0"),
    (["callbacks.model_checkpoint.every_n_train_steps=x"], "callbacks.model_checkpoint.every_n_train_steps"),
    (["+callbacks.model_checkpoint.dirpath=/x"], "unknown key callbacks.model_checkpoint.dirpath"),
    (["+callbacks.mine=3"], "callbacks.mine must be a group with a `_target_`"),
    (["logger=nope"], "logger/nope"),
    (["data.path={data}"], "add data=inbox_file"),
    (["data=inbox_file"], "data.path must be set"),
    (["model=hf", "model.path={tmp}"], "model.path="),
    (["model=hf", "model.path={tmp}/missing"], "model.path="),
    (["--base-dir-file"], "base_dir="),
    (["~callbacks"], "callbacks must be set"),
    (["callbacks=null"], "callbacks must be set"),
    (["optim._partial_=false"], "optim._partial_=False: must be true"),
    (["scheduler._partial_=false"], "scheduler._partial_=False: must be true"),
    (["scheduler=wsd", "scheduler.decay_steps=5"], "scheduler.decay_start must be set"),
    (["scheduler=wsd", "scheduler.decay_start=5", "scheduler.decay_steps=0"], "scheduler.decay_steps=0: must be > 0"),
    (["scheduler=wsd", "scheduler.decay_start=5", "scheduler.decay_steps=9"],
     "scheduler.decay_start=5: must be >= scheduler.warmup_steps (20)"),
    (["scheduler=wsd", "scheduler.decay_start=50", "scheduler.decay_steps=9", "scheduler.floor=1.5"],
     "scheduler.floor=1.5: must be in [0, 1]"),
    (["scheduler=inverse_sqrt", "scheduler.timescale=0"], "scheduler.timescale=0: must be > 0"),
    (["scheduler=cosine_per_file", "scheduler.warmup_steps=-1"], "scheduler.warmup_steps=-1: must be >= 0"),
]

SCRIPT = """
import contextlib, io, json, sys
from pathlib import Path
from lit_continual.cli import main
tmp, cases = Path(sys.argv[1]), json.loads(sys.argv[2])
results = []
for overrides, _ in cases:
    base = tmp / f"run{len(results)}"
    if overrides == ["--base-dir-file"]:
        base.write_text("a file"); overrides = []
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["daemon", "--base-dir", str(base), *overrides])
    results.append({"code": code, "stderr": err.getvalue(), "written": base.is_dir(),
                    "torch": "torch" in sys.modules or "lightning" in sys.modules})
print(json.dumps(results))
"""


def test_every_bad_value_kind_is_exit_2_naming_the_key_before_torch_loads(tmp_path: Path):
    model_dir = tmp_path / "not_a_model"
    model_dir.mkdir()
    data = write_jsonl(tmp_path / "d.jsonl", 3)
    cases = [([o.format(model_dir=model_dir, data=data, tmp=model_dir) for o in overrides], text)
             for overrides, text in BAD]
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path), json.dumps(cases)],
                            capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    for (overrides, text), got in zip(cases, json.loads(result.stdout), strict=True):
        assert got["code"] == 2, (overrides, got)
        assert text in got["stderr"], (overrides, got["stderr"])
        assert "use +" not in got["stderr"] and "+data" not in got["stderr"], got["stderr"]
        assert not got["written"], f"{overrides}: wrote under DIR before the config was valid"
        assert not got["torch"], f"{overrides}: torch was imported before the error"


@pytest.mark.parametrize(("overrides", "text"), [
    (["optim.lrr=1e-3"], "unknown key optim.lrr: torch.optim.AdamW does not take `lrr` (did you mean `optim.lr`?)"),
    (["optim._target_=torch.optim.SGD"], "unknown key optim.betas: torch.optim.SGD does not take `betas`"),
    (["trainer.determinstic=true"], "did you mean `trainer.deterministic`?"),
    (["+callbacks.mine._target_=no.such.Callback"], "callbacks.mine._target_='no.such.Callback': cannot be imported"),
    (["+callbacks.mine._target_=torch.nn.Linear"], "must be a subclass of lightning.pytorch.callbacks"),
    (["scheduler.warmup_step=3"], "did you mean `scheduler.warmup_steps`?"),
    (["scheduler=cosine_per_file", "scheduler.file=3"], "scheduler.file cannot be set: the daemon passes it"),
    (["optim.weight_decay=-1"], "optim: torch.optim.AdamW refuses its keys: ValueError: Invalid weight_decay"),
    (["optim.betas=0.9"], "optim: torch.optim.AdamW refuses its keys"),
    (["optim=sgd", "optim.momentum=0", "+optim.nesterov=true"], "Nesterov momentum requires"),
    (["logger=csv", "logger.csv.flush_logs_every_n_step=5"],
     "did you mean `logger.csv.flush_logs_every_n_steps`?"),
])
def test_open_node_keys_are_checked_against_their_target_before_the_model_loads(tmp_path: Path, capsys,
                                                                                overrides, text):
    base = tmp_path / "run"
    assert train_here(base, *overrides) == 2
    assert text in capsys.readouterr().err
    assert not (base / "base_model").exists(), "the model was loaded before the config error"


@pytest.mark.parametrize(("overrides", "text"), [
    (["lora.target_modules=[nope_proj]"], "lora.target_modules=['nope_proj']"),
    (["callbacks=lr_monitor", "~logger"], "Lightning refused the configuration"),
])
def test_values_only_the_model_or_trainer_can_judge_are_exit_2_not_a_crash(tmp_path: Path, capsys, overrides, text):
    data = write_jsonl(tmp_path / "d.jsonl", 8)
    assert train_here(tmp_path / "run", "data=inbox_file", f"data.path={data}", *overrides) == 2
    assert text in capsys.readouterr().err
    assert not (tmp_path / "run" / ".crashes.json").exists() or "d.jsonl" not in (
        tmp_path / "run" / ".crashes.json").read_text(), "a configuration error is never blamed on the file"


def test_group_null_turns_the_group_off_as_in_the_template(tmp_path: Path):
    assert "logger" not in prepare(compose([f"base_dir={tmp_path}", "logger=null"]))


def test_other_optimizer_class_by_target_and_removed_keys_trains(tmp_path: Path):
    data = write_jsonl(tmp_path / "d.jsonl", 16)
    assert train_here(tmp_path / "run", "data=inbox_file", f"data.path={data}", "optim._target_=torch.optim.Adam",
                      "~optim.weight_decay", "trainer.deterministic=true", "~logger") == 0
    assert not list((tmp_path / "run" / "tensorboard").glob("events.*")), "~logger: no logger at all"


def test_restart_of_an_old_adamw_run_with_another_optimizer_is_refused(tmp_path: Path):
    # The config a 0.1 run saved (AdamW implied, the schedule by name), as the fixture holds it.
    saved = json.loads((REPO / "tests/fixtures/base_dir_v0_1/current_model/checkpoint-2/run_config.json").read_text())
    check_unchanged(saved, prepare(compose([f"base_dir={tmp_path}"])))  # the same run, today's keys
    with pytest.raises(ConfigError, match="optim._target_"):
        check_unchanged(saved, prepare(compose([f"base_dir={tmp_path}", "optim=sgd"])))
    with pytest.raises(ConfigError, match="scheduler._target_"):
        check_unchanged(saved, prepare(compose([f"base_dir={tmp_path}", "scheduler=constant"])))
    # The same class by another path is the same optimizer.
    check_unchanged(saved, prepare(compose([f"base_dir={tmp_path}", "optim._target_=torch.optim.adamw.AdamW"])))
    # A key the run did not have is a change too (adjustable: accepted only when allowed).
    with pytest.raises(ConfigError, match=r"trainer.deterministic \('\(absent\)' -> True\)"):
        check_unchanged(saved, prepare(compose([f"base_dir={tmp_path}", "trainer.deterministic=true"])))
    check_unchanged(saved, prepare(compose([f"base_dir={tmp_path}", "trainer.deterministic=true",
                                            "run.allow_config_change=true"])))
    old_constant = {**saved, "scheduler": {"name": "constant", "warmup_steps": 0}}
    check_unchanged(old_constant, prepare(compose([f"base_dir={tmp_path}", "scheduler=constant"])))


def test_daemon_cfg_prints_the_resolved_config_and_help_lists_the_groups(tmp_path: Path):
    base = tmp_path / "run"
    cmd = [sys.executable, "-m", "lit_continual", "daemon", "--base-dir", str(base)]
    shown = subprocess.run([*cmd, "--cfg", "logger=[tensorboard,csv]", "optim.lr=1e-4"],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert shown.returncode == 0, shown.stderr
    cfg = OmegaConf.create(shown.stdout)
    assert cfg.optim.lr == 1e-4 and set(cfg.logger) == {"tensorboard", "csv"} and cfg.base_dir == str(base)
    assert not base.exists()
    helped = subprocess.run([*cmd[:4], "--help"], capture_output=True, text=True, timeout=60, cwd=REPO)
    for group, options in groups().items():
        assert f"{group}:" in helped.stdout and ", ".join(options) in helped.stdout.replace("*", "")
    assert "model:       tiny*, hf, smollm2" in helped.stdout


def test_train_py_config_errors_exit_2_with_our_message(tmp_path: Path):
    for overrides, text in ((["data.batchsize=3"], "did you mean `data.batch_size`?"),
                            (["trainer.max_steps=3"], "trainer.max_steps cannot be set")):
        result = subprocess.run([sys.executable, str(REPO / "train.py"), f"base_dir={tmp_path / 'run'}", *overrides],
                                capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert result.returncode == 2, result.stdout + result.stderr
        assert text in result.stderr


def test_the_schema_knows_lightnings_precision_values():
    from typing import get_args

    from lightning.fabric.plugins.precision.precision import (
        _PRECISION_INPUT_INT,
        _PRECISION_INPUT_STR,
        _PRECISION_INPUT_STR_ALIAS,
    )

    from lit_continual.config.schema import PRECISIONS

    lightning = get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_INT) + get_args(_PRECISION_INPUT_STR_ALIAS)
    assert set(PRECISIONS) == {str(p) for p in lightning}
