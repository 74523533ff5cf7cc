"""What an operator asks of a running daemon, and its scheduled work: pause/resume, skip,
snapshots and consolidation (control files: lit_continual/controls.py).

A background thread looks at the control files every `daemon.poll_seconds` and acknowledges a
request in the status at once (`pausing`, `skipping`, `stopping`); the training thread carries
it out at the end of the current optimizer step (callbacks/controls.py) or while idle
(`idle()`, called by the inbox feed while it waits): never while a step is running.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

from lit_continual import controls
from lit_continual.status import Status
from lit_continual.stop import StopRequest

log = logging.getLogger("lit_continual")


class Operations:
    """The daemon's side of the control files, and the snapshot/consolidation schedules."""

    def __init__(self, cfg: DictConfig, base_dir: Path, status: Status, stop: StopRequest) -> None:
        from lit_continual.consolidation import Trigger
        from lit_continual.housekeeping import Housekeeping
        from lit_continual.snapshots import schedule

        self.base_dir, self.status, self.stop = base_dir, status, stop
        self.poll_seconds = cfg.daemon.poll_seconds
        self.keep_days, self.consolidate_keep = cfg.snapshot.keep_days, cfg.consolidate.keep
        self.snapshot_schedule = schedule(base_dir, cfg.snapshot.schedule)
        self._next_snapshot: datetime | None = None  # the next fire time, cached (asked every step)
        self.consolidation = Trigger(base_dir, cfg.consolidate.schedule)
        self.housekeeping = Housekeeping(cfg, base_dir)
        self.pause = False  # `.pause` seen, not acted on yet
        self.skip_id: str | None = None  # the `.skip` request seen (its identity), not acted on yet
        self.consumed_skip: str | None = None  # the last `.skip` acted on (saved in every checkpoint)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()

    # -- seeing requests (background thread) ----------------------------------------------

    def watch(self) -> None:
        """Look now (a request left before the start is acted on at the first step), then every
        poll interval from a background thread."""
        self.look()

        def loop() -> None:
            while not self._closed.wait(self.poll_seconds):
                self.look()

        self._thread = threading.Thread(target=loop, name="control-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()

    def look(self) -> None:
        """Latch and acknowledge the requests now present."""
        state = self.status.fields["status"]
        if self.stop.signal is not None or self.stop.stop_file.exists():
            if state not in ("stopping", "stopped", "error"):
                self.status.update(status="stopping")
            return
        if not self.pause and (self.base_dir / controls.PAUSE).exists():
            self.pause = True
            log.info("%s seen: pausing after the current optimizer step", controls.PAUSE)
            if state == "training":
                self.status.update(status="pausing")
        resume = self.base_dir / controls.RESUME
        if not self.pause and state not in ("paused", "pausing") and resume.exists():
            resume.unlink(missing_ok=True)  # left over (a kill while paused): it must not undo the next pause
            log.info("%s removed: nothing was paused", controls.RESUME)
        skip = self._skip_request()
        if skip is not None and skip != self.skip_id:
            self.skip_id = skip
            log.info("%s seen: skipping the rest of the current file after the current optimizer step",
                     controls.SKIP)
            if state == "training":
                self.status.update(status="skipping")

    def _skip_request(self) -> str | None:
        """The identity of the `.skip` file (its content, else inode and mtime), or None."""
        path = self.base_dir / controls.SKIP
        try:
            st = path.stat()
            content = path.read_text(errors="replace").strip()
        except OSError:
            return None
        return content or f"{st.st_ino}:{st.st_mtime_ns}"

    # -- what the training thread asks --------------------------------------------------

    def wanted(self, file_end: bool) -> bool:
        """Does this step boundary have work: a request or a due snapshot (a scheduled
        consolidation waits for a file boundary: `at_boundary(file_end=True)` asks it there)?"""
        return self.pause or self.skip_wanted() or self._requested() or self._snapshot_due() or file_end

    def skip_wanted(self) -> bool:
        return self.skip_id is not None and self.skip_id != self.consumed_skip

    def skip_done(self) -> None:
        """The skip is in a durable checkpoint: the request file goes."""
        if self._skip_request() == self.consumed_skip:
            (self.base_dir / controls.SKIP).unlink(missing_ok=True)
        self.skip_id = None

    def forget_consumed_skip(self) -> None:
        """At start: a `.skip` the restored checkpoint already carried out (killed before its
        removal) is removed, never applied to the next file."""
        if self.consumed_skip is not None and self._skip_request() == self.consumed_skip:
            log.info("%s was already carried out before the restart: removing it", controls.SKIP)
            (self.base_dir / controls.SKIP).unlink(missing_ok=True)

    def _requested(self) -> bool:
        return any(controls.pending(self.base_dir, kind) for kind in controls.REQUESTS)

    def _snapshot_due(self) -> bool:
        if self.snapshot_schedule.expr is None:
            return False
        if self._next_snapshot is None:  # reads (or starts) the schedule's state once
            if self.snapshot_schedule.due():
                return True
            self._next_snapshot = self.snapshot_schedule.next_after(self.snapshot_schedule.last_handled())
        return datetime.now() >= self._next_snapshot

    # -- carrying them out (training thread) --------------------------------------------

    def at_boundary(self, file_end: bool) -> None:
        """After the checkpoint of this step: requests, scheduled jobs, then a pause."""
        self._serve(file_boundary=file_end)
        if self.pause:
            self._hold()

    def idle(self) -> None:
        """Called while the inbox is empty (every poll): the newest checkpoint is the run's step."""
        if self.stop.requested:
            return
        self.look()  # a `.skip` waits for a file to skip (`lit-continual skip` refuses while idle)
        self._serve(file_boundary=True)
        if self.pause:
            self._hold()
        self.housekeeping.maybe_run()

    def _serve(self, file_boundary: bool) -> None:
        from lit_continual import consolidation, snapshots

        for kind in controls.REQUESTS:
            request_id = controls.pending(self.base_dir, kind)
            if request_id is not None:
                controls.answer(self.base_dir, kind, request_id, self._carry_out(kind, "Requested"))
        if self._snapshot_due():
            now = datetime.now()
            self._carry_out(controls.SNAPSHOT, "Scheduled", lambda: snapshots.take_and_prune(
                self.base_dir, self.keep_days, now, scheduled=True))
            self.snapshot_schedule.mark(now)
            self._next_snapshot = None
        if file_boundary:
            now = datetime.now()
            source = self.consolidation.due(now)
            if source is not None:
                self._carry_out(controls.CONSOLIDATE, "Scheduled", lambda: consolidation.consolidate_and_prune(
                    self.base_dir, self.consolidate_keep, source))
                self.consolidation.mark(now)

    def _carry_out(self, kind: str, why: str, job=None) -> dict:
        """Take a snapshot or consolidate now (never raises: a failure never stops training);
        the outcome as a request's answer (ok, path, step, seconds; or error)."""
        from lit_continual import consolidation, snapshots

        if job is None:
            job = (lambda: snapshots.take_and_prune(self.base_dir, self.keep_days)) if kind == controls.SNAPSHOT \
                else (lambda: consolidation.consolidate_and_prune(self.base_dir, self.consolidate_keep))
        try:
            result = job()
        except Exception as err:
            result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        if not result["ok"]:
            log.error("%s %s failed: %s", why, kind, result["error"])
            return result
        path = Path(result["path"])
        log.info("%s %s: %s (step %s) in %.2f s", why, kind, path.relative_to(self.base_dir), result["step"],
                 result["seconds"])
        if kind == controls.SNAPSHOT:
            self.status.update(last_snapshot=path.name, snapshots=len(snapshots.listing(self.base_dir)), write=True)
        else:
            self.status.update(last_consolidated=path.name, write=True)
        return result

    def _hold(self) -> None:
        """Paused: poll only (no step, no CPU), serving snapshot/consolidate requests, until
        `.resume` or a stop."""
        (self.base_dir / controls.PAUSE).unlink(missing_ok=True)
        resume = self.base_dir / controls.RESUME
        before = self.status.fields["status"]
        step = self.status.fields["current_step"]
        self.status.update(status="paused", write=True)
        log.info("Paused at step %d: `lit-continual resume --base-dir %s` (or touch %s) to go on",
                 step, self.base_dir, resume)
        started = time.monotonic()
        while not self.stop.requested and not resume.exists():
            self._serve(file_boundary=True)
            time.sleep(self.poll_seconds)
        self.pause = False
        if self.stop.requested:
            log.info("Stop requested while paused (at step %d)", step)
            return
        resume.unlink(missing_ok=True)
        log.info("Resumed after %.1f s paused", time.monotonic() - started)
        self.status.update(status="idle" if before == "idle" else "training", write=True)
