"""Hardening: each class of field failure the first reliability pass missed, attacked for real.

Bad lines of every kind (index time and batch time, packing on and off), files renamed over,
removed, truncated or rewritten while they train, a restored backup, operator slips (a
transient .stop, a deleted lock), re-delivery, a lagging clock, a base dir from version 0.1,
and the numbers the status and the log report.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_continual.callbacks.files import FileLifecycle
from lit_continual.config import compose
from lit_continual.models import tiny
from tests.conftest import (
    REPO,
    claimed,
    daemon_cmd,
    log_text,
    newest,
    start_daemon,
    status,
    stop_after,
    train_here,
    trainer_state,
    under_inbox,
    wait_for,
    write_jsonl,
)

DRAIN = "daemon.exit_when_idle=true"
GOOD = [json.dumps({"text": f"good line {i} with a few words"}) for i in range(40)]
HOSTILE = {  # raw lines; every one of these wedged or crashed some part of the daemon before
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "deep object": b'{"text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "lone surrogate": b'{"text": "bad \\ud800 surrogate"}',
    "5000-digit int": b'{"text": "ok", "n": ' + b"7" * 5000 + b"}",
    "invalid utf-8": b'{"text": "caf\xe9"}',
    "nul bytes": b"\x00\x00\x00",
    "tool turn": json.dumps({"messages": [{"role": "tool", "content": "x"},
                                          {"role": "assistant", "content": "y"}]}).encode(),
}
RAISING_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('tool turns are not supported') }}"
    "{% endif %}<|{{ m['role'] }}|>\n{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def ledger(base: Path) -> dict:
    return json.loads((newest(base) / "ledger.json").read_text())


def done(base: Path) -> list[tuple]:
    return [(r["name"], r["status"], r["examples"], r["examples_trained"]) for r in ledger(base)["files_done"]]


# -- class 1: no line can wedge the daemon ------------------------------------------------

def _hostile_file(base: Path) -> Path:
    """40 good lines with each hostile line in the middle (lines 21-27)."""
    lines = [g.encode() for g in GOOD[:20]] + list(HOSTILE.values()) + [g.encode() for g in GOOD[20:]]
    path = base / "inbox" / "hostile.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("packing", ["false", "true"])
def test_no_line_wedges_the_daemon_bad_lines_logged_with_number(tmp_path: Path, packing: str):
    base = tmp_path / "run"
    tiny.ensure_saved(compose(["base_dir=/x"]).model, base / "base_model")
    (base / "base_model" / "chat_template.jinja").write_text(RAISING_TEMPLATE)  # raise_exception on a tool turn
    _hostile_file(base)
    write_jsonl(base / "inbox" / "next.jsonl", 16, seed=4, mtime=time.time() + 5)
    assert train_here(base, DRAIN, "data.max_bad_fraction=0.5", f"data.packing={packing}") == 0
    text = log_text(base)
    assert "hostile.jsonl: 7 bad line(s) of 47" in text
    for number, reason in zip(range(21, 28), ("nested too deeply", "nested too deeply", "lone surrogate",
                                              "ValueError", "not JSON", "not JSON", "tool turns are not supported"),
                              strict=True):
        assert f"line {number}: " in text and reason in text.split(f"line {number}: ", 1)[1][:200], number
    assert [(n, s, e) for n, s, e, _ in done(base)] == [("hostile.jsonl", "done", 40), ("next.jsonl", "done", 16)]
    assert not list((base / "failed").iterdir())
    if packing == "false":
        assert trainer_state(newest(base))["global_step"] == 5 + 2


def test_line_bad_only_at_batch_time_keeps_its_slot_with_zero_weight(tmp_path: Path, monkeypatch):
    """A record that passes the index pass but fails when its batch is built (e.g. a tokenizer
    that fails on it only then) is trained with zero weight: the step count stays exact."""
    from lit_continual.data.records import Encoder

    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 20, seed=1)
    target = json.loads((base / "inbox" / "a.jsonl").read_text().splitlines()[6])["text"]
    original = Encoder.encode_one

    def flaky(self, record):
        if record.get("text") == target:
            raise RuntimeError("tokenizer exploded")
        return original(self, record)

    monkeypatch.setattr(Encoder, "encode_one", flaky)
    assert train_here(base, DRAIN) == 0
    assert "a.jsonl line 7: bad line found while batching, trained with zero weight: RuntimeError" in log_text(base)
    assert trainer_state(newest(base))["global_step"] == 3  # ceil(20 / 8), exactly
    assert done(base) == [("a.jsonl", "done", 20, 20)]


# -- class 2: what was claimed is what is trained -----------------------------------------

def _during_training(monkeypatch, action) -> None:
    """Run `action()` right after the first file's first optimizer step starts."""
    started = FileLifecycle._file_started
    fired = []

    def hook(self, trainer, meta):
        started(self, trainer, meta)
        if not fired:
            fired.append(True)
            action()

    monkeypatch.setattr(FileLifecycle, "_file_started", hook)


