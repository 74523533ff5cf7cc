"""`lit-continual snapshot`: take a snapshot now (and prune old ones), by the daemon if one runs.

Also `carry_out`, shared with `lit-continual consolidate`: while a daemon holds the base dir's
lock, leave it a request (controls.ask) and wait for its answer; with none (or once it dies
while we wait), take the lock and do the work here. Exit 0 done; 1 failed (one line: why);
2 the base dir does not exist.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from lit_continual import controls
from lit_continual.lock import BaseDirLocked, RunLock

EXIT_OK, EXIT_FAILED, EXIT_NO_BASE_DIR = 0, 1, 2


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("snapshot", help="snapshot the newest checkpoint into DIR/snapshots/ now",
                            description="Snapshot the newest checkpoint into DIR/snapshots/<YYYYMMDD-HHMM>-step<N>/ "
                            "and delete snapshots older than snapshot.keep_days. A running daemon does it at "
                            "its next step boundary; with none, this command does it.")
    common_arguments(parser)
    parser.set_defaults(func=run)


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-dir", required=True, help="the run's directory")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds to wait for a running daemon's answer (default: no limit)")


def run(args: argparse.Namespace) -> int:
    from lit_continual import snapshots

    def work(base_dir: Path) -> dict:
        keep_days = run_setting(base_dir, "snapshot", "keep_days")
        return snapshots.take_and_prune(base_dir, keep_days)

    def describe(result: dict) -> str:
        files = f", {result['files']}" if "files" in result else ""
        return f"snapshot {result['path']} (step {result['step']}{files}, {result['seconds']:.3f} s)"

    return carry_out(args, controls.SNAPSHOT, work, describe)


def carry_out(args: argparse.Namespace, kind: str, work: Callable[[Path], dict],
              describe: Callable[[dict], str]) -> int:
    """Have `kind` done (by the daemon or here), print the result, return the exit code."""
    base_dir = Path(args.base_dir).expanduser().resolve()
    if not base_dir.is_dir():
        print(f"lit-continual {kind}: {base_dir} does not exist (not a base dir)", file=sys.stderr)
        return EXIT_NO_BASE_DIR
    if not logging.getLogger("lit_continual").handlers:  # the one-line reason is ours to print
        logging.getLogger("lit_continual").addHandler(logging.NullHandler())
    lock = RunLock(base_dir, role=f"lit-continual {kind}")
    result = None
    if not _try(lock):
        result = _ask_daemon(base_dir, kind, lock, args.timeout)
    if result is None:  # no daemon, or it died while we waited (we hold the lock then)
        try:
            result = {**work(base_dir), "by": "command"}
        finally:
            lock.release()
    if args.json:
        print(json.dumps(result, indent=2))
    if not result.get("ok"):
        print(f"lit-continual {kind}: {result.get('error', 'failed')}", file=sys.stderr)
        return EXIT_FAILED
    if not args.json:
        print(describe(result))
    return EXIT_OK


def _ask_daemon(base_dir: Path, kind: str, lock: RunLock, timeout: float | None) -> dict | None:
    """The daemon's answer; None once we hold the lock (the daemon is gone: our turn)."""
    request_id = controls.ask(base_dir, kind)
    print(f"lit-continual {kind}: asked the running daemon (request {request_id}); waiting for it",
          file=sys.stderr)
    held = False

    def alive() -> bool:  # a free lock means the daemon is gone; taking it makes the work ours
        nonlocal held
        held = _try(lock)
        return not held

    answer = controls.wait(base_dir, kind, request_id, alive=alive, timeout=timeout)
    if answer is not None:
        if held:
            lock.release()
        return {**answer, "by": "daemon"}
    if not held:  # timed out while the daemon lives: the request stays for it
        return {"ok": False, "error": f"no answer from the daemon within {timeout:g} s "
                f"(the request stays in {base_dir / ('.' + kind)})"}
    if controls.pending(base_dir, kind) == request_id:
        (base_dir / f".{kind}").unlink(missing_ok=True)
    return None


def _try(lock: RunLock) -> bool:
    """Take the lock if free (True: held now)."""
    try:
        lock.acquire()
    except BaseDirLocked:
        return False
    return True


def run_setting(base_dir: Path, group: str, key: str) -> object:
    """`group.key` as the run last ran with it (the newest checkpoint's run_config.json), else
    the default in conf/<group>/default.yaml."""
    from lit_continual import snapshots

    newest = snapshots.newest_checkpoint(base_dir)
    try:
        return json.loads((newest / "run_config.json").read_text())[group][key]
    except (OSError, ValueError, KeyError, TypeError):
        from omegaconf import OmegaConf

        return OmegaConf.load(Path(snapshots.__file__).parent / "conf" / group / "default.yaml")[key]
