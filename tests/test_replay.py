"""Replay (data/replay.py): the allotment, the reservoir as run state, its segments on disk,
and its effect on forgetting (one seed here; ten in `make bench`)."""

from __future__ import annotations

import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest

from lit_continual.data.replay import Allotment
from lit_continual.report import verify
from tests.conftest import REPO, log_text, newest, status, train_here, write_jsonl

REPLAY = ["daemon.exit_when_idle=true", "data.replay_fraction=0.25", "data.replay_buffer_size=50"]


def three_files(base: Path, lines: int = 40) -> None:
    now = time.time()
    for age, name in enumerate(("c", "b", "a")):
        path = write_jsonl(base / "inbox" / f"{name}.jsonl", lines, seed=ord(name))
        os.utime(path, (now - 10 * age, now - 10 * age))


def segment_lines(base: Path, name: str) -> set[str]:
    return set((base / "replay" / name).read_text().splitlines())


@pytest.mark.parametrize("fraction,batch,accumulate", [(0.25, 8, 1), (0.05, 8, 1), (0.05, 4, 3), (0.3, 1, 2)])
def test_allotment_adds_up_to_the_fraction_whatever_the_batch(fraction, batch, accumulate):
    allot = Allotment(fraction, batch, accumulate)
    slots = [allot.replayed(step, part) for step in range(400) for part in range(accumulate)]
    assert sum(slots) == int(Fraction(repr(fraction)) * 400 * batch * accumulate)  # exact, not rounded per batch
    assert all(0 <= s <= batch for s in slots)
    if (fraction, batch) == (0.25, 8):
        assert set(slots) == {2}  # exactly 2 of 8 in every micro-batch
    # A file's steps: the same windows the stream takes.
    units, step, taken = 123, 17, 0
    while units > 0:
        units -= sum(allot.new_units(step + taken))
        taken += 1
    assert allot.steps(123, 17, active=True) == taken
    assert allot.steps(123, 17, active=False) == -(-123 // (batch * accumulate))


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("replay") / "run"
    three_files(base)
    assert train_here(base, *REPLAY) == 0
    return base


def test_first_file_trains_only_new_examples_then_a_quarter_is_replayed(replayed):
    ledger = json.loads((newest(replayed) / "ledger.json").read_text())
    done = [(r["name"], r["first_step"], r["last_step"], r["examples_trained"], r["replayed"])
            for r in ledger["files_done"]]
    # File a: 40 new examples, 5 steps. Files b and c: 6 new + 2 replayed per batch of 8: 7 steps
    # each (the last one 4 new + 2 replayed); every new example exactly once.
    assert done == [("a.jsonl", 1, 5, 40, 0), ("b.jsonl", 6, 12, 40, 14), ("c.jsonl", 13, 19, 40, 14)]
    assert ledger["examples_trained_total"] == 120 and ledger["examples_replayed_total"] == 28


def test_reservoir_is_bounded_run_state_of_earlier_files(replayed):
    state = json.loads((newest(replayed) / "replay.json").read_text())
    assert state["capacity"] == 50 and len(state["slot_segment"]) == 50 and state["seen"] == 120
    assert status(replayed)["replay_examples"] == 50
    # Each segment holds only lines of its own file, exactly as delivered, and all of a file's
    # examples kept by the reservoir (a's 40 filled it; b and c replaced some by algorithm R).
    originals = {n: set(write_jsonl(replayed / "x" / f"{n}.jsonl", 40, seed=ord(n)).read_text().splitlines())
                 for n in "abc"}
    for segment in state["segments"]:
        name = segment.split("-", 1)[1][0]
        assert segment_lines(replayed, segment) <= originals[name]
    assert state["segments"][0] == "1-a.jsonl" and len(segment_lines(replayed, "1-a.jsonl")) == 40
    counts = [state["slot_segment"].count(i) for i in range(len(state["segments"]))]
    assert sum(counts) == 50 and all(counts)


def test_segments_outlive_the_inbox_file_and_go_when_no_checkpoint_refers_to_them(replayed):
    assert not any((replayed / "inbox").glob("*.jsonl"))
    on_disk = {p.name for p in (replayed / "replay").glob("*.jsonl")}
    referred = set()
    for checkpoint in (replayed / "current_model").glob("checkpoint-*"):
        referred |= set(json.loads((checkpoint / "replay.json").read_text())["segments"])
    assert on_disk == referred


def test_verify_reports_the_reservoir_and_a_missing_segment(replayed, tmp_path):
    line = next(c for c in verify(replayed).checks if c.name == "replay")
    assert line.ok and line.detail.startswith("50 of 50 examples from 3 file(s), 120 offered; 3 segment(s)")
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(replayed, copy)
    (copy / "replay" / "2-b.jsonl").unlink()
    check = next(c for c in verify(copy).checks if c.name == "replay")
    assert not check.ok and "replay/2-b.jsonl, which is missing" in check.detail


def test_a_segment_deleted_by_hand_trains_with_zero_weight_and_the_run_goes_on(replayed, tmp_path):
    """...and a file whose name takes all 255 bytes a name may have still gets its probe and its
    segment (their names are cut, the ordinal keeps them apart)."""
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(replayed, copy)
    (copy / "replay" / "1-a.jsonl").unlink()
    long_name = "d" * 249 + ".jsonl"
    write_jsonl(copy / "inbox" / long_name, 20, seed=4)
    assert train_here(copy, *REPLAY, "eval.holdout_fraction=0.1", "run.allow_config_change=true") == 0
    ledger = json.loads((newest(copy) / "ledger.json").read_text())
    last = ledger["files_done"][-1]
    assert (last["name"], last["examples_trained"], last["held_out"], last["status"]) == (long_name, 18, 2, "done")
    assert "Replay segment" in log_text(copy) and "1-a.jsonl cannot be read" in log_text(copy)
    cut = "4-" + "d" * 200 + ".jsonl"
    assert (copy / "eval" / "probes" / cut).is_file() and (copy / "replay" / cut).is_file()
    assert cut in json.loads((newest(copy) / "replay.json").read_text())["segments"]
    # A segment cut short (a disk that lost its tail) fails verify, naming it.
    (copy / "replay" / cut).write_bytes(b"")
    check = next(c for c in verify(copy).checks if c.name == "replay")
    assert not check.ok and f"replay/{cut} has 0 line(s)" in check.detail


def test_replayed_examples_are_packed_like_any_other(tmp_path):
    base = tmp_path / "run"
    three_files(base, lines=24)
    assert train_here(base, *REPLAY, "data.packing=true", "data.max_length=512") == 0
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    assert [r["examples_trained"] for r in ledger["files_done"]] == [24, 24, 24]
    first, *later = ledger["files_done"]
    assert first["replayed"] == 0 and all(r["replayed"] > 2 * (r["last_step"] - r["first_step"] + 1) for r in later)


def test_replay_lowers_forgetting_of_an_earlier_domain(tmp_path):
    """Two domains with no shared words, 30 steps on A then B: replaying a quarter of each batch
    keeps A (one seed; benchmarks/forgetting.py runs ten)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from forgetting import measure
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    without, replay = measure(tmp_path, 0, 0.0, threads=1), measure(tmp_path, 0, 0.25, threads=1)
    assert without["a_after_a"] == replay["a_after_a"]  # the same first file, bit for bit
    assert without["forgetting"] >= 1.0
    assert replay["forgetting"] <= 0.35 * without["forgetting"]
    assert replay["b_after_b"] - without["b_after_b"] < 0.15


def test_a_segment_the_disk_refuses_leaves_the_file_out_of_the_reservoir_and_the_run_goes_on(tmp_path, monkeypatch):
    import errno
    from types import SimpleNamespace

    from lit_continual.data import replay

    def full(path, data, durable=True):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(replay, "atomic", SimpleNamespace(write_bytes=full))  # segments only
    base = tmp_path / "run"
    three_files(base, lines=16)
    assert train_here(base, *REPLAY) == 0
    ledger = json.loads((newest(base) / "ledger.json").read_text())
    # Nothing ever joined the reservoir: no file replays, every file takes its plain 2 steps.
    assert [(r["first_step"], r["last_step"], r["replayed"]) for r in ledger["files_done"]] == \
        [(1, 2, 0), (3, 4, 0), (5, 6, 0)]
    state = json.loads((newest(base) / "replay.json").read_text())
    assert (state["seen"], state["segments"], state["slot_segment"]) == (0, [], [])
    assert "Replay: the examples of a.jsonl could not be added to the reservoir: OSError" in log_text(base)
    assert any("replay: a.jsonl was not added to the reservoir" in w for w in status(base)["warnings"])
