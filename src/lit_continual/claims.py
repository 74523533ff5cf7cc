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


class SourceUnreadable(OSError):
    """A file to move to failed/ cannot even be read (not a storage fault: retrying won't help)."""


@dataclass
class Claim:
    """One claimed file: where it sits now, the descriptor it is read through, what was seen."""

    name: str  # the name it was delivered under
    path: Path  # inbox/.claimed/<id>-<name>, or inbox/<name> for an in-place claim
    fd: int
    in_place: bool
    stat: os.stat_result = field(repr=False)  # fstat when claimed: identity and the baseline
    claimed_as: str | None = None  # the path relative to inbox/ (None for an in-place claim)

    def modified(self, indexed_size: int) -> bool:
        """True if the held file is not what was indexed: other size than the bytes indexed, or
        its mtime moved since the claim (the writer went on)."""
        now = os.fstat(self.fd)
        return (now.st_size, now.st_mtime_ns) != (indexed_size, self.stat.st_mtime_ns)

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
        self._last_id = 0

    def _next_id(self) -> str:
        """A claim id that sorts after every earlier one, even if the wall clock steps back."""
        if not self._last_id:
            self._last_id = max((int(n.split("/")[-1].split("-", 1)[0]) for n in self.pending()
                                 if n.split("/")[-1].split("-", 1)[0].isdigit()), default=0)
        self._last_id = max(time.time_ns(), self._last_id + 1)
        return f"{self._last_id:020d}"

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
        target = self.dir / f"{self._next_id()}-{name}"
        try:
            self.dir.mkdir(exist_ok=True)
            os.rename(source, target)
        except FileNotFoundError:
            raise
        except OSError as err:  # a read-only or immutable inbox: train it where it is
            log.warning("Could not move inbox/%s into %s/ (%s): claiming it in place", name, CLAIMED, err)
            return None
        _fsync_dirs(self.dir, self.inbox_dir)
        return target

    def release(self, path: Path, name: str) -> None:
        """What sits at a claimed path is not what was claimed (rewritten in place): hand it back
        to the inbox as a new delivery, so it settles and is judged like any other file. Never
        replaces a file delivered meanwhile under that name."""
        target, n = self.inbox_dir / name, 1
        stem, dot, ext = name.partition(".")
        while True:
            try:
                os.link(path, target)
                break
            except FileExistsError:
                target, n = self.inbox_dir / f"{stem}-{n}{dot}{ext}", n + 1
            except FileNotFoundError:
                return
        os.unlink(path)
        _fsync_dirs(self.dir, self.inbox_dir)
        log.warning("inbox/%s changed after it was claimed: its new content is a new delivery, inbox/%s",
                    name, target.name)

    def delete_path(self, path: Path, name: str, inode: int | None = None) -> str | None:
        """Remove a trained file by path; None, or why it could not be removed. With `inode`, a
        different file now at that path (a new delivery in an in-place inbox) is left alone."""
        try:
            if inode is not None and os.lstat(path).st_ino != inode:
                return None
            os.unlink(path)
        except FileNotFoundError:
            return None
        except OSError as err:
            return f"{type(err).__name__}: {err.strerror or err}"
        _fsync_dirs(path.parent)
        log.info("Deleted inbox/%s", name)
        return None

    def quarantine(self, path: Path, name: str, reason: str, **details: object) -> str | None:
        """Move `path` byte-identical to failed/ with `<name>.error.json` written first.

        Raises if the report or the copy cannot be written (a storage fault: the caller retries;
        the file is untouched). Returns None, or why the original could not be removed after
        it was copied (then it is left where it is and must be ignored).
        """
        report = {"file": name, "reason": reason, **details}
        target, kept = self.set_aside(path, name, self.failed_dir, ".error.json", report)
        log.error("Moved inbox/%s to failed/%s: %s", name, target.name, reason)
        return kept

    def set_aside(self, path: Path, name: str, directory: Path, suffix: str, report: dict) -> tuple[Path, str | None]:
        """Move `path` byte-identical into `directory` (a free name), its JSON report
        (`<name><suffix>`) written first: (where it went, why the original stayed or None)."""
        directory.mkdir(parents=True, exist_ok=True)
        target = _free_name(directory, name)
        report = {**report, "time": datetime.now(timezone.utc).isoformat()}
        atomic.write_json(target.with_name(target.name + suffix), report)
        return target, move(path, target)


def _free_name(directory: Path, name: str) -> Path:
    stem, dot, ext = name.partition(".")
    candidate, n = directory / name, 1
    while candidate.exists() or candidate.is_symlink():
        candidate = directory / f"{stem}-{n}{dot}{ext}"
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
            _copy_file(source, tmp)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        raise
    _fsync_dirs(target.parent)
    try:
        shutil.rmtree(source) if source.is_dir() and not source.is_symlink() else os.unlink(source)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def _copy_file(source: Path, tmp: Path) -> None:
    """Copy bytes and times durably; a source that cannot be read is not a storage fault."""
    try:
        reader = open(source, "rb")  # noqa: SIM115 - closed below
    except OSError as err:
        raise SourceUnreadable(err.errno, f"cannot read it to copy it: {err.strerror}", str(source)) from err
    with reader, open(tmp, "wb") as writer:
        shutil.copyfileobj(reader, writer, 1 << 20)
        writer.flush()
        os.fsync(writer.fileno())
    shutil.copystat(source, tmp)


def _fsync_dirs(*paths: Path) -> None:
    """Make renames durable; a failure here is logged, never mistaken for a failed rename."""
    for path in paths:
        try:
            atomic.fsync_dir(path)
        except OSError as err:
            log.warning("Could not fsync %s: %s", path, err)
