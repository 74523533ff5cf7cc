"""One process per base dir: `fcntl.flock` on the base directory itself; `DIR/.lock` names
the holder (pid, its start time, host, boot and pid namespace, since).

The lock is on the directory, not on `.lock`: deleting `.lock` by hand (it looks stale) must
not let a second daemon in, and a file that can be unlinked and recreated is a different
inode to flock. The OS drops a flock when its holder dies, so a killed process never blocks.

`liveness()` tells whether a live process holds the lock without ever trying to take it (a
daemon starting at that moment would be refused): the kernel's lock table is the authority
where it can see the holder; else the recorded pid must exist with the recorded start time
(a pid can be reused by another process after a crash).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lit_continual import atomic

EXIT_LOCKED = 3
LOCK_TABLE = Path("/proc/locks")


class BaseDirLocked(RuntimeError):
    """Another live process holds the base dir. Exit code 3."""


class RunLock:
    """Held for the life of a run; `with RunLock(dir):` or acquire()/release()."""

    def __init__(self, base_dir: Path, role: str = "daemon") -> None:
        """`role`: what holds it, recorded in `.lock` ("daemon", or a command such as
        "lit-continual snapshot": a daemon starting meanwhile waits for a command, not for a daemon)."""
        self.path = base_dir / ".lock"
        self.role = role
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
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "role": self.role,
                  "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "start_time": process_start(os.getpid()), "boot_id": _boot_id(), "pid_ns": _pid_ns()}
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


@dataclass(frozen=True)
class Liveness:
    """Whether a live process holds a base dir's lock: True, False, or None (cannot tell from
    here: another host, or a pid namespace whose locks this one cannot see)."""

    alive: bool | None
    pid: int | None  # the holder's (or last holder's) pid, if known
    how: str  # how that was decided, in words


def liveness(base_dir: Path) -> Liveness:
    """Who holds `base_dir`'s lock, decided without taking it."""
    holder = read_holder(base_dir / ".lock")
    pid = holder.get("pid") if isinstance(holder.get("pid"), int) else None
    table = _kernel_holders(base_dir, pid)
    if table:
        holder_pid = table[0] or pid  # 0: the kernel did not say
        return Liveness(True, holder_pid, f"pid {holder_pid} holds the lock ({LOCK_TABLE})")
    host = holder.get("host")
    if host not in (None, socket.gethostname()):
        return Liveness(None, pid, f"held last by pid {pid} on host {host}: cannot check from here")
    if holder.get("boot_id") not in (None, _boot_id()):
        return Liveness(False, pid, f"pid {pid} held it before this machine last booted")
    if holder.get("pid_ns") not in (None, _pid_ns()):  # its locks and pids are not visible here
        return Liveness(None, pid, f"held last by pid {pid} of another pid namespace: cannot check from here")
    if table is not None:
        still = ", which runs but does not hold it" if _same_process(pid, holder) else ""
        return Liveness(False, pid, f"no process holds the lock ({LOCK_TABLE}; last holder pid {pid}{still})")
    if pid is None:
        return Liveness(None, None, f"no holder recorded in {base_dir / '.lock'} and no lock table to read")
    if _same_process(pid, holder):
        return Liveness(True, pid, f"pid {pid} runs, with the start time it recorded in .lock")
    return Liveness(False, pid, f"pid {pid} is gone (or is another process now: its start time differs)")


def read_holder(path: Path) -> dict:
    """The holder description in `.lock` ({} if missing or unreadable)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def process_start(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), or None if
    there is no such process or it is a zombie (killed, not yet reaped by its parent)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # from field 3, after "(comm)"
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def _same_process(pid: int | None, holder: dict) -> bool:
    if pid is None:
        return False
    start = process_start(pid)
    return start is not None and holder.get("start_time") in (None, start)


def _kernel_holders(base_dir: Path, recorded: int | None) -> list[int] | None:
    """Pids of the flocks on `base_dir` in the kernel's lock table ([] if none); None if unreadable.

    The table names the superblock's device, which is not always stat's (btrfs subvolumes,
    overlayfs): an entry with the same inode and the recorded holder's pid counts too."""
    try:
        st = os.stat(base_dir)
        lines = LOCK_TABLE.read_text().splitlines()
    except OSError:
        return None
    device = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}"
    pids = []
    for line in lines:
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE <pid> <maj>:<min>:<inode> 0 EOF"; "->" = a waiter
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[5].count(":") != 2:
            continue
        pid = int(fields[4]) if fields[4].lstrip("-").isdigit() else 0
        where, inode = fields[5].rsplit(":", 1)
        if inode == str(st.st_ino) and (where == device or (recorded is not None and pid == recorded)):
            pids.append(pid)
    return pids


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _pid_ns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        return f"pid {holder['pid']} on {holder['host']} (since {holder['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return f"another process (pid unknown: {path.name} is missing or unreadable)"
