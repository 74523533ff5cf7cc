"""Consolidation: the adapter merged into the base weights, as a standalone Hugging Face model.

`DIR/consolidated/step-<N>/` holds model.safetensors, config.json, generation_config.json, the
base's tokenizer files and consolidation.json (provenance); no adapter file and no PEFT
metadata, so `AutoModelForCausalLM.from_pretrained` loads it where peft is not installed.
The merge runs in fp32 (merging in bf16 drifts, peft #1388), then the weights are cast to the
run's base dtype (`model.dtype` in run_config.json, else the base's config.json).

The merge runs in a child process (`python -m lit_continual.consolidation`), so the daemon
never holds two models. Before starting it, the parent hard-links (or copies) the adapter into
`consolidated/.tmp-source-*`: checkpoint retention cannot pull it away mid-merge. The child
writes into `consolidated/.tmp-step-<N>-<pid>/`, fsyncs, renames: a kill leaves only a
`.tmp-` directory, which the next consolidation or prune deletes (lock holders only).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from lit_continual import atomic, faults, generations, snapshots

log = logging.getLogger("lit_continual")

CONSOLIDATED, INFO, SCHEDULE_STATE = "consolidated", "consolidation.json", ".schedule.json"
NAME = re.compile(r"^step-(\d+)$")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
DTYPES = ("float32", "bfloat16", "float16")


class ConsolidationError(RuntimeError):
    """The merge could not be made (no checkpoint, missing base, the child failed)."""


def consolidate(base_dir: Path, checkpoint: Path | None = None, timeout: float | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> Path:
    """Merge `checkpoint` (a checkpoint or snapshot dir; default: the newest checkpoint) into
    its base in a child process; return `DIR/consolidated/step-<N>` (existing: returned as is).
    `cancelled()` is polled twice a second: true (a stop request) terminates the child."""
    base_dir = Path(base_dir).resolve()
    source = Path(checkpoint) if checkpoint is not None else snapshots.newest_checkpoint(base_dir)
    if source is None:
        raise ConsolidationError(f"no checkpoint yet in {base_dir / 'current_model'}")
    step = step_of_source(source)
    root = base_dir / CONSOLIDATED
    final = root / f"step-{step}"
    if final.is_dir():
        return final
    root.mkdir(parents=True, exist_ok=True)
    snapshots.remove_leftovers(root)
    started = time.monotonic()
    stage = root / f".tmp-source-step-{step}-{os.getpid()}"
    try:
        stage.mkdir()
        for name in ADAPTER_FILES:
            _link_or_copy(source / name, stage / name)
        model_dir = snapshots.base_model_dir(base_dir, source)
        command = [sys.executable, "-m", "lit_continual.consolidation", "--adapter", str(stage),
                   "--base", str(model_dir), "--dtype", target_dtype(source, model_dir),
                   "--step", str(step), "--source", _shown(source, base_dir), "--out", str(final)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        done = _run_child(command, env, timeout, cancelled)
    except (OSError, subprocess.TimeoutExpired) as err:
        _failed(root, step, str(err))
        raise ConsolidationError(f"consolidating {source.name}: {err}") from err
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    if done is None:
        snapshots.remove_leftovers(root)
        raise ConsolidationError(f"consolidating {source.name}: stopped by a stop request (nothing written)")
    if done.returncode != 0 or not final.is_dir():
        tail = " | ".join(line for line in (done.stderr or "").strip().splitlines()[-5:])
        _failed(root, step, tail)
        raise ConsolidationError(f"consolidating {source.name} failed (child exit {done.returncode}): {tail}")
    (root / f".failed-step-{step}.json").unlink(missing_ok=True)
    log.debug("Consolidated %s into %s in %.1f s", source.name, final, time.monotonic() - started)
    return final


def _run_child(command: list[str], env: dict, timeout: float | None,
               cancelled: Callable[[], bool]) -> subprocess.CompletedProcess | None:
    """Run the merge child; None if `cancelled()` turned true (the child is terminated)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as child:
        while True:
            try:
                out, err = child.communicate(timeout=0.5)
                return subprocess.CompletedProcess(command, child.returncode, out, err)
            except subprocess.TimeoutExpired:
                if cancelled():
                    child.terminate()
                    child.communicate()
                    return None
                if deadline is not None and time.monotonic() > deadline:
                    child.kill()
                    child.communicate()
                    raise


