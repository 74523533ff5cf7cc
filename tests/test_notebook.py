"""notebooks/run_report.ipynb runs headless (nbclient, matplotlib's Agg backend, executed in
memory: nothing is written into the repository) against a real run with an eval set, probes and
samples, and against a directory with no run: each section draws its figure or says what is
missing in a sentence."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO, train_here, write_jsonl

NOTEBOOK = REPO / "notebooks" / "run_report.ipynb"
FIGURES = 4  # training loss, learning rate, eval loss, forgetting matrix


@pytest.fixture(scope="module")
def report_run(tmp_path_factory) -> Path:
    """Two 16-line files (4 steps each at batch 4) with a fixed eval file, probes and a sample prompt."""
    base = tmp_path_factory.mktemp("report") / "run"
    now = time.time()
    write_jsonl(base / "inbox" / "first.jsonl", 16, seed=5, mtime=now - 20)
    write_jsonl(base / "inbox" / "second.jsonl", 16, seed=6, mtime=now - 10)
    write_jsonl(base / "eval" / "fixed.jsonl", 8, seed=9)
    assert train_here(base, "daemon.exit_when_idle=true", "data.batch_size=4", "logging.every_n_steps=1",
                      "eval.holdout_fraction=0.1", "eval.sample_prompts=[The cat]", "eval.sample_max_new_tokens=4") == 0
    # The daemon's own matrix (never a stand-in: the notebook must read what the daemon writes).
    assert json.loads((base / "eval" / "forgetting.json").read_text())["rows"]
    return base


def execute(base: Path, cwd: Path, monkeypatch) -> tuple[list[dict], str]:
    """Run the stored notebook on `base` in a fresh kernel; its outputs and all its printed text."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("LIT_CONTINUAL_BASE_DIR", str(base))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    return outputs, text


def test_report_plots_loss_lr_eval_and_forgetting_and_names_the_files(report_run: Path, tmp_path: Path,
                                                                       monkeypatch):
    outputs, text = execute(report_run, tmp_path, monkeypatch)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == FIGURES
    assert "#1 first.jsonl" in text and "#2 second.jsonl" in text and "checkpoint-8, global step 8" in text
    assert "after #2 second.jsonl (step 8): " in text and "(step 8): -" not in text, "eval loss at each file end"
    assert "Probe losses after #2 second.jsonl" in text
    assert "step 8: 'The cat' -> " in text
    assert "No " not in text, text


def test_report_of_a_directory_without_a_run_says_what_is_missing(tmp_path: Path, monkeypatch):
    outputs, text = execute(tmp_path / "nowhere", tmp_path, monkeypatch)
    assert not [o for o in outputs if "image/png" in o.get("data", {})]
    assert "does not exist" in text and "No training loss yet" in text and "No eval loss" in text
    assert "no probes (eval.holdout_fraction=0)" in text and "No status file" in text


def test_the_stored_notebook_has_no_outputs_and_needs_only_json_and_matplotlib():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    imported = {line.split()[1].split(".")[0] for cell in code for line in cell.source.splitlines()
                if line.startswith(("import ", "from "))}
    assert imported <= {"io", "json", "math", "os", "pathlib", "re", "matplotlib", "IPython"}, imported
