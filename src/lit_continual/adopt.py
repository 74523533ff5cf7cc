"""Continue a Hugging Face Trainer + PEFT run as a lit-continual run (`lit-continual adopt`).

The old daemon's newest `current_model/checkpoint-N/` (adapter_model.safetensors,
adapter_config.json, optimizer.pt, scheduler.pt, trainer_state.json, rng_state.pth; no manifest,
no ledger) becomes a lit-continual `checkpoint-N/` in the normal layout. The LoRA weights, the
AdamW moments and step (matched by parameter name through HF's own grouping, shapes checked) and
the global step carry over. The LR continues on this run's schedule at step N (HF's own linear
schedule decays to 0); HF's RNG state (numpy pickles that `weights_only` loading refuses) and
its data position do not: the ledger starts empty at step N.

Crash safety: everything is read and checked before anything is written (a mismatch exits 2
and changes nothing). Then the Trainer's directories are renamed, untouched, into
current_model/.adopted/, and our checkpoint-N is written atomically. Ours cannot come first: it
has the very name of the Trainer's newest. After a kill in between, the daemon refuses the base
dir (exit 2 naming adopt) and a rerun of adopt finishes from the newest original, wherever it is.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

from lit_continual import atomic, checkpoints, components
from lit_continual.callbacks.rng import capture
from lit_continual.callbacks.step_offset import FIELD, STATE_KEY
from lit_continual.checkpoints import ADAPTER, ADOPTED, OPTIMIZER, TRAINER_STATE, DirectoryCheckpointIO
from lit_continual.config import ConfigError
from lit_continual.ledger import Ledger
from lit_continual.models.lora import apply_lora
from lit_continual.module import LoRAModule
from lit_continual.safe_load import load_tensors

log = logging.getLogger("lit_continual")

HF_REQUIRED = (ADAPTER, "adapter_config.json", OPTIMIZER, TRAINER_STATE)
ADAM_KEYS = {"step", "exp_avg", "exp_avg_sq"}
LOOPS = ("fit_loop", "validate_loop", "test_loop", "predict_loop")


@dataclass
class Adoption:
    """What `adopt` did (or found already done), for the command's report."""

    step: int  # the global step the run continues from; the next step is step + 1
    source: str = ""  # the Trainer's checkpoint directory that was read
    tensors: int = 0  # LoRA tensors loaded
    parameters: int = 0  # LoRA parameters (elements) loaded
    lr: float = 0.0  # the LR of the next step, on this run's schedule
    hf_lr: float | None = None  # the LR the Trainer's optimizer.pt held (its own schedule)
    moved: list[str] = field(default_factory=list)  # directories moved into current_model/.adopted/
    notes: list[str] = field(default_factory=list)  # differences the operator should know about
    already: bool = False  # nothing to do: adopted before


def adopt(cfg: DictConfig, base_dir: Path) -> Adoption:
    """Adopt the newest complete HF Trainer checkpoint of `base_dir`; the caller holds its lock."""
    models_dir = base_dir / "current_model"
    checkpoints.remove_leftovers(models_dir)
    # Ours carry a manifest or a ledger; anything else named checkpoint-N (an empty directory
    # left by a Trainer killed while saving included) is the Trainer's, complete or not.
    ours = [p for p in _dirs(models_dir) if (p / checkpoints.MANIFEST).exists() or (p / checkpoints.LEDGER).exists()]
    here = [p for p in _dirs(models_dir) if p not in ours]
    aside = _dirs(models_dir / ADOPTED)
    if ours and here:
        raise ConfigError(f"{models_dir} holds both lit-continual checkpoints ({', '.join(p.name for p in ours)}) "
                          f"and Hugging Face Trainer ones ({', '.join(p.name for p in here)}): sort them by hand")
    if ours:
        if aside:
            return Adoption(step=checkpoints.step_of(ours[-1]), already=True)
        raise ConfigError(f"nothing to adopt: {models_dir} holds lit-continual checkpoints only")
    complete = [p for p in here + aside if all((p / name).is_file() for name in HF_REQUIRED)]
    if not complete:
        raise ConfigError(f"no complete Hugging Face Trainer checkpoint (checkpoint-N/ with {', '.join(HF_REQUIRED)}) "
                          f"in {models_dir}" + (f" or {models_dir / ADOPTED}" if aside else ""))
    source = max(complete, key=checkpoints.step_of)
    ckpt, checkpoint_io, adoption = convert(cfg, base_dir, source)
    skipped = [p.name for p in here + aside if checkpoints.step_of(p) > checkpoints.step_of(source)]
    if skipped:
        adoption.notes.append(f"incomplete newer Trainer checkpoint(s) not used: {', '.join(skipped)}")
    adoption.moved = _move_aside(here, models_dir)
    checkpoint_io.save_checkpoint(ckpt, models_dir / f"{checkpoints.PREFIX}{adoption.step}")
    log.info("Adopted the Hugging Face Trainer's %s as checkpoint-%d (moved to %s/: %s); the next step is %d at "
             "LR %.3e on this run's schedule (the Trainer's own was at %s); RNG not carried over, ledger empty",
             source.name, adoption.step, ADOPTED, ", ".join(adoption.moved), adoption.step + 1, adoption.lr,
             adoption.hf_lr)
    return adoption


