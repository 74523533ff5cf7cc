"""One process per base dir: `fcntl.flock` on the base directory itself; `DIR/.lock` names
the holder (pid, host, since).

The lock is on the directory, not on `.lock`: deleting `.lock` by hand (it looks stale) must
not let a second daemon in, and a file that can be unlinked and recreated is a different
inode to flock. The OS drops a flock when its holder dies, so a killed process never blocks.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from lit_continual import atomic

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
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BaseDirLocked(f"{self.path.parent} is locked by {_holder(self.path)}") from None
        self._fd = fd
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        try:
            atomic.write_json(self.path, holder, durable=False)
        except OSError:
            pass  # only a description; the lock itself is held

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"pid {holder['pid']} on {holder['host']} (since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"another process (pid unknown: {path.name} is missing or unreadable)"
