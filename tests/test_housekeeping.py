"""Running unattended: retention of logs, failed/, skipped/ and .corrupt/; the systemd unit."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lit_continual.housekeeping import Housekeeping

from .conftest import REPO

DAY = 86400.0
UNIT = REPO / "deploy" / "lit-continual.service"


def _cfg(keep_days: float = 30, keep_failed_days: float = 30):
    return OmegaConf.create({"logging": {"keep_days": keep_days}, "daemon": {"keep_failed_days": keep_failed_days}})


def _file(path: Path, mtime: float, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def deleted_lines():
    """The lines housekeeping logs (the daemon's logger may not propagate to caplog)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("lit_continual")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def test_old_logs_failed_skipped_and_corrupt_are_deleted_recent_ones_stay(tmp_path: Path, deleted_lines):
    # Files get their ctime now; "now" for housekeeping is 40 days ahead, so a file whose mtime
    # is set 40 days before that is old by both mtime and ctime (ctime cannot be set back).
    now = time.time() + 40 * DAY
    old, recent = now - 40 * DAY, now - 1 * DAY
    logs = tmp_path / "logs"
    today = datetime.fromtimestamp(now).date()
    for days_back in (0, 5, 30, 31, 45):
        _file(logs / f"daemon_{today - timedelta(days=days_back):%Y%m%d}.log", old)
    _file(logs / "notes.txt", old)  # not a daily log: never touched
    failed = tmp_path / "failed"
    _file(failed / "a.jsonl", old), _file(failed / "a.jsonl.error.json", old)
    _file(failed / "b.jsonl", old), _file(failed / "b.jsonl.error.json", recent)  # arrived recently
    _file(failed / "c.jsonl", recent), _file(failed / "c.jsonl.error.json", recent)
    (failed / "a-directory").mkdir()
    skipped = tmp_path / "skipped"
    _file(skipped / "d.jsonl", old), _file(skipped / "d.jsonl.skipped.json", old)
    _file(skipped / "e.jsonl", old), _file(skipped / "e.jsonl.skipped.json", recent)
    corrupt = tmp_path / "current_model" / ".corrupt"
    for step, days_back in ((5, 40), (9, 2)):
        stamp = datetime.fromtimestamp(now - days_back * DAY, timezone.utc)
        _file(corrupt / f"checkpoint-{step}.{stamp:%Y%m%dT%H%M%S.%f}Z" / "optimizer.pt", recent)

    deleted = Housekeeping(_cfg(), tmp_path).run(now)

    gone = {p.relative_to(tmp_path).as_posix() for p in deleted}
    assert gone == {f"logs/daemon_{today - timedelta(days=31):%Y%m%d}.log",
                    f"logs/daemon_{today - timedelta(days=45):%Y%m%d}.log",
                    "failed/a.jsonl", "failed/a.jsonl.error.json", "skipped/d.jsonl", "skipped/d.jsonl.skipped.json",
                    f"current_model/.corrupt/{next(p.name for p in deleted if 'checkpoint-5' in p.name)}"}
    assert all(not p.exists() for p in deleted)
    assert sorted(p.name for p in logs.iterdir()) == sorted(
        [f"daemon_{today - timedelta(days=d):%Y%m%d}.log" for d in (0, 5, 30)] + ["notes.txt"])
    assert sorted(p.name for p in failed.iterdir()) == ["a-directory", "b.jsonl", "b.jsonl.error.json",
                                                         "c.jsonl", "c.jsonl.error.json"]
    assert sorted(p.name for p in skipped.iterdir()) == ["e.jsonl", "e.jsonl.skipped.json"]
    assert [p.name.split(".")[0] for p in corrupt.iterdir()] == ["checkpoint-9"]
    assert any("2 old entries of logs/ (logging.keep_days=30)" in line for line in deleted_lines)
    assert any("of failed/ (daemon.keep_failed_days=30): a.jsonl, a.jsonl.error.json" in line
               for line in deleted_lines)


def test_todays_log_and_a_file_just_moved_into_failed_stay(tmp_path: Path):
    now = time.time()
    todays = _file(tmp_path / "logs" / f"daemon_{datetime.fromtimestamp(now):%Y%m%d}.log", now - 90 * DAY)
    # A rename into failed/ keeps the writer's old mtime; its ctime says it arrived now.
    moved = _file(tmp_path / "inbox" / "old.jsonl", now - 90 * DAY)
    target = tmp_path / "failed" / "old.jsonl"
    target.parent.mkdir()
    moved.rename(target)
    assert Housekeeping(_cfg(keep_days=0.001, keep_failed_days=1), tmp_path).run(now) == []
    assert todays.exists() and target.exists()


def test_maybe_run_runs_at_start_then_at_most_hourly(tmp_path: Path):
    keeper = Housekeeping(_cfg(), tmp_path)
    start = time.time()
    assert keeper.maybe_run(start) == []  # ran (nothing to delete); missing directories are fine
    assert keeper.maybe_run(start + 600) is None
    _file(tmp_path / "skipped" / "x.jsonl", start - 90 * DAY)
    assert keeper.maybe_run(start + 3599) is None
    assert [p.name for p in keeper.maybe_run(start + 3600 + 100 * DAY)] == ["x.jsonl"]


def _unit(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values]}} (systemd allows a key several times, unlike configparser)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_stops_gracefully_and_does_not_restart_on_exit_2_or_3():
    unit = _unit()
    service = {key: values[-1] for key, values in unit["Service"].items()}
    assert service["Type"] in ("simple", "exec")
    assert service["KillSignal"] == "SIGTERM" and service["KillMode"] in ("mixed", "process")  # one SIGTERM, main PID
    assert int(service["TimeoutStopSec"]) >= 120
    assert service["Restart"] == "on-failure" and int(service["RestartSec"]) > 0
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "3"}
    base_dir = "${LIT_CONTINUAL_BASE_DIR}"
    assert any(v.startswith("LIT_CONTINUAL_BASE_DIR=/") for v in unit["Service"]["Environment"])
    assert service["ExecStartPre"].split() == ["/bin/rm", "-f", f"{base_dir}/.stop"]
    command = service["ExecStart"].split()
    assert command[0].startswith("/") and command[0].endswith("/bin/lit-continual")
    assert command[1:4] == ["daemon", "--base-dir", base_dir]
    max_crashes = OmegaConf.load(REPO / "src/lit_continual/conf/daemon/default.yaml").max_crashes
    assert int(unit["Unit"]["StartLimitBurst"][-1]) > max_crashes  # the crash-loop rule acts first
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_unit_passes_systemd_analyze_verify(tmp_path: Path):
    # verify wants the binary and the account to exist: point them at ones that do.
    text = UNIT.read_text().replace("/opt/lit-continual/venv/bin/lit-continual", shutil.which("true"))
    text = text.replace("User=lit-continual", "User=root").replace("Group=lit-continual", "Group=root")
    copy = tmp_path / "lit-continual.service"
    copy.write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
