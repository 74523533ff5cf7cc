"""Lightning/Hydra-native composition, run for real: loggers, user callbacks, optimizers from
config, and a checkpointer that is the Trainer's ModelCheckpoint."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import lightning as L
import pytest
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_continual.run import EXIT_STOPPED
from tests.conftest import checkpoints, log_text, newest, train_here, trainer_state, under_inbox, write_jsonl


class Recorder(L.Callback):
    """A user callback (`+callbacks.rec._target_=tests.test_native.Recorder`): writes what it saw."""

    def __init__(self, out: str) -> None:
        self.out, self.seen = Path(out), {"batches": 0}

    def on_train_start(self, trainer, pl_module) -> None:
        saver = trainer.checkpoint_callback
        self.seen.update(is_model_checkpoint=isinstance(saver, ModelCheckpoint),
                         last_model_path=saver.last_model_path, best_model_path=saver.best_model_path,
                         every=saver._every_n_train_steps, top_k=saver.save_top_k)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen["batches"] += 1

    def on_train_end(self, trainer, pl_module) -> None:
        self.seen["last_at_end"] = trainer.checkpoint_callback.last_model_path
        self.out.write_text(json.dumps(self.seen))


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _record(tmp_path: Path, base: Path, data: Path, *overrides: str) -> tuple[int, dict]:
    out = tmp_path / "seen.json"
    code = train_here(base, "data=inbox_file", f"data.path={data}", f"+callbacks.rec.out={out}",
                      "+callbacks.rec._target_=tests.test_native.Recorder", *overrides)
    return code, json.loads(out.read_text()) if out.exists() else {}


def test_checkpointer_is_the_trainers_model_checkpoint_and_knows_the_newest_after_a_restart(tmp_path: Path):
    base = tmp_path / "run"
    first, second = write_jsonl(tmp_path / "a.jsonl", 80, seed=1), write_jsonl(tmp_path / "b.jsonl", 40, seed=2)
    code, seen = _record(tmp_path, base, first, "callbacks.model_checkpoint.every_n_train_steps=4")
    assert code == 0 and seen["is_model_checkpoint"] and seen["every"] == 4 and seen["top_k"] == 3
    assert seen["last_model_path"] == "" and seen["batches"] == 10, "a user callback runs on every batch"
    assert seen["last_at_end"] == str(base / "current_model" / "checkpoint-10")
    # Another interval and k in the next process: nothing is orphaned, the restored path is right.
    code, seen = _record(tmp_path, base, second, "callbacks.model_checkpoint.every_n_train_steps=3",
                         "callbacks.model_checkpoint.save_top_k=2")
    assert code == 0
    assert seen["last_model_path"] == seen["best_model_path"] == str(base / "current_model" / "checkpoint-10")
    assert [p.name for p in checkpoints(base)] == ["checkpoint-12", "checkpoint-15"]
    assert seen["last_at_end"].endswith("checkpoint-15")


def test_csv_and_tensorboard_loggers_continue_one_run_across_restarts(tmp_path: Path):
    base = tmp_path / "run"
    first, second = write_jsonl(tmp_path / "a.jsonl", 40, seed=1), write_jsonl(tmp_path / "b.jsonl", 40, seed=2)
    both = ("logger=[tensorboard,csv]", "logging.every_n_steps=1", "callbacks=lr_monitor")
    assert train_here(base, "data=inbox_file", f"data.path={first}", *both) == 0
    assert train_here(base, "data=inbox_file", f"data.path={second}", *both) == 0
    rows = [r for r in _rows(base / "csv" / "metrics.csv") if r["train/loss"]]
    assert [int(r["step"]) for r in rows] == list(range(1, 11)), "one run: steps 1-10 from two processes"
    losses = [e["loss"] for e in trainer_state(newest(base))["log_history"]]
    assert [round(float(r["train/loss"]), 6) for r in rows] == losses
    assert any(r.get("lr-AdamW") for r in _rows(base / "csv" / "metrics.csv")), "the lr_monitor preset logs"
    assert list((base / "tensorboard").glob("events.out.tfevents.*"))
    assert not (base / "csv" / "version_0").exists() and not (base / "csv" / "version_1").exists()


def test_sgd_from_its_preset_trains_and_a_restart_with_adamw_is_refused(tmp_path: Path, capsys):
    base = tmp_path / "run"
    first, second = write_jsonl(tmp_path / "a.jsonl", 40, seed=1), write_jsonl(tmp_path / "b.jsonl", 40, seed=2)
    assert train_here(base, "data=inbox_file", f"data.path={first}", "optim=sgd") == 0
    import torch

    from lit_continual.safe_load import load_tensors

    saved = load_tensors(newest(base) / "optimizer.pt")
    assert "momentum_buffer" in next(iter(saved["state"].values())), "SGD with momentum trained"
    assert torch.isfinite(torch.tensor([e["loss"] for e in trainer_state(newest(base))["log_history"]])).all()
    assert train_here(base, "data=inbox_file", f"data.path={second}", "run.allow_config_change=true") == 2
    assert "optim._target_ ('torch.optim.SGD' -> 'torch.optim.AdamW')" in log_text(base)
    assert "optim._target_" in capsys.readouterr().err


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_optional_logger_without_its_package_is_exit_2_with_the_install_command(tmp_path: Path, capsys, name):
    if _installed(name):
        pytest.skip(f"{name} is installed here")
    data = write_jsonl(tmp_path / "a.jsonl", 8)
    assert train_here(tmp_path / "run", "data=inbox_file", f"data.path={data}", f"logger={name}") == 2
    assert f"pip install 'lit-continual[{name}]'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "base_model").exists()


def _run_ids(base: Path) -> dict:
    from lit_continual.safe_load import load_tensors

    return load_tensors(newest(base) / "run_state.pt")["callbacks"].get("LoggerRuns", {})


@pytest.mark.parametrize("name", ["mlflow", "wandb"])
def test_optional_logger_continues_one_run_across_restarts(tmp_path: Path, monkeypatch, name):
    if not _installed(name):
        pytest.skip(f"logger={name} needs the optional extra: pip install 'lit-continual[{name}]'")
    monkeypatch.setenv("WANDB_SILENT", "true")
    base = tmp_path / "run"
    first, second = write_jsonl(tmp_path / "a.jsonl", 40, seed=1), write_jsonl(tmp_path / "b.jsonl", 40, seed=2)
    settings = (f"logger={name}", "logging.every_n_steps=1")
    assert train_here(base, "data=inbox_file", f"data.path={first}", *settings) == 0
    run_id = _run_ids(base)[name]
    assert train_here(base, "data=inbox_file", f"data.path={second}", *settings) == 0
    assert _run_ids(base)[name] == run_id, "the second process logged into the same run"
    if name == "mlflow":
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{base}/mlflow/mlflow.db")
        steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
        assert steps == list(range(1, 11))
        experiment = client.get_experiment_by_name("lit-continual")
        assert len(client.search_runs([experiment.experiment_id])) == 1
    else:
        runs = sorted((base / "wandb").glob("offline-run-*"))
        assert len(runs) == 2 and all(r.name.endswith(run_id) for r in runs)


def renamed_tiny(base_dir: Path, **shape):
    """A model kind defined outside the package: `model._target_=tests.test_native.renamed_tiny`."""
    from lit_continual.models import tiny

    (base_dir / "custom_loader_used").write_text("yes")
    return tiny.load(base_dir, **shape)


def test_a_new_model_kind_is_a_loader_named_in_config(tmp_path: Path):
    base, data = tmp_path / "run", write_jsonl(tmp_path / "a.jsonl", 8)
    assert train_here(base, "data=inbox_file", f"data.path={data}", "model._target_=tests.test_native.renamed_tiny",
                      "model.name=renamed") == 0
    assert (base / "custom_loader_used").exists() and "Model renamed from" in log_text(base)


# -- the seams between the checkpointer and the file lifecycle ------------------------------

@pytest.mark.parametrize("how", [".stop file", "SIGTERM"])
def test_stop_asked_while_a_checkpoint_is_written_trains_nothing_more(tmp_path: Path, monkeypatch, how):
    from lit_continual.checkpoints import DirectoryCheckpointIO

    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 80, seed=1)
    write_jsonl(base / "inbox" / "b.jsonl", 80, seed=2)
    os.utime(base / "inbox" / "b.jsonl", (time.time() + 5, time.time() + 5))  # b after a
    save = DirectoryCheckpointIO.save_checkpoint

    def save_while_stop_arrives(self, checkpoint, path, storage_options=None):
        save(self, checkpoint, path, storage_options)
        if how == "SIGTERM":  # a service manager's stop lands during the write
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            (base / ".stop").touch()  # the operator's stop lands during the write

    monkeypatch.setattr(DirectoryCheckpointIO, "save_checkpoint", save_while_stop_arrives)
    assert train_here(base, "callbacks.model_checkpoint.every_n_train_steps=1000") == 0
    assert [p.name for p in checkpoints(base)] == ["checkpoint-10"]
    assert f"Stopping ({how}) at step 10" in log_text(base) and "File b.jsonl" not in log_text(base)
    assert under_inbox(base, "b.jsonl") and not under_inbox(base, "a.jsonl")


class StopAtBatch(L.Callback):
    """A user callback that stops the run mid accumulation window (as Lightning's Timer may)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.at:
            trainer.should_stop = True


def test_a_user_callbacks_stop_mid_window_loses_and_repeats_nothing(tmp_path: Path):
    base, data = tmp_path / "run", write_jsonl(tmp_path / "a.jsonl", 40, seed=1)
    window = ("data.batch_size=4", "trainer.accumulate_grad_batches=2")
    # The file is not finished: train.py says so with its own exit code (run.EXIT_STOPPED).
    assert train_here(base, "data=inbox_file", f"data.path={data}", *window, "+callbacks.stop._target_="
                      "tests.test_native.StopAtBatch", "+callbacks.stop.at=4") == EXIT_STOPPED
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    assert newest(base).name == "checkpoint-2" and ledger["current"]["examples_trained"] == 16
    assert train_here(base, "data=inbox_file", f"data.path={data}", *window) == 0
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    assert ledger["examples_trained_total"] == 40 and newest(base).name == "checkpoint-5"


class NumpyState(L.Callback):
    """A user callback whose state would not load back with weights_only=True."""

    def state_dict(self) -> dict:
        import numpy as np

        return {"mean": np.float64(0.5)}


def test_a_callback_state_that_would_not_load_is_refused_and_the_run_stays_resumable(tmp_path: Path, capsys):
    base, data = tmp_path / "run", write_jsonl(tmp_path / "a.jsonl", 40, seed=1)
    assert train_here(base, "data=inbox_file", f"data.path={data}",
                      "+callbacks.np._target_=tests.test_native.NumpyState") == 2
    assert "callback state NumpyState cannot be loaded back" in capsys.readouterr().err
    assert checkpoints(base) == []
    assert train_here(base, "data=inbox_file", f"data.path={data}") == 0
    assert newest(base).name == "checkpoint-5"


class CsvWatcher(L.Callback):
    """Reads metrics.csv while the run is going: rows must be on disk as they are logged."""

    def __init__(self, path: str) -> None:
        self.path, self.rows_at_step_5 = Path(path), None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 5 and self.rows_at_step_5 is None:
            self.rows_at_step_5 = len(_rows(self.path)) if self.path.exists() else 0
            (self.path.parent / "rows_at_step_5").write_text(str(self.rows_at_step_5))


def test_csv_rows_are_on_disk_as_they_are_logged(tmp_path: Path):
    base, data = tmp_path / "run", write_jsonl(tmp_path / "a.jsonl", 80, seed=1)
    assert train_here(base, "data=inbox_file", f"data.path={data}", "logger=csv", "logging.every_n_steps=1",
                      "+callbacks.watch._target_=tests.test_native.CsvWatcher",
                      f"+callbacks.watch.path={base / 'csv' / 'metrics.csv'}") == 0
    assert (base / "csv" / "rows_at_step_5").read_text() == "5"


def test_callback_state_keys_do_not_depend_on_class_names(tmp_path: Path):
    """Renaming a callback class must not orphan its state in existing checkpoints."""
    from lit_continual.callbacks import (
        Checkpointer,
        FileLifecycle,
        LoggerRuns,
        LossHistory,
        NonFiniteGuard,
        RngState,
    )
    from lit_continual.context import RunContext
    from lit_continual.status import Status
    from lit_continual.storage import Backoff

    ctx = RunContext(tmp_path, None, Status(tmp_path), None)
    guard = NonFiniteGuard(3)
    made = {RngState: RngState(), NonFiniteGuard: guard, LossHistory: LossHistory(1, 1, ctx.status, guard),
            FileLifecycle: FileLifecycle(None, ctx), LoggerRuns: LoggerRuns({}),
            Checkpointer: Checkpointer(ctx, 1, 1, 0, Backoff(1, 2))}
    expected = {RngState: "RngState", NonFiniteGuard: "NonFiniteGuard", LossHistory: "LossHistory",
                FileLifecycle: "FileLifecycle", LoggerRuns: "LoggerRuns", Checkpointer: "ModelCheckpoint"}
    for cls, instance in made.items():
        renamed = type("Renamed", (cls,), {})
        instance.__class__ = renamed
        assert instance.state_key == expected[cls], cls
