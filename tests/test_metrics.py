"""The Prometheus endpoint: scraped over HTTP from a real daemon, and its collector on its own."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from lit_continual import __version__
from lit_continual.metrics import StatusCollector, StepRate
from lit_continual.status import Status, now

from .conftest import log_text, start_daemon, status, train_here, wait_for, write_jsonl

STEPS = 10  # 80 lines at batch 8
NAMES = ["lit_continual_info", "lit_continual_status", "lit_continual_global_step",
         "lit_continual_steps_per_second", "lit_continual_tokens_per_second", "lit_continual_loss",
         "lit_continual_learning_rate", "lit_continual_queue_files", "lit_continual_warnings",
         "lit_continual_seconds_since_last_step", "lit_continual_seconds_since_last_checkpoint",
         "lit_continual_files_done_total", "lit_continual_files_failed_total",
         "lit_continual_files_skipped_total", "lit_continual_snapshots",
         "lit_continual_nonfinite_steps_total"]


def parse(text: str) -> dict[str, float]:
    """{sample name (with `{label="value"}` for labelled samples): value}."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        return parse(response.read().decode())


def status_field(base: Path, key: str, proc=None):
    if proc is not None and proc.poll() is not None:
        raise AssertionError(f"the daemon exited {proc.returncode}:\n{proc.stdout.read()}")
    try:
        return status(base).get(key)
    except (OSError, ValueError):  # not written yet
        return None


def test_daemon_serves_live_metrics_that_grow_while_idle(base: Path):
    write_jsonl(base / "inbox" / "a.jsonl", STEPS * 8, seed=3)
    proc = start_daemon(base, "metrics.port=0", "logging.every_n_steps=5")
    try:
        port = wait_for(lambda: status_field(base, "metrics_port", proc), 60, "metrics_port in the status")
        early = scrape(port)  # served from the start, before the model is even loaded
        assert early[f'lit_continual_info{{version="{__version__}"}}'] == 1
        wait_for(lambda: status_field(base, "status", proc) == "idle" and status_field(base, "last_checkpoint")
                 == f"checkpoint-{STEPS}", 120, "the file trained and checkpointed, daemon idle")
        first = scrape(port)
        time.sleep(1.5)
        second = scrape(port)
        fields = status(base)
    finally:
        (base / ".stop").touch()
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"Metrics on http://127.0.0.1:{port}/metrics" in log_text(base)
    assert set(NAMES) <= {name.split("{")[0] for name in second}
    assert first["lit_continual_global_step"] == fields["current_step"] == STEPS
    assert first['lit_continual_status{status="idle"}'] == 1 and first['lit_continual_status{status="training"}'] == 0
    assert first["lit_continual_loss"] == pytest.approx(fields["loss"])
    assert first["lit_continual_learning_rate"] == pytest.approx(fields["learning_rate"])
    assert first["lit_continual_tokens_per_second"] > 0 and first["lit_continual_queue_files"] == 0
    # No step while idle: the ages grow between scrapes, the step does not.
    assert second["lit_continual_seconds_since_last_step"] >= first["lit_continual_seconds_since_last_step"] + 1.4
    assert (second["lit_continual_seconds_since_last_checkpoint"]
            >= first["lit_continual_seconds_since_last_checkpoint"] + 1.4)
    assert second["lit_continual_global_step"] == STEPS and second["lit_continual_steps_per_second"] == 0
    assert second["process_resident_memory_bytes"] > 0
    with pytest.raises(urllib.error.URLError):  # the port is closed with the daemon
        scrape(port)


def test_taken_port_exits_2_before_training(base: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write_jsonl(base / "inbox" / "a.jsonl", 8)
        assert train_here(base, f"metrics.port={port}") == 2
    fields = json.loads((base / "status" / "training_status.json").read_text())
    assert fields["status"] == "error" and "already in use" in fields["error"]
    assert f"metrics.port={port}" in fields["error"]
    assert (base / "inbox" / "a.jsonl").exists() and not list((base / "current_model").iterdir())


def collect(status: Status, clock) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(StatusCollector(status, clock=clock))
    return parse(generate_latest(registry).decode())


def test_ages_absent_before_the_first_step_and_computed_at_scrape_time(tmp_path: Path):
    st = Status(tmp_path)
    st.update(current_step=500, status="starting")  # resumed at 500, no step yet in this process
    samples = collect(st, time.time)
    assert samples["lit_continual_global_step"] == 500
    for absent in ("lit_continual_seconds_since_last_step", "lit_continual_seconds_since_last_checkpoint",
                   "lit_continual_steps_per_second", "lit_continual_loss"):
        assert absent not in samples
    st.update(last_step_at=now(), last_checkpoint_at=now(), nonfinite_steps=2, files_done=7)
    later = collect(st, lambda: time.time() + 900)
    assert later["lit_continual_seconds_since_last_step"] == pytest.approx(900, abs=5)
    assert later["lit_continual_seconds_since_last_checkpoint"] == pytest.approx(900, abs=5)
    assert later["lit_continual_nonfinite_steps_total"] == 2 and later["lit_continual_files_done_total"] == 7


def test_steps_per_second_over_the_window_falls_to_zero_when_steps_stop():
    rate = StepRate(window=60)
    assert rate.observe(0.0, 100) is None
    assert rate.observe(10.0, 150) == pytest.approx(5.0)
    assert rate.observe(20.0, 200) == pytest.approx(5.0)
    for t in (40.0, 60.0, 80.0, 100.0):
        rate.observe(t, 200)  # hung
    assert rate.observe(120.0, 200) == 0.0
    assert rate.observe(130.0, 50) is None  # the step went back (another run): start over


def test_nonfinite_guard_reports_its_count_to_the_status(tmp_path: Path):
    from lit_continual.callbacks.nonfinite import NonFiniteGuard

    st = Status(tmp_path)
    guard = NonFiniteGuard(3, st)
    guard.load_state_dict({"consecutive": 0, "skipped_total": 4})  # restored from the checkpoint
    assert st.fields["nonfinite_steps"] == 4
    assert collect(st, time.time)["lit_continual_nonfinite_steps_total"] == 4


def test_every_metric_is_documented(tmp_path: Path):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "service.md").read_text()
    names = {name.split("{")[0] for name in collect(Status(tmp_path), time.time)}
    assert names == set(NAMES) - {"lit_continual_steps_per_second", "lit_continual_seconds_since_last_step",
                                  "lit_continual_seconds_since_last_checkpoint", "lit_continual_loss",
                                  "lit_continual_learning_rate", "lit_continual_tokens_per_second"}
    assert [name for name in NAMES if f"`{name}" not in doc] == []
