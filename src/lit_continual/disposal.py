"""What becomes of a file once it has been trained or judged: deleted, moved to failed/, handed
back to the inbox, or — where the inbox will not let go of it — left there and ignored.

The choice for a trained file is made before its end-of-file checkpoint and recorded in its
ledger entry (`disposal`), so a process killed before carrying it out replays the same choice:
a file whose writer appended after the claim still goes to failed/ (the appended data is
kept), an unreadable one is never retrained.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

from lit_continual.claims import Claim, Claims, SourceUnreadable
from lit_continual.inbox import Inbox
from lit_continual.layout import sha256_file
from lit_continual.ledger import FileRecord, Ledger
from lit_continual.status import Status
from lit_continual.stop import StopRequest
from lit_continual.storage import Backoff, StorageFault, retry

log = logging.getLogger("lit_continual")

DELETE, CHANGED, KEEP, FAILED, SKIPPED = "delete", "changed", "keep", "failed: ", "skipped"
MODIFIED = (FAILED + "modified while being trained: it grew or was rewritten after it was claimed "
            "(the claimed content was trained)")


class Disposal:
    """Carries out deletes and moves out of the inbox; remembers what the inbox will not let go."""

    def __init__(self, inbox: Inbox, claims: Claims, ledger: Callable[[], Ledger], status: Status,
                 stop: StopRequest, backoff: Backoff) -> None:
        self.inbox, self.claims, self._ledger, self.status = inbox, claims, ledger, status
        self.stop, self.backoff = stop, backoff

    def apply(self, path: Path, name: str, inode: int, record: FileRecord) -> None:
        """Carry out `record.disposal` for the claimed file at `path` (now or after a restart)."""
        disposal = record.disposal or (DELETE if record.status == "done" else CHANGED)
        if disposal == DELETE:
            self.delete(path, name, inode, record)
        elif disposal == CHANGED:
            self.inbox.ignored.discard((name, inode))
            if path.parent == self.claims.dir:
                self.claims.release(path, name)
            self.inbox.expect_change()
        elif disposal.startswith(FAILED):  # a trained (finished) file: counted already
            self.reject_path(path, name, disposal[len(FAILED):], inode=inode, counted=False)
        elif disposal == SKIPPED:
            self.skip(path, name, inode, record)

    def skip(self, path: Path, name: str, inode: int, record: FileRecord) -> None:
        """Move a file an operator skipped to skipped/ byte-identical, `<name>.skipped.json` beside it."""
        report = {"file": name, "sha256": record.sha256, "examples": record.examples,
                  "examples_trained": record.examples_trained, "steps": [record.first_step, record.last_step]}
        skipped_dir = self.claims.failed_dir.parent / "skipped"

        def attempt() -> tuple[Path, str | None] | None:
            if not path.exists() and not path.is_symlink():
                return None  # moved already (a replay after a restart)
            copied = skipped_dir / name
            if copied.is_file() and copied.stat().st_size == record.size and sha256_file(copied) == record.sha256:
                # copied by an earlier process whose unlink was refused (an inbox that will not let go)
                problem = self.claims.delete_path(path, name, inode or None)
                return copied, problem
            try:
                return self.claims.set_aside(path, name, skipped_dir, ".skipped.json", report)
            except FileNotFoundError:
                return None  # moved already (a replay after a restart)
            except SourceUnreadable as err:
                return skipped_dir / name, f"{err.strerror}; nothing was copied"
            except Exception as err:
                raise StorageFault(f"skipped/{name}") from err

        done, moved = retry(attempt, f"moving skipped {name}", self.backoff, self.stop, self.status)
        if not done or moved is None:
            return
        target, kept = moved
        log.info("Skipped inbox/%s after %d of %d examples (steps %s-%s): moved to skipped/%s", name,
                 record.examples_trained, record.examples, record.first_step, record.last_step, target.name)
        if kept is not None:
            self.left_in_inbox(name, inode, f"skipped and copied to skipped/ but cannot be removed ({kept})")
        else:
            self.inbox.ignored.discard((name, inode))

    def delete(self, path: Path, name: str, inode: int, record: FileRecord) -> None:
        problem = self.claims.delete_path(path, name, inode or None)
        if problem is None:
            self.inbox.ignored.discard((name, inode))
            return
        self.left_in_inbox(name, inode, f"trained (steps {record.first_step}-{record.last_step}) but cannot "
                                        f"be deleted ({problem})")

    def reject(self, claim: Claim, reason: str, sha256: str | None = None, report: dict | None = None) -> None:
        """Move a claimed file that will not be trained to failed/ (or recognise it was already)."""
        claim.close()
        kept = self._ledger().find_kept(claim.name, claim.stat.st_ino, sha256)
        if kept is not None:  # copied to failed/ by an earlier process; still here, undeletable
            self.left_in_inbox(claim.name, claim.stat.st_ino, f"already in failed/ ({kept['reason']})")
            return
        self.reject_path(claim.path, claim.name, reason, sha256, report, claim.stat.st_ino)

    def reject_path(self, path: Path, name: str, reason: str, sha256: str | None = None,
                    report: dict | None = None, inode: int | None = None, counted: bool = True) -> None:
        kept = self._quarantine(path, name, reason, report or {})
        if kept is None:
            self._ledger().reject(name, sha256, reason, counted=counted)
            if inode is not None:
                self.inbox.ignored.discard((name, inode))
            return
        inode = inode if inode is not None else _inode(path)
        self._ledger().reject(name, sha256, reason, kept_inode=inode, counted=counted)
        self.left_in_inbox(name, inode, f"copied to failed/ but cannot be removed ({kept})")

    def left_in_inbox(self, name: str, inode: int | None, why: str) -> None:
        message = f"inbox/{name} was {why}: it is ignored while it stays there"
        log.error("%s", message)
        self.status.warn(message)
        if inode is not None:
            self.inbox.ignored.add((name, inode))

    def _quarantine(self, path: Path, name: str, reason: str, report: dict) -> str | None:
        """Move to failed/ (storage faults retried); why the original stayed, or None."""
        def attempt() -> str | None:
            try:
                return self.claims.quarantine(path, name, reason, **report)
            except FileNotFoundError:
                return None  # gone already: nothing to keep
            except SourceUnreadable as err:
                return f"{err.strerror}; nothing was copied"
            except Exception as err:
                raise StorageFault(f"failed/{name}.error.json") from err

        done, kept = retry(attempt, f"the failed/ report of {name}", self.backoff, self.stop, self.status)
        return kept if done else None


def _inode(path: Path) -> int | None:
    try:
        return os.lstat(path).st_ino
    except OSError:
        return None
