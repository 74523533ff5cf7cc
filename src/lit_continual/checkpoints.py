"""Hugging Face style checkpoint directories: `current_model/checkpoint-<global_step>/`.

A Lightning checkpoint dict is split into files a user can read with stock tools:
adapter_model.safetensors + adapter_config.json (PEFT), optimizer.pt, scheduler.pt,
trainer_state.json (global_step, log_history), ledger.json (data position), run_config.json
(the resolved config), run_state.pt (loop counters, RNG, callback state) and manifest.json
(sizes and sha256 of all of them, written last and verified on load).
Every .pt loads with `torch.load(..., weights_only=True)`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch
from lightning.fabric.plugins import CheckpointIO
from peft import PeftConfig
from safetensors.torch import load_file, save_file

from lit_continual import atomic, faults, layout
from lit_continual.config.errors import ConfigError
from lit_continual.layout import sha256_file
from lit_continual.safe_load import load_tensors
from lit_continual.storage import StorageFault

log = logging.getLogger("lit_continual")

PREFIX = "checkpoint-"
NAME = layout.CHECKPOINT  # the names (and their torch-free readers) live in layout.py
ADAPTER, OPTIMIZER, SCHEDULER = "adapter_model.safetensors", "optimizer.pt", "scheduler.pt"
TRAINER_STATE, LEDGER, RUN_STATE, MANIFEST = layout.TRAINER_STATE, layout.LEDGER, "run_state.pt", layout.MANIFEST
RUN_CONFIG = layout.RUN_CONFIG
REQUIRED = (ADAPTER, "adapter_config.json", OPTIMIZER, SCHEDULER, TRAINER_STATE, LEDGER, RUN_CONFIG, RUN_STATE)
CORRUPT = ".corrupt"
ADOPTED = ".adopted"  # where `lit-continual adopt` moves the Hugging Face Trainer's checkpoints
# Files of a Hugging Face Trainer (+ PEFT) checkpoint: one of them and none of ours = foreign.
FOREIGN_MARKERS = (TRAINER_STATE, ADAPTER, "adapter_config.json", "rng_state.pth", "training_args.bin")
LEDGER_KEY = "ContinualDataModule"  # Lightning stores datamodule state under its class name
HISTORY_KEY = "LossHistory"  # the LossHistory callback's state_key
LOGGER_RUNS_KEY = "LoggerRuns"  # the LoggerRuns callback's state_key
REPLAY_KEY, REPLAY = "Replay", "replay.json"  # the replay reservoir (data/replay.py), when replay is on
GENERATION_KEY = "base_generation"  # LoRAModule.generation (rebase.py), kept in trainer_state.json


def step_of(path: Path) -> int | None:
    match = NAME.match(path.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(models_dir: Path) -> list[Path]:
    """This run's complete checkpoints (manifest present), oldest first by step number."""
    if not models_dir.is_dir():
        return []
    found = [p for p in models_dir.iterdir()
             if step_of(p) is not None and (p / MANIFEST).is_file()]
    return sorted(found, key=step_of)


def logger_runs(path: Path) -> dict[str, str]:
    """The run ids of loggers that continue one run (LoggerRuns' state) in checkpoint `path`."""
    return dict(load_tensors(path / RUN_STATE)["callbacks"].get(LOGGER_RUNS_KEY, {}))


def newest_checkpoint(models_dir: Path) -> Path | None:
    found = complete_checkpoints(models_dir)
    return found[-1] if found else None