def step_of_source(source: Path) -> int:
    """The global step of a checkpoint or snapshot directory (trainer_state.json, else its name)."""
    try:
        return int(json.loads((source / "trainer_state.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        found = re.search(r"(?:checkpoint-|step)(\d+)$", source.name)
        if found is None:
            raise ConsolidationError(f"{source} is neither a checkpoint nor a snapshot (no step)") from None
        return int(found.group(1))


def target_dtype(source: Path, model_dir: Path) -> str:
    """The dtype the run loaded its base in (run_config.json model.dtype), else the base's own."""
    for path, keys in ((source / "run_config.json", ("model", "dtype")), (model_dir / "config.json", ("dtype",)),
                       (model_dir / "config.json", ("torch_dtype",))):
        try:
            value = json.loads(path.read_text())
            for key in keys:
                value = value[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if value in DTYPES:
            return value
    return "float32"


def _shown(source: Path, base_dir: Path) -> str:
    """`source` relative to the base dir when it lies inside (as snapshot.json records it)."""
    resolved = source.resolve()
    return str(resolved.relative_to(base_dir)) if resolved.is_relative_to(base_dir) else str(resolved)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as err:
        if err.errno not in snapshots.NO_LINK:
            raise
        shutil.copy2(source, target)


def _failed(root: Path, step: int, error: str) -> None:
    """Remember a failed step, so an automatic retry waits for the next scheduled snapshot."""
    atomic.write_json(root / f".failed-step-{step}.json", {"step": step, "error": error}, durable=False)


def listing(base_dir: Path) -> list[Path]:
    """The consolidated models, oldest (lowest step) first."""
    root = Path(base_dir) / CONSOLIDATED
    found = [p for p in root.iterdir() if NAME.match(p.name) and p.is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(NAME.match(p.name).group(1)))


def prune(base_dir: Path, keep: int) -> list[Path]:
    """Keep the newest `keep` consolidated models (by step); delete the rest and any leftovers."""
    root = Path(base_dir) / CONSOLIDATED
    snapshots.remove_leftovers(root)
    removed = []
    for path in listing(base_dir)[:-keep] if keep > 0 else []:
        trash = path.with_name(f".trash-{path.name}")
        os.rename(path, trash)
        shutil.rmtree(trash)
        removed.append(path)
        log.info("Removed consolidated model %s (keeping the newest %d)", path.name, keep)
    return removed


def consolidate_and_prune(base_dir: Path, keep: int, checkpoint: Path | None = None,
                          cancelled: Callable[[], bool] = lambda: False) -> dict:
    """Consolidate, then prune: the result both the daemon's answer and the command print
    (ok, path, step, seconds, pruned; or ok=False and error). The caller logs it; only
    deletions are logged here."""
    started = time.monotonic()
    try:
        path = consolidate(base_dir, checkpoint, cancelled=cancelled)
        pruned = prune(base_dir, keep)
        generations.collect(base_dir)  # base generations only the pruned models needed
    except (ConsolidationError, OSError) as err:
        return {"ok": False, "error": str(err)}
    return {"ok": True, "path": str(path), "step": int(path.name.split("-")[1]),
            "seconds": round(time.monotonic() - started, 3), "pruned": [p.name for p in pruned]}


class Trigger:
    """When the daemon consolidates on its own (`consolidate.schedule`), asked at a file boundary
    or idle moment: `due(now)` names what to merge, then `mark(now)` after the attempt.

    null: the newest *scheduled* snapshot, once no consolidated model at or past its step
    exists (read from disk, so a restart between snapshot and merge still merges; a failed
    merge waits for the next snapshot). A cron expression: the newest checkpoint at each fire
    time (missed ones once, as for snapshots). "never": nothing."""

    def __init__(self, base_dir: Path, expr: str | None) -> None:
        self.base_dir, self.expr = Path(base_dir), expr
        cron = None if expr in (None, "never") else expr
        self.schedule = snapshots.Schedule(cron, self.base_dir / CONSOLIDATED / SCHEDULE_STATE)

    def due(self, now: datetime | None = None) -> Path | None:
        if self.expr == "never":
            return None
        if self.expr is not None:
            return snapshots.newest_checkpoint(self.base_dir) if self.schedule.due(now) else None
        scheduled = [p for p in snapshots.listing(self.base_dir) if _was_scheduled(p)]
        if not scheduled:
            return None
        step = int(snapshots.NAME.match(scheduled[-1].name).group(2))
        done = [int(p.name.split("-")[1]) for p in listing(self.base_dir)]
        failed = (self.base_dir / CONSOLIDATED / f".failed-step-{step}.json").exists()
        return None if failed or (done and max(done) >= step) else scheduled[-1]

    def mark(self, now: datetime | None = None) -> None:
        if self.schedule.expr is not None:
            self.schedule.mark(now)


def _was_scheduled(snapshot: Path) -> bool:
    try:
        return bool(json.loads((snapshot / snapshots.INFO).read_text()).get("scheduled"))
    except (OSError, ValueError, AttributeError):
        return False


def merge(adapter: Path, base: Path, dtype: str, out: Path, step: int, source: str) -> None:
    """(In the child.) Merge `adapter` into `base` in fp32, cast to `dtype`, write `out` atomically."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, local_files_only=True)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload(safe_merge=True)
    merged = merged.to(getattr(torch, dtype))
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    snapshots.copy_tokenizer(base, tmp)
    atomic.write_json(tmp / INFO, {"step": step, "source": source, "base_model": str(base), "dtype": dtype,
                                   "merged_in": "float32", "merged_at": datetime.now().astimezone().isoformat(
                                       timespec="seconds")}, durable=False)
    atomic.fsync_tree(tmp)
    faults.point("consolidate-tmp", step)
    os.rename(tmp, out)
    atomic.fsync_dir(out.parent)


def main(argv: list[str] | None = None) -> int:
    """`python -m lit_continual.consolidation --adapter DIR --base DIR --dtype D --out DIR`."""
    parser = argparse.ArgumentParser(prog="python -m lit_continual.consolidation", description=merge.__doc__)
    parser.add_argument("--adapter", type=Path, required=True, help="a PEFT adapter directory")
    parser.add_argument("--base", type=Path, required=True, help="the base model directory")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the saved weights")
    parser.add_argument("--out", type=Path, required=True, help="the directory to create (must not exist)")
    parser.add_argument("--step", type=int, default=0, help="the global step (recorded)")
    parser.add_argument("--source", default="", help="the checkpoint or snapshot merged (recorded)")
    args = parser.parse_args(argv)
    if args.out.exists():
        print(f"{args.out} exists already", file=sys.stderr)
        return 1
    merge(args.adapter, args.base, args.dtype, args.out, args.step, args.source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
