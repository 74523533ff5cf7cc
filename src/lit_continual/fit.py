"""The heavy part of a run: build model, data, callbacks, loggers and Trainer, then one `fit()`.

Imported only after the status file says `starting`, because torch/Lightning take seconds.
Every component comes from its config group (components.py); the core callbacks that carry
the run's guarantees are always present, user callbacks come after them.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf

from lit_continual import checkpoints, components, generations, layout, rebase
from lit_continual.callbacks import (
    Checkpointer,
    Evaluation,
    FileLifecycle,
    FileProgressBar,
    LoggerRuns,
    LossHistory,
    NonFiniteGuard,
    OperatorControls,
    ReplayBuffer,
    RngState,
    StepOffset,
    StopSignals,
)
from lit_continual.callbacks.forgetting import Forgetting
from lit_continual.callbacks.rebase import Rebase
from lit_continual.checkpoints import DirectoryCheckpointIO
from lit_continual.config import ConfigError, check_unchanged
from lit_continual.context import RunContext
from lit_continual.data.stream import ContinualDataModule
from lit_continual.models.lora import apply_lora
from lit_continual.module import LoRAModule
from lit_continual.storage import Backoff

log = logging.getLogger("lit_continual")

# num_workers=0 is deliberate: the stream must run in this process to see stop requests.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
# Deprecation notices between our pinned libraries (not actionable by users).
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def fit(cfg: DictConfig, ctx: RunContext) -> tuple[int, int]:
    """Train until the stream ends (stop request, drained inbox or the single file done);
    return how many files this process trained to their end and how many were skipped by an
    operator (durably; train.py's file skipped earlier in the run counts as skipped)."""
    components.check(cfg)  # every open node against its target, before the model loads
    torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, verbose=False)
    ctx.models_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.remove_leftovers(ctx.models_dir)
    resume = checkpoints.newest_valid(ctx.models_dir)
    if resume is not None:
        check_unchanged(json.loads((resume / checkpoints.RUN_CONFIG).read_text()), cfg)

    # Loggers and user callbacks first: a constructor that refuses its arguments (or a missing
    # optional package) is a configuration error before the model loads.
    loggers = components.loggers(cfg, checkpoints.step_of(resume) if resume else 0,
                                 checkpoints.logger_runs(resume) if resume else {})
    user_callbacks = components.user_callbacks(cfg)
    loaded = _base_model(cfg, ctx, resume)
    try:
        model = apply_lora(loaded.model, cfg.lora, cfg.seed)
    except ValueError as err:  # PEFT: a target module the model does not have
        raise ConfigError(f"lora.target_modules={list(cfg.lora.target_modules)}: {err}") from err
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("Model %s from %s: %d trainable of %d parameters", cfg.model.name, loaded.path,
             trainable, sum(p.numel() for p in model.parameters()))
    optimizer, hyperparameters = components.optimizer(cfg)
    module = LoRAModule(model, optimizer, hyperparameters, components.schedule(cfg),
                        OmegaConf.to_container(cfg, resolve=True), cfg.consolidate.rewarm_steps)
    module.base_model_path = loaded.path
    datamodule = ContinualDataModule(cfg, loaded.tokenizer, ctx)
    ctx.status.queue_size = datamodule.feed.queue_size  # from caches: never scans under the status lock

    lifecycle = FileLifecycle(datamodule, ctx)
    callbacks = _core_callbacks(cfg, ctx, lifecycle, loggers) + user_callbacks
    checkpoint_io = DirectoryCheckpointIO(model.peft_config["default"], loaded.path)
    trainer = components.trainer(cfg, callbacks, list(loggers.values()), [checkpoint_io])
    if resume is not None:
        log.info("Resuming from checkpoint: %s", resume.name)
        step = checkpoints.step_of(resume)
        ctx.status.update(current_step=step, total_steps=step)
    else:
        log.info("No checkpoint in %s: starting the run at step 0", ctx.models_dir)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    except MisconfigurationException as err:  # Lightning's word for a configuration error
        raise ConfigError(f"Lightning refused the configuration: {err}") from err
    finally:
        datamodule.feed.close()
    return lifecycle.completed, lifecycle.skipped + int(getattr(datamodule.feed, "already_skipped", False))


def _base_model(cfg: DictConfig, ctx: RunContext, resume):
    """The configured base (generation 0), or the generation the resumed checkpoint was trained on."""
    number = generations.of_checkpoint(resume) if resume is not None else 0
    if number == 0:
        return components.model(cfg, ctx.base_dir)
    recorded = (layout.read_json(resume / layout.ADAPTER_CONFIG) or {}).get("base_model_name_or_path")
    return rebase.load_generation(cfg, ctx.base_dir, number, recorded)


def _core_callbacks(cfg: DictConfig, ctx: RunContext, lifecycle: FileLifecycle, loggers: dict) -> list:
    """The callbacks that carry the run's guarantees; config can tune but never remove them."""
    nonfinite = NonFiniteGuard(cfg.daemon.max_nonfinite, ctx.status)
    backoff = Backoff(cfg.daemon.retry_initial_seconds, cfg.daemon.retry_max_seconds)
    every = cfg.consolidate.rebase_every_files
    rebasing = [Rebase(ctx, lifecycle.dm, every, cfg.seed, lifecycle.dm.encoder.tokenizer, backoff)] if every else []
    saving = cfg.callbacks.model_checkpoint
    history = LossHistory(cfg.logging.every_n_steps, cfg.checkpoint.log_history_max, ctx.status, nonfinite)
    # Order matters: the loss entry of step N is logged before checkpoint N is written; the
    # evaluation of step N comes before the file lifecycle (a stop that interrupts it stops at
    # N) and before checkpoint N (which holds its result); a rebase comes after the file's ledger
    # record is finished and before its checkpoint; Lightning runs the checkpointer (a
    # ModelCheckpoint) after all the others.
    core = [StopSignals(ctx.stop), RngState(), nonfinite, StepOffset(), history,
            Evaluation.from_config(cfg, lifecycle.dm.encoder.tokenizer, history, ctx),
            Forgetting.from_config(cfg, lifecycle.dm, history, ctx),
            lifecycle, ReplayBuffer(lifecycle.dm, ctx), *rebasing,
            *([OperatorControls(ctx.ops, lifecycle)] if ctx.ops is not None else []),
            LoggerRuns(loggers),
            Checkpointer(ctx, saving.every_n_train_steps, saving.save_top_k, cfg.checkpoint.min_free_mb, backoff)]
    if cfg.logging.progress_bar and sys.stderr.isatty():
        core.append(FileProgressBar(ctx.status))
    return core
