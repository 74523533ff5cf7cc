"""Skip's crash safety, train.py's own exit code when stopped, and what a start shows first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

from lit_continual.cli import main
from lit_continual.run import EXIT_SKIPPED, EXIT_STOPPED
from tests.conftest import (
    REPO,
    checkpoints,
    log_text,
    newest,
    one_file,
    run_daemon,
    status,
    stop_after,
    train_here,
    under_inbox,
    wait_for,
    write_jsonl,
)


def _ledger(base: Path) -> dict:
    return json.loads((newest(base) / "ledger.json").read_text())


def _skip_when_training(base: Path, name: str, at_step: int) -> threading.Thread:
    """`lit-continual skip` (the real command, in this process) once `name` trains at `at_step`+."""
    def skip() -> None:
        wait_for(lambda: _live(base).get("current_file") == name and _live(base)["current_step"] >= at_step,
                 60, f"{name} training")
        assert main(["skip", "--base-dir", str(base), "--wait", "0"]) == 0

    helper = threading.Thread(target=skip, daemon=True)
    helper.start()
    return helper


def test_skip_killed_between_its_checkpoint_and_the_move_is_replayed_not_retrained(base: Path):
    """The daemon is SIGKILLed after the skip's checkpoint is durable and before a.jsonl is
    moved: the restart moves it (byte-identical), never retrains it, and does not apply the
    leftover `.skip` to file b."""
    now = time.time()
    a = write_jsonl(base / "inbox" / "a.jsonl", 4000, seed=1, mtime=now - 20)
    original = a.read_bytes()
    write_jsonl(base / "inbox" / "b.jsonl", 16, seed=2, mtime=now - 10)
    env = {**os.environ, "LIT_CONTINUAL_FAULT": "before-delete@*"}
    proc = subprocess.Popen([sys.executable, "-m", "lit_continual", "daemon", "--base-dir", str(base),
                             "daemon.exit_when_idle=true", "daemon.settle_seconds=0.1", "daemon.poll_seconds=0.1"],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    helper = _skip_when_training(base, "a.jsonl", 3)
    assert proc.wait(timeout=120) == -signal.SIGKILL
    helper.join()
    step = checkpoints(base)[-1].name.split("-")[1]
    assert under_inbox(base, "a.jsonl") and (base / ".skip").exists()

    again = run_daemon(base)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (base / "skipped" / "a.jsonl").read_bytes() == original
    report = json.loads((base / "skipped" / "a.jsonl.skipped.json").read_text())
    assert report["examples_trained"] == 8 * int(step) and report["steps"] == [1, int(step)]
    assert not (base / ".skip").exists() and not under_inbox(base, "a.jsonl")
    done = {r["name"]: r for r in _ledger(base)["files_done"]}
    assert (done["a.jsonl"]["status"], done["a.jsonl"]["last_step"]) == ("skipped", int(step))
    assert (done["b.jsonl"]["status"], done["b.jsonl"]["first_step"]) == ("done", int(step) + 1)
    text = log_text(base)
    assert text.count("File a.jsonl (#1)") == 1, "a.jsonl must never be trained again"
    assert "already carried out before the restart" in text


def test_skip_mid_file_drops_the_prefetched_batch_and_trains_the_next_file_at_the_next_step(base: Path):
    """With accumulation 2, a skip ends file a at a step S (16 examples per step, none of the
    micro-batch the loader had fetched) and file b starts at S + 1; the LR schedule stays on
    the global step (Lightning steps the scheduler for the dropped micro-batch)."""
    now = time.time()
    write_jsonl(base / "inbox" / "a.jsonl", 4000, seed=3, mtime=now - 20)
    write_jsonl(base / "inbox" / "b.jsonl", 16, seed=4, mtime=now - 10)
    helper = _skip_when_training(base, "a.jsonl", 2)
    assert train_here(base, "daemon.exit_when_idle=true", "trainer.accumulate_grad_batches=2") == 0
    helper.join()
    done = {r["name"]: r for r in _ledger(base)["files_done"]}
    step = done["a.jsonl"]["last_step"]
    assert (done["a.jsonl"]["status"], done["a.jsonl"]["examples_trained"]) == ("skipped", 16 * step)
    assert (done["b.jsonl"]["first_step"], done["b.jsonl"]["last_step"], done["b.jsonl"]["status"]) == \
        (step + 1, step + 1, "done")
    assert _ledger(base)["examples_trained_total"] == 16 * step + 16
    assert (base / "skipped" / "a.jsonl").is_file() and not (base / ".skip").exists()
    assert main(["verify", "--base-dir", str(base)]) == 0


def test_a_skip_that_names_a_file_no_longer_training_is_dropped_not_applied_to_the_next(base: Path):
    """A `.skip` for a file that ended before the daemon saw it (or arriving while idle) is
    removed with a log line; the files after it train whole."""
    write_jsonl(base / "inbox" / "a.jsonl", 24, seed=5)
    (base / ".skip").write_text(json.dumps({"id": "late", "file": "earlier.jsonl"}))
    assert train_here(base, "daemon.exit_when_idle=true") == 0
    assert not (base / ".skip").exists() and not (base / "skipped").exists()
    assert _ledger(base)["files_done"][0]["status"] == "done"
    assert "it asked to skip earlier.jsonl" in log_text(base)


def test_train_script_skipped_exits_76_and_never_retrains_that_file(base: Path, tmp_path: Path):
    data = write_jsonl(tmp_path / "part.jsonl", 4000, seed=6)
    helper = _skip_when_training(base, "part.jsonl", 2)
    assert train_here(base, *one_file(data)) == EXIT_SKIPPED
    helper.join()
    record = _ledger(base)["files_done"][-1]
    assert record["status"] == "skipped" and data.exists()  # train.py never moves its file
    step = _ledger(base)["files_done"][-1]["last_step"]
    assert train_here(base, *one_file(data)) == EXIT_SKIPPED  # the pipeline's retry trains nothing
    assert newest(base).name == f"checkpoint-{step}" and "not training it again" in log_text(base)


def test_train_script_exits_with_its_own_code_when_a_stop_leaves_the_file_unfinished(base: Path, tmp_path: Path,
                                                                                     monkeypatch):
    data = write_jsonl(tmp_path / "part.jsonl", 400, seed=5)
    (base).mkdir(parents=True)
    (base / ".stop").touch()
    assert train_here(base, *one_file(data)) == EXIT_STOPPED  # a leftover .stop: nothing trained
    (base / ".stop").unlink()
    stop_after(monkeypatch, 40)
    assert train_here(base, *one_file(data)) == EXIT_STOPPED  # stopped mid-file
    assert json.loads((newest(base) / "ledger.json").read_text())["current"]["name"] == "part.jsonl"
    monkeypatch.undo()
    assert train_here(base, *one_file(data)) == 0  # the same command finishes it
    assert json.loads((newest(base) / "ledger.json").read_text())["files_done"][-1]["status"] == "done"
    # The daemon itself still exits 0 on a stop.
    (base / ".stop").touch()
    assert train_here(base) == 0


def test_start_shows_the_resumed_step_at_once_and_the_file_line_names_its_formats(base: Path):
    rows = [json.dumps({"text": "plain words here"})] * 10 + \
           [json.dumps({"prompt": "Q: ", "completion": "an answer"})] * 6
    (base / "inbox").mkdir(parents=True)
    (base / "inbox" / "mixed.jsonl").write_text("\n".join(rows) + "\n")
    assert train_here(base, "daemon.exit_when_idle=true") == 0
    assert "File mixed.jsonl (#1): 16 examples (formats: prompt_completion 6, text 10)" in log_text(base)
    write_jsonl(base / "inbox" / "next.jsonl", 400, seed=6)
    proc = subprocess.Popen([sys.executable, "-m", "lit_continual", "daemon", "--base-dir", str(base),
                             "daemon.exit_when_idle=true"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        # Its first write (before torch is imported) already says where the run stands.
        first = wait_for(lambda: status(base) if status(base)["pid"] == proc.pid else None, 30, "the new status")
        assert first["status"] in ("starting", "training") and first["current_step"] == 2
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_stop_while_paused_exits_0_at_the_paused_step(base: Path):
    """Paused mid-file (checkpointed at that step), then a `.stop` while paused: exit 0 at that
    very step, nothing trained after the pause, `.pause` removed by the daemon."""
    write_jsonl(base / "inbox" / "a.jsonl", 4000, seed=7)
    paused = {}

    def pause_then_stop() -> None:
        wait_for(lambda: _live(base).get("status") == "training" and _live(base)["current_step"] >= 3, 60, "training")
        (base / ".pause").touch()
        paused.update(wait_for(lambda: _live(base) if _live(base).get("status") == "paused" else None, 30, "paused"))
        time.sleep(0.5)
        (base / ".stop").touch()

    helper = threading.Thread(target=pause_then_stop, daemon=True)
    helper.start()
    assert train_here(base) == 0
    helper.join()
    step = paused["current_step"]
    assert newest(base).name == f"checkpoint-{step}"
    assert status(base)["status"] == "stopped" and status(base)["current_step"] == step
    assert not (base / ".pause").exists() and f"Paused at step {step}" in log_text(base)


def _live(base: Path) -> dict:
    try:
        return status(base)
    except (OSError, ValueError):
        return {}


def test_a_scheduled_snapshot_missed_while_down_is_taken_once_then_consolidated(base: Path):
    """A schedule that fired (twice) while no daemon ran is caught up once at the next start; the
    default consolidate.schedule (after each scheduled snapshot) then merges that snapshot."""
    write_jsonl(base / "inbox" / "a.jsonl", 24, seed=8)
    assert train_here(base, "daemon.exit_when_idle=true", "snapshot.schedule=null") == 0  # checkpoint-3
    state = base / "snapshots" / ".schedule.json"
    state.parent.mkdir(parents=True, exist_ok=True)
    # Daily, at an hour 12 hours from now (it cannot fire again while the test runs); handled
    # last 3 days ago: three fire times were missed.
    schedule = f"0 {(datetime.now().hour + 12) % 24} * * *"
    earlier = time.time() - 3 * 86400
    state.write_text(json.dumps({"schedule": schedule, "last_handled_epoch": earlier}))
    write_jsonl(base / "inbox" / "b.jsonl", 16, seed=9)
    assert train_here(base, "daemon.exit_when_idle=true", f"snapshot.schedule='{schedule}'") == 0
    taken = sorted(p.name for p in (base / "snapshots").iterdir() if not p.name.startswith("."))
    assert len(taken) == 1, taken  # once, not once per missed time
    step = int(taken[0].rsplit("-step", 1)[1])
    assert step in (3, 4, 5)  # the newest checkpoint when it was taken (idle at start, or a step boundary)
    assert json.loads((base / "snapshots" / taken[0] / "snapshot.json").read_text())["scheduled"] is True
    assert [p.name for p in (base / "consolidated").iterdir() if not p.name.startswith(".")] == [f"step-{step}"]
    assert json.loads(state.read_text())["last_handled_epoch"] > time.time() - 600
    assert status(base)["last_snapshot"] == taken[0] and status(base)["last_consolidated"] == f"step-{step}"
    assert " ERROR " not in log_text(base)