def test_rename_over_while_training_is_a_new_delivery(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "x.jsonl", 40, seed=1)

    def rename_over():
        tmp = write_jsonl(base / "inbox" / "x.jsonl.part", 24, seed=2)
        os.rename(tmp, base / "inbox" / "x.jsonl")

    _during_training(monkeypatch, rename_over)
    assert train_here(base, DRAIN, "data.batch_size=4") == 0
    assert done(base) == [("x.jsonl", "done", 40, 40), ("x.jsonl", "done", 24, 24)]
    assert trainer_state(newest(base))["global_step"] == 10 + 6
    assert not list((base / "failed").iterdir())


def test_claimed_file_removed_while_training_is_trained_to_its_end(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "x.jsonl", 40, seed=1)
    _during_training(monkeypatch, lambda: claimed(base, "x.jsonl")[0].unlink())
    assert train_here(base, DRAIN, "data.batch_size=4") == 0
    assert done(base) == [("x.jsonl", "done", 40, 40)]
    assert trainer_state(newest(base))["global_step"] == 10


def test_inbox_removed_by_hand_while_training_loses_nothing_claimed(tmp_path: Path, monkeypatch):
    """An operator's `rm -rf inbox/` mid-run: both files were already claimed and held open."""
    base = tmp_path / "run"
    now = time.time()
    write_jsonl(base / "inbox" / "a.jsonl", 40, seed=1, mtime=now - 20)
    write_jsonl(base / "inbox" / "b.jsonl", 16, seed=2, mtime=now - 10)
    _during_training(monkeypatch, lambda: shutil.rmtree(base / "inbox"))
    assert train_here(base, DRAIN, "data.batch_size=4") == 0
    assert done(base) == [("a.jsonl", "done", 40, 40), ("b.jsonl", "done", 16, 16)]
    assert trainer_state(newest(base))["global_step"] == 10 + 4


def test_claimed_file_truncated_in_place_is_abandoned_not_trained_and_its_rest_is_new(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    path = write_jsonl(base / "inbox" / "x.jsonl", 40, seed=1)
    keep = len(b"".join(path.read_bytes().splitlines(keepends=True)[:12]))
    _during_training(monkeypatch, lambda: os.truncate(claimed(base, "x.jsonl")[0], keep))
    assert train_here(base, DRAIN, "data.batch_size=4", "data.shuffle=false") == 0
    text = log_text(base)
    assert "was rewritten or truncated in place" in text and "File x.jsonl abandoned at step" in text
    (first, second) = done(base)
    assert first[:2] == ("x.jsonl", "abandoned") and first[3] < 40
    assert second == ("x.jsonl", "done", 12, 12), "what sits there now is a new delivery"
    assert not list((base / "failed").iterdir())


def test_restored_backup_with_second_mtimes_finishes_its_file(tmp_path: Path, monkeypatch):
    """`tar` keeps mtimes to the second: identity is content and the held descriptor."""
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "x.jsonl", 400, seed=1)
    stop_after(monkeypatch, 10)
    assert train_here(base) == 0
    monkeypatch.undo()
    restored = tmp_path / "restored"
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(tmp_path / "b.tar"), "run"], check=True)
    restored.mkdir()
    subprocess.run(["tar", "-C", str(restored), "-xf", str(tmp_path / "b.tar"), "--no-same-permissions"], check=True)
    (path,) = claimed(restored / "run", "x.jsonl")
    second = int(path.stat().st_mtime)
    os.utime(path, (second, second))  # what an archive format with second resolution gives back
    assert train_here(restored / "run", DRAIN) == 0
    assert done(restored / "run") == [("x.jsonl", "done", 400, 400)]
    assert not list((restored / "run" / "failed").iterdir()) and not under_inbox(restored / "run", "x.jsonl")


# -- class 4: operator slips ----------------------------------------------------------------

