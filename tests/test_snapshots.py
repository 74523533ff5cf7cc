"""Snapshots: hard-linked (or copied) whole checkpoints plus tokenizer files, loadable offline;
retention on both sides; the cron schedule with an injected clock; `lit-continual snapshot`."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from lit_continual import controls, snapshots
from lit_continual.cli import main
from lit_continual.lock import RunLock
from tests.conftest import FAST, copied, trained_once, write_jsonl

T0 = datetime(2026, 12, 1, 10, 0, 30)  # local time: the injected clock


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A base dir whose run trained one 48-line file: checkpoint-6."""
    return trained_once(tmp_path_factory.mktemp("snapshots"))


@pytest.fixture
def base(trained: Path, tmp_path: Path) -> Path:
    return copied(trained, tmp_path)


def checkpoint(base: Path, step: int = 6) -> Path:
    return base / "current_model" / f"checkpoint-{step}"


def add_checkpoint(base: Path, step: int) -> Path:
    """A newer complete checkpoint (the same files under a newer name)."""
    return Path(shutil.copytree(checkpoint(base), checkpoint(base, step)))


def test_snapshot_hard_links_the_checkpoint_and_loads_offline_with_its_tokenizer(base: Path):
    from peft import AutoPeftModelForCausalLM
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    snap = snapshots.take(base, now=T0)
    assert snap == base / "snapshots" / "20261201-1000-step6"
    source = checkpoint(base)
    for path in source.iterdir():
        assert (snap / path.name).stat().st_ino == path.stat().st_ino, path.name
    assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "snapshot.json"} <= set(os.listdir(snap))
    info = json.loads((snap / "snapshot.json").read_text())
    assert (info["step"], info["source"], info["files"], info["scheduled"]) == (
        6, "current_model/checkpoint-6", "hard links", False)
    model = AutoPeftModelForCausalLM.from_pretrained(snap)
    tokenizer = AutoTokenizer.from_pretrained(snap)
    base_tokenizer = AutoTokenizer.from_pretrained(info["base_model"])
    assert tokenizer("hello world").input_ids == base_tokenizer("hello world").input_ids
    saved = load_file(source / "adapter_model.safetensors")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved) > 0
    for key, value in saved.items():
        assert (loaded[key.replace(".weight", ".default.weight")] == value).all(), key


def test_snapshot_survives_retention_of_its_checkpoint(base: Path):
    from lit_continual import checkpoints

    snap = snapshots.take(base, now=T0)
    add_checkpoint(base, 12)
    assert checkpoints.prune(base / "current_model", keep=1) == [checkpoint(base)]
    assert not checkpoint(base).exists()
    assert checkpoints.verify(snap) is None, "every file of the manifest is intact in the snapshot"