def convert(cfg: DictConfig, base_dir: Path, source: Path) -> tuple[dict, DirectoryCheckpointIO, Adoption]:
    """Our Lightning checkpoint dict for the Trainer's checkpoint `source`; writes nothing."""
    step = _read(source / TRAINER_STATE, lambda path: int(json.loads(path.read_text())["global_step"]))
    if step < 1:
        raise ConfigError(f"{source / TRAINER_STATE} says global_step={step}: nothing was trained yet")
    components.check(cfg)
    torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, verbose=False)
    rng = capture()  # a fresh run's generators: HF's rng_state.pth is not loadable with weights_only
    loaded = components.model(cfg, base_dir)
    try:
        model = apply_lora(loaded.model, cfg.lora, cfg.seed)
    except ValueError as err:  # PEFT: a target module the model does not have
        raise ConfigError(f"lora.target_modules={list(cfg.lora.target_modules)}: {err}") from err
    factory, hyperparameters = components.optimizer(cfg)
    module = LoRAModule(model, factory, hyperparameters, components.schedule(cfg),
                        OmegaConf.to_container(cfg, resolve=True))
    adoption = Adoption(step=step, source=source.name)
    adoption.tensors, adoption.parameters = _load_adapter(model, source, cfg)
    configured = module.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    adoption.hf_lr, adoption.notes = _load_moments(model, optimizer, source, hyperparameters)
    adoption.lr = _continue_schedule(module, optimizer, scheduler, step)
    ckpt = {
        "epoch": 0, "global_step": step, "pytorch-lightning_version": L.__version__,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()},
        "loops": _loops(step, cfg.trainer.accumulate_grad_batches),
        "callbacks": {"RngState": rng, "NonFiniteGuard": {"consecutive": 0, "skipped_total": 0},
                      STATE_KEY: {FIELD: step - _optimizer_step(optimizer, step)},
                      checkpoints.HISTORY_KEY: {"every_n_steps": cfg.logging.every_n_steps, "log_history": [],
                                                "pending": {"loss_sum": 0.0, "steps": 0}}},
        "optimizer_states": [optimizer.state_dict()],
        "lr_schedulers": [scheduler.state_dict()],
        checkpoints.LEDGER_KEY: Ledger().to_dict(),
        "run_config": module.run_config,
    }
    return ckpt, DirectoryCheckpointIO(model.peft_config["default"], loaded.path), adoption


def _continue_schedule(module: LoRAModule, optimizer, scheduler, step: int) -> float:
    """Our schedule at `step` (the LR of step + 1), set as LoRAModule sets it after any resume."""
    base_lr = float(module.hyperparameters["lr"])
    lr = base_lr * module.schedule(step)
    for group in optimizer.param_groups:
        group.update(initial_lr=base_lr, lr=lr)
    scheduler.base_lrs = [base_lr] * len(optimizer.param_groups)
    scheduler.last_epoch, scheduler._step_count, scheduler._last_lr = step, step + 1, [lr]
    return lr


