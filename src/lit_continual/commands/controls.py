"""`lit-continual stop|pause|resume|skip --base-dir DIR`: write the control file and wait (a
few seconds) for the daemon to acknowledge it in its status."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

from lit_continual import controls

# What each command asks, and the statuses that show the daemon took it in.
ACTIONS = {
    "stop": ("stop at the end of the current optimizer step (checkpoint, then exit 0)", controls.STOP,
             ("stopping", "stopped")),
    "pause": ("pause at the end of the current optimizer step (checkpoint, then wait for `resume`)",
              controls.PAUSE, ("pausing", "paused")),
    "resume": ("resume a paused daemon", controls.RESUME, ("training", "idle", "stopping", "stopped")),
    "skip": ("skip the rest of the file being trained: checkpoint, move it to DIR/skipped/, go on",
             controls.SKIP, ("skipping", "idle", "training", "stopping", "stopped")),
}
ACK_SECONDS = 5.0


def add(sub: argparse._SubParsersAction) -> None:
    for name, (what, _, _) in ACTIONS.items():
        parser = sub.add_parser(name, help=what, description=what.capitalize() + ".")
        parser.add_argument("--base-dir", required=True)
        parser.add_argument("--wait", type=float, default=ACK_SECONDS, metavar="SECONDS",
                            help=f"how long to wait for the daemon's acknowledgement (default: {ACK_SECONDS:g}); "
                                 "for stop, 0 = do not wait, and a longer wait also waits for the exit")
        parser.set_defaults(func=run, action=name)


def run(args: argparse.Namespace) -> int:
    from lit_continual.lock import liveness

    base_dir = Path(args.base_dir)
    if not base_dir.is_dir():
        print(f"lit-continual {args.action}: {base_dir} does not exist")
        return 1
    _, name, acks = ACTIONS[args.action]
    status = _status(base_dir)
    alive = liveness(base_dir).alive is not False  # None (cannot tell from here): assume it runs
    if args.action == "resume" and status not in ("paused", "pausing") and not (base_dir / controls.PAUSE).exists():
        print(f"Nothing to resume: the daemon is {status or 'not running'}")
        return 0
    current = _field(base_dir, "current_file")
    if args.action == "skip" and alive and (status not in ("starting", "training", "pausing", "paused", "skipping")
                                            or current is None):
        print(f"Nothing to skip: the daemon is {status} (no file is being trained)")
        return 1
    if args.action == "resume":
        (base_dir / controls.PAUSE).unlink(missing_ok=True)  # a pause not acted on yet is cancelled
    path = base_dir / name
    if args.action == "skip":
        # Its identity (a kill after the skip never skips twice) and the file it means: a request
        # that arrives after that file ended is dropped, never applied to the next file.
        path.write_text(json.dumps({"id": uuid.uuid4().hex, "file": current}) + "\n")
    else:
        path.touch()
    if not alive:
        later = (f"; remove it (rm {path}) before the next start, or that start exits at once"
                 if args.action == "stop" else ": the daemon acts on it when it starts")
        print(f"Wrote {path}. No daemon is running in {base_dir}{later}")
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        status = _status(base_dir)
        if status in acks and (args.action != "stop" or status == "stopped" or args.wait <= ACK_SECONDS):
            break
        time.sleep(0.1)
    print(f"Wrote {path}; the daemon's status: {status}")
    if args.action == "stop":
        print(f"(.stop stays until you remove it: rm {path} before starting the daemon again)")
    return 0


def _status(base_dir: Path) -> str | None:
    return _field(base_dir, "status")


def _field(base_dir: Path, name: str) -> object:
    try:
        return json.loads((base_dir / "status" / "training_status.json").read_text()).get(name)
    except (OSError, ValueError, AttributeError):
        return None
