"""`lit-continual sample-data`: the training files are the same with or without `--eval`, and
the eval file is held out (none of its lines is a training line), distinct and reproducible."""

from __future__ import annotations

import json
from pathlib import Path

from lit_continual.cli import main

SIZE = ["--files", "2", "--lines", "300"]


def texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def test_eval_option_writes_a_held_out_fixed_eval_file_beside_the_inbox(tmp_path: Path, capsys):
    assert main(["sample-data", str(tmp_path / "plain" / "inbox"), *SIZE]) == 0
    assert main(["sample-data", str(tmp_path / "run" / "inbox"), *SIZE, "--eval", "50"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "run" / "eval" / "fixed.jsonl")
    assert not (tmp_path / "plain" / "eval").exists()
    trained = set()
    for name in ("batch_1.jsonl", "batch_2.jsonl"):
        ours = (tmp_path / "run" / "inbox" / name).read_bytes()
        assert ours == (tmp_path / "plain" / "inbox" / name).read_bytes(), "--eval changes no training line"
        trained.update(texts(tmp_path / "run" / "inbox" / name))
    held_out = texts(tmp_path / "run" / "eval" / "fixed.jsonl")
    assert len(held_out) == len(set(held_out)) == 50 and not trained & set(held_out)
    assert main(["sample-data", str(tmp_path / "again" / "inbox"), *SIZE, "--eval", "50"]) == 0
    assert texts(tmp_path / "again" / "eval" / "fixed.jsonl") == held_out


def test_eval_larger_than_the_grammar_allows_is_refused_before_writing(tmp_path: Path, capsys):
    code = main(["sample-data", str(tmp_path / "run" / "inbox"), "--files", "1", "--lines", "10", "--eval", "20000"])
    assert code == 2 and "--eval 20000: only " in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
