"""Log lines survive hostile file names; `report` fails a checkpoint its manifest does not vouch for."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from lit_continual import logs
from lit_continual.cli import main
from tests.conftest import newest, train_here, write_jsonl

# A file name as Python sees it -> as the log must show it, on one line.
HOSTILE = {
    "bad\udcff name.jsonl": r"bad\xff name.jsonl",  # byte 0xff, not UTF-8 (surrogateescape)
    "two\nlines.jsonl": r"two\nlines.jsonl",
    "esc\x1b[31m.jsonl": r"esc\x1b[31m.jsonl",  # a terminal colour code
    "cr\rpara\u2028.jsonl": r"cr\rpara\u2028.jsonl",
    "back\\slash.jsonl": r"back\\slash.jsonl",
}
NON_UTF8 = os.fsdecode(b"caf\xe9.jsonl")


@contextmanager
def logging_and_signals_restored() -> Iterator[None]:
    """setup() and the daemon take over loggers, warnings and signals: give them back to pytest."""
    loggers = [logging.getLogger("lit_continual"), logging.getLogger("py.warnings")]
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for logger, old, level, propagate in saved:
            for handler in logger.handlers:
                if handler not in old:
                    handler.close()
            logger.handlers[:] = old
            logger.setLevel(level)
            logger.propagate = propagate
        logging.captureWarnings(False)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


@pytest.fixture
def daily_log(tmp_path: Path) -> Iterator[logging.Logger]:
    with logging_and_signals_restored():
        yield logs.setup(tmp_path)


def log_lines(base: Path) -> list[str]:
    """The daily log's lines, read as strict UTF-8: a line that is not would fail here."""
    return [line for path in sorted((base / "logs").glob("daemon_*.log"))
            for line in path.read_bytes().decode("utf-8").split("\n") if line]


def message(line: str) -> str:
    """The message part of `<date> <time> <LEVEL> <message>`."""
    return line.split(" ", 3)[3]


def test_hostile_file_names_log_one_escaped_line_each(tmp_path: Path, daily_log, capsys):
    for name in HOSTILE:
        daily_log.warning("Ignoring inbox/%s: not a .jsonl file", name)
    expected = [f"Ignoring inbox/{shown}: not a .jsonl file" for shown in HOSTILE.values()]
    assert [message(line) for line in log_lines(tmp_path)] == expected
    err = capsys.readouterr().err
    assert "Logging error" not in err
    assert [message(line) for line in err.splitlines()] == expected


def test_traceback_keeps_its_lines_under_an_escaped_message(tmp_path: Path, daily_log, capsys):
    try:
        raise ValueError("cannot read bad\udcff esc\x1b.jsonl")  # undecodable: the record was lost
    except ValueError:
        daily_log.exception("Training failed on %s", "two\nlines.jsonl")
    lines = log_lines(tmp_path)
    assert message(lines[0]) == r"Training failed on two\nlines.jsonl"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == r"ValueError: cannot read bad\xff esc\x1b.jsonl"
    assert len(lines) > 3
    assert "Logging error" not in capsys.readouterr().err


def test_captured_warning_is_one_escaped_line(tmp_path: Path, daily_log, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        logging.captureWarnings(True)  # catch_warnings() put back the showwarning setup() replaced
        warnings.warn_explicit(f"odd {NON_UTF8}\nname", UserWarning, "inbox.py", 7)
    lines = log_lines(tmp_path)
    assert len(lines) == 1
    assert message(lines[0]).startswith(r"inbox.py:7: UserWarning: odd caf\xe9.jsonl\nname")
    assert "Logging error" not in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One real in-process daemon run on the tiny model, over a normal and a non-UTF-8 name."""
    base = tmp_path_factory.mktemp("report") / "run"
    write_jsonl(base / "inbox" / "a.jsonl", 16, seed=1)
    write_jsonl(base / "inbox" / NON_UTF8, 16, seed=2)
    with logging_and_signals_restored():
        code = train_here(base, "daemon.exit_when_idle=true", "data.batch_size=4",
                          "checkpoint.every_n_steps=2")
    assert code == 0
    return base


def test_daemon_logs_a_non_utf8_file_name_escaped(trained: Path):
    lines = log_lines(trained)
    assert any(r"caf\xe9.jsonl" in line for line in lines), "its lines were dropped"
    assert not any("Logging error" in line for line in lines)


def report(base: Path, capsys) -> tuple[int, str]:
    code = main(["report", "--base-dir", str(base)])
    return code, capsys.readouterr().out


def test_report_passes_an_intact_run(trained: Path, capsys):
    code, out = report(trained, capsys)
    assert code == 0, out
    assert out.rstrip().endswith("RESULT: PASS")
    assert "PROBLEM" not in out
    assert r"caf\xe9.jsonl: 16 examples" in out, "a non-UTF-8 name is shown escaped, not a crash"


def test_report_fails_a_truncated_adapter(trained: Path, tmp_path: Path, capsys):
    base = shutil.copytree(trained, tmp_path / "run", symlinks=True)
    adapter = newest(base) / "adapter_model.safetensors"
    size = adapter.stat().st_size
    os.truncate(adapter, size - 5)
    code, out = report(base, capsys)
    assert code == 1
    assert out.rstrip().endswith("RESULT: FAIL")
    damaged = next(line for line in out.splitlines() if line.startswith(f"  {newest(base).name}:"))
    assert f"PROBLEM: adapter_model.safetensors has {size - 5} bytes, manifest says {size}" in damaged
    assert "Files consumed (ledger of checkpoint-" in out, "the newest intact checkpoint's ledger"


def test_report_fails_unreadable_trainer_state_without_crashing(trained: Path, tmp_path: Path, capsys):
    base = shutil.copytree(trained, tmp_path / "run", symlinks=True)
    (newest(base) / "trainer_state.json").write_text("{not json")
    code, out = report(base, capsys)
    assert code == 1
    damaged = next(line for line in out.splitlines() if line.startswith(f"  {newest(base).name}:"))
    assert "global_step=?" in damaged and "PROBLEM: trainer_state.json" in damaged
    assert out.rstrip().endswith("RESULT: FAIL")
