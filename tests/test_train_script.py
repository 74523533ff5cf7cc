"""`python train.py data=inbox_file ...`: one file as the next segment of the run, as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import OUR_LINE, REPO, log_text, newest, trainer_state, write_jsonl


def _train(*overrides: str) -> subprocess.CompletedProcess:
    # From a scratch directory: Hydra's default outputs/ must never land in the repository.
    return subprocess.run([sys.executable, str(REPO / "train.py"), "data=inbox_file", *overrides],
                          capture_output=True, text=True, timeout=300, cwd=tempfile.mkdtemp(prefix="train-py-"))


def test_train_py_runs_in_hydra_output_dir_then_continues_with_base_dir(tmp_path: Path):
    first = write_jsonl(tmp_path / "data" / "first.jsonl", 200, seed=1)
    second = write_jsonl(tmp_path / "data" / "second.jsonl", 100, seed=2)
    job_dir = tmp_path / "hydra_job"
    # Without base_dir the run lives in the Hydra job's output directory.
    result = _train(f"data.path={first}", f"hydra.run.dir={job_dir}", "data.batch_size=4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert trainer_state(newest(job_dir))["global_step"] == 50
    assert first.exists(), "train.py never deletes its input file"
    printed = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert all(OUR_LINE.match(line) for line in printed), "only our own log lines, once (no banners, no Hydra copy)"

    result = _train(f"data.path={second}", f"base_dir={job_dir}", "data.batch_size=4",
                    f"hydra.run.dir={tmp_path / 'other'}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert trainer_state(newest(job_dir))["global_step"] == 75
    assert second.exists()
    assert "Resuming from checkpoint: checkpoint-50" in log_text(job_dir)
    ledger = json.loads((newest(job_dir) / "ledger.json").read_text())
    assert [(r["name"], r["first_step"], r["last_step"]) for r in ledger["files_done"]] == [
        ("first.jsonl", 1, 50), ("second.jsonl", 51, 75)]


def test_train_py_missing_file_is_a_config_error_naming_the_key(tmp_path: Path):
    result = _train(f"data.path={tmp_path / 'nope.jsonl'}", f"base_dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert "data.path" in result.stdout + result.stderr


def test_multirun_sweep_jobs_never_share_state(tmp_path: Path):
    data = write_jsonl(tmp_path / "data.jsonl", 64, seed=3)
    sweep = tmp_path / "sweep"
    result = subprocess.run([sys.executable, "train.py", "-m", "data=inbox_file", f"data.path={data}",
                             "optim.lr=1e-3,3e-3", "logging.every_n_steps=1", f"hydra.sweep.dir={sweep}"],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    for job in ("0", "1"):
        assert trainer_state(newest(sweep / job))["global_step"] == 8
    lrs = {json.loads((sweep / job / "current_model" / "checkpoint-8" / "trainer_state.json").read_text())
           ["log_history"][-1]["learning_rate"] for job in ("0", "1")}
    assert len(lrs) == 2
