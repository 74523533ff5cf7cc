"""The one place that calls `torch.load`: always with `weights_only=True`.

A `.pt` file is a pickle, and unpickling can run arbitrary code. Checkpoints live in a directory
other processes and people can write to, so every load goes through `load_tensors`, which only
accepts tensors and plain containers (torch's restricted weights-only unpickler). A direct
`torch.load` anywhere else is banned by ruff (TID251, see pyproject.toml).
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch


def load_tensors(path: str | os.PathLike | io.BytesIO, map_location: Any = "cpu") -> Any:
    """`torch.load(path, map_location=map_location, weights_only=True)`; never a full unpickle."""
    return torch.load(path, map_location=map_location, weights_only=True)
