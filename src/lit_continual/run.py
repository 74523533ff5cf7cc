"""`train(cfg)`: the one library function behind `lit-continual daemon` and `train.py`.

Everything before `fit` is cheap (no torch import): the config is checked first (nothing is
written under DIR for an invalid one), then the lock, the base-dir layout, the log, the status
file and the stop check happen within a second of process start.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from lit_continual import __version__, layout, logs, metrics
from lit_continual.config import EXIT_CONFIG_ERROR, ConfigError, prepare
from lit_continual.context import RunContext
from lit_continual.crash_guard import CrashGuard
from lit_continual.lock import EXIT_LOCKED, BaseDirLocked, RunLock, read_holder
from lit_continual.operations import Operations
from lit_continual.status import Status
from lit_continual.stop import StopRequest

EXIT_OK, EXIT_FAILURE = 0, 1
# train.py (data=inbox_file) whose file was not finished because a stop was requested (a
# leftover .stop included): a pipeline must never read "done" (EX_TEMPFAIL: run it again).
EXIT_STOPPED = 75
# train.py whose file an operator skipped (now, or earlier in the run): recorded `skipped`, not
# trained to its end, and not to be retried.
EXIT_SKIPPED = 76
# How long a starting daemon waits for an operator command that holds the base dir (a
# consolidation of a big model takes minutes); a daemon holding it is exit 3 at once.
COMMAND_WAIT_SECONDS = 3600
LAYOUT = ("inbox", "current_model", "status", "logs", "tensorboard", "failed")

log = logging.getLogger("lit_continual")


def train(cfg: DictConfig) -> int:
    """Run (or continue) the continual run in cfg.base_dir; return the process exit code."""
    try:
        cfg = prepare(cfg)  # before anything is written: a bad config leaves DIR untouched
    except ConfigError as err:
        print(f"lit-continual: configuration error: {err}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    base_dir = Path(cfg.base_dir).expanduser().resolve()
    lock = RunLock(base_dir)
    try:
        lock.acquire()  # first thing: a second process must write nothing under DIR
    except BaseDirLocked as err:
        if not _after_command(lock, base_dir):
            print(f"lit-continual: {err}", file=sys.stderr)
            return EXIT_LOCKED
    try:
        return _train_locked(cfg, base_dir)
    finally:
        lock.release()


def _train_locked(cfg: DictConfig, base_dir: Path) -> int:
    for name in LAYOUT:
        (base_dir / name).mkdir(parents=True, exist_ok=True)
    logs.setup(base_dir)
    status = Status(base_dir)
    stop = StopRequest(base_dir / ".stop")
    stop.install()
    log.info("lit-continual starting in %s (pid %d, version %s)", base_dir, status.fields["pid"], __version__)
    single_file = cfg.data.source == "file"
    status.update(**_where_the_run_stands(base_dir))
    if stop.stop_file.exists():
        log.info("%s is present: exiting without training (remove it to start)", stop.stop_file)
        status.update(status="stopped", write=True)
        return EXIT_STOPPED if single_file else EXIT_OK
    status.update(status="starting", write=True)
    log.info("%s", _plan(cfg, base_dir))
    log.info("Config: %s", _summary(cfg))
    stop.watch(cfg.daemon.poll_seconds)
    guard = CrashGuard(base_dir, cfg.daemon.max_crashes)
    guard.start()
    status.start_heartbeat()
    ops = Operations(cfg, base_dir, status, stop)
    ops.watch()
    endpoint = None
    try:
        endpoint = metrics.serve(cfg.metrics, status)  # before the heavy imports: a taken port fails fast
        ops.housekeeping.maybe_run()
        from lit_continual.data.prepare import DataError
        from lit_continual.fit import fit

        try:
            completed, skipped = fit(cfg, RunContext(base_dir, stop, status, guard, ops))
        except DataError as err:
            log.error("%s", err)
            status.update(status="error", error=str(err), write=True)
            return EXIT_CONFIG_ERROR
    except ConfigError as err:  # a taken metrics port; an open node its target refuses; a changed run-defining key
        log.error("Configuration error: %s", err)
        status.update(status="error", error=f"configuration error: {err}", write=True)
        return EXIT_CONFIG_ERROR
    except Exception as err:  # the status file must say why the run died
        log.exception("Training failed: %s", err)
        status.update(status="error", error=f"{type(err).__name__}: {err}", write=True)
        guard.close(clean=False)  # an exception mid-step counts like a crash at that step
        return EXIT_FAILURE
    finally:
        if endpoint is not None:
            endpoint.stop()
        ops.close()
        status.stop_heartbeat()
        guard.close(clean=True)
    status.update(status="stopped", current_file=None, total_steps=status.fields["current_step"],
                  write=True)
    log.info("Stopped at step %d", status.fields["current_step"])
    if single_file and skipped:
        log.warning("%s was skipped by an operator: exit code %d (not to be retried)", cfg.data.path, EXIT_SKIPPED)
        return EXIT_SKIPPED
    if single_file and not completed:
        log.warning("%s was not finished (%s): exit code %d; run the same command again to finish it",
                    cfg.data.path, stop.reason if stop.requested else "a callback set trainer.should_stop",
                    EXIT_STOPPED)
        return EXIT_STOPPED
    return EXIT_OK


def _after_command(lock: RunLock, base_dir: Path) -> bool:
    """The holder is an operator command (`snapshot`, `consolidate`, `adopt` with no daemon
    running), not a daemon: wait for it (up to COMMAND_WAIT_SECONDS) and take the lock. False
    if a daemon holds it (exit 3), or the command outlives the wait. Writes nothing while waiting."""
    deadline = time.monotonic() + COMMAND_WAIT_SECONDS
    told = False
    while time.monotonic() < deadline:
        holder = read_holder(base_dir / ".lock")
        if holder.get("role", "daemon") == "daemon":
            return False
        if not told:
            print(f"lit-continual: waiting for `{holder.get('role')}` (pid {holder.get('pid')}) to release "
                  f"{base_dir}", file=sys.stderr)
            told = True
        time.sleep(1.0)
        try:
            lock.acquire()
            return True
        except BaseDirLocked:
            continue
    return False


def _where_the_run_stands(base_dir: Path) -> dict:
    """Status fields from disk at start (torch is not imported yet), so the first `starting`
    write already shows them: the newest complete checkpoint's step (fit() verifies it), the
    run's file counts from its ledger, the newest snapshot and consolidated model. Counters
    that restarted at 0 would read as resets to Prometheus."""
    from lit_continual import consolidation, snapshots

    found = layout.complete_checkpoints(base_dir)
    step = layout.step_of(found[-1]) if found else 0
    counts = ((layout.read_json(found[-1] / layout.LEDGER) or {}).get("counts") or {}) if found else {}
    taken, merged = snapshots.listing(base_dir), consolidation.listing(base_dir)
    return {"current_step": step, "total_steps": step, "files_done": counts.get("done", 0),
            "files_skipped": counts.get("skipped", 0),
            "files_failed": sum(counts.get(k, 0) for k in ("failed", "abandoned", "rejected")),
            "snapshots": len(taken), "last_snapshot": taken[-1].name if taken else None,
            "last_consolidated": merged[-1].name if merged else None}


def _plan(cfg: DictConfig, base_dir: Path) -> str:
    """What this process will do, in one line (the first thing an operator reads)."""
    saving = cfg.callbacks.model_checkpoint
    checkpoints = (f"checkpoints into {base_dir / 'current_model'} every {saving.every_n_train_steps} steps "
                   f"and at each file end (newest {saving.save_top_k} kept)")
    if cfg.data.source == "file":
        return (f"Will train model {cfg.model.name} on {cfg.data.path} as the next segment of this run, "
                f"then exit; {checkpoints}")
    inbox = base_dir / "inbox"
    waiting = sum(1 for p in inbox.glob("*.jsonl") if not p.name.startswith("."))
    return (f"Will train model {cfg.model.name} on every *.jsonl file that lands in {inbox} ({waiting} waiting "
            f"now); {checkpoints}; stop: touch {base_dir / '.stop'} or SIGTERM")


def _summary(cfg: DictConfig) -> str:
    c = OmegaConf.to_container(cfg, resolve=True)
    keys = ("model.name", "data.source", "data.batch_size", "data.max_length",
            "trainer.accumulate_grad_batches", "optim._target_", "optim.lr", "scheduler._target_",
            "scheduler.warmup_steps", "lora.r", "lora.alpha", "callbacks.model_checkpoint.every_n_train_steps",
            "callbacks.model_checkpoint.save_top_k", "logger", "seed")
    return " ".join(f"{k}={_get(c, k)}" for k in keys)


def _get(container: dict, dotted: str) -> object:
    for part in dotted.split("."):
        container = container.get(part) if isinstance(container, dict) else None
    return ",".join(container) if isinstance(container, dict) else container
