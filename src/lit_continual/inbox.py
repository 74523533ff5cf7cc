"""The inbox folder: which files are waiting, which have settled, and moving bad ones to failed/."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from lit_continual import atomic

log = logging.getLogger("lit_continual")

SUFFIX = ".jsonl"
IGNORED_SUFFIXES = (".tmp", ".part")


class Inbox:
    """`DIR/inbox/*.jsonl`, oldest first (mtime, then name); a file is ready once settled."""

    def __init__(self, base_dir: Path, settle_seconds: float) -> None:
        self.dir = base_dir / "inbox"
        self.failed_dir = base_dir / "failed"
        self.settle_seconds = settle_seconds
        self._seen: dict[str, tuple[int, int, float]] = {}  # name -> size, mtime_ns, first seen
        self._warned: set[str] = set()

    def waiting(self) -> list[Path]:
        """Every `*.jsonl` file in the inbox, settling ones included, oldest first."""
        entries = []
        self.dir.mkdir(parents=True, exist_ok=True)  # an operator may have removed it
        with os.scandir(self.dir) as scan:
            for entry in scan:
                if entry.name.startswith(".") or entry.name.endswith(IGNORED_SUFFIXES):
                    continue
                if not entry.name.endswith(SUFFIX):
                    self._warn_ignored(entry.name)
                    continue
                try:
                    stat = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                entries.append((stat.st_mtime_ns, entry.name, stat.st_size))
        entries.sort()
        return [self.dir / name for _, name, _ in entries]

    def ready(self) -> list[Path]:
        """Waiting files whose size and mtime have not changed for `settle_seconds`.

        Stable means: unchanged since the previous scan, and either its mtime is at least
        `settle_seconds` old (every write moves mtime forward) or we have watched it unchanged
        that long (covers mtimes in the future, e.g. a skewed file-server clock).
        """
        now, wall_ns = time.monotonic(), time.time_ns()
        ready, seen = [], {}
        for path in self.waiting():
            try:
                stat = path.lstat()
            except FileNotFoundError:
                continue
            signature = (stat.st_size, stat.st_mtime_ns)
            previous = self._seen.get(path.name)
            unchanged = previous is None or previous[:2] == signature
            first_seen = previous[2] if previous and unchanged else now
            seen[path.name] = (*signature, first_seen)
            mtime_age = (wall_ns - stat.st_mtime_ns) / 1e9
            watched = now - first_seen
            if unchanged and (watched >= self.settle_seconds or mtime_age >= self.settle_seconds):
                ready.append(path)
        self._seen = seen
        return ready

    def _warn_ignored(self, name: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning("Ignoring inbox/%s: only *%s files are trained", name, SUFFIX)

    def quarantine(self, path: Path, reason: str, **details: object) -> Path:
        """Move `path` byte-identical to failed/ with `<name>.error.json` written first."""
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        target = self._free_name(path.name)
        report = {"file": path.name, "reason": reason, **details,
                  "time": datetime.now(timezone.utc).isoformat()}
        atomic.write_json(target.with_name(target.name + ".error.json"), report)
        os.rename(path, target)
        atomic.fsync_dir(self.failed_dir)
        log.error("Moved inbox/%s to failed/%s: %s", path.name, target.name, reason)
        return target

    def _free_name(self, name: str) -> Path:
        stem, dot, ext = name.partition(".")
        candidate, n = self.failed_dir / name, 1
        while candidate.exists() or candidate.is_symlink():
            candidate = self.failed_dir / f"{stem}-{n}{dot}{ext}"
            n += 1
        return candidate

    def delete(self, path: Path) -> None:
        """Remove a trained file (its end-of-file checkpoint is already durable)."""
        try:
            path.unlink()
        except FileNotFoundError:
            return
        atomic.fsync_dir(self.dir)
        log.info("Deleted inbox/%s", path.name)
