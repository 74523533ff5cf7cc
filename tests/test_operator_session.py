"""One operator session against a real daemon process: pause -> (snapshot while paused) ->
resume -> skip -> consolidate -> SIGKILL -> `status` exits 4. Each command is the real CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from lit_continual.cli import main
from tests.conftest import log_text, start_daemon, status, wait_for, write_jsonl

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (and its waited-for children), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICKS


def _state(base: Path) -> dict:
    try:
        return status(base)
    except (OSError, ValueError):
        return {"status": None, "current_step": 0}


def _cli(capsys, *args: str) -> tuple[int, str]:
    code = main(list(args))
    return code, capsys.readouterr().out


@pytest.fixture
def session(tmp_path: Path):
    base = tmp_path / "run"
    now = time.time()
    write_jsonl(base / "inbox" / "a.jsonl", 4000, seed=21, mtime=now - 20)
    write_jsonl(base / "inbox" / "b.jsonl", 40, seed=22, mtime=now - 10)
    original = (base / "inbox" / "a.jsonl").read_bytes()
    proc = start_daemon(base, "logging.every_n_steps=1", "checkpoint.every_n_steps=1000", "snapshot.schedule=null")
    try:
        yield base, proc, original
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout:
            proc.stdout.close()


def test_pause_resume_skip_snapshot_consolidate_then_a_killed_daemon_is_seen(session, capsys):
    base, proc, original = session
    d = ["--base-dir", str(base)]
    wait_for(lambda: _state(base)["status"] == "training" and _state(base)["current_step"] >= 5, 90, "training")

    # pause: acknowledged, then paused at a checkpointed step; no step and no CPU while paused
    asked = time.monotonic()
    code, out = _cli(capsys, "pause", *d)
    assert code == 0 and "status: pausing" in out or "status: paused" in out, out
    wait_for(lambda: status(base)["status"] == "paused", 10, "paused")
    latency = time.monotonic() - asked
    step = status(base)["current_step"]
    assert (base / "current_model" / f"checkpoint-{step}").is_dir()
    assert not (base / ".pause").exists(), "the daemon removes .pause once it acted on it"
    cpu = _cpu_seconds(proc.pid)
    time.sleep(2.0)
    assert status(base)["current_step"] == step and status(base)["status"] == "paused"
    assert _cpu_seconds(proc.pid) - cpu < 0.3, "a paused daemon only polls"

    # a snapshot while paused: served by the daemon, of the paused step
    code, out = _cli(capsys, "snapshot", *d, "--json")
    assert code == 0, out
    snap = json.loads(out)
    assert snap["step"] == step and Path(snap["path"]).name.endswith(f"-step{step}")
    assert status(base)["last_snapshot"] == Path(snap["path"]).name

    # resume
    code, out = _cli(capsys, "resume", *d)
    assert code == 0, out
    wait_for(lambda: status(base)["current_step"] > step, 20, "training again")
    assert not (base / ".resume").exists()

    # skip: a.jsonl ends at the next step boundary, byte-identical in skipped/, b.jsonl follows
    code, out = _cli(capsys, "skip", *d)
    assert code == 0, out
    wait_for(lambda: (base / "skipped" / "a.jsonl.skipped.json").exists(), 20, "a.jsonl skipped")
    assert (base / "skipped" / "a.jsonl").read_bytes() == original
    skipped = json.loads((base / "skipped" / "a.jsonl.skipped.json").read_text())
    last = skipped["steps"][1]
    assert 0 < skipped["examples_trained"] < 4000 and skipped["examples_trained"] == last * 8
    wait_for(lambda: status(base)["status"] == "idle", 30, "b.jsonl trained")
    assert status(base)["current_step"] == last + 5  # b.jsonl: 40 lines = 5 steps, right after
    assert f"File b.jsonl (#2): 40 examples (formats: text 40), 40 left, steps {last + 1}-{last + 5}" in log_text(base)
    assert not (base / ".skip").exists()
    code, out = _cli(capsys, "skip", *d)
    assert code == 1 and "Nothing to skip" in out  # idle: nothing is being trained

    # consolidate: asked of the daemon (idle), answered with the merged model's path
    code, out = _cli(capsys, "consolidate", *d, "--json")
    assert code == 0, out
    merged = Path(json.loads(out)["path"])
    assert merged == base / "consolidated" / f"step-{last + 5}" and (merged / "config.json").is_file()
    assert status(base)["last_consolidated"] == merged.name

    # nothing above was an error: verify passes on the live run
    assert " ERROR " not in log_text(base), log_text(base)
    code, out = _cli(capsys, "verify", *d)
    assert code == 0, out

    # a daemon killed while its status says it runs: `status` exits 4
    code, _ = _cli(capsys, "status", *d)
    assert code == 0
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    code, out = _cli(capsys, "status", *d)
    assert code == 4, out
    print(f"pause-to-paused latency {latency:.2f} s")  # shown with -s (the closing note's figure)
