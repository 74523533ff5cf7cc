"""How far the optimizer's own step count lags the global step for a reason other than
non-finite skips: an adopted Hugging Face Trainer checkpoint whose AdamW had skipped steps
(its grad scaler) starts our run with that difference. Saved in every checkpoint so that
`lit-continual verify` can check `optimizer step = global step - skips - offset`."""

from __future__ import annotations

import lightning as L

STATE_KEY, FIELD = "StepOffset", "optimizer_step_offset"


class StepOffset(L.Callback):
    def __init__(self) -> None:
        self.offset = 0

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def state_dict(self) -> dict:
        return {FIELD: self.offset}

    def load_state_dict(self, state_dict: dict) -> None:
        self.offset = int(state_dict.get(FIELD, 0))
