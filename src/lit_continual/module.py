"""The LightningModule: a PEFT LoRA model, the configured optimizer, and an LR that is a
function of the step."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable

import lightning as L
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model_state_dict, set_peft_model_state_dict

from lit_continual.checkpoints import GENERATION_KEY
from lit_continual.data.batch import INFO, BatchInfo
from lit_continual.data.records import IGNORE
from lit_continual.rebase import Generation
from lit_continual.schedule import FileSpan, takes_file

log = logging.getLogger("lit_continual")

# LoRAModule.on_after_batch_transfer (file-aware schedules) is the one meant; the DataModule has
# none, yet Lightning warns whenever both a module hook and a DataModule exist.
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the supervised next tokens; 0 (not NaN) if there are none.

    The labels are shifted, not the logits: slicing [batch, seq, vocab] logits would copy them
    (100 MB per step for SmolLM2 at 4 x 128 tokens) and the copy's gradient too.
    """
    targets = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                               reduction="sum")
    return loss_sum / (targets != IGNORE).sum().clamp(min=1)


class LoRAModule(L.LightningModule):
    """Trains only the adapter; checkpoints hold only the adapter (never the frozen base)."""

    def __init__(self, model: PeftModel, optimizer: Callable[..., torch.optim.Optimizer], hyperparameters: dict,
                 schedule: Callable[[int], float], run_config: dict, rewarm_steps: int = 0) -> None:
        """`optimizer(params)` builds the configured optimizer; `hyperparameters` are its
        configured keywords (re-applied after a resume); `schedule(step)` multiplies the LR
        (`schedule(step, file=FileSpan)` for a schedule that takes the file being trained);
        `rewarm_steps` re-warms the LR after a rebase (rebase.Generation.rewarm)."""
        super().__init__()
        self.model = model
        self.run_config = run_config  # resolved config, stored in every checkpoint
        self.optimizer_factory, self.hyperparameters, self.schedule = optimizer, hyperparameters, schedule
        # The file a file-aware schedule is given: read from each batch (its first step is in the
        # ledger), so it is never state of its own and a restart mid-file finds the same span.
        self.takes_file, self.file_span = takes_file(schedule), None
        # The checkpoint's state_dict holds only the adapter, so the base keys are "missing".
        self.strict_loading = False
        self.window_loss = torch.zeros(())  # mean loss of the accumulation window in progress
        # The base it trains on (run state: in every checkpoint) and where that base is now.
        self.generation, self.rewarm_steps, self.base_model_path = Generation(), rewarm_steps, None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        # Packed batches carry position_ids and no attention_mask: transformers then builds a
        # block-diagonal causal mask from the restarting positions (no cross-example attention).
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        logits = self.model(**inputs, use_cache=False).logits
        loss = causal_lm_loss(logits, batch["labels"])
        info: BatchInfo = batch[INFO]
        accumulate, real = self.trainer.accumulate_grad_batches, info.window_parts
        if info.window_start:
            self.window_loss = torch.zeros(())
        if 0 < real < accumulate:
            # A file's last window has zero-weight fillers: weight the real micro-batches so the
            # step's gradient and logged loss are their mean (Lightning divides by `accumulate`).
            loss = loss * (accumulate / real)
        self.window_loss = self.window_loss.to(loss.device) + loss.detach() / accumulate
        return loss

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> int | None:
        """-1 (Lightning: end this epoch, untrained) for a batch of a file an operator skipped
        that the loader fetched before the skip; the next epoch starts with the next file.

        Lightning steps the LR scheduler even for such a dropped batch, so the schedule is put
        back on the global step before the next step trains (the LR is a function of it)."""
        if batch[INFO].file.status == "skipped":
            return -1
        scheduler = self.trainer.lr_scheduler_configs[0].scheduler
        if scheduler.last_epoch != self.trainer.global_step:
            self._set_lr(self.trainer.optimizers[0], scheduler, float(self.hyperparameters["lr"]))
        return None

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """A file-aware schedule gets the batch's file; a new file (or the first batch after a
        restart) re-sets the LR. This hook runs before any callback's on_train_batch_start, so
        they (LearningRateMonitor) already see the LR this step trains at. A file not begun yet
        begins at this step (FileLifecycle records the same first_step)."""
        info: BatchInfo | None = batch.get(INFO) if self.takes_file else None
        if info is None or info.file.status == "skipped":
            return batch
        step = self.trainer.global_step
        span = FileSpan(info.file.first_step if info.file.first_step is not None else step + 1,
                        info.file_steps_total)
        if span != self.file_span:
            self.file_span = span
            scheduler = self.trainer.lr_scheduler_configs[0].scheduler
            self._set_lr(self.trainer.optimizers[0], scheduler, float(self.hyperparameters["lr"]))
        return batch

    def configure_optimizers(self) -> dict:
        params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        factor = self.lr_factor
        # A plain function (not the partial itself): LambdaLR then saves no lambda state.
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_start(self) -> None:
        self._apply_configured_hyperparameters()

    def _apply_configured_hyperparameters(self) -> None:
        """The configured optim.* values win over the ones a resumed checkpoint restored.

        Restoring an optimizer or LambdaLR state dict also restores its param_groups (lr, betas,
        eps, weight_decay, momentum, ...) and base_lrs, so a restart with
        `run.allow_config_change=true optim.lr=...` would silently keep training at the old
        values. The LR is re-derived as optim.lr x schedule(global step); for an unchanged config
        this is the very same float.
        """
        optimizer = self.trainer.optimizers[0]
        scheduler = self.trainer.lr_scheduler_configs[0].scheduler
        lr = float(self.hyperparameters["lr"])
        for group in optimizer.param_groups:
            for name, value in self.hyperparameters.items():
                if name in group and name != "lr":
                    group[name] = tuple(value) if isinstance(group[name], tuple) else value
            group.update(initial_lr=lr)
        scheduler.base_lrs = [lr] * len(optimizer.param_groups)
        self._set_lr(optimizer, scheduler, lr)

    def _set_lr(self, optimizer: torch.optim.Optimizer, scheduler, lr: float) -> None:
        """LR = lr x schedule(global step); the scheduler's count is the global step."""
        step = self.trainer.global_step  # the schedule's input, never the restored scheduler's own count
        scheduler.last_epoch = step
        for group in optimizer.param_groups:
            group["lr"] = lr * self.lr_factor(step)
        scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]

    def lr_factor(self, step: int) -> float:
        """The schedule's LR multiplier after `step` completed steps (in the current file)."""
        factor = self.schedule(step, file=self.file_span) if self.takes_file else self.schedule(step)
        return factor * self.generation.rewarm(step, self.rewarm_steps)

    def rebased(self, generation: Generation, path) -> None:
        """The model now trains on `generation` (at `path`): the LR of the next step re-warms."""
        self.generation, self.base_model_path = generation, path
        scheduler = self.trainer.lr_scheduler_configs[0].scheduler
        self._set_lr(self.trainer.optimizers[0], scheduler, float(self.hyperparameters["lr"]))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # PEFT's own key names and filtering: the saved file loads with stock peft.
        checkpoint["state_dict"] = {k: v.detach().cpu().contiguous()
                                    for k, v in get_peft_model_state_dict(self.model).items()}
        checkpoint["run_config"] = self.run_config
        checkpoint[GENERATION_KEY] = {**self.generation.to_dict(), "base_model": self.base_model_path and str(
            self.base_model_path)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("run_config", {}).get("trainer", {}).get("num_threads")
        threads = self.run_config["trainer"]["num_threads"]
        if saved is not None and saved != threads:
            log.warning("trainer.num_threads=%s but the checkpoint was trained with %s: the resumed "
                        "run stays exact in state, not bitwise", threads, saved)
        set_peft_model_state_dict(self.model, checkpoint["state_dict"])
        self.generation = Generation.from_dict(checkpoint.get(GENERATION_KEY))
        checkpoint["state_dict"] = {}