def test_transient_stop_file_is_acted_on(tmp_path: Path):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 800, seed=1, mtime=time.time() - 20)
    write_jsonl(base / "inbox" / "b.jsonl", 16, seed=2, mtime=time.time() - 10)
    proc = start_daemon(base, "logging.every_n_steps=1")
    try:
        wait_for(lambda: "step 5/" in log_text(base), 90, "training")
        (base / ".stop").touch()
        time.sleep(0.5)
        (base / ".stop").unlink()  # gone again within a few steps
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert ".stop seen: stopping after the current optimizer step" in log_text(base)
    assert ledger(base)["current"]["name"] == "a.jsonl" and not ledger(base)["files_done"]
    assert train_here(base, DRAIN) == 0
    assert [(n, s, e, t) for n, s, e, t in done(base)] == [("a.jsonl", "done", 800, 800), ("b.jsonl", "done", 16, 16)]
    assert trainer_state(newest(base))["global_step"] == 100 + 2


def test_deleting_the_lock_file_does_not_let_a_second_daemon_in(tmp_path: Path):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 800, seed=1)
    first = start_daemon(base)
    try:
        wait_for(lambda: (base / "status" / "training_status.json").exists()
                 and status(base)["status"] == "training", 90, "training")
        (base / ".lock").unlink()  # "it looks stale"
        second = subprocess.run(daemon_cmd(base), capture_output=True, text=True, timeout=60, cwd=REPO)
        assert second.returncode == 3, second.stderr
        assert "is locked by another process" in second.stderr
        assert first.poll() is None, "the first daemon keeps running"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()


# -- class 6 and 7: settle on our own clock; re-delivery is new -----------------------------

def test_file_with_old_mtime_still_being_written_is_not_claimed_in_fragments(tmp_path: Path):
    base = tmp_path / "run"
    (base / "inbox").mkdir(parents=True)
    proc = start_daemon(base, "daemon.settle_seconds=1.5")
    path = base / "inbox" / "slow.jsonl"
    try:
        wait_for(lambda: (base / "status" / "training_status.json").exists()
                 and status(base)["status"] == "idle", 90, "idle")
        past = time.time() - 3600  # rsync / cp -p / a file server whose clock lags
        for chunk in range(5):
            with open(path, "a") as handle:
                handle.write("".join(json.dumps({"text": f"chunk {chunk} line {i}"}) + "\n" for i in range(16)))
            os.utime(path, (past, past))
            time.sleep(0.5)
        wait_for(lambda: "File slow.jsonl done" in log_text(base), 90, "trained")
        (base / ".stop").touch()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert done(base) == [("slow.jsonl", "done", 80, 80)]


def test_same_name_size_mtime_delivered_again_is_trained_again(tmp_path: Path):
    base = tmp_path / "run"
    (base / "inbox").mkdir(parents=True)
    source = write_jsonl(tmp_path / "x.jsonl", 16, seed=3, mtime=1_700_000_000)
    proc = start_daemon(base)
    try:
        for n in (1, 2):
            shutil.copy2(source, base / "inbox" / "x.jsonl")  # same name, size, mtime (inode often reused)
            wait_for(lambda n=n: log_text(base).count("File x.jsonl done") == n, 90, f"delivery {n} trained")
        (base / ".stop").touch()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert done(base) == [("x.jsonl", "done", 16, 16), ("x.jsonl", "done", 16, 16)]


# -- class 8: every index pass is cancellable -----------------------------------------------