def _read(path: Path, reader):
    """`reader(path)`; a file the Trainer left unreadable is a ConfigError saying what to do."""
    try:
        return reader(path)
    except Exception as err:
        raise ConfigError(f"cannot read {path} ({type(err).__name__}: {(str(err).splitlines() or [''])[0]}). "
                          f"If the Trainer was killed while saving {path.parent.name}, move that directory out of "
                          "current_model/ and adopt the one before it") from err


def _load_adapter(model, source: Path, cfg: DictConfig) -> tuple[int, int]:
    """Load the Trainer's LoRA weights into `model`; ConfigError names a missing, extra or
    differently shaped tensor (with the adapter's own settings, to adopt with those)."""
    theirs = _read(source / ADAPTER, load_file)
    ours = get_peft_model_state_dict(model)
    hint = _adapter_hint(source)
    missing, extra = sorted(ours.keys() - theirs.keys()), sorted(theirs.keys() - ours.keys())
    if missing or extra:
        what = "; ".join(f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
                         for label, names in (("missing from it:", missing), ("not in lora.*:", extra)) if names)
        raise ConfigError(f"the Hugging Face adapter in {source} has other tensors than lora.* builds ({what}); {hint}")
    for name, tensor in ours.items():
        if theirs[name].shape != tensor.shape:
            raise ConfigError(f"{name}: the Hugging Face adapter has shape {list(theirs[name].shape)}, this run "
                              f"(lora.r={cfg.lora.r}) builds {list(tensor.shape)}; {hint}")
    config = _read(source / "adapter_config.json", lambda path: json.loads(path.read_text()))
    for key, ours_value in (("lora_alpha", cfg.lora.alpha), ("use_dora", False), ("use_rslora", False)):
        if config.get(key, ours_value) != ours_value:
            raise ConfigError(f"the Hugging Face adapter has {key}={config[key]} but this run has {ours_value}; {hint}")
    set_peft_model_state_dict(model, theirs)
    return len(theirs), sum(t.numel() for t in theirs.values())


def _adapter_hint(source: Path) -> str:
    try:
        config = json.loads((source / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return "check its adapter_config.json"
    modules = ",".join(sorted(config.get("target_modules") or []))
    return (f"adopt with the adapter's own settings (its adapter_config.json: lora.r={config.get('r')} "
            f"lora.alpha={config.get('lora_alpha')} lora.target_modules=[{modules}])")


def _optimizer_step(optimizer: torch.optim.Optimizer, default: int) -> int:
    """AdamW's own step count after the moments were loaded (the Trainer's; its grad scaler may
    have skipped steps), or `default` when no parameter has state yet."""
    steps = [int(state["step"]) for state in optimizer.state.values() if "step" in state]
    return max(steps, default=default)


def hf_order(model) -> list[list[str]]:
    """The Trainer's optimizer parameter groups by name: decay, then no decay (HF's own rule,
    `Trainer.get_decay_parameter_names`), each in `named_parameters` order, trainable only."""
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))  # `self` is not used by it
    named = [n for n, p in model.named_parameters() if p.requires_grad]
    return [[n for n in named if n in decay], [n for n in named if n not in decay]]


