"""`make soak`: more files, more kills, bad input mixed in; the figures for the README.

Marked slow: not part of `make test`. Writes benchmarks/results/soak.json (kills at seeded
points, bit-identical result) and benchmarks/results/soak_faults.json (field faults played
against one long-lived daemon: bad lines, a rename-over, a transient `.stop`, a deleted lock,
a real disk full, SIGKILLs at random moments).
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lit_continual.sample_data import sentence
from tests.conftest import REPO, claimed, log_text, newest, run_daemon, trainer_state, wait_for, write_jsonl

FILES, LINES, EVERY = 5, 800, 20  # 100 steps per file
SETTINGS = ["logging.every_n_steps=1", f"checkpoint.every_n_steps={EVERY}", "checkpoint.log_history_max=5000"]
BAD = {"empty.jsonl": b"", "binary.jsonl": bytes(range(256)) * 8, "not_object.jsonl": b"[1]\n[2]\n",
       "too_bad.jsonl": b'{"text": "ok"}\n{bad\n', "latin1.jsonl": "caf\xe9\n".encode("latin-1")}


def _fill(base: Path) -> None:
    now = time.time()
    for i in range(FILES):
        write_jsonl(base / "inbox" / f"f{i}.jsonl", LINES, seed=100 + i, mtime=now - 100 + 10 * i)
    for j, (name, data) in enumerate(BAD.items()):
        (base / "inbox" / name).write_bytes(data)
        os.utime(base / "inbox" / name, (now - 95 + 10 * j, now - 95 + 10 * j))


def _plan(seed: int) -> list[str]:
    """14 kills: at file ends (before the delete, or mid-checkpoint), mid-checkpoint, mid-step, after a step."""
    rng = random.Random(seed)
    ends = [LINES // 8 * (i + 1) for i in range(FILES - 1)]
    saves = [s for s in range(EVERY, FILES * LINES // 8, EVERY) if s not in ends]
    kills = {s: rng.choice(["before-delete", "checkpoint-tmp"]) for s in rng.sample(ends, 3)}
    kills.update({s: "checkpoint-tmp" for s in rng.sample(saves, 3)})
    while len(kills) < 14:
        step = rng.randrange(2, FILES * LINES // 8)
        kills.setdefault(step, rng.choice(["train", "step"]))
    return [f"{kills[s]}@{s}" for s in sorted(kills)]


@pytest.mark.slow
def test_soak_many_kills_exact_result(tmp_path: Path):
    reference, soaked = tmp_path / "reference", tmp_path / "soaked"
    _fill(reference)
    _fill(soaked)
    assert run_daemon(reference, *SETTINGS).returncode == 0
    plan = _plan(seed=7)
    print(f"kill plan (seed 7): {plan}")
    for fault in plan:
        result = run_daemon(soaked, *SETTINGS, fault=fault)
        assert result.returncode == -signal.SIGKILL, f"{fault} did not fire: {result.stdout}"
    assert run_daemon(soaked, *SETTINGS).returncode == 0

    mine = load_file(newest(soaked) / "adapter_model.safetensors")
    theirs = load_file(newest(reference) / "adapter_model.safetensors")
    identical = all(torch.equal(mine[k], theirs[k]) for k in theirs)
    ledger = json.loads((newest(soaked) / "ledger.json").read_text())
    lost = sum(r["examples"] - r["examples_trained"] for r in ledger["files_done"])
    got = {e["step"]: e["loss"] for e in trainer_state(newest(soaked))["log_history"]}
    expected = {e["step"]: e["loss"] for e in trainer_state(newest(reference))["log_history"]}
    differing = sum(1 for step in expected if got.get(step) != expected[step]) + len(set(got) - set(expected))
    figures = {"kills_survived": len(plan), "kill_plan": plan, "files_trained": len(ledger["files_done"]),
               "bad_inputs_tried": len(BAD), "bad_inputs_rejected": len(list((soaked / "failed").glob("*.error.json"))),
               "global_step": trainer_state(newest(soaked))["global_step"], "lost_samples": lost,
               "steps_whose_loss_differs_from_uninterrupted": differing, "adapter_bit_identical": identical}
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    assert identical and lost == 0 and differing == 0
    assert figures["files_trained"] == FILES and figures["bad_inputs_rejected"] == len(BAD)
    assert figures["global_step"] == FILES * LINES // 8


# -- field faults: one long-lived daemon, a seeded schedule of what pipelines and operators do --

FIELD_SEED = 2024
# daemon.max_crashes: the SIGKILLs here are an operator's, at seeded delays after a restart;
# two equal delays land on the same step of the same file, which the crash-loop rule (tested in
# test_lock_and_crash_loop.py) rightly counts as a file that kills the process. Not here.
FIELD = ["daemon.settle_seconds=0.2", "daemon.poll_seconds=0.1", "checkpoint.every_n_steps=10",
         "logging.every_n_steps=1", "checkpoint.keep=2", "checkpoint.min_free_mb=0",
         "data.max_line_bytes=65536", "daemon.retry_initial_seconds=1", "daemon.retry_max_seconds=2",
         "daemon.max_crashes=1000"]
BAD_LINES = {
    "invalid_json": b'{"text": "unterminated',
    "not_an_object": b'["a", "list"]',
    "nested_100000_deep": b"[" * 100_000 + b"]" * 100_000,  # 200 KB: over max_line_bytes as well
    "nested_30000_deep": b"[" * 30_000 + b"]" * 30_000,  # 60 KB: reaches the JSON parser
    "invalid_utf8": b'{"text": "caf\xe9 \xff"}',
    "lone_surrogate": b'{"text": "\\ud800"}',
    "integer_5000_digits": b'{"text": "big", "n": ' + b"9" * 5000 + b"}",
    "line_over_max_line_bytes": b'{"text": "' + b"a" * 70_000 + b'"}',
}
DATA_FILES, BAD_CARRIERS, KILLS = 12, 4, 4
EFFECTIVE_BATCH = 8


@dataclass
class Delivery:
    """One file handed to the inbox: its bytes, valid example count and bad lines by kind."""

    name: str
    data: bytes
    valid: int
    bad: list[str]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


class Pipeline:
    """Writes `name.jsonl.part`, renames it to `name.jsonl`; every example text starts with a
    unique id, so each delivered content is distinct and countable."""

    def __init__(self, inbox: Path, rng: random.Random) -> None:
        self.inbox, self.rng, self.next_id = inbox, rng, 0
        self.sent: list[Delivery] = []

    def make(self, name: str, lines: int, bad: Sequence[str] = ()) -> Delivery:
        rows = []
        for _ in range(lines):
            rows.append(json.dumps({"text": f"id-{self.next_id:05d} {sentence(self.rng)}"}).encode())
            self.next_id += 1
        for kind in bad:
            rows.insert(self.rng.randrange(len(rows) + 1), BAD_LINES[kind])
        return Delivery(name, b"\n".join(rows) + b"\n", lines, list(bad))

    def deliver(self, delivery: Delivery) -> None:
        self.inbox.mkdir(parents=True, exist_ok=True)
        part = self.inbox / f"{delivery.name}.part"
        part.write_bytes(delivery.data)
        os.rename(part, self.inbox / delivery.name)
        self.sent.append(delivery)


@contextmanager
def _small_disk(models: Path):
    """A mount namespace holding an 8 MiB tmpfs on `models` for as long as the holder lives."""
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("`unshare -m true` failed (needs root or CAP_SYS_ADMIN): no real disk-full tmpfs")
    models.mkdir(parents=True, exist_ok=True)
    mount = f"mount -t tmpfs -o size=8m tmpfs {shlex.quote(str(models))} && exec sleep infinity"
    holder = subprocess.Popen(["unshare", "-m", "sh", "-c", mount])
    try:
        mountinfo = Path(f"/proc/{holder.pid}/mountinfo")
        wait_for(lambda: holder.poll() is not None or f" {models} " in mountinfo.read_text(), 10, "the tmpfs")
        if holder.poll() is not None:
            pytest.skip(f"mount -t tmpfs failed in the namespace (exit {holder.returncode})")
        yield holder
    finally:
        holder.kill()  # the mount goes with the namespace
        holder.wait()


def _status_of(base: Path) -> dict:
    try:
        return json.loads((base / "status" / "training_status.json").read_text())
    except (OSError, ValueError):
        return {}


def _count_in_log(base: Path, text: str) -> int:
    return log_text(base).count(text) if (base / "logs").is_dir() else 0


class Fleet:
    """The daemons of one base dir, each started inside the holder's mount namespace; every
    exit is recorded with why it happened (a requested stop, our kill, the lock, or not asked)."""

    def __init__(self, base: Path, holder: subprocess.Popen, out: Path) -> None:
        self.base, self.holder, self.out = base, holder, out
        self.proc: subprocess.Popen | None = None
        self.spawned = 0
        self.exits: list[dict] = []
        self.outputs: dict[int, Path] = {}  # pid -> that process's stdout and stderr
        self.notes: dict = {}

    def spawn(self) -> subprocess.Popen:
        self.spawned += 1
        command = ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt", f"--wd={REPO}", "--", sys.executable,
                   "-m", "lit_continual", "daemon", "--base-dir", str(self.base), *FIELD]
        env = {k: v for k, v in os.environ.items() if k != "LIT_CONTINUAL_FAULT"}
        path = self.out / f"daemon-{self.spawned:02d}.out"
        with open(path, "wb") as output:
            proc = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=REPO, env=env)
        self.outputs[proc.pid] = path
        return proc

    def start(self) -> None:
        self.proc = self.spawn()

    def record(self, proc: subprocess.Popen, why: str) -> None:
        tail = self.outputs[proc.pid].read_text(errors="replace")[-1500:] if why == "unexpected" else ""
        self.exits.append({"pid": proc.pid, "returncode": proc.returncode, "why": why, "output_tail": tail})

    def check(self) -> None:
        """An exit nobody asked for is recorded and the daemon restarted."""
        if self.proc is not None and self.proc.poll() is not None:
            self.record(self.proc, "unexpected")
            assert len(self.unexpected()) <= 3, f"the daemon keeps dying: {self.unexpected()}"
            self.start()

    def unexpected(self) -> list[dict]:
        return [e for e in self.exits if e["why"] not in ("requested stop", "killed", "locked out")]

    def wait(self, predicate, timeout: float, what: str):
        return wait_for(lambda: self.check() or predicate(), timeout, what, interval=0.1)

    def up(self) -> bool:
        now = _status_of(self.base)
        return now.get("pid") == self.proc.pid and now.get("status") in ("training", "idle")

    def stop(self, transient: bool) -> int | None:
        """Drop `.stop` (for 0.5 s if transient); the exit code, None if it was ignored."""
        stop = self.base / ".stop"
        stop.touch()
        if transient:
            time.sleep(0.5)
            stop.unlink()
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self.exits.append({"pid": self.proc.pid, "returncode": None, "why": "stop ignored", "output_tail": ""})
            return None
        self.record(self.proc, "requested stop" if self.proc.returncode == 0 else "unexpected")
        return self.proc.returncode

    def kill(self) -> dict:
        """SIGKILL the daemon wherever it is; what it was doing, from its status."""
        now = _status_of(self.base)
        mine = now.get("pid") == self.proc.pid
        moment = {"status": now.get("status") if mine else "starting (no status yet)",
                  "step": now.get("current_step") if mine else None}
        self.proc.kill()
        self.proc.wait()
        self.record(self.proc, "killed" if self.proc.returncode == -signal.SIGKILL else "unexpected")
        self.start()
        return moment


def _field_plan(rng: random.Random) -> list[tuple[str, object]]:
    """12 data files (4 carrying two bad lines of each kind between them) and the faults, in a
    seeded order after the first file; each event is followed by a seeded pause."""
    kinds = list(BAD_LINES) * 2
    rng.shuffle(kinds)
    carriers = rng.sample(range(DATA_FILES), BAD_CARRIERS)
    per = len(kinds) // BAD_CARRIERS
    files = [("deliver", (f"d{i:02d}.jsonl", rng.randint(64, 200),
                          kinds[carriers.index(i) * per:(carriers.index(i) + 1) * per] if i in carriers else []))
             for i in range(DATA_FILES)]
    faults = [("rename_over", None), ("transient_stop", None), ("deleted_lock", None), ("disk_full", None)]
    faults += [("sigkill", round(rng.uniform(1.0, 10.0), 2)) for _ in range(KILLS)]
    rest = files[1:] + faults
    rng.shuffle(rest)
    return [files[0], *rest]


def _rename_over(fleet: Fleet, pipe: Pipeline) -> None:
    """Deliver r.jsonl; once it is claimed, deliver a different r.jsonl over the same name."""
    pipe.deliver(pipe.make("r.jsonl", 200))
    fleet.wait(lambda: not (fleet.base / "inbox" / "r.jsonl").exists(), 300, "r.jsonl to be claimed")
    fleet.notes["rename_over_first_seen_in_claimed"] = bool(claimed(fleet.base, "r.jsonl"))
    pipe.deliver(pipe.make("r.jsonl", 100))


def _transient_stop(fleet: Fleet) -> None:
    """`.stop` for 0.5 s under a running daemon: it must exit 0 by itself. Only once it is up:
    `.stop` is sampled once per optimizer step and not at all while the model loads, so one that
    comes and goes in that window (or within one long step) is never seen."""
    fleet.wait(fleet.up, 300, "the daemon to be up")
    fleet.notes.setdefault("transient_stop_exit_codes", []).append(fleet.stop(transient=True))
    fleet.start()


def _deleted_lock(fleet: Fleet) -> None:
    """Delete `.lock` under a running daemon; a second daemon must still be refused (exit 3)."""
    fleet.wait(fleet.up, 300, "the daemon to be up")
    (fleet.base / ".lock").unlink()
    started = time.monotonic()
    second = fleet.spawn()
    try:
        second.wait(timeout=120)
    except subprocess.TimeoutExpired:
        second.kill()
        second.wait()
    fleet.record(second, "locked out" if second.returncode == 3 else "unexpected")
    fleet.notes["second_daemon"] = {"returncode": second.returncode,
                                    "seconds_to_exit": round(time.monotonic() - started, 2),
                                    "first_still_running": fleet.proc.poll() is None,
                                    "wrote_no_lock_file": not (fleet.base / ".lock").exists()}


def _fill_disk(path: Path) -> int:
    """Write zeros to `path` until the filesystem is full; the bytes written. Refuses anything
    but the small tmpfs this test mounted (never fill the machine's real disk)."""
    vfs = os.statvfs(path.parent)
    assert vfs.f_blocks * vfs.f_frsize <= 64 << 20, f"{path.parent} is not the small test tmpfs"
    fd, written = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 0
    try:
        while True:
            written += os.write(fd, b"\0" * (1 << 16))
    except OSError as err:
        assert err.errno == errno.ENOSPC, err
    finally:
        os.close(fd)
    return written


def _disk_full(fleet: Fleet, pipe: Pipeline, models_seen: Path) -> None:
    """Fill the real tmpfs under a training daemon until two checkpoint writes failed, then free it."""
    pipe.deliver(pipe.make("disk.jsonl", 200))
    fleet.wait(lambda: fleet.up() and _status_of(fleet.base).get("current_file") == "disk.jsonl", 300,
               "disk.jsonl to train")
    failed_before = _count_in_log(fleet.base, "Could not write checkpoint")
    cleared_before = _count_in_log(fleet.base, "after the storage fault cleared")
    filler = models_seen / "filler"
    started, filled = time.monotonic(), _fill_disk(filler)
    fleet.wait(lambda: _count_in_log(fleet.base, "Could not write checkpoint") >= failed_before + 2
               and _status_of(fleet.base).get("status") == "error", 120, "two failed checkpoint writes")
    filler.unlink()
    fleet.wait(lambda: _count_in_log(fleet.base, "after the storage fault cleared") > cleared_before
               and _status_of(fleet.base).get("status") != "error", 120, "the checkpoint write to succeed")
    fleet.notes["disk_full"] = {"filler_bytes": filled, "seconds_full": round(time.monotonic() - started, 2),
                                "failed_checkpoint_writes": _count_in_log(fleet.base, "Could not write checkpoint")
                                - failed_before}


def _all_trained(fleet: Fleet) -> bool:
    inbox = fleet.base / "inbox"
    return (fleet.up() and _status_of(fleet.base).get("current_file") is None
            and not list(inbox.glob("*.jsonl")) and not list((inbox / ".claimed").glob("*")))


def _play(fleet: Fleet, pipe: Pipeline, plan: list, rng: random.Random, models_seen: Path) -> Counter:
    """Play the plan against the running daemon; the faults injected, by kind."""
    injected: Counter = Counter()
    for kind, arg in plan:
        fleet.check()
        if kind == "deliver":
            name, lines, bad = arg
            pipe.deliver(pipe.make(name, lines, bad))
            injected.update(f"bad_line:{k}" for k in bad)
        else:
            injected[kind] += 1
        if kind == "rename_over":
            _rename_over(fleet, pipe)
        elif kind == "transient_stop":
            _transient_stop(fleet)
        elif kind == "deleted_lock":
            _deleted_lock(fleet)
        elif kind == "disk_full":
            _disk_full(fleet, pipe, models_seen)
        elif kind == "sigkill":
            time.sleep(arg)
            fleet.notes.setdefault("sigkill_moments", []).append({"after_s": arg, **fleet.kill()})
        time.sleep(rng.uniform(0.3, 2.0))
    return injected


def _ledger_figures(pipe: Pipeline, ckpt: Path) -> dict:
    """Examples lost / trained twice, per delivered content (sha256), from the ledger."""
    ledger = json.loads((ckpt / "ledger.json").read_text())
    trained: Counter = Counter()
    for record in ledger["files_done"] + ([ledger["current"]] if ledger["current"] else []):
        trained[record["sha256"]] += record["examples_trained"]
    done = Counter(r["sha256"] for r in ledger["files_done"] if r["status"] == "done")
    mine = {d.sha256: d for d in pipe.sent}
    mismatched = [r["name"] for r in ledger["files_done"] if r["sha256"] not in mine
                  or (r["examples"], r["bad_lines"]) != (mine[r["sha256"]].valid, len(mine[r["sha256"]].bad))]
    return {
        "files_done_once": sum(1 for d in pipe.sent if done[d.sha256] == 1),
        "examples_lost": sum(max(0, d.valid - trained[d.sha256]) for d in pipe.sent),
        "examples_trained_twice": sum(max(0, trained[d.sha256] - d.valid) for d in pipe.sent),
        "files_done_not_matching_a_delivery": mismatched,
        "files_rejected_in_ledger": len(ledger["files_rejected"]),
        "examples_trained_total": ledger["examples_trained_total"],
        "file_unfinished": ledger["current"] is not None,
    }


@pytest.mark.slow
def test_soak_field_faults(tmp_path: Path):
    started = time.monotonic()
    base = tmp_path / "run"
    models = base / "current_model"
    rng = random.Random(FIELD_SEED)
    plan = _field_plan(rng)
    print(f"field plan (seed {FIELD_SEED}): {[(k, a if k != 'deliver' else a[:2] + (len(a[2]),)) for k, a in plan]}")
    with _small_disk(models) as holder:
        models_seen = Path(f"/proc/{holder.pid}/root{models}")
        fleet, pipe = Fleet(base, holder, tmp_path), Pipeline(base / "inbox", rng)
        fleet.start()
        try:
            injected = _play(fleet, pipe, plan, rng, models_seen)
            fleet.wait(lambda: _all_trained(fleet), 600, "every delivered file to be trained")
            final_exit = fleet.stop(transient=False)
        finally:
            if fleet.proc is not None and fleet.proc.poll() is None:
                fleet.proc.kill()
                fleet.proc.wait()
        ckpt = max(models_seen.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        figures = _ledger_figures(pipe, ckpt)
        global_step = trainer_state(ckpt)["global_step"]
    wrongly_failed = sorted(p.name for p in (base / "failed").glob("*") if not p.name.endswith(".error.json"))
    figures = {
        "seed": FIELD_SEED,
        "faults_injected": dict(sorted(injected.items())), "faults_injected_total": sum(injected.values()),
        "daemon_processes": fleet.spawned,
        "daemon_exits": dict(Counter(e["why"] for e in fleet.exits)),
        "daemon_exits_not_requested": len(fleet.unexpected()),
        "final_stop_exit_code": final_exit,
        "files_delivered": len(pipe.sent), "examples_delivered": sum(d.valid for d in pipe.sent),
        "bad_lines_delivered": sum(len(d.bad) for d in pipe.sent),
        **figures,
        "files_wrongly_in_failed": len(wrongly_failed),
        "global_step": global_step,
        "expected_global_step": sum(math.ceil(d.valid / EFFECTIVE_BATCH) for d in pipe.sent),
        **fleet.notes,
        "runtime_seconds": round(time.monotonic() - started, 1),
    }
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak_faults.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps(figures, indent=2))
    assert fleet.unexpected() == [], fleet.unexpected()
    assert final_exit == 0 and fleet.notes["transient_stop_exit_codes"] == [0]
    assert figures["examples_lost"] == 0 and figures["examples_trained_twice"] == 0
    assert wrongly_failed == [] and figures["files_rejected_in_ledger"] == 0
    assert figures["files_done_once"] == len(pipe.sent) and figures["files_done_not_matching_a_delivery"] == []
    assert not figures["file_unfinished"] and figures["examples_trained_total"] == figures["examples_delivered"]
    assert global_step == figures["expected_global_step"]
    second = fleet.notes["second_daemon"]
    assert second["returncode"] == 3 and second["first_still_running"] and second["wrote_no_lock_file"]
    assert fleet.notes["disk_full"]["failed_checkpoint_writes"] >= 2
