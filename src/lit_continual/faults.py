"""Test-only fault injection: `LIT_CONTINUAL_FAULT=<point>@<step>` SIGKILLs this process there.

`<point>@*` kills at the point's first occurrence.
Points: `train` (an optimizer step is about to run), `step` (after the optimizer step, before
any checkpoint), `checkpoint-tmp` (temp dir written and fsynced, before the rename),
`retention` (an old checkpoint renamed to .trash-*, before it is deleted), `before-delete`
(end-of-file checkpoint durable, before the inbox delete), `rebase-base` (a new base generation
written and fsynced in its temp dir, before the rename), `rebase-swap` (the generation renamed
into place, the model not yet swapped), `rebase-done` (swapped, fresh adapter and optimizer,
before that step's checkpoint). Unset in production: a no-op.
"""

from __future__ import annotations

import os
import signal

ENV = "LIT_CONTINUAL_FAULT"
_SPEC = os.environ.get(ENV, "")


def point(name: str, step: int) -> None:
    """SIGKILL this process if the fault spec names this point and step (`<point>@*`: the
    first time the point is reached)."""
    if _SPEC and _SPEC in (f"{name}@{step}", f"{name}@*"):
        os.kill(os.getpid(), signal.SIGKILL)