def _big(path: Path, megabytes: int) -> Path:
    line = (json.dumps({"text": "word " * 190}) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(line * (megabytes * 1_000_000 // len(line)))
    return path


def test_stop_interrupts_the_index_pass_of_a_big_first_file(tmp_path: Path):
    base = tmp_path / "run"
    _big(base / "inbox" / "big.jsonl", 400)
    proc = start_daemon(base)
    try:
        wait_for(lambda: "Indexing big.jsonl" in log_text(base), 120, "the index pass")
        (base / ".stop").touch()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert "Index pass of big.jsonl stopped by a stop request" in log_text(base)
    assert under_inbox(base, "big.jsonl") and not list((base / "current_model").glob("checkpoint-*"))
    claimed(base, "big.jsonl")[0].unlink()  # 400 MB: do not keep it in pytest's retained temp dirs


def test_stop_interrupts_the_index_pass_in_train_py(tmp_path: Path):
    big = _big(tmp_path / "big.jsonl", 400)
    base = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "train.py", "data=inbox_file", f"data.path={big}",
                             f"base_dir={base}", f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (base / "logs").is_dir() and "Indexing big.jsonl" in log_text(base), 120, "the index pass")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert "Index pass of big.jsonl stopped by a stop request" in log_text(base)
    assert big.exists()
    big.unlink()


def test_file_landing_while_another_trains_is_indexed_before_the_switch(tmp_path: Path):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 480, seed=1)
    proc = start_daemon(base, "logging.every_n_steps=1")
    try:
        wait_for(lambda: "step 2/" in log_text(base), 90, "a.jsonl training")
        write_jsonl(base / "inbox" / "b.jsonl", 16, seed=2)  # lands after a.jsonl was claimed
        wait_for(lambda: "File b.jsonl done" in log_text(base), 120, "b.jsonl trained")
        (base / ".stop").touch()
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    text = log_text(base)
    assert text.index("Indexed b.jsonl") < text.index("File a.jsonl done")


# -- class 9: scanning is amortised ---------------------------------------------------------

def test_a_file_switch_does_not_rescan_the_inbox(tmp_path: Path, monkeypatch):
    from lit_continual.inbox import Inbox

    base = tmp_path / "run"
    now = time.time()
    for i in range(30):
        write_jsonl(base / "inbox" / f"f{i:02d}.jsonl", 8, seed=i, mtime=now - 100 + i)
    scans = []
    original = Inbox._scan
    monkeypatch.setattr(Inbox, "_scan", lambda self, t: (scans.append(t), original(self, t)))
    assert train_here(base, DRAIN, "daemon.poll_seconds=30", "daemon.settle_seconds=0") == 0
    assert len(done(base)) == 30
    assert len(scans) <= 2, f"{len(scans)} full scans for 30 file switches"


def test_inbox_listing_is_cached_until_the_directory_changes(tmp_path: Path):
    from lit_continual.inbox import Inbox

    inbox = Inbox(tmp_path, settle_seconds=0, poll_seconds=0)
    for i in range(200):
        write_jsonl(tmp_path / "inbox" / f"f{i:03d}.jsonl", 1, mtime=1_700_000_000 + i)
    assert inbox.next_ready() == "f000.jsonl" and inbox.count() == 200
    time.sleep(2.1)  # past the window in which a same-tick change could hide
    first = inbox.scans
    for _ in range(50):
        inbox.waiting(), inbox.count(), inbox.next_ready()
    assert inbox.scans == first, "no rescan while the directory is unchanged"
    write_jsonl(tmp_path / "inbox" / "late.jsonl", 1)
    assert "late.jsonl" in inbox.waiting() and inbox.scans == first + 1


# -- class 10: reported numbers ------------------------------------------------------------

def test_last_window_loss_is_not_diluted_by_filler_micro_batches(tmp_path: Path):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 8 * 4 * 3 + 8, seed=1)  # 3 full windows + 1 micro-batch
    assert train_here(base, DRAIN, "trainer.accumulate_grad_batches=4", "logging.every_n_steps=1",
                      "scheduler=constant", "optim.lr=1e-9") == 0
    losses = [e["loss"] for e in trainer_state(newest(base))["log_history"]]
    assert len(losses) == 4
    assert losses[-1] > 0.8 * min(losses[:-1]), losses  # not ~1/4 of the others


def test_restart_reports_batch_number_and_no_inherited_last_checkpoint(tmp_path: Path):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 16, seed=1)
    assert train_here(base, DRAIN) == 0
    assert train_here(base, DRAIN) == 0  # nothing to do: resumes, stops
    fields = status(base)
    assert fields["batch_number"] == 1 and fields["last_checkpoint"] is None and fields["warnings"] == []


def test_abandoned_file_records_the_last_step_it_trained(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "gone.jsonl", 400, seed=1)
    stop_after(monkeypatch, 20)
    assert train_here(base) == 0
    stopped_at = trainer_state(newest(base))["global_step"]
    monkeypatch.undo()
    claimed(base, "gone.jsonl")[0].unlink()
    write_jsonl(base / "inbox" / "next.jsonl", 8, seed=2)  # the ledger reaches disk with the next checkpoint
    assert train_here(base, DRAIN) == 0
    (record, _) = ledger(base)["files_done"]
    assert (record["status"], record["first_step"], record["last_step"]) == ("abandoned", 1, stopped_at)


# -- class 12: a base dir written by version 0.1 resumes exactly ----------------------------

