"""Rebase: the adapter merged into the base in fp32, the merged model made the run's base, and a
fresh adapter started on it (the ReLoRA pattern), within one `fit()`.

Steps, at a file's last optimizer step (callbacks/rebase.py decides when):
1. merge: for each LoRA layer, base + delta computed in fp32, cast back to the base's dtype;
2. write `DIR/base_models/gen-<k>/` (temp dir, fsync, rename; a leftover of a killed rebase is
   replaced): the base model with the merged weights, its config and tokenizer;
3. swap in memory: the merged weights copied into the base layers, LoRA A re-drawn from a
   seeded generator of its own (the training RNG stream is untouched) and B set to 0, so the
   model computes the same function; the same Parameter objects, so the optimizer still holds
   them, with its moments cleared.
The end-of-file checkpoint that follows holds gen k + the fresh adapter + the empty optimizer;
a process killed before it resumes from the previous checkpoint (gen k-1) and rebases again.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

import torch
from omegaconf import DictConfig
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from lit_continual import atomic, faults, generations
from lit_continual.config.errors import ConfigError
from lit_continual.models import LoadedModel

log = logging.getLogger("lit_continual")

ADAPTER = "default"  # the adapter name apply_lora gives


@dataclass
class Generation:
    """Which base the run trains on: part of the run state, in every checkpoint."""

    number: int = 0  # 0 = the configured base (model.*); k = DIR/base_models/gen-<k>
    rebased_at_step: int | None = None  # the global step whose end made it (None: never rebased)
    files_at_rebase: int = 0  # files done (ledger counts) when it was made

    def rewarm(self, step: int, steps: int) -> float:
        """The LR multiplier after a rebase: linear from 1/steps back to 1 over `steps` steps."""
        if self.rebased_at_step is None or steps <= 0 or step < self.rebased_at_step:
            return 1.0
        return min(1.0, (step - self.rebased_at_step + 1) / steps)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> Generation:
        data = data or {}
        step = data.get("rebased_at_step")
        return cls(int(data.get("number", 0)), None if step is None else int(step), int(data.get("files_at_rebase", 0)))


def lora_layers(model: PeftModel) -> list[tuple[str, LoraLayer]]:
    """(name in the base model, layer) of every LoRA layer, in module order."""
    return [(name, module) for name, module in model.get_base_model().named_modules()
            if isinstance(module, LoraLayer) and (ADAPTER in module.lora_A or ADAPTER in module.lora_embedding_A)]


def merged_weights(model: PeftModel) -> dict[str, torch.Tensor]:
    """`<layer>.weight` -> base + LoRA delta, summed in fp32 and cast to the base weight's dtype."""
    merged = {}
    with torch.no_grad():
        for name, layer in lora_layers(model):
            weight = layer.get_base_layer().weight
            delta = layer.get_delta_weight(ADAPTER).float()
            if delta.shape != weight.shape:
                raise RuntimeError(f"{name}: LoRA delta {tuple(delta.shape)} does not fit {tuple(weight.shape)}")
            merged[f"{name}.weight"] = (weight.float() + delta).to(weight.dtype)
    return merged