def _load_moments(model, optimizer: torch.optim.Optimizer, source: Path, hyper: dict) -> tuple[float | None, list[str]]:
    """Put the Trainer's AdamW state (stored by position in its two groups) into our optimizer
    (one group, `named_parameters` order) by parameter name. Returns HF's last LR and notes."""
    if not isinstance(optimizer, torch.optim.Adam) or optimizer.defaults.get("amsgrad"):
        raise ConfigError(f"optim._target_: the Hugging Face Trainer's optimizer.pt holds AdamW state; adopt "
                          f"with optim=adamw (this run builds {type(optimizer).__name__})")
    hf = _read(source / OPTIMIZER, load_tensors)
    if not isinstance(hf, dict) or not {"state", "param_groups"} <= hf.keys():
        raise ConfigError(f"{source / OPTIMIZER} is not a torch optimizer state_dict (no state/param_groups)")
    groups, order = hf["param_groups"], hf_order(model)
    sizes = [len(g["params"]) for g in groups]
    if sizes != [len(names) for names in order][: len(sizes)] or sum(sizes) != sum(map(len, order)):
        raise ConfigError(f"{source / OPTIMIZER} has parameter groups of {sizes} tensors; this model's LoRA "
                          f"parameters group as {[len(n) for n in order]} under the Trainer's rule")
    params = dict(model.named_parameters())
    by_name = {}
    for group, names in zip(groups, order, strict=False):  # the sizes match: checked above
        for index, name in zip(group["params"], names, strict=True):
            moments = hf["state"].get(index)
            if moments is None:
                continue  # never stepped (no gradient yet): AdamW starts it fresh, as the Trainer would
            if set(moments) != ADAM_KEYS:
                raise ConfigError(f"{name}: {source / OPTIMIZER} holds {sorted(moments)}, "
                                  f"not AdamW's {sorted(ADAM_KEYS)}")
            for key in ("exp_avg", "exp_avg_sq"):
                if moments[key].shape != params[name].shape:
                    raise ConfigError(f"{name}: {key} in {source / OPTIMIZER} has shape {list(moments[key].shape)}, "
                                      f"the parameter {list(params[name].shape)}")
            by_name[name] = {"step": torch.as_tensor(moments["step"], dtype=torch.float32),
                             "exp_avg": moments["exp_avg"], "exp_avg_sq": moments["exp_avg_sq"]}
    ours = [n for n, p in model.named_parameters() if p.requires_grad]  # = LoRAModule's parameter order
    state = optimizer.state_dict()
    state["state"] = {i: by_name[name] for i, name in enumerate(ours) if name in by_name}
    optimizer.load_state_dict(state)
    return (groups[0].get("lr") if groups else None), _differences(groups, hyper)


def _differences(groups: list[dict], hyper: dict) -> list[str]:
    """optim.* values that differ from what the Trainer used (ours apply from now on)."""
    notes = []
    for key in ("weight_decay", "betas", "eps"):
        theirs = next((g[key] for g in groups if g["params"] and key in g), None)
        if theirs is not None and key in hyper and tuple(_tuple(theirs)) != tuple(_tuple(hyper[key])):
            notes.append(f"the Trainer used {key}={theirs}; optim.{key}={hyper[key]} applies from now on")
    return notes


def _tuple(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _loops(step: int, accumulate: int) -> dict:
    """Lightning's loop state of a checkpoint saved at the end of optimizer step `step`, mid-epoch
    (as our checkpointer saves one), so a resumed `trainer.global_step == step`."""
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    loops = {name: getattr(trainer, name).state_dict() for name in LOOPS}
    fit = loops["fit_loop"]
    batches = step * accumulate
    optim = fit["epoch_loop.automatic_optimization.optim_progress"]["optimizer"]
    _count(optim["step"], ready=step, completed=step)
    _count(optim["zero_grad"], ready=step, started=step, completed=step)
    _count(fit["epoch_loop.scheduler_progress"], ready=step, completed=step)
    # Saved in on_train_batch_end: the batch is processed, not yet completed.
    _count(fit["epoch_loop.batch_progress"], ready=batches, started=batches, processed=batches, completed=batches - 1)
    fit["epoch_loop.batch_progress"]["is_last_batch"] = False
    fit["epoch_loop.state_dict"]["_batches_that_stepped"] = step - 1  # Lightning adds the 1 back on restart
    _count(fit["epoch_progress"], ready=1, started=1, processed=0, completed=0)
    return loops


def _count(progress: dict, **values: int) -> None:
    for scope in ("total", "current"):
        progress[scope].update(values)


def _dirs(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if checkpoints.step_of(p) is not None and p.is_dir()),
                  key=checkpoints.step_of)


def _move_aside(paths: list[Path], models_dir: Path) -> list[str]:
    """Rename each directory, untouched, into current_model/.adopted/ (durably)."""
    target = models_dir / ADOPTED
    clashes = [p.name for p in paths if (target / p.name).exists()]
    if clashes:
        raise ConfigError(f"cannot move {', '.join(clashes)} into {target}: already there (sort them by hand)")
    target.mkdir(exist_ok=True)
    for path in paths:
        os.rename(path, target / path.name)
    atomic.fsync_dir(target)
    atomic.fsync_dir(models_dir)
    return [p.name for p in paths]
