"""Control files: how operator commands reach a running daemon.

`.stop`, `.pause`, `.resume` and `.skip` in the base dir are requests the daemon sees within
`daemon.poll_seconds` (a background thread) and acts on at the end of the current optimizer
step. It removes `.pause`, `.resume` and `.skip` once acted on; `.stop` stays the user's (a
leftover `.stop` keeps the next start from training: `rm DIR/.stop` first).

`.snapshot` and `.consolidate` carry a request id (JSON); the daemon carries the request out at
its next step boundary (or while idle) and answers in `status/<kind>_result.json` with the same
id, which the command waits for.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from lit_continual import atomic

STOP, PAUSE, RESUME, SKIP = ".stop", ".pause", ".resume", ".skip"
SNAPSHOT, CONSOLIDATE = "snapshot", "consolidate"
REQUESTS = (SNAPSHOT, CONSOLIDATE)


def touch(base_dir: Path, name: str) -> Path:
    """Create control file `name` (e.g. PAUSE) in `base_dir`."""
    path = base_dir / name
    path.touch()
    return path


def ask(base_dir: Path, kind: str) -> str:
    """Leave a `kind` request (SNAPSHOT or CONSOLIDATE) for the daemon; return its id. A request
    of that kind already waiting is joined (its id returned): one answer serves both commands."""
    waiting = pending(base_dir, kind)
    if waiting is not None and waiting != "unnamed":
        return waiting
    request_id = uuid.uuid4().hex
    atomic.write_json(base_dir / f".{kind}", {"id": request_id, "requested_at": _now()}, durable=False)
    return request_id


def pending(base_dir: Path, kind: str) -> str | None:
    """The id of the waiting `kind` request, if any (a request without a readable id gets one)."""
    path = base_dir / f".{kind}"
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unnamed"


def answer(base_dir: Path, kind: str, request_id: str, result: dict) -> None:
    """Record the outcome of request `request_id` (ok, path or error), then remove the request."""
    atomic.write_json(base_dir / "status" / f"{kind}_result.json",
                      {"id": request_id, "finished_at": _now(), **result}, durable=False)
    (base_dir / f".{kind}").unlink(missing_ok=True)


def wait(base_dir: Path, kind: str, request_id: str, alive: Callable[[], bool], poll: float = 0.2,
         timeout: float | None = None) -> dict | None:
    """The daemon's answer to `request_id`; None if the daemon died (alive() is False) or timed out."""
    deadline = None if timeout is None else time.monotonic() + timeout
    path = base_dir / "status" / f"{kind}_result.json"
    while True:
        try:
            result = json.loads(path.read_text())
            if result.get("id") == request_id:
                return result
        except (OSError, ValueError):
            pass
        if not alive() or (deadline is not None and time.monotonic() > deadline):
            return None
        time.sleep(poll)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