def verify(path: Path) -> str | None:
    """What is wrong with checkpoint `path` (missing file, size or sha256 mismatch), or None."""
    try:
        manifest = json.loads((path / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError) as err:
        return f"unreadable {MANIFEST}: {err}"
    for name in REQUIRED:
        if name not in manifest:
            return f"{MANIFEST} does not list {name}"
    for name, expected in manifest.items():
        target = path / name
        if not target.is_file():
            return f"{name} is missing"
        if target.stat().st_size != expected["size"]:
            return f"{name} has {target.stat().st_size} bytes, manifest says {expected['size']}"
        if sha256_file(target) != expected["sha256"]:
            return f"{name} does not match its sha256"
    return None


class UnusableCheckpoints(ConfigError):
    """current_model/ holds checkpoints and none can be resumed (foreign, all damaged, or an
    adoption left half done): the run is never started over at step 0 (exit 2, the operator decides)."""


def is_foreign(path: Path) -> bool:
    """A checkpoint directory written by the Hugging Face Trainer (+ PEFT), not by lit-continual:
    none of our own files, some of the Trainer's. It is not damaged: `lit-continual adopt` reads it."""
    ours = (MANIFEST, LEDGER, RUN_STATE, RUN_CONFIG)
    return not any((path / name).exists() for name in ours) and any(
        (path / name).exists() for name in FOREIGN_MARKERS)


def newest_valid(models_dir: Path) -> Path | None:
    """The newest checkpoint that verifies; damaged newer ones are set aside in `.corrupt/`.

    None only when there is nothing to resume from: an empty (or missing) current_model/, where a
    run starts at step 0. Checkpoints that exist but cannot be used raise UnusableCheckpoints
    and are left where they are."""
    if not models_dir.is_dir():
        return None
    candidates = sorted((p for p in models_dir.iterdir() if step_of(p) is not None), key=step_of)
    foreign = [p for p in candidates if is_foreign(p)]
    if foreign:
        raise UnusableCheckpoints(_foreign_message(models_dir, foreign))
    damaged: list[tuple[Path, str]] = []
    for path in reversed(candidates):
        problem = verify(path)
        if problem is None:
            for bad, why in damaged:
                _set_aside(models_dir, bad, why)
            return path
        damaged.append((path, problem))
    if damaged:
        raise UnusableCheckpoints(_damaged_message(models_dir, damaged))
    adopted = sorted(p.name for p in (models_dir / ADOPTED).glob(f"{PREFIX}*"))
    if adopted:
        raise UnusableCheckpoints(
            f"{models_dir} holds no checkpoint but {ADOPTED}/ holds the Hugging Face Trainer's "
            f"({', '.join(adopted)}): an adoption was interrupted. Finish it (same overrides as the "
            f"first time): lit-continual adopt --base-dir {models_dir.parent}")
    return None


def _set_aside(models_dir: Path, path: Path, problem: str) -> None:
    aside = models_dir / CORRUPT / f"{path.name}.{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%fZ}"
    aside.parent.mkdir(exist_ok=True)
    os.rename(path, aside)
    atomic.fsync_dir(models_dir)
    log.warning("Checkpoint %s is damaged (%s): moved to %s; falling back to the previous one",
                path.name, problem, aside.relative_to(models_dir))


def _foreign_message(models_dir: Path, foreign: list[Path]) -> str:
    names = ", ".join(p.name for p in foreign)
    found = ", ".join(n for n in FOREIGN_MARKERS if (foreign[-1] / n).exists())
    return (f"{models_dir} holds checkpoints written by the Hugging Face Trainer ({names}: {found}; no "
            f"{MANIFEST}, no {LEDGER}). They are not damaged and were left in place, but a run cannot "
            f"resume from them as they are. To continue that run, adopt them (with this daemon's model "
            f"overrides): lit-continual adopt --base-dir {models_dir.parent} [overrides]. To start a new "
            f"run instead, move {models_dir} aside.")


def _damaged_message(models_dir: Path, damaged: list[tuple[Path, str]]) -> str:
    problems = "; ".join(f"{p.name}: {why}" for p, why in damaged)
    earlier = models_dir / CORRUPT
    aside = f" (damaged ones set aside earlier are in {earlier})" if earlier.is_dir() else ""
    return (f"none of the {len(damaged)} checkpoint(s) in {models_dir} can be resumed ({problems}): "
            f"refusing to start the run over at step 0. They were left in place{aside}. To start a new "
            f"run, move {models_dir} aside (e.g. mv {models_dir} {models_dir}.damaged); to resume, put an "
            f"intact checkpoint (from a backup or a snapshot) in {models_dir}.")


def remove_leftovers(models_dir: Path) -> None:
    """Delete `.tmp-*`/`.trash-*` directories a killed process left behind."""
    if models_dir.is_dir():
        for child in models_dir.iterdir():
            if child.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(child, ignore_errors=True)


def prune(models_dir: Path, keep: int) -> list[Path]:
    """Keep the newest `keep` complete checkpoints; each removed one is renamed away first."""
    removed = []
    for path in complete_checkpoints(models_dir)[:-keep]:
        trash = models_dir / f".trash-{path.name}"
        os.rename(path, trash)
        faults.point("retention", step_of(path))
        shutil.rmtree(trash)
        removed.append(path)
        log.info("Removed checkpoint %s (keeping the newest %d)", path.name, keep)
    if removed:
        atomic.fsync_dir(models_dir)
    return removed


class UnloadableState(ConfigError):
    """A callback's state that `weights_only` loading would refuse: such a checkpoint would make
    the base dir impossible to resume, so it is never written (exit 2 naming the state)."""


def _loadable_bytes(state: dict) -> bytes:
    """`state` serialized, after checking that it loads back with weights_only=True."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        load_tensors(io.BytesIO(buffer.getvalue()))
    except Exception as err:
        bad = [key for key, value in state.get("callbacks", {}).items() if not _loads(value)]
        raise UnloadableState(f"callback state {', '.join(bad) or '(run state)'} cannot be loaded back with "
                              f"torch.load(weights_only=True) ({str(err).splitlines()[0]}): its state_dict() "
                              "must hold only tensors, numbers, strings, lists, tuples and dicts") from err
    return buffer.getvalue()


def _loads(value: object) -> bool:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    try:
        load_tensors(io.BytesIO(buffer.getvalue()))
    except Exception:
        return False
    return True


class DirectoryCheckpointIO(CheckpointIO):
    """Writes/reads a Lightning checkpoint as a checkpoint directory, atomically."""

    def __init__(self, adapter_config: PeftConfig, base_model_path: Path) -> None:
        self.adapter_config = adapter_config
        self.base_model_path = str(base_model_path)

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        final = Path(path)
        tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            self._write(dict(checkpoint), tmp)
            atomic.fsync_tree(tmp)
            faults.point("checkpoint-tmp", checkpoint["global_step"])
            os.rename(tmp, final)
            atomic.fsync_dir(final.parent)
        except UnloadableState:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except Exception as err:  # whatever the writer raised (SafetensorError, RuntimeError on ENOSPC, ...)
            shutil.rmtree(tmp, ignore_errors=True)
            free = shutil.disk_usage(final.parent).free
            raise StorageFault(f"writing {final.name} ({free / 2**20:.1f} MiB free): {type(err).__name__}: {err}"
                               ) from err
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def _write(self, ckpt: dict, out: Path) -> None:
        save_file(ckpt.pop("state_dict"), out / ADAPTER, metadata={"format": "pt"})
        generation = ckpt.pop(GENERATION_KEY, None) or {}
        # The base it was trained on: the run's current generation (DIR/base_models/gen-<k> after a rebase).
        self.adapter_config.base_model_name_or_path = generation.get("base_model") or self.base_model_path
        self.adapter_config.save_pretrained(out)
        torch.save(ckpt.pop("optimizer_states")[0], out / OPTIMIZER)
        torch.save(ckpt.pop("lr_schedulers")[0], out / SCHEDULER)
        atomic.write_json(out / LEDGER, ckpt.pop(LEDGER_KEY), durable=False)
        history = ckpt["callbacks"].pop(HISTORY_KEY)
        state = {"global_step": ckpt["global_step"], "epoch": ckpt["epoch"],
                 "logging_steps": history["every_n_steps"], "log_history": history["log_history"],
                 "loss_pending": history["pending"], "base_generation": generation.get("number", 0),
                 "rebased_at_step": generation.get("rebased_at_step"),
                 "rebase_files_done": generation.get("files_at_rebase", 0)}
        atomic.write_json(out / TRAINER_STATE, state, durable=False)
        atomic.write_json(out / RUN_CONFIG, ckpt.pop("run_config"), durable=False)
        replay = ckpt["callbacks"].pop(REPLAY_KEY, None)
        if replay:
            atomic.write_json(out / REPLAY, replay, durable=False)
        (out / RUN_STATE).write_bytes(_loadable_bytes(ckpt))
        manifest = {name: {"size": (out / name).stat().st_size, "sha256": sha256_file(out / name)}
                    for name in sorted(os.listdir(out))}
        atomic.write_json(out / MANIFEST, {"files": manifest}, durable=False)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        src = Path(path)
        ckpt = load_tensors(src / RUN_STATE)
        ckpt["state_dict"] = load_file(src / ADAPTER)
        ckpt["optimizer_states"] = [load_tensors(src / OPTIMIZER)]
        ckpt["lr_schedulers"] = [load_tensors(src / SCHEDULER)]
        ckpt[LEDGER_KEY] = json.loads((src / LEDGER).read_text())
        ckpt["run_config"] = json.loads((src / RUN_CONFIG).read_text())
        if (src / REPLAY).is_file():
            ckpt["callbacks"][REPLAY_KEY] = json.loads((src / REPLAY).read_text())
        state = json.loads((src / TRAINER_STATE).read_text())
        ckpt["callbacks"][HISTORY_KEY] = {"every_n_steps": state["logging_steps"],
                                          "log_history": state["log_history"],
                                          "pending": state["loss_pending"]}
        ckpt[GENERATION_KEY] = {"number": state.get("base_generation", 0), "rebased_at_step": state.get(
            "rebased_at_step"), "files_at_rebase": state.get("rebase_files_done", 0)}
        return ckpt

    def remove_checkpoint(self, path) -> None:
        shutil.rmtree(path, ignore_errors=True)
