"""Wrap a frozen base model with a seeded LoRA adapter (PEFT)."""

from __future__ import annotations

import torch
from omegaconf import DictConfig, OmegaConf
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import PreTrainedModel


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