def base_state_dict(model: PeftModel, merged: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The plain base model's state dict (no LoRA keys, PEFT's `.base_layer.` removed), merged."""
    state = {}
    for key, value in model.get_base_model().state_dict().items():
        if ".lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        state[key] = merged.get(key, value)
    return state


def write_generation(base_dir: Path, number: int, model: PeftModel, tokenizer, merged: dict[str, torch.Tensor],
                     step: int) -> Path:
    """Write `DIR/base_models/gen-<number>/` atomically (replacing a leftover of a killed rebase)."""
    final = generations.directory(base_dir, number)
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        dtype = next(iter(merged.values())).dtype if merged else model.get_base_model().dtype
        model.get_base_model().save_pretrained(tmp, state_dict=base_state_dict(model, merged))
        tokenizer.save_pretrained(tmp)
        atomic.write_json(tmp / generations.INFO, {
            "generation": number, "rebased_at_step": step, "merged_in": "float32",
            "dtype": str(dtype).removeprefix("torch."),
            "made_at": datetime.now().astimezone().isoformat(timespec="seconds")}, durable=False)
        atomic.fsync_tree(tmp)
        faults.point("rebase-base", step)
        if final.exists():  # a rebase killed before its checkpoint: this one replaces what it wrote
            trash = root / f".trash-{final.name}-{os.getpid()}"
            os.rename(final, trash)
            shutil.rmtree(trash)
        os.rename(tmp, final)
        atomic.fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def swap(model: PeftModel, merged: dict[str, torch.Tensor], seed: int) -> None:
    """Put the merged weights into the base layers and restart the adapter (same function)."""
    layers = dict(lora_layers(model))
    with torch.no_grad():
        for key, weight in merged.items():
            layers[key.removesuffix(".weight")].get_base_layer().weight.copy_(weight)
    restart_adapter(model, seed)


def restart_adapter(model: PeftModel, seed: int) -> None:
    """LoRA's own init (A: kaiming uniform, B: 0; embeddings: A 0, B normal) drawn from a
    generator seeded with `seed`: the global RNG streams (dropout, shuffles) are untouched."""
    generator = torch.Generator().manual_seed(seed)

    def drawn(param: torch.Tensor, draw) -> torch.Tensor:
        values = torch.empty(param.shape, dtype=torch.float32)
        draw(values)
        return values.to(param.dtype)

    with torch.no_grad():
        for _, layer in lora_layers(model):
            if ADAPTER in layer.lora_A:
                weight = layer.lora_A[ADAPTER].weight
                weight.copy_(drawn(weight, lambda t: torch.nn.init.kaiming_uniform_(
                    t, a=math.sqrt(5), generator=generator)))
                for param in layer.lora_B[ADAPTER].parameters():
                    param.zero_()
            if ADAPTER in layer.lora_embedding_A:
                layer.lora_embedding_A[ADAPTER].zero_()
                weight = layer.lora_embedding_B[ADAPTER]
                weight.copy_(drawn(weight, lambda t: torch.nn.init.normal_(t, generator=generator)))


def reset_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """Fresh moments (and step counts) for every parameter; param_groups (LR, betas) are kept."""
    optimizer.state.clear()
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None


def adapter_seed(seed: int, number: int) -> int:
    """The seed of generation `number`'s fresh adapter (distinct per generation, fixed per run)."""
    return (seed * 1_000_003 + number) % 2**63


def load_generation(cfg: DictConfig, base_dir: Path, number: int, recorded: str | None = None) -> LoadedModel:
    """Generation `number`'s base and tokenizer: DIR/base_models/gen-<k>, else `recorded` (the
    checkpoint's adapter_config.json path: a snapshot resumed in another base dir)."""
    from lit_continual.models.hf import load_dir

    path = generations.directory(base_dir, number).resolve()
    if not (path / "config.json").is_file() and recorded and (Path(recorded) / "config.json").is_file():
        path = Path(recorded).resolve()
    if not (path / "config.json").is_file():
        raise ConfigError(f"the checkpoint to resume was trained on base generation {number}, but "
                          f"{generations.directory(base_dir, number)} is missing (and so is {recorded}): restore it "
                          "from a backup, or resume from a snapshot whose base generation is still on disk")
    info = _read_info(path)
    dtype = info.get("dtype") or cfg.model.get("dtype") or "float32"
    loaded = load_dir(path, dtype, bool(cfg.model.get("trust_remote_code", False)))
    log.info("Base generation %d from %s (rebased at step %s)", number, path, info.get("rebased_at_step"))
    return loaded


def _read_info(path: Path) -> dict:
    import json

    try:
        return json.loads((path / generations.INFO).read_text())
    except (OSError, ValueError):
        return {}
