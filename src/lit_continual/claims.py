"""Claiming inbox files and disposing of them: delete after training, or move to failed/.

What was claimed is what is trained. A settled `inbox/<name>` is renamed atomically into the
hidden `inbox/.claimed/<claim id>-<name>` (same filesystem) and read through a descriptor
opened with O_NOFOLLOW from its index pass to its end. A rename-over, truncation or removal of
`inbox/<name>` afterwards is a new delivery by construction; the claim id (a nanosecond stamp)
makes every claim distinct, so an identical file delivered again is never mistaken for one
already trained. An inbox that refuses renames (read-only, immutable) is claimed in place.

Moves to failed/ fall back to copy + fsync + unlink across filesystems; a file that cannot be
removed afterwards is left where it is, ignored while it stays there, and reported.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lit_continual import atomic

log = logging.getLogger("lit_continual")

CLAIMED = ".claimed"


class NotAFile(OSError):
    """The claimed entry is a symlink, a directory or a special file."""


@dataclass
class Claim:
    """One claimed file: where it sits now, the descriptor it is read through, what was seen."""

    name: str  # the name it was delivered under
    path: Path  # inbox/.claimed/<id>-<name>, or inbox/<name> for an in-place claim
    fd: int
    in_place: bool
    stat: os.stat_result = field(repr=False)  # fstat when claimed: identity and the baseline
    claimed_as: str | None = None  # the path relative to inbox/ (None for an in-place claim)

    def modified(self) -> bool:
        """True if the held file's size or mtime changed since it was claimed (the writer went on)."""
        now = os.fstat(self.fd)
        return (now.st_size, now.st_mtime_ns) != (self.stat.st_size, self.stat.st_mtime_ns)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def claimed_name(claimed_as: str) -> str:
    """The delivered name of a `.claimed/<id>-<name>` entry."""
    return Path(claimed_as).name.split("-", 1)[1]


def open_held(path: Path) -> tuple[int, os.stat_result]:
    """Open `path` for reading without following a symlink; refuse anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise NotAFile(errno.ELOOP, "symlink: pipelines must deliver real files (the link was not followed)",
                           str(path)) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotAFile(errno.EINVAL, "not a regular file (a directory or a special file)", str(path))
    return fd, st


class Claims:
    """The claimed files of one inbox, and the moves out of it."""

    def __init__(self, inbox_dir: Path, failed_dir: Path) -> None:
        self.inbox_dir = inbox_dir
        self.dir = inbox_dir / CLAIMED
        self.failed_dir = failed_dir

    def pending(self) -> list[str]:
        """Entries of `.claimed/` (relative to the inbox), in claim order."""
        try:
            names = sorted(n for n in os.listdir(self.dir) if "-" in n and not n.startswith("."))
        except FileNotFoundError:
            return []
        return [f"{CLAIMED}/{n}" for n in names]

    def claim(self, name: str) -> Claim:
        """Take `inbox/<name>`: rename it into `.claimed/` (or claim it in place) and open it."""
        source = self.inbox_dir / name
        target = self._rename_in(source, name)
        path = target or source
        fd, st = open_held(path)  # NotAFile names where the odd entry now sits
        claimed_as = f"{CLAIMED}/{target.name}" if target is not None else None
        return Claim(name, path, fd, target is None, st, claimed_as)

    def reopen(self, claimed_as: str) -> Claim:
        """A claim this run made before a restart (`.claimed/<id>-<name>`)."""
        path = self.inbox_dir / claimed_as
        fd, st = open_held(path)
        return Claim(claimed_name(claimed_as), path, fd, False, st, claimed_as)

    def _rename_in(self, source: Path, name: str) -> Path | None:
        target = self.dir / f"{time.time_ns():020d}-{name}"
        try:
            self.dir.mkdir(exist_ok=True)
            os.rename(source, target)
            atomic.fsync_dir(self.dir)
            atomic.fsync_dir(self.inbox_dir)
        except FileNotFoundError:
            raise
        except OSError as err:  # a read-only or immutable inbox: train it where it is
            log.warning("Could not move inbox/%s into %s/ (%s): claiming it in place", name, CLAIMED, err)
            return None
        return target

    def reclaim(self, claim: Claim) -> Claim | None:
        """The claimed file changed under us: what sits there now is a new delivery, claimed
        under a fresh id (None for an in-place claim: the inbox sees it as a new file)."""
        claim.close()
        if claim.in_place:
            return None
        fresh = self.dir / f"{time.time_ns():020d}-{claim.name}"
        try:
            os.rename(claim.path, fresh)
        except FileNotFoundError:
            return None
        atomic.fsync_dir(self.dir)
        try:
            return self.reopen(f"{CLAIMED}/{fresh.name}")
        except OSError:
            return None

    def delete(self, claim: Claim) -> str | None:
        """Remove a trained file; None, or why it could not be removed (it is then left there)."""
        claim.close()
        try:
            if claim.in_place and os.lstat(claim.path).st_ino != claim.stat.st_ino:
                return None  # something new was delivered at that name: it is not ours to delete
            os.unlink(claim.path)
        except FileNotFoundError:
            return None
        except OSError as err:
            return f"{type(err).__name__}: {err.strerror or err}"
        atomic.fsync_dir(claim.path.parent)
        log.info("Deleted inbox/%s", claim.name)
        return None

    def quarantine(self, path: Path, name: str, reason: str, **details: object) -> str | None:
        """Move `path` byte-identical to failed/ with `<name>.error.json` written first.

        Raises if the report or the copy cannot be written (a storage fault: the caller retries;
        the file is untouched). Returns None, or why the original could not be removed after
        it was copied (then it is left where it is and must be ignored).
        """
        self.failed_dir.mkdir(parents=True, exist_ok=True)
        target = self._free_name(name)
        report = {"file": name, "reason": reason, **details, "time": datetime.now(timezone.utc).isoformat()}
        atomic.write_json(target.with_name(target.name + ".error.json"), report)
        kept = move(path, target)
        log.error("Moved inbox/%s to failed/%s: %s", name, target.name, reason)
        return kept

    def _free_name(self, name: str) -> Path:
        stem, dot, ext = name.partition(".")
        candidate, n = self.failed_dir / name, 1
        while candidate.exists() or candidate.is_symlink():
            candidate = self.failed_dir / f"{stem}-{n}{dot}{ext}"
            n += 1
        return candidate


def move(source: Path, target: Path) -> str | None:
    """Rename, or copy + fsync + rename + unlink across filesystems (EXDEV).

    Returns None, or why the source could not be removed after the copy was made durable.
    """
    try:
        os.rename(source, target)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EROFS, errno.EBUSY):
            raise
        return _copy_then_unlink(source, target)
    atomic.fsync_dir(target.parent)
    return None


def _copy_then_unlink(source: Path, target: Path) -> str | None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        if source.is_symlink():
            os.symlink(os.readlink(source), tmp)
        elif source.is_dir():
            shutil.copytree(source, tmp, symlinks=True)
        else:
            shutil.copy2(source, tmp, follow_symlinks=False)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    atomic.fsync_dir(target.parent)
    try:
        shutil.rmtree(source) if source.is_dir() and not source.is_symlink() else os.unlink(source)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None
