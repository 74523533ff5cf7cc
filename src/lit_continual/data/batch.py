"""What each micro-batch carries besides its tensors: a typed, frozen record of its place in
the run, read by the module and the callbacks (the data position advances from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lit_continual.ledger import FileRecord

INFO = "info"  # the key of a batch's BatchInfo in the batch dict


@dataclass(frozen=True)
class BatchInfo:
    file: FileRecord  # the ledger record of the file the batch comes from
    handle: Any  # the feed's handle of that file (the feed decides and finishes with it)
    examples: int  # examples this micro-batch trains (0 for a zero-weight filler)
    tokens: int  # real (non-pad) tokens in it
    first_of_file: bool  # the first micro-batch this process trains of the file
    window_start: bool  # the first micro-batch of an optimizer step
    window_end: bool  # the last micro-batch of an optimizer step
    window_parts: int  # micro-batches of this step that hold data (the rest are fillers)
    file_end: bool  # the optimizer step this ends is the file's last
    abandoned: str | None  # why the rest of the file cannot be trained (it changed), or None
    file_steps_total: int  # optimizer steps the whole file takes
    file_steps_left: int  # steps left of it when this process started it
    replayed: int = 0  # examples of it drawn from the replay reservoir (data/replay.py)
