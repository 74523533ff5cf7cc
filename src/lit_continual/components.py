"""Every component of a run from its `_target_` config (`hydra.utils.instantiate`).

`check` runs right after torch/Lightning are imported and before the model loads: each open
node's keys are checked against its target's signature (exit 2 naming the key). The builders
then pass at call time what the daemon owns (the adapter's parameters, the Trainer's loop
limits, plugins, loggers and callbacks), so no config can break the run's guarantees.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from lit_continual.config.errors import ConfigError, did_you_mean
from lit_continual.models import LoadedModel

# Keys of ours inside a target's node (not passed to it), and arguments the daemon passes.
OURS = {"trainer": ("num_threads",), "model": ("name",)}
PASSED = {"optim": ("params",), "scheduler": ("step", "file"), "model": ("base_dir",)}
FUSED = (torch.optim.AdamW, torch.optim.Adam)  # fused where the device allows, as HF Trainer does
EXTRAS = {"mlflow": "mlflow", "wandb": "wandb"}


def check(cfg: DictConfig) -> None:
    """Check every open node against its target's signature; ConfigError names the key."""
    _check_node(cfg.model, "model", base=None)
    _check_node(cfg.optim, "optim", base=torch.optim.Optimizer)
    _check_node(cfg.scheduler, "scheduler", base=None)
    _check_node(cfg.trainer, "trainer", base=L.Trainer)
    for name, node in _named(cfg.get("logger")):
        _check_node(node, f"logger.{name}", base=None)
    for name, node in _named(cfg.callbacks, skip="model_checkpoint"):
        _check_node(node, f"callbacks.{name}", base=L.Callback)
    _try_out(cfg)


def _try_out(cfg: DictConfig) -> None:
    """Values a signature cannot judge (a negative weight decay, a schedule that raises) are
    refused by building the optimizer on one parameter and asking the schedule for step 0."""
    try:
        build, _ = optimizer(cfg)
        build([torch.nn.Parameter(torch.zeros(1))])
    except Exception as err:
        raise ConfigError(f"optim: {cfg.optim._target_} refuses its keys: {_cause(err)}") from err
    try:
        factor = schedule(cfg)(0)
    except Exception as err:
        raise ConfigError(f"scheduler: {cfg.scheduler._target_}(0) failed: {_cause(err)}") from err
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor < 0:
        raise ConfigError(f"scheduler: {cfg.scheduler._target_}(0) returned {factor!r}, not a number >= 0")


def _named(group: DictConfig | None, skip: str = "") -> list[tuple[str, DictConfig]]:
    return [(name, node) for name, node in (group or {}).items() if name != skip]


def _check_node(node: DictConfig, path: str, base: type | None) -> None:
    group = path.split(".")[0]
    target = _import(node, path)
    if base is not None and not (isinstance(target, type) and issubclass(target, base)):
        raise ConfigError(f"{path}._target_={node._target_!r}: must be a subclass of "
                          f"{base.__module__}.{base.__qualname__}")
    accepted = _accepted(target)
    for key in node:
        if key.startswith("_") and key.endswith("_") or key in OURS.get(group, ()):
            continue
        if key in PASSED.get(group, ()):
            raise ConfigError(f"{path}.{key} cannot be set: the daemon passes it")
        if accepted is not None and key not in accepted:
            raise ConfigError(f"unknown key {path}.{key}: {node._target_} does not take `{key}`"
                              f"{did_you_mean(f'{path}.{key}', sorted(accepted))}")
    for name, param in _parameters(target).items():
        required = param.default is inspect.Parameter.empty and param.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        if required and name not in node and name not in PASSED.get(group, ()):
            raise ConfigError(f"{path}.{name} must be set ({node._target_} requires it)")


def _import(node: DictConfig, path: str) -> Any:
    try:
        return get_object(node._target_)
    except Exception as err:
        raise ConfigError(f"{path}._target_={node._target_!r}: cannot be imported ({err})") from err


