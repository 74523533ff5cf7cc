"""`model=hf`: any local Hugging Face causal LM directory (never a hub id)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from lit_continual.config.schema import DTYPES as DTYPE_NAMES
from lit_continual.models import LoadedModel

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}  # the names the schema accepts


def load(base_dir: Path, path: str, dtype: str = "float32", trust_remote_code: bool = False) -> LoadedModel:
    """The model and tokenizer in `path` (resolved; relative to the working directory)."""
    return load_dir(Path(path).expanduser().resolve(), dtype, trust_remote_code)


def load_dir(path: Path, dtype: str, trust_remote_code: bool) -> LoadedModel:
    """Load a local directory: train mode, a pad token (EOS when the tokenizer has none)."""
    hf_logging.disable_progress_bar()  # the daemon's log is for operators, not shard bars
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=DTYPES[dtype],
                                                 trust_remote_code=trust_remote_code)
    return LoadedModel(model, tokenizer, path)
