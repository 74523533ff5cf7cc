"""One process per base dir: `fcntl.flock` on `DIR/.lock`, which names the holder (pid, host).

The OS drops a flock when its holder dies, so a lock left by a killed process never blocks.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

EXIT_LOCKED = 3


class BaseDirLocked(RuntimeError):
    """Another live process holds the base dir. Exit code 3."""


class RunLock:
    """Held for the life of a run; `with RunLock(dir):` or acquire()/release()."""

    def __init__(self, base_dir: Path) -> None:
        self.path = base_dir / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise BaseDirLocked naming the holder. Writes nothing if locked."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0))
            os.close(fd)
            raise BaseDirLocked(f"{self.path.parent} is locked by {holder}") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    try:
        holder = json.loads(raw)
        return f"pid {holder['pid']} on {holder['host']} (since {holder['since']})"
    except (ValueError, KeyError, TypeError):
        return "another process (pid unknown)"
