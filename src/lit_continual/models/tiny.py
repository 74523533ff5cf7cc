"""The embedded default model: a small Llama causal LM and a byte-level tokenizer, built locally.

Nothing is downloaded. The weights are deterministic from the seed, so two base dirs built
with the same config hold the same model (resume-equivalence tests rely on this).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import DictConfig
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from lit_continual.models import LoadedModel

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
# Each turn: "<|role|>\n" + content + EOS. add_generation_prompt opens an assistant turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per byte (256) plus pad/bos/eos: no training, so it is identical everywhere."""
    specials = [PAD, BOS, EOS]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(specials + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_model(cfg: DictConfig | SimpleNamespace, tokenizer: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    """A random Llama model whose weights depend only on `cfg.seed` and its shape."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        initializer_range=cfg.initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(int(cfg.seed))
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(generator_state)
    return model


def ensure_saved(cfg: DictConfig | SimpleNamespace, directory: Path) -> Path:
    """Build the tiny base into `directory` once (atomically); later calls reuse it."""
    if (directory / "config.json").is_file():
        return directory
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" bars are not for operators
    tmp = directory.with_name(f".tmp-{directory.name}")
    tokenizer = build_tokenizer()
    build_model(cfg, tokenizer).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(directory)
    return directory


def load(base_dir: Path, **shape: object) -> LoadedModel:
    """`model=tiny`: build the base into DIR/base_model once, then load it like any local model.

    `shape` is the model/tiny.yaml keys (hidden_size, ..., seed)."""
    from lit_continual.models.hf import load_dir

    directory = (base_dir / "base_model").resolve()
    ensure_saved(SimpleNamespace(**shape), directory)
    loaded = load_dir(directory, "float32", trust_remote_code=False)
    if not loaded.tokenizer.chat_template:
        loaded.tokenizer.chat_template = CHAT_TEMPLATE  # base dirs built before chat support
    return loaded
