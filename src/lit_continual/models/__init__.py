"""Load the base model and tokenizer (tiny or a local Hugging Face directory) and apply LoRA."""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from lit_continual.models import smollm2, tiny

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def base_model_dir(cfg: DictConfig, base_dir: Path) -> Path:
    """Where the base model lives: DIR/base_model for tiny, the cache for smollm2, model.path for hf."""
    if cfg.model.name == "tiny":
        return (base_dir / "base_model").resolve()
    if cfg.model.name == "smollm2":
        return Path(cfg.model.cache_dir).expanduser().resolve()
    return Path(cfg.model.path).expanduser().resolve()


def load_base(cfg: DictConfig, base_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, Path]:
    """Return (model in train mode, tokenizer, its directory). Only local files are read."""
    path = base_model_dir(cfg, base_dir)
    hf_logging.disable_progress_bar()  # the daemon's log is for operators, not shard bars
    if cfg.model.name == "tiny":
        tiny.ensure_saved(cfg.model, path)
        dtype, remote = torch.float32, False
    else:
        if cfg.model.name == "smollm2":
            smollm2.ensure_converted(path)
        dtype, remote = DTYPES[cfg.model.dtype], bool(cfg.model.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=remote)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if cfg.model.name == "tiny" and not tokenizer.chat_template:
        tokenizer.chat_template = tiny.CHAT_TEMPLATE  # base dirs built before chat support
    model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, dtype=dtype, trust_remote_code=remote
    )
    return model, tokenizer, path


def apply_lora(model: PreTrainedModel, lora: DictConfig, seed: int) -> PeftModel:
    """Wrap the frozen base with a LoRA adapter; the LoRA init is seeded."""
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=sorted(OmegaConf.to_container(lora.target_modules)),
        task_type="CAUSAL_LM",
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        peft_model = get_peft_model(model, config)
    finally:
        torch.random.set_rng_state(state)
    # from_pretrained returns eval mode and Lightning keeps submodule modes: dropout would be off.
    peft_model.train()
    return peft_model
