"""Base models: each kind is a loader function named by `model._target_` in conf/model/*.yaml.

A loader takes the run's base dir and its own keys and returns a `LoadedModel`; only local
files are ever read. This package's own import is light (no torch), so the config check can
look at a model kind before anything heavy loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple


class LoadedModel(NamedTuple):
    model: Any  # a transformers PreTrainedModel, in train mode
    tokenizer: Any  # its tokenizer, with a pad token
    path: Path  # the local directory it was loaded from (recorded in adapter_config.json)


def __getattr__(name: str) -> Any:
    if name == "apply_lora":  # lazily: it imports torch and peft
        from lit_continual.models.lora import apply_lora

        return apply_lora
    raise AttributeError(name)
