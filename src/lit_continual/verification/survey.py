"""The base dir as the checks see it: its checkpoints, each verified once against its manifest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from lit_continual import checkpoints, layout


@dataclass
class Survey:
    """`found`: checkpoint dirs with a manifest, by step; `strays`: checkpoint-N dirs without one
    (foreign, e.g. Hugging Face Trainer's, or not ours); `damaged`: what the manifest finds wrong
    with a found one; `misnamed`: a verified one whose trainer_state.json disagrees with its name."""

    base_dir: Path
    found: list[Path] = field(default_factory=list)
    strays: list[Path] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)
    misnamed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, base_dir: Path) -> Survey:
        every = layout.checkpoint_dirs(base_dir)
        survey = cls(base_dir, [p for p in every if (p / layout.MANIFEST).is_file()],
                     [p for p in every if not (p / layout.MANIFEST).is_file()])
        for path in survey.found:
            problem = checkpoints.verify(path)
            if problem is not None:
                survey.damaged[path.name] = problem
            elif (problem := _step_problem(path)) is not None:
                survey.misnamed[path.name] = problem
        gone = [p.name for p in survey.found if not p.is_dir()]
        if gone:  # pruned by a running daemon while verified: not damaged; the caller looks again
            raise FileNotFoundError(f"checkpoint(s) {', '.join(gone)} removed while being verified")
        return survey

    def problem(self, path: Path) -> str | None:
        return self.damaged.get(path.name) or self.misnamed.get(path.name)

    @cached_property
    def intact(self) -> list[Path]:
        """The checkpoints that verify, oldest first: what the step and counter checks read."""
        return [p for p in self.found if self.problem(p) is None]

    @property
    def newest(self) -> Path | None:
        """The newest intact checkpoint: the one a restart resumes from."""
        return self.intact[-1] if self.intact else None

    def read(self, path: Path, name: str) -> dict:
        """A JSON file of an intact checkpoint (its manifest vouched for it)."""
        return json.loads((path / name).read_text(encoding="utf-8"))


def global_step(path: Path) -> int | None:
    """The step trainer_state.json records, or None when a damaged checkpoint's cannot be read."""
    state = layout.read_json(path / layout.TRAINER_STATE)
    step = state.get("global_step") if state else None
    return step if isinstance(step, int) else None


def _step_problem(path: Path) -> str | None:
    """A checkpoint whose state disagrees with its directory name would resume at the wrong step."""
    step = global_step(path)
    if step is None:
        return f"unreadable {layout.TRAINER_STATE}"
    if step != layout.step_of(path):
        return f"{layout.TRAINER_STATE} says global_step={step}"
    return None
