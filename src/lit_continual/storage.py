"""Storage faults: a failed write of run state or a report is retried, never blamed on the data.

What counts is *where* it failed, not the exception type: on ENOSPC, safetensors raises
`SafetensorError` and `torch.save` a `RuntimeError`, neither an `OSError`. Each write site
wraps its failure in `StorageFault`; `retry` waits with a doubling backoff (a stop request
ends the wait) while the status says `error`, and clears it once the write succeeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from lit_continual.status import Status
from lit_continual.stop import StopRequest

log = logging.getLogger("lit_continual")

T = TypeVar("T")


class StorageFault(OSError):
    """Writing run state, a checkpoint or a report failed (disk full, I/O error, ...)."""


@dataclass
class Backoff:
    """daemon.retry_initial_seconds doubling up to daemon.retry_max_seconds."""

    initial: float
    maximum: float


def retry(action: Callable[[], T], what: str, backoff: Backoff, stop: StopRequest, status: Status
          ) -> tuple[bool, T | None]:
    """Run `action` until it does not raise StorageFault; (False, None) if a stop came first."""
    delay, failed = backoff.initial, False
    while True:
        try:
            result = action()
        except StorageFault as err:
            cause = err.__cause__ or err
            log.error("Could not write %s: %s: %s (retrying in %.1f s; nothing earlier is lost)",
                      what, type(cause).__name__, cause, delay)
            status.update(status="error", error=f"{what}: {cause}", write=True)
            failed = True
            if not wait(delay, stop):
                log.error("Stop requested: giving up on writing %s", what)
                return False, None
            delay = min(delay * 2, backoff.maximum)
            continue
        if failed:
            log.info("Wrote %s after the storage fault cleared", what)
            state = "training" if status.fields["status"] == "error" else status.fields["status"]
            status.update(status=state, error=None, write=True)
        return True, result


def wait(seconds: float, stop: StopRequest) -> bool:
    """Sleep up to `seconds`; False as soon as a stop is requested."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if stop.requested:
            return False
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
    return not stop.requested