def test_base_dir_from_version_0_1_resumes_exactly(tmp_path: Path):
    fixture = REPO / "tests" / "fixtures" / "base_dir_v0_1"
    expected = json.loads((fixture / "expected.json").read_text())
    base = tmp_path / "run"
    shutil.copytree(fixture, base, ignore=shutil.ignore_patterns("expected.json"))
    now = time.time()
    os.utime(base / "inbox" / "a.jsonl", (now - 20, now - 20))
    os.utime(base / "inbox" / "b.jsonl", (now - 10, now - 10))
    assert train_here(base, DRAIN, *expected["settings"]) == 0
    state = trainer_state(newest(base))
    assert state["global_step"] == expected["global_step"]
    assert state["log_history"] == expected["log_history"]
    assert [[r["name"], r["first_step"], r["last_step"], r["examples_trained"]]
            for r in ledger(base)["files_done"]] == expected["files_done"]
    assert hashlib.sha256((newest(base) / "adapter_model.safetensors").read_bytes()).hexdigest() == \
        expected["adapter_sha256"]
    assert not list((base / "failed").iterdir())
    assert not under_inbox(base, "a.jsonl") and not under_inbox(base, "b.jsonl")


# -- what a restart replays: the disposal decided before the end-of-file checkpoint ----------

def test_file_appended_after_its_claim_goes_to_failed_even_after_a_kill_before_the_move(tmp_path: Path):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "x.jsonl", 400, seed=1)
    env = {**os.environ, "LIT_CONTINUAL_FAULT": "before-delete@50"}
    proc = subprocess.Popen(daemon_cmd(base, DRAIN), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (base / "logs").is_dir() and "Indexed x.jsonl" in log_text(base), 90, "the claim")
        (path,) = claimed(base, "x.jsonl")
        with open(path, "a") as writer:  # the pipeline was not done: more lines after the claim
            writer.write(json.dumps({"text": "appended after the claim"}) + "\n")
        assert proc.wait(timeout=120) == -signal.SIGKILL  # after the end-of-file checkpoint, before the move
    finally:
        proc.kill()
    assert claimed(base, "x.jsonl"), "the kill came before the move"
    assert train_here(base, DRAIN) == 0
    report = json.loads((base / "failed" / "x.jsonl.error.json").read_text())
    assert "modified while being trained" in report["reason"]
    assert (base / "failed" / "x.jsonl").read_text().endswith('{"text": "appended after the claim"}\n')
    assert done(base) == [("x.jsonl", "done", 400, 400)]


def test_resumed_file_appended_to_while_the_daemon_was_down_is_finished_not_retrained(tmp_path: Path, monkeypatch):
    base = tmp_path / "run"
    write_jsonl(base / "inbox" / "x.jsonl", 400, seed=1)
    stop_after(monkeypatch, 10)
    assert train_here(base) == 0
    monkeypatch.undo()
    stopped_at = trainer_state(newest(base))["global_step"]
    with open(claimed(base, "x.jsonl")[0], "a") as writer:
        writer.write(json.dumps({"text": "appended while the daemon was down"}) + "\n")
    assert train_here(base, DRAIN) == 0
    assert done(base) == [("x.jsonl", "done", 400, 400)], "resumed, not abandoned and retrained"
    assert trainer_state(newest(base))["global_step"] == 50 and stopped_at < 50
    assert (base / "failed" / "x.jsonl").read_text().endswith("appended while the daemon was down\"}\n")


def test_claim_ids_keep_claim_order_when_the_clock_steps_back(tmp_path: Path, monkeypatch):
    from lit_continual.claims import Claims

    claims = Claims(tmp_path / "inbox", tmp_path / "failed")
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        write_jsonl(tmp_path / "inbox" / name, 1)
    clock = iter([3_000, 2_000, 1_000])  # NTP stepping the wall clock back between claims
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        claims.claim(name).close()
    assert [n.split("-", 1)[1] for n in claims.pending()] == ["a.jsonl", "b.jsonl", "c.jsonl"]


def test_only_the_newest_legacy_record_with_its_ctime_counts_as_an_interrupted_delete():
    from lit_continual.ledger import FileRecord, Ledger

    def record(name: str, inode: int, ctime: int) -> FileRecord:
        return FileRecord(name=name, sha256="ab", size=1, inode=inode, ctime_ns=ctime, ordinal=1, examples=1,
                          bad_lines=0, shuffle_seed=7, status="done")

    ledger = Ledger(files_done=[record("old.jsonl", 5, 50), record("x.jsonl", 7, 70)])
    assert ledger.find_legacy_done("x.jsonl", 7, 70) is not None
    assert ledger.find_legacy_done("x.jsonl", 7, 71) is None, "same inode reused by a new delivery"
    assert ledger.find_legacy_done("old.jsonl", 5, 50) is None, "only the newest can have an interrupted delete"
