"""`lit-continual status`: the status file, the newest checkpoint, the queue, the last errors
and warnings, the time since the last step, and whether the daemon is alive.

Read only, and it never takes the base dir's lock (a daemon starting at that moment would be
refused): liveness comes from the kernel's lock table or the holder's pid and start time
(lock.liveness). The status file is the daemon's output; it can say `training` long after a
SIGKILL, which is exactly what exit 4 catches.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lit_continual import layout
from lit_continual.lock import liveness
from lit_continual.logs import escape
from lit_continual.status import LIVE_STATES

EXIT_HEALTHY, EXIT_ERROR, EXIT_NOT_A_RUN, EXIT_DEAD = 0, 1, 2, 4
MEANING = {
    EXIT_HEALTHY: "healthy",
    EXIT_ERROR: "the status is error (or the status file is unreadable)",
    EXIT_NOT_A_RUN: "not a run's base dir: it is missing, or no daemon has written a status file there",
    EXIT_DEAD: "dead daemon: the status is live but no live process holds the base dir's lock",
}
RECENT_LOG_LINES = 5
LOG_TAIL_BYTES = 256 * 1024


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("status", help="show what a run is doing; exit 4 if its daemon died",
                            description=__doc__.split("\n\n")[0],
                            epilog="exit codes: " + "; ".join(f"{k} {v}" for k, v in MEANING.items()))
    parser.add_argument("--base-dir", required=True, help="the run's directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object (the status file's fields "
                        "under `status`, plus alive, seconds_since_last_step, exit_code, ...)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    report = gather(Path(args.base_dir))
    print(json.dumps(report, indent=2) if args.json else render(report))
    return report["exit_code"]


def gather(base_dir: Path) -> dict:
    """Everything `status` shows, as one JSON-able dict (exit_code included)."""
    report: dict = {"base_dir": str(base_dir.resolve())}
    if not base_dir.is_dir():
        return _ending(report, EXIT_NOT_A_RUN, f"{base_dir} does not exist (or is not a directory)")
    holder = liveness(base_dir)
    report.update(alive=holder.alive, holder_pid=holder.pid, liveness=holder.how)
    fields = layout.read_json(base_dir / layout.STATUS_FILE)
    if fields is None:
        if not (base_dir / layout.STATUS_FILE).exists():
            if holder.alive:
                return _ending(report, EXIT_HEALTHY, f"pid {holder.pid} holds the lock and has not written its "
                                                     "status yet (starting)")
            return _ending(report, EXIT_NOT_A_RUN, f"no status file in {base_dir} ({layout.STATUS_FILE}): "
                                                   "no daemon has started here")
        return _ending(report, EXIT_ERROR, f"{layout.STATUS_FILE} is unreadable")
    report["status"] = fields
    report["seconds_since_last_step"] = layout.seconds_since(fields.get("last_step_at"))
    report["seconds_since_update"] = layout.seconds_since(fields.get("updated_at"))
    newest = layout.complete_checkpoints(base_dir)
    report["newest_checkpoint"] = ({"name": newest[-1].name, "step": layout.step_of(newest[-1])}
                                   if newest else None)
    report["queue"] = {"waiting": layout.waiting(base_dir), "claimed": layout.claimed(base_dir)}
    report["recent_log"] = _recent_log(base_dir)
    state = fields.get("status")
    if state == "error":
        return _ending(report, EXIT_ERROR)
    if state in LIVE_STATES and holder.alive is False:
        return _ending(report, EXIT_DEAD, f"the status says {state!r} but {holder.how}: the daemon died "
                                          "(restart it; it resumes from the newest checkpoint)")
    return _ending(report, EXIT_HEALTHY)


def _ending(report: dict, code: int, message: str | None = None) -> dict:
    report.update(exit_code=code, exit_meaning=MEANING[code])
    if message:
        report["message"] = message
    return report


def _recent_log(base_dir: Path) -> list[str]:
    """The last WARNING/ERROR lines of the newest daily log (read from its tail only)."""
    path = layout.newest_log(base_dir)
    if path is None:
        return []
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    lines = [line for line in text.splitlines() if (m := layout.LOG_LINE.match(line)) and m.group(2) != "INFO"]
    return lines[-RECENT_LOG_LINES:]


def render(report: dict) -> str:
    """The human-readable table."""
    head = f"lit-continual status: {escape(report['base_dir'])}"
    fields = report.get("status")
    if fields is None:
        return f"{head}\n  {report['message']} (exit {report['exit_code']})"
    rows = [("status", f"{fields.get('status')}  (exit {report['exit_code']}: {report['exit_meaning']})"),
            ("daemon", _daemon(report, fields)),
            ("step", f"{fields.get('current_step')} / {fields.get('total_steps')}"),
            ("current file", escape(str(fields.get("current_file") or "-"))),
            ("last step", _when(fields.get("last_step_at"), report["seconds_since_last_step"])),
            ("loss / lr", f"{_num(fields.get('loss'), '.4f')} / {_num(fields.get('learning_rate'), '.3e')}"),
            ("tokens/s", _num(fields.get("tokens_per_second"), ".0f")),
            ("checkpoint", _checkpoint(report, fields)),
            ("queue", _queue(report["queue"])),
            ("files", f"{fields.get('files_done', 0)} done, {fields.get('files_failed', 0)} failed, "
                      f"{fields.get('files_skipped', 0)} skipped")]
    if fields.get("eval_loss") is not None:
        rows.append(("eval loss", f"{_num(fields['eval_loss'], '.4f')} at step {fields.get('eval_step')}"))
    for key, label in (("last_snapshot", "last snapshot"), ("last_consolidated", "consolidated"),
                       ("metrics_port", "metrics port")):
        if fields.get(key) is not None:
            rows.append((label, escape(str(fields[key]))))
    rows += [("error", escape(str(fields.get("error") or "-"))),
             ("updated", _when(fields.get("updated_at"), report["seconds_since_update"]))]
    lines = [head] + [f"  {label:<14} {value}" for label, value in rows]
    warnings = fields.get("warnings") or []
    lines.append(f"  {'warnings':<14} {len(warnings) or 'none'}")
    lines += [f"    - {escape(str(w))}" for w in warnings[-RECENT_LOG_LINES:]]
    if report["recent_log"]:
        lines.append(f"  {'recent log':<14} (last warnings and errors)")
        lines += [f"    {line}" for line in report["recent_log"]]
    if "message" in report:
        lines.append(f"  {report['message']}")
    return "\n".join(lines)


def _daemon(report: dict, fields: dict) -> str:
    alive = report["alive"]
    if alive:
        return f"running ({report['liveness']})"
    if alive is None:
        return f"unknown ({report['liveness']})"
    dead = "NOT RUNNING" if fields.get("status") in LIVE_STATES else "not running"
    return f"{dead} ({report['liveness']})"


def _when(stamp: str | None, seconds: float | None) -> str:
    return "never" if not stamp else f"{layout.local_time(stamp)} ({layout.ago(seconds)})"


def _num(value: object, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def _checkpoint(report: dict, fields: dict) -> str:
    newest = report["newest_checkpoint"]
    shown = f"{newest['name']} (newest on disk)" if newest else "none on disk"
    at = fields.get("last_checkpoint_at")
    return shown + (f", last saved {_when(at, layout.seconds_since(at))}" if at else "")


def _queue(queue: dict) -> str:
    names = ", ".join(escape(n) for n in queue["waiting"][:5]) + (", ..." if len(queue["waiting"]) > 5 else "")
    text = f"{len(queue['waiting'])} waiting in inbox/" + (f" ({names})" if names else "")
    return text + (f", {len(queue['claimed'])} claimed (in progress or next)" if queue["claimed"] else "")
