"""The daemon as an operator meets it: idle waiting, a file landing, signals, .stop, bad config."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import (
    REPO,
    daemon_cmd,
    log_text,
    newest,
    start_daemon,
    status,
    under_inbox,
    wait_for,
    write_jsonl,
)


def test_idle_daemon_trains_a_landing_file_then_stops_on_sigint(base: Path):
    proc = start_daemon(base)
    try:
        wait_for(lambda: (base / "status" / "training_status.json").exists() and status(base)["status"] == "idle",
                 120, "idle status")
        assert status(base)["current_step"] == 0 and status(base)["total_steps"] == 0
        write_jsonl(base / "inbox" / "landed.jsonl.part", 40, seed=5)
        (base / "inbox" / "landed.jsonl.part").rename(base / "inbox" / "landed.jsonl")
        wait_for(lambda: not under_inbox(base, "landed.jsonl"), 60, "file trained and deleted")
        wait_for(lambda: status(base)["status"] == "idle", 30, "idle again")
        st = status(base)
        assert st["current_step"] == 5 == st["total_steps"] and st["batch_number"] == 1
        assert newest(base).name == "checkpoint-5"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    assert status(base)["status"] == "stopped"
    assert "Received SIGINT" in log_text(base)


def test_second_signal_exits_at_once_without_checkpoint(base: Path):
    write_jsonl(base / "inbox" / "big.jsonl", 8000, seed=6)
    proc = start_daemon(base, "checkpoint.every_n_steps=100000")
    try:
        wait_for(lambda: (base / "status" / "training_status.json").exists()
                 and status(base)["status"] == "training", 120, "training")
        # Two different signals (the kernel merges a pending duplicate of the same one); whichever
        # Python handles second exits at once: 130 for SIGINT, 143 for SIGTERM.
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) in (130, 143)
    finally:
        proc.kill()
    assert not list((base / "current_model").glob("checkpoint-*"))
    assert under_inbox(base, "big.jsonl")


def test_stop_file_present_at_start_exits_before_loading_model(base: Path):
    (base / "inbox").mkdir(parents=True)
    write_jsonl(base / "inbox" / "waiting.jsonl", 10)
    (base / ".stop").touch()
    result = subprocess.run(daemon_cmd(base), capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0
    assert status(base)["status"] == "stopped"
    assert not (base / "base_model").exists(), "the model must not be loaded"
    assert (base / ".stop").exists(), "the daemon never deletes .stop"
    assert (base / "inbox" / "waiting.jsonl").exists()
    assert ".stop is present: exiting without training" in log_text(base)


def _daemon(base: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(daemon_cmd(base, *overrides), capture_output=True, text=True, timeout=60, cwd=REPO)


def test_bad_value_exits_2_naming_the_key(base: Path):
    result = _daemon(base, "data.batch_size=0")
    assert result.returncode == 2
    assert "data.batch_size" in result.stderr
    assert not base.exists(), "nothing is written under DIR before the config is valid"


def test_unknown_key_exits_2_naming_it(base: Path):
    result = _daemon(base, "data.batchsize=4")
    assert result.returncode == 2
    assert "batchsize" in result.stderr


def test_hf_model_path_must_exist_locally(base: Path):
    result = _daemon(base, "model=hf", f"model.path={base / 'missing_model'}")
    assert result.returncode == 2
    assert "model.path" in result.stderr


def test_python_dash_m_and_console_script_share_the_cli():
    script = str(Path(sys.executable).parent / "lit-continual")
    for cmd in ([sys.executable, "-m", "lit_continual", "--help"], [script, "--help"]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "daemon" in result.stdout


def test_progress_bar_on_a_terminal_plain_lines_otherwise(base: Path):
    import os
    import pty

    write_jsonl(base / "inbox" / "tty.jsonl", 160, seed=4)
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(daemon_cmd(base, "daemon.exit_when_idle=true"), stdin=secondary,
                            stdout=secondary, stderr=secondary, cwd=REPO)
    os.close(secondary)
    output = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(timeout=60) == 0
    text = output.decode(errors="replace")
    assert "━" in text and "tok/s" in text and "20/20" in text  # rich bar: step within file / total
    assert "━" not in log_text(base) and "tok/s" not in log_text(base), "the bar is for terminals only"
