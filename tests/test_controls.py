"""Skip's crash safety, train.py's own exit code when stopped, and what a start shows first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from lit_continual.cli import main
from lit_continual.run import EXIT_STOPPED
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


def test_skip_killed_between_its_checkpoint_and_the_move_is_replayed_not_retrained(base: Path):
    """`.skip` is seen before the first step: file a ends at step 1 as `skipped`. The process is
    SIGKILLed after checkpoint-1 is durable and before a.jsonl is moved: the restart moves it
    (byte-identical), never retrains it, and does not apply the leftover `.skip` to file b."""
    now = time.time()
    a = write_jsonl(base / "inbox" / "a.jsonl", 64, seed=1, mtime=now - 20)
    original = a.read_bytes()
    write_jsonl(base / "inbox" / "b.jsonl", 16, seed=2, mtime=now - 10)
    (base / ".skip").write_text("request-1\n")
    killed = run_daemon(base, fault="before-delete@1")
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    assert [p.name for p in checkpoints(base)] == ["checkpoint-1"]
    assert under_inbox(base, "a.jsonl") and (base / ".skip").exists()

    again = run_daemon(base)
    assert again.returncode == 0, again.stdout + again.stderr
    assert (base / "skipped" / "a.jsonl").read_bytes() == original
    report = json.loads((base / "skipped" / "a.jsonl.skipped.json").read_text())
    assert report["examples_trained"] == 8 and report["examples"] == 64 and report["steps"] == [1, 1]
    assert not (base / ".skip").exists() and not under_inbox(base, "a.jsonl")
    done = {r["name"]: r for r in _ledger(base)["files_done"]}
    assert (done["a.jsonl"]["status"], done["a.jsonl"]["examples_trained"], done["a.jsonl"]["last_step"]) == \
        ("skipped", 8, 1)
    assert (done["b.jsonl"]["status"], done["b.jsonl"]["first_step"], done["b.jsonl"]["last_step"]) == ("done", 2, 3)
    text = log_text(base)
    assert text.count("File a.jsonl (#1)") == 1, "a.jsonl must never be trained again"
    assert "already carried out before the restart" in text


def test_skip_mid_file_drops_the_prefetched_batch_and_trains_the_next_file_at_the_next_step(base: Path):
    """With accumulation 2, a skip after step 1 ends file a there (16 examples trained, not 24:
    the micro-batch the loader had fetched is dropped) and file b starts at step 2."""
    now = time.time()
    write_jsonl(base / "inbox" / "a.jsonl", 80, seed=3, mtime=now - 20)
    write_jsonl(base / "inbox" / "b.jsonl", 16, seed=4, mtime=now - 10)
    (base / ".skip").touch()
    assert train_here(base, "daemon.exit_when_idle=true", "trainer.accumulate_grad_batches=2") == 0
    done = {r["name"]: r for r in _ledger(base)["files_done"]}
    assert (done["a.jsonl"]["status"], done["a.jsonl"]["examples_trained"]) == ("skipped", 16)
    assert (done["b.jsonl"]["first_step"], done["b.jsonl"]["last_step"], done["b.jsonl"]["status"]) == (2, 2, "done")
    assert _ledger(base)["examples_trained_total"] == 32
    assert (base / "skipped" / "a.jsonl").is_file() and not (base / ".skip").exists()
    # Lightning steps the scheduler for the dropped micro-batch: it must be back on the global step
    assert main(["verify", "--base-dir", str(base)]) == 0


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
    earlier = time.time() - 300  # the every-2-minutes schedule fired twice since
    state.write_text(json.dumps({"schedule": "*/2 * * * *", "last_handled_epoch": earlier}))
    write_jsonl(base / "inbox" / "b.jsonl", 16, seed=9)
    assert train_here(base, "daemon.exit_when_idle=true", "snapshot.schedule='*/2 * * * *'") == 0
    taken = sorted(p.name for p in (base / "snapshots").iterdir() if not p.name.startswith("."))
    assert len(taken) == 1, taken  # once, not once per missed time
    step = int(taken[0].rsplit("-step", 1)[1])
    assert step in (3, 4, 5)  # the newest checkpoint when it was taken (idle at start, or a step boundary)
    assert json.loads((base / "snapshots" / taken[0] / "snapshot.json").read_text())["scheduled"] is True
    assert [p.name for p in (base / "consolidated").iterdir() if not p.name.startswith(".")] == [f"step-{step}"]
    assert json.loads(state.read_text())["last_handled_epoch"] > earlier + 290
    assert status(base)["last_snapshot"] == taken[0] and status(base)["last_consolidated"] == f"step-{step}"
    assert " ERROR " not in log_text(base)
