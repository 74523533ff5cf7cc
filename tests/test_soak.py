"""`make soak`: more files, more kills, bad input mixed in; the figures for the README.

Marked slow: not part of `make test`. Writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, newest, run_daemon, trainer_state, write_jsonl

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
