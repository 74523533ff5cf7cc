"""Retention of what a months-long run leaves behind: daily logs, failed/ and skipped/ files,
checkpoints set aside in current_model/.corrupt/.

- `logs/daemon_YYYYMMDD.log` whose day is older than `logging.keep_days` (the day in the
  name, local time, as logs.py writes it; the current day's file is never deleted);
- entries of `failed/`, `skipped/` and `current_model/.corrupt/` older than
  `daemon.keep_failed_days`. A file goes together with its report (`<name>.error.json` in
  failed/, `<name>.skipped.json` in skipped/).

Age is the time an entry arrived where it is: the newest of mtime and ctime. A file moved
into failed/ by a rename keeps the mtime its writer gave it (possibly months old) but gets a
new ctime; a `.corrupt/` directory is named after the UTC time it was set aside, which is
used when it parses. Only names these rules recognise are touched.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

from omegaconf import DictConfig

log = logging.getLogger("lit_continual")

DAY = 86400.0
EVERY_SECONDS = 3600.0  # maybe_run runs at most this often
LOG_NAME = re.compile(r"^daemon_(\d{8})\.log$")  # logs.DailyFileHandler's names
REPORTS = (".error.json", ".skipped.json")  # the reports claims.py writes beside a failed/skipped file
SET_ASIDE = re.compile(r"\.(\d{8}T\d{6}\.\d{6})Z$")  # checkpoints.newest_valid's .corrupt/ suffix
SHOWN = 10  # names listed per directory in the log line


class Housekeeping:
    """Deletes what is older than the configured days; `maybe_run` at most once an hour."""

    def __init__(self, cfg: DictConfig, base_dir: Path, every_seconds: float = EVERY_SECONDS) -> None:
        self.base_dir = base_dir
        self.log_days = float(cfg.logging.keep_days)
        self.failed_days = float(cfg.daemon.keep_failed_days)
        self.every_seconds = every_seconds
        self._last: float | None = None

    def maybe_run(self, now: float | None = None) -> list[Path] | None:
        """Run if it never ran or ran `every_seconds` ago (wall time `now`, default: now).

        Returns the deleted paths, or None if it was not due. Never raises for a file it could
        not delete (logged; tried again next time).
        """
        now = time.time() if now is None else now
        if self._last is not None and 0 <= now - self._last < self.every_seconds:
            return None
        self._last = now
        return self.run(now)

    def run(self, now: float) -> list[Path]:
        """Delete everything past its retention now; the deleted paths."""
        deleted = self._delete(self.base_dir / "logs", old_logs(self.base_dir / "logs", now, self.log_days),
                               f"logging.keep_days={self.log_days:g}")
        cutoff = now - self.failed_days * DAY
        why = f"daemon.keep_failed_days={self.failed_days:g}"
        for name in ("failed", "skipped"):
            deleted += self._delete(self.base_dir / name, old_files(self.base_dir / name, cutoff), why)
        corrupt = self.base_dir / "current_model" / ".corrupt"
        deleted += self._delete(corrupt, old_set_aside(corrupt, cutoff), why)
        return deleted

    def _delete(self, directory: Path, paths: list[Path], why: str) -> list[Path]:
        deleted = []
        for path in paths:
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                deleted.append(path)
            except FileNotFoundError:
                pass  # gone already (an operator cleaning up at the same time)
            except OSError as err:
                log.warning("Could not delete %s: %s", path, err)
        if deleted:
            names = sorted(p.name for p in deleted)
            more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
            log.info("Deleted %d old entr%s of %s/ (%s): %s%s", len(deleted), "y" if len(deleted) == 1 else "ies",
                     directory.relative_to(self.base_dir), why, ", ".join(names[:SHOWN]), more)
        return deleted


def old_logs(directory: Path, now: float, keep_days: float) -> list[Path]:
    """Daily log files whose whole day lies more than `keep_days` before `now` (never today's)."""
    today = datetime.fromtimestamp(now).date()
    oldest_kept = (datetime.fromtimestamp(now) - timedelta(days=keep_days)).date()
    found = []
    for path in _entries(directory):
        match = LOG_NAME.match(path.name)
        if not match:
            continue
        try:
            day = datetime.strptime(match.group(1), "%Y%m%d").date()
        except ValueError:
            continue
        if day < oldest_kept and day < today:
            found.append(path)
    return found


def old_files(directory: Path, cutoff: float) -> list[Path]:
    """Files (each with its report) that arrived before `cutoff`.

    A file and its report are one entry: deleted together, when the newer of the two is old.
    Directories are left alone.
    """
    groups: dict[str, list[Path]] = defaultdict(list)
    for path in _entries(directory):
        if path.is_dir() and not path.is_symlink():
            continue
        key = next((path.name[: -len(r)] for r in REPORTS if path.name.endswith(r)), path.name)
        groups[key].append(path)
    found = []
    for members in groups.values():
        ages = [_arrived(p) for p in members]
        if None not in ages and max(ages) < cutoff:
            found.extend(members)
    return found


def old_set_aside(directory: Path, cutoff: float) -> list[Path]:
    """Checkpoints in `.corrupt/` set aside before `cutoff` (the time in the name, else ctime/mtime)."""
    found = []
    for path in _entries(directory):
        match = SET_ASIDE.search(path.name)
        arrived = None
        if match:
            try:
                stamp = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S.%f")
                arrived = stamp.replace(tzinfo=timezone.utc).timestamp()
            except ValueError:
                pass
        arrived = _arrived(path) if arrived is None else arrived
        if arrived is not None and arrived < cutoff:
            found.append(path)
    return found


def _entries(directory: Path) -> list[Path]:
    try:
        return list(directory.iterdir())
    except FileNotFoundError:
        return []
    except OSError as err:
        log.warning("Could not list %s for retention: %s", directory, err)
        return []


def _arrived(path: Path) -> float | None:
    """When `path` got here: the newer of mtime and ctime (a rename sets ctime), or None if gone."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return max(st.st_mtime, st.st_ctime)
