"""The newest checkpoint loads with stock PEFT onto its base model, with the weights it holds.

The base model is the one its adapter_config.json records. If that path is gone (a base dir
that was moved, with the base model inside it), the same relative path under the base dir is
tried, and the report says so: new checkpoints record the current path.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from lit_continual import checkpoints, layout
from lit_continual.logs import escape
from lit_continual.verification import Check
from lit_continual.verification.state import NO_CHECKPOINT
from lit_continual.verification.survey import Survey

RELOCATE_DEPTH = 3  # how many trailing parts of a missing base path to look for under the base dir


def base_model_path(base_dir: Path, checkpoint: Path) -> tuple[str | None, Path | None]:
    """(recorded base model path, where it is now: recorded, relocated under base_dir, or None)."""
    recorded = (layout.read_json(checkpoint / layout.ADAPTER_CONFIG) or {}).get("base_model_name_or_path")
    if not recorded:
        return None, None
    path = Path(recorded)
    if path.exists():
        return recorded, path
    for depth in range(1, min(RELOCATE_DEPTH, len(path.parts) - 1) + 1):
        candidate = base_dir.joinpath(*path.parts[-depth:])
        if candidate.exists():
            return recorded, candidate
    return recorded, None


def adapter_loads(survey: Survey) -> Check:
    name = "adapter-loads"
    newest = survey.newest
    if newest is None:
        return Check(name, False, NO_CHECKPOINT)
    recorded, base = base_model_path(survey.base_dir, newest)
    if recorded is None:
        return Check(name, False, f"{newest.name}: {layout.ADAPTER_CONFIG} records no base_model_name_or_path")
    if base is None:
        return Check(name, False, f"{newest.name}: its base model {escape(recorded)} no longer exists (a moved "
                                  "base dir or base model?): cannot load it")
    moved = "" if str(base) == recorded else f" (recorded {escape(recorded)} no longer exists: loaded from here)"
    try:
        mismatch = _load(newest, base)
    except Exception as err:
        return Check(name, False, f"{newest.name} on {escape(str(base))}: {type(err).__name__}: "
                                  f"{escape(str(err).splitlines()[0] if str(err) else '')}")
    if mismatch:
        return Check(name, False, f"{newest.name} loads, but {mismatch}")
    return Check(name, True, f"{newest.name} loads with stock PEFT (PeftModel.from_pretrained) on "
                             f"{escape(str(base))}{moved}, with the weights it holds")


def _load(checkpoint: Path, base: Path) -> str | None:
    """Load as a user would; what differs from the saved adapter weights, or None."""
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # "Loading weights" bars would interleave with the report
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecations between the pinned libraries
            # PEFT looks for the recorded base's config.json (vocabulary check): gone after a move
            warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)
            model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
            model = PeftModel.from_pretrained(model, checkpoint, local_files_only=True)
            loaded = get_peft_model_state_dict(model)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    saved = load_file(checkpoint / checkpoints.ADAPTER)
    if set(saved) != set(loaded):
        return f"{len(set(saved) ^ set(loaded))} adapter tensor name(s) differ from {checkpoints.ADAPTER}"
    differ = [key for key in saved if not torch.equal(saved[key], loaded[key].to(saved[key].dtype))]
    return f"{len(differ)} adapter tensor(s) differ from {checkpoints.ADAPTER} (e.g. {differ[0]})" if differ else None
