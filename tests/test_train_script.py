"""`python train.py data=inbox_file ...`: one file as the next segment of the run, as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, log_text, newest, trainer_state, write_jsonl


def _train(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", "data=inbox_file", *overrides],
                          capture_output=True, text=True, timeout=300, cwd=REPO)


def test_train_py_runs_in_hydra_output_dir_then_continues_with_base_dir(tmp_path: Path):
    first = write_jsonl(tmp_path / "data" / "first.jsonl", 200, seed=1)
    second = write_jsonl(tmp_path / "data" / "second.jsonl", 100, seed=2)
    job_dir = tmp_path / "hydra_job"
    # Without base_dir the run lives in the Hydra job's output directory.
    result = _train(f"data.path={first}", f"hydra.run.dir={job_dir}", "data.batch_size=4")
    assert result.returncode == 0, result.stdout + result.stderr
    assert trainer_state(newest(job_dir))["global_step"] == 50
    assert first.exists(), "train.py never deletes its input file"

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
