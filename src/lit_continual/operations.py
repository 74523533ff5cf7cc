"""What an operator asks of a running daemon, and its scheduled work: pause/resume, skip,
snapshots and consolidation (control files: lit_continual/controls.py).

A background thread looks at the control files every `daemon.poll_seconds` and acknowledges a
request in the status at once (`pausing`, `skipping`, `stopping`); the training thread carries
it out at the end of the current optimizer step (callbacks/controls.py) or while idle
(`idle()`, called by the inbox feed while it waits): never while a step is running.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from omegaconf import DictConfig

from lit_continual import controls
from lit_continual.status import Status
from lit_continual.stop import StopRequest

log = logging.getLogger("lit_continual")

CLOCK_SLACK = timedelta(minutes=5)  # a schedule handled later than now + this: the clock was set back
NOTHING_YET = "no checkpoint yet"  # how snapshots/consolidation say a new run has nothing to copy
LIVE = ("starting", "training", "idle", "pausing", "paused", "skipping", "error")  # may be acknowledged as stopping


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
        self.skip: tuple[str, str | None] | None = None  # the `.skip` seen (identity, file named), not acted on
        self.consumed_skip: str | None = None  # the last `.skip` acted on (saved in every checkpoint)
        self._thread: threading.Thread | None = None
        self._closed = threading.Event()
        self._complaints: set[str] = set()
        self._request_seen = False  # a `.snapshot`/`.consolidate` waits (set by the watcher)

    # -- seeing requests (background thread) ----------------------------------------------

    def watch(self) -> None:
        """Look now (a request left before the start is acted on at the first step), then every
        poll interval from a background thread."""
        self.look()

        def loop() -> None:
            while not self._closed.wait(self.poll_seconds):
                try:
                    self.look()
                except Exception as err:  # a control file no one expects (a directory, ...): never fatal
                    self._complain(f"looking at the control files: {type(err).__name__}: {err}")

        self._thread = threading.Thread(target=loop, name="control-watch", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()

    def look(self) -> None:
        """Latch and acknowledge the requests now present."""
        if self.stop.signal is not None or self.stop.stop_file.exists():
            self.status.transition(LIVE, "stopping")
            return
        if not self.pause and (self.base_dir / controls.PAUSE).exists():
            self.pause = True
            log.info("%s seen: pausing after the current optimizer step", controls.PAUSE)
            self.status.transition(("starting", "training", "skipping"), "pausing")
        resume = self.base_dir / controls.RESUME
        if not self.pause and self.status.fields["status"] not in ("paused", "pausing") and resume.exists():
            resume.unlink(missing_ok=True)  # left over (a kill while paused): it must not undo the next pause
            log.info("%s removed: nothing was paused", controls.RESUME)
        self._request_seen = any((self.base_dir / f".{kind}").exists() for kind in controls.REQUESTS)
        skip = self._skip_request()
        if skip is not None and skip != self.skip and skip[0] != self.consumed_skip:
            self.skip = skip
            named = f" ({skip[1]})" if skip[1] else ""
            log.info("%s seen%s: skipping the rest of the file being trained after the current optimizer step",
                     controls.SKIP, named)
            self.status.transition(("training",), "skipping")

    def _skip_request(self) -> tuple[str, str | None] | None:
        """The `.skip` request: (its identity, the file it names or None), or None.

        `lit-continual skip` writes {"id", "file"}; a file touched by hand is identified by its
        inode and mtime and applies to whatever file is being trained."""
        path = self.base_dir / controls.SKIP
        try:
            st = path.stat()
            content = path.read_text(errors="replace").strip()
        except OSError:
            return None
        try:
            request = json.loads(content)
            return str(request["id"]), (str(request["file"]) if request.get("file") else None)
        except (ValueError, KeyError, TypeError):
            return content or f"{st.st_ino}:{st.st_mtime_ns}", None

    def _complain(self, message: str) -> None:
        """Log a problem of the operator machinery once per message; training goes on."""
        if message not in self._complaints:
            self._complaints.add(message)
            log.warning("%s", message)

    # -- what the training thread asks --------------------------------------------------

    def wanted(self, file_end: bool) -> bool:
        """Does this step boundary have work: a request or a due snapshot (a scheduled
        consolidation waits for a file boundary: `at_boundary(file_end=True)` asks it there)?"""
        return self.pause or self.skip is not None or self._requested() or self._snapshot_due() or file_end

    def skip_wanted(self, current: str | None = None) -> bool:
        """A skip request applies to the file being trained, `current` (None: no file is
        training). One naming another file, or arriving while none trains, is dropped."""
        if self.skip is None or self.skip[0] == self.consumed_skip:
            return False
        named = self.skip[1]
        if current is None or (named is not None and named != current):
            why = "no file is being trained" if current is None else f"{current} is being trained now"
            log.info("%s removed: it asked to skip %s, but %s", controls.SKIP, named or "the current file", why)
            self._remove_skip(self.skip[0])
            self.skip = None
            self.status.transition(("skipping",), "training" if current else "idle")
            return False
        return True

    def skip_done(self) -> None:
        """The skip is in a durable checkpoint: the request file goes."""
        self._remove_skip(self.consumed_skip)
        self.skip = None

    def _remove_skip(self, identity: str | None) -> None:
        request = self._skip_request()
        if request is not None and request[0] == identity:
            (self.base_dir / controls.SKIP).unlink(missing_ok=True)

    def forget_consumed_skip(self) -> None:
        """At start: a `.skip` the restored checkpoint already carried out (killed before its
        removal) is removed, never applied to the next file."""
        request = self._skip_request()
        if self.consumed_skip is not None and request is not None and request[0] == self.consumed_skip:
            log.info("%s was already carried out before the restart: removing it", controls.SKIP)
            (self.base_dir / controls.SKIP).unlink(missing_ok=True)
            self.skip = None

    def _requested(self) -> bool:
        """A snapshot/consolidate request was seen by the watcher (no file I/O on the step path)."""
        return self._request_seen

    def _snapshot_due(self) -> bool:
        if self.snapshot_schedule.expr is None:
            return False
        if self._next_snapshot is None:  # reads (or starts) the schedule's state once
            try:
                if self.snapshot_schedule.due():
                    return True
                last = self.snapshot_schedule.last_handled() or datetime.now()
            except OSError as err:  # the state cannot be written (a full disk): from now, in memory
                self._complain(f"snapshot schedule state: {err}")
                last = datetime.now()
            if last > datetime.now() + CLOCK_SLACK:  # handled "in the future": the clock was ahead
                log.warning("The snapshot schedule was last handled at %s, after now: the clock was ahead "
                            "and was set back; counting from now", last)
                last = datetime.now()
                self._mark(self.snapshot_schedule, last)
            self._next_snapshot = self.snapshot_schedule.next_after(last)
        return datetime.now() >= self._next_snapshot

    def _mark(self, schedule, now: datetime) -> None:
        """Record a schedule's fire time as handled; a failed write (full disk) is logged, and
        the in-memory next time keeps it from firing again before its next time."""
        try:
            schedule.mark(now)
        except OSError as err:
            self._complain(f"could not record the schedule in {schedule.state}: {err}")

    # -- carrying them out (training thread) --------------------------------------------

    def at_boundary(self, file_end: bool) -> None:
        """After the checkpoint of this step: requests, scheduled jobs, then a pause."""
        self._serve(file_boundary=file_end)
        if file_end:
            self._housekeeping()
        if self.pause:
            self._hold()

    def idle(self) -> None:
        """Called while the inbox is empty (every poll): the newest checkpoint is the run's step."""
        if self.stop.requested:
            return
        try:
            self.look()
        except Exception as err:
            self._complain(f"looking at the control files: {type(err).__name__}: {err}")
        self.skip_wanted(None)  # nothing is being trained: a `.skip` now is dropped
        self._serve(file_boundary=True)
        if self.pause:
            self._hold()
        self._housekeeping()

    def _housekeeping(self) -> None:
        try:
            self.housekeeping.maybe_run()
        except Exception as err:
            self._complain(f"housekeeping: {type(err).__name__}: {err}")

    def _serve(self, file_boundary: bool) -> None:
        """Requests, then scheduled jobs. Never raises: nothing here may stop training."""
        try:
            self._serve_requests()
            self._serve_schedules(file_boundary)
        except Exception as err:
            self._complain(f"snapshot/consolidation machinery: {type(err).__name__}: {err}")

    def _serve_requests(self) -> None:
        self._request_seen = False  # looked at now; the watcher sets it again for a new one
        for kind in controls.REQUESTS:
            request_id = controls.pending(self.base_dir, kind)
            if request_id is not None:
                result = self._carry_out(kind, "Requested")
                try:
                    controls.answer(self.base_dir, kind, request_id, result)
                except OSError as err:  # `.snapshot` made a directory, a full disk, ...
                    self._complain(f"could not answer the {kind} request: {err}")

    def _serve_schedules(self, file_boundary: bool) -> None:
        from lit_continual import consolidation, snapshots

        if self._snapshot_due():
            now = datetime.now()
            self._carry_out(controls.SNAPSHOT, "Scheduled", lambda: snapshots.take_and_prune(
                self.base_dir, self.keep_days, now, scheduled=True))
            self._next_snapshot = self.snapshot_schedule.next_after(now)
            self._mark(self.snapshot_schedule, now)
        if file_boundary:
            now = datetime.now()
            source = self.consolidation.due(now)
            if source is not None:
                self._carry_out(controls.CONSOLIDATE, "Scheduled", lambda: consolidation.consolidate_and_prune(
                    self.base_dir, self.consolidate_keep, source, cancelled=lambda: self.stop.requested))
                self._mark(self.consolidation, now)

    def _carry_out(self, kind: str, why: str, job=None) -> dict:
        """Take a snapshot or consolidate now (never raises: a failure never stops training);
        the outcome as a request's answer (ok, path, step, seconds; or error)."""
        from lit_continual import consolidation, snapshots

        if job is None:
            job = (lambda: snapshots.take_and_prune(self.base_dir, self.keep_days)) if kind == controls.SNAPSHOT \
                else (lambda: consolidation.consolidate_and_prune(self.base_dir, self.consolidate_keep,
                                                                  cancelled=lambda: self.stop.requested))
        try:
            result = job()
        except Exception as err:
            result = {"ok": False, "error": f"{type(err).__name__}: {err}"}
        if not result["ok"]:
            if str(result["error"]).startswith(NOTHING_YET):  # a new run: not a failure
                log.info("%s %s: %s", why, kind, result["error"])
            else:
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
        self.status.update(status="paused", write=True)  # (under the status lock: `look` never undoes it)
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
