"""What a newcomer meets first: the README's commands run as written, `make demo` prints what
the README shows and never deletes a directory it did not make, a quiet start, --version."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from lit_continual import __version__
from tests.conftest import OUR_LINE, REPO, status, wait_for, write_jsonl

README = (REPO / "README.md").read_text()


def block(name: str) -> str:
    """The fenced block that follows `<!-- name -->` in the README."""
    found = re.search(rf"<!-- {name} -->\n```\w*\n(.*?)\n```", README, re.S)
    assert found, f"README has no <!-- {name} --> block"
    return found.group(1)


def test_readme_is_a_first_read_and_its_links_resolve():
    # A manual of the two commands, every group, command and figure, and one real operator
    # session; the details live in docs/.
    assert len(README.splitlines()) < 350
    for target in re.findall(r"\]\(([^)#]+)\)", README):
        if not target.startswith("http"):
            assert (REPO / target).exists(), f"README links to a missing {target}"
    for word in ("the seed", "issue", "this disk", "this machine", "session"):
        assert word not in README.lower(), f"README speaks of how it is made: {word!r}"


def test_readme_quickstart_and_checkpoint_example_run_as_written(tmp_path: Path):
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    write_jsonl(tmp_path / "my_data.jsonl", 40, seed=4)
    daemon = None
    try:
        for line in block("quickstart").splitlines():
            command = line.split("#")[0].strip()
            if command.startswith("make "):
                subprocess.run(command, shell=True, cwd=REPO, check=True, capture_output=True, timeout=600)
            elif command.endswith("&"):
                # `exec`: the daemon is the process we hold (a kill must not orphan it behind a shell).
                daemon = subprocess.Popen(f"exec {command[:-1]}", shell=True, cwd=tmp_path, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True)
                wait_for(lambda: (tmp_path / "run" / "status" / "training_status.json").exists()
                         and status(tmp_path / "run")["status"] == "idle"
                         and status(tmp_path / "run")["current_step"] == 5, 120, "the file to be trained")
            elif command.startswith("sleep "):
                continue  # the wait above is the sleep's purpose, without its fixed cost
            elif command.startswith("jq") and shutil.which("jq") is None:
                continue  # jq is not installed here: the status file is checked below instead
            else:
                shown = subprocess.run(command, shell=True, cwd=tmp_path, check=True, capture_output=True,
                                       text=True, timeout=60)
                if command.startswith("jq"):
                    assert json.loads(shown.stdout) == {"status": "idle", "current_step": 5, "total_steps": 5,
                                                        "current_file": None}
        assert daemon is not None and daemon.wait(timeout=60) == 0
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert not (tmp_path / "run" / "inbox" / "my_data.jsonl").exists()
    err = daemon.stderr.read()
    lines = [line for line in err.splitlines() if line.strip()]
    assert all(OUR_LINE.match(line) for line in lines), "\n".join(x for x in lines if not OUR_LINE.match(x))
    assert f"lit-continual starting in {tmp_path / 'run'} (pid " in lines[0] and __version__ in lines[0]
    assert "Will train model tiny on every *.jsonl file that lands in" in lines[1] and "(1 waiting now)" in lines[1]

    shown = subprocess.run([sys.executable, "-c", block("generate")], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("The cat") and len(shown.stdout) > len("The cat")


def test_make_demo_prints_the_readme_report_and_never_deletes_a_run_it_did_not_make(tmp_path: Path):
    theirs = tmp_path / "my_run"
    (theirs / "current_model").mkdir(parents=True)
    refused = subprocess.run(["make", "-s", "demo", f"DEMO_DIR={theirs}"], cwd=REPO, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0 and "not deleting it" in refused.stderr
    assert (theirs / "current_model").is_dir()

    demo = tmp_path / "demo"
    for _ in range(2):  # the second time it replaces its own demo
        made = subprocess.run(["make", "-s", "demo", f"DEMO_DIR={demo}"], cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert made.returncode == 0, made.stdout + made.stderr
    for line in block("demo-report").splitlines():
        assert line in made.stdout, f"make demo did not print the README's line: {line!r}"


def test_version_is_one_fact_and_sample_data_options_are_explained():
    shown = subprocess.run([sys.executable, "-m", "lit_continual", "--version"], capture_output=True, text=True,
                           timeout=60)
    assert shown.stdout.strip() == f"lit-continual {__version__}"
    assert importlib.metadata.version("lit-continual") == __version__
    helped = subprocess.run([sys.executable, "-m", "lit_continual", "sample-data", "--help"], capture_output=True,
                            text=True, timeout=60).stdout
    for option in ("--files", "--lines", "--seed", "--prefix", "--eval"):
        assert re.search(rf"{option} \w+\s+\S", helped), f"{option} has no help text"


def test_every_configuration_example_in_the_readme_composes_and_validates(tmp_path: Path):
    from lit_continual.config import compose, prepare

    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[3] for line in section.splitlines() if line.startswith("| `")]
    examples = [code for cell in rows for code in re.findall(r"`([^`]+)`", cell)]
    assert len(examples) >= 12
    for example in examples:
        extra = [f"model.cache_dir={tmp_path}"] if "smollm2" in example else []
        cfg = prepare(compose([f"base_dir={tmp_path / 'run'}", *example.split(), *extra]), check_paths=False)
        assert cfg is not None, example


def test_the_readme_operator_commands_are_real_commands():
    """Every `$ lit-continual ...` line of the README's operator example parses as our CLI would
    run it, and each command its section promises is in it (tests/test_operator_session.py runs
    the same sequence against a real daemon)."""
    from lit_continual.cli import parser

    shown = [line[2:].split() for line in block("operator-commands").splitlines() if line.startswith("$ ")]
    assert {argv[1] for argv in shown} >= {"status", "pause", "resume", "skip", "snapshot", "consolidate", "verify",
                                          "history", "stop"}
    for argv in shown:
        assert argv[0] == "lit-continual"
        parser().parse_args(argv[1:])
    assert "RESULT: PASS" in block("operator-commands")