def test_snapshot_copies_where_the_filesystem_refuses_links(base: Path, monkeypatch):
    from lit_continual import checkpoints

    def refuse(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(snapshots.os, "link", refuse)
    snap = snapshots.take(base, now=T0)
    source = checkpoint(base)
    for path in source.iterdir():
        assert (snap / path.name).stat().st_ino != path.stat().st_ino
    assert json.loads((snap / "snapshot.json").read_text())["files"] == "copies"
    assert checkpoints.verify(snap) is None


def test_a_checkpoint_pruned_under_a_copy_makes_the_snapshot_start_again_from_the_newest(base: Path, monkeypatch):
    add_checkpoint(base, 12)
    monkeypatch.setattr(snapshots.os, "link", lambda src, dst: (_ for _ in ()).throw(OSError(errno.EXDEV, "x")))
    real_copy = shutil.copy2
    calls = []

    def copy_while_retention_runs(src, dst):
        calls.append(src)
        if len(calls) == 2:  # retention renames the checkpoint away (as checkpoints.prune does)
            os.rename(checkpoint(base, 12), base / "current_model" / ".trash-checkpoint-12")
        return real_copy(src, dst)

    monkeypatch.setattr(snapshots.shutil, "copy2", copy_while_retention_runs)
    snap = snapshots.take(base, now=T0)
    assert snap.name == "20261201-1000-step6"
    assert not [p for p in os.listdir(base / "snapshots") if p.startswith(".tmp-")], "no .tmp- directory is left"
    assert snapshots.listing(base) == [snap]


def test_same_step_in_the_same_minute_is_one_snapshot_and_two_steps_never_collide(base: Path):
    first = snapshots.take(base, now=T0)
    assert snapshots.take(base, now=T0 + timedelta(seconds=20)) == first
    add_checkpoint(base, 12)
    second = snapshots.take(base, now=T0 + timedelta(seconds=25))
    assert (first.name, second.name) == ("20261201-1000-step6", "20261201-1000-step12")
    assert snapshots.listing(base) == [first, second]


def test_keep_days_deletes_older_snapshots_but_never_the_newest(base: Path):
    days = [T0 - timedelta(days=d) for d in (45, 31, 29, 0)]
    taken = [snapshots.take(base, now=day) for day in days]
    assert snapshots.prune(base, keep_days=30, now=T0) == taken[:2]
    assert snapshots.listing(base) == taken[2:]
    assert snapshots.prune(base, keep_days=30, now=T0 + timedelta(days=400)) == [taken[2]]
    assert snapshots.listing(base) == [taken[3]], "the newest stays, however old"


def test_a_brand_new_schedule_takes_nothing_until_its_next_fire_time(tmp_path: Path):
    schedule = snapshots.Schedule("0 3 * * *", tmp_path / ".schedule.json")
    assert not schedule.due(T0), "a new run has missed nothing"
    assert not schedule.due(datetime(2026, 12, 2, 2, 59, 59))
    assert schedule.due(datetime(2026, 12, 2, 3, 0))
    schedule.mark(datetime(2026, 12, 2, 3, 0))
    assert not schedule.due(datetime(2026, 12, 2, 3, 1))
    assert schedule.next_after(datetime(2026, 12, 2, 3, 0)) == datetime(2026, 12, 3, 3, 0)


def test_days_missed_while_the_daemon_was_down_are_taken_once_at_the_next_start(tmp_path: Path):
    state = tmp_path / ".schedule.json"
    snapshots.Schedule("0 3 * * *", state).mark(datetime(2026, 12, 1, 3, 0))
    restarted = snapshots.Schedule("0 3 * * *", state)  # four 3 AMs later
    assert restarted.due(datetime(2026, 12, 5, 12, 0))
    restarted.mark(datetime(2026, 12, 5, 12, 0))
    assert not restarted.due(datetime(2026, 12, 5, 12, 0, 1)), "once, not once per missed day"
    assert not restarted.due(datetime(2026, 12, 6, 2, 59))
    assert restarted.due(datetime(2026, 12, 6, 3, 0))


def test_an_every_minute_schedule_follows_the_injected_clock(tmp_path: Path):
    schedule = snapshots.schedule(tmp_path, "* * * * *")
    fired = []
    for second in range(0, 200, 10):
        now = T0 + timedelta(seconds=second)
        if schedule.due(now):
            fired.append(now)
            schedule.mark(now)
    assert fired == [datetime(2026, 12, 1, 10, m, 0) for m in (1, 2, 3)]
    assert schedule.due(datetime(2026, 12, 1, 10, 4, tzinfo=timezone.utc).astimezone()) is True
    assert not snapshots.Schedule(None, tmp_path / "x.json").due(T0 + timedelta(days=9))
    with pytest.raises(ValueError, match="not a cron expression"):
        snapshots.Schedule("every day", tmp_path / "x.json")


def test_snapshot_command_without_a_daemon_takes_one_and_prunes_with_the_runs_keep_days(base: Path, capsys):
    old = snapshots.take(base, now=datetime.now() - timedelta(days=31))
    assert main(["snapshot", "--base-dir", str(base), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["step"], result["by"], result["files"]) == (True, 6, "command", "hard links")
    assert result["pruned"] == [old.name] and Path(result["path"]).is_dir()
    RunLock(base).acquire()  # released again
    assert not (base / ".snapshot").exists()


def test_snapshot_command_fails_in_one_line_without_a_base_dir_or_a_checkpoint(tmp_path: Path, capsys):
    assert main(["snapshot", "--base-dir", str(tmp_path / "nowhere")]) == 2
    assert not (tmp_path / "nowhere").exists()
    (tmp_path / "empty").mkdir()
    assert main(["snapshot", "--base-dir", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lit-continual snapshot: {tmp_path / 'nowhere'} does not exist (not a base dir)",
                   f"lit-continual snapshot: no checkpoint yet in {tmp_path / 'empty' / 'current_model'}"]


def fake_daemon(base: Path, answers: bool, hold: float = 30.0) -> tuple[threading.Thread, threading.Event]:
    """Holds the lock like a daemon; answers a snapshot request (or dies after 0.5 s)."""
    locked, done = threading.Event(), threading.Event()

    def serve():
        with RunLock(base):
            locked.set()
            deadline = time.monotonic() + (hold if answers else 0.5)
            while time.monotonic() < deadline and not done.is_set():
                request = controls.pending(base, controls.SNAPSHOT)
                if request and answers:
                    controls.answer(base, controls.SNAPSHOT, request, snapshots.take_and_prune(base, 30))
                    return
                time.sleep(0.05)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    locked.wait(5)
    return thread, done


def test_snapshot_command_asks_the_running_daemon_and_prints_its_answer(base: Path, capsys):
    thread, _ = fake_daemon(base, answers=True)
    assert main(["snapshot", "--base-dir", str(base), "--json"]) == 0
    thread.join(5)
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["step"], result["by"]) == (True, 6, "daemon")
    assert not (base / ".snapshot").exists()


def test_snapshot_command_does_the_work_itself_when_the_daemon_dies_while_it_waits(base: Path, capsys):
    thread, _ = fake_daemon(base, answers=False)
    assert main(["snapshot", "--base-dir", str(base), "--json"]) == 0
    thread.join(5)
    result = json.loads(capsys.readouterr().out)
    assert (result["ok"], result["by"]) == (True, "command")
    assert not (base / ".snapshot").exists(), "its own request is withdrawn"


def test_a_new_run_starts_from_a_snapshot(base: Path, tmp_path: Path):
    snap = snapshots.take(base, now=T0)
    new = tmp_path / "new"
    shutil.copytree(snap, new / "current_model" / "checkpoint-6")
    write_jsonl(new / "inbox" / "b.jsonl", 16, seed=2)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert main(["daemon", "--base-dir", str(new), "daemon.exit_when_idle=true", *FAST]) == 0
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    ledger = json.loads((new / "current_model" / "checkpoint-8" / "ledger.json").read_text())
    assert [(r["name"], r["first_step"], r["last_step"]) for r in ledger["files_done"]] == [
        ("a.jsonl", 1, 6), ("b.jsonl", 7, 8)]