def _parameters(target: Any) -> dict[str, inspect.Parameter]:
    try:
        params = dict(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        return {}
    return {k: p for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _accepted(target: Any) -> set[str] | None:
    """Keyword names `target` takes, following **kwargs into base classes; None = any."""
    classes = target.__mro__ if isinstance(target, type) else (target,)
    names: set[str] = set()
    for owner in classes:
        if owner is object:
            return None  # **kwargs all the way up
        function = owner.__dict__.get("__init__", None) if isinstance(target, type) else owner
        if function is None:
            continue
        try:
            params = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        names |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            return names - {"self"}
    return None


def _kwargs(node: DictConfig, group: str) -> dict:
    container = OmegaConf.to_container(node, resolve=True)
    return {k: v for k, v in container.items() if k not in OURS.get(group, ())}


def model(cfg: DictConfig, base_dir: Path) -> LoadedModel:
    """The base model and tokenizer from `model._target_` (a loader function)."""
    return instantiate(_kwargs(cfg.model, "model"), base_dir=base_dir, _convert_="all")


def optimizer(cfg: DictConfig) -> tuple[Callable[[list], torch.optim.Optimizer], dict]:
    """(params -> the configured optimizer, its configured keywords)."""
    hyperparameters = {k: v for k, v in _kwargs(cfg.optim, "optim").items() if not k.startswith("_")}
    partial = instantiate(cfg.optim, _convert_="all")
    cls = partial.func
    keywords = {k: tuple(v) if isinstance(v, list) else v for k, v in partial.keywords.items()}
    fusable = cls in FUSED and "fused" not in keywords

    def build(params: list) -> torch.optim.Optimizer:
        fused = fusable and all(p.device.type in ("cpu", "cuda") for p in params)
        return cls(params, **keywords, **({"fused": True} if fused else {}))

    return build, hyperparameters


def schedule(cfg: DictConfig) -> Callable[[int], float]:
    """step -> LR multiplier, from `scheduler._target_` (a pure function of the step; one that
    takes `file` is also given the file being trained: schedule.takes_file)."""
    return instantiate(cfg.scheduler, _convert_="all")


def loggers(cfg: DictConfig, resume_step: int, run_ids: dict[str, str]) -> dict[str, Any]:
    """The configured loggers by name; TensorBoard drops events after `resume_step`; loggers
    that can continue a run (MLflow, W&B) go on in the one `run_ids` names."""
    from lightning.pytorch.loggers import TensorBoardLogger

    built = {}
    for name, node in _named(cfg.get("logger")):
        extra, target = {}, get_object(node._target_)
        if isinstance(target, type) and issubclass(target, TensorBoardLogger) and "purge_step" not in node:
            # Events a killed process logged after the checkpoint we resume from are dropped,
            # so TensorBoard never shows a doubled curve.
            extra["purge_step"] = resume_step + 1
        try:
            built[name] = instantiate(node, _convert_="all", **extra)
        except Exception as err:
            hint = f" (pip install 'lit-continual[{EXTRAS[name]}]')" if name in EXTRAS else ""
            raise ConfigError(f"logger.{name}: {_cause(err)}{hint}") from err
        if name in run_ids and hasattr(built[name], "continue_run"):
            built[name].continue_run(run_ids[name])
    return built


def user_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The callbacks added in config, after the core ones."""
    built = []
    for name, node in _named(cfg.callbacks, skip="model_checkpoint"):
        try:
            built.append(instantiate(node, _convert_="all"))
        except Exception as err:
            raise ConfigError(f"callbacks.{name}: {_cause(err)}") from err
    return built


def trainer(cfg: DictConfig, callbacks: list, loggers: list, plugins: list) -> L.Trainer:
    """L.Trainer from trainer.*, with what the daemon owns passed at call time."""
    kwargs = _kwargs(cfg.trainer, "trainer")
    kwargs.setdefault("enable_progress_bar", False)  # the daemon has its own per-file bar
    kwargs.setdefault("enable_model_summary", False)
    kwargs["precision"] = _precision(cfg)
    owned = dict(devices=1, num_nodes=1, strategy="auto", max_epochs=-1, max_steps=-1, max_time=None,
                 default_root_dir=cfg.base_dir,
                 barebones=False, enable_checkpointing=True, limit_val_batches=0, num_sanity_val_steps=0,
                 use_distributed_sampler=False, plugins=plugins, logger=loggers or False, callbacks=callbacks,
                 log_every_n_steps=cfg.logging.every_n_steps)
    try:
        return instantiate(kwargs, **owned)
    except Exception as err:
        raise ConfigError(f"trainer: {_cause(err)}") from err


def _precision(cfg: DictConfig) -> str:
    if cfg.trainer.precision:
        return str(cfg.trainer.precision)
    return "bf16-mixed" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "32-true"


def _cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    return f"{type(err).__name__}: {err}"
