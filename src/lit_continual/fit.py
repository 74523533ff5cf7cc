"""The heavy part of a run: build model, data, callbacks and Trainer, then one `fit()`.

Imported only after the status file says `starting`, because torch/Lightning take seconds.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from lit_continual import checkpoints
from lit_continual.callbacks import FileLifecycle, FileProgressBar, LossHistory, NonFiniteGuard, RngState
from lit_continual.callbacks.files import SavePolicy
from lit_continual.checkpoints import DirectoryCheckpointIO
from lit_continual.config import check_unchanged
from lit_continual.crash_guard import CrashGuard
from lit_continual.data.stream import ContinualDataModule
from lit_continual.models import apply_lora, load_base
from lit_continual.module import LoRAModule
from lit_continual.status import Status
from lit_continual.stop import StopRequest

log = logging.getLogger("lit_continual")

# num_workers=0 is deliberate: the stream must run in this process to see stop requests.
warnings.filterwarnings("ignore", message=".*does not have many workers.*")
# Deprecation notices between our pinned libraries (not actionable by users).
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated.*")
warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*")


def _precision(cfg: DictConfig) -> str:
    if cfg.trainer.precision:
        return str(cfg.trainer.precision)
    return "bf16-mixed" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "32-true"


def fit(cfg: DictConfig, base_dir: Path, stop: StopRequest, status: Status, guard: CrashGuard) -> None:
    """Train until the stream ends (stop request, drained inbox or the single file done)."""
    torch.set_num_threads(cfg.trainer.num_threads)
    L.seed_everything(cfg.seed, verbose=False)
    models_dir = base_dir / "current_model"
    models_dir.mkdir(parents=True, exist_ok=True)
    checkpoints.remove_leftovers(models_dir)
    resume = checkpoints.newest_valid(models_dir)
    if resume is not None:
        check_unchanged(json.loads((resume / checkpoints.RUN_CONFIG).read_text()), cfg)

    base, tokenizer, base_path = load_base(cfg, base_dir)
    model = apply_lora(base, cfg.lora, cfg.seed)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("Model %s from %s: %d trainable of %d parameters", cfg.model.name, base_path,
             trainable, sum(p.numel() for p in model.parameters()))
    module = LoRAModule(model, cfg.optim, cfg.scheduler, OmegaConf.to_container(cfg, resolve=True))
    datamodule = ContinualDataModule(cfg, tokenizer, base_dir, stop, status, guard)
    status.queue_size = datamodule.feed.queue_size  # from caches: never scans under the status lock

    policy = SavePolicy(cfg.checkpoint.every_n_steps, cfg.checkpoint.keep, cfg.checkpoint.min_free_mb,
                        cfg.daemon.retry_initial_seconds, cfg.daemon.retry_max_seconds)
    # Order matters: the loss entry of step N is logged before checkpoint N is written.
    callbacks = [RngState(), NonFiniteGuard(cfg.daemon.max_nonfinite),
                 LossHistory(cfg.logging.every_n_steps, cfg.checkpoint.log_history_max, status),
                 FileLifecycle(datamodule, models_dir, policy, stop, status, guard)]
    if cfg.logging.progress_bar and sys.stderr.isatty():
        callbacks.append(FileProgressBar(status))
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator, devices=1, precision=_precision(cfg),
        max_epochs=-1, max_steps=-1, accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        gradient_clip_val=cfg.trainer.gradient_clip_val, callbacks=callbacks,
        # purge_step: events a killed process logged after the checkpoint we resume from are
        # dropped, so TensorBoard never shows a doubled curve.
        logger=TensorBoardLogger(save_dir=str(base_dir), name="tensorboard", version="", default_hp_metric=False,
                                 flush_secs=5, purge_step=(checkpoints.step_of(resume) if resume else 0) + 1),
        plugins=[DirectoryCheckpointIO(model.peft_config["default"], base_path)],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        log_every_n_steps=cfg.logging.every_n_steps, num_sanity_val_steps=0,
        limit_val_batches=0, use_distributed_sampler=False,
    )
    if resume is not None:
        log.info("Resuming from checkpoint: %s", resume.name)
        step = checkpoints.step_of(resume)
        status.update(current_step=step, total_steps=step)
    else:
        log.info("No checkpoint in %s: starting the run at step 0", models_dir)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=str(resume) if resume else None)
    finally:
        datamodule.feed.close()
