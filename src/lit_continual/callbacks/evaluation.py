"""Held-out evaluation and live samples at optimizer-step boundaries (docs/evaluation.md).

Lightning's validation loop does not fit a stream (its interval counts micro-batches and it
has no file-end trigger), so this callback evaluates at the end of an optimizer step: every
`eval.every_n_steps` steps and at each file's last step. It runs before FileLifecycle, the
operator controls and the checkpointer, so the end-of-file checkpoint holds the file-end
result (a `log_history` entry and this callback's state), and a stop request that interrupts
an evaluation stops the run at this very step. Everything runs inside `isolated(...)`: a run
with evaluation trains bit-identically to one without, and evaluation never counts as a step.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from lit_continual.callbacks.loss_history import LossHistory
from lit_continual.context import RunContext
from lit_continual.data.batch import INFO, BatchInfo
from lit_continual.data.records import Encoder, RecordSpec
from lit_continual.evaluation import EvalFiles, EvalResult, Evaluator, isolated
from lit_continual.logs import escape
from lit_continual.samples import Sample, SamplePrompts, generate

log = logging.getLogger("lit_continual")

EVAL_DIR = "eval"  # DIR/eval/*.jsonl: the fixed eval set
LOG_PROMPT_CHARS = 120


class Evaluation(L.Callback):
    """Evaluates the eval sets and generates the samples when due; reports to the loggers,
    the status file, `log_history` and the log."""

    def __init__(self, files: EvalFiles, evaluator: Evaluator, prompts: SamplePrompts, tokenizer,
                 history: LossHistory, ctx: RunContext, every_n_steps: int | None = None,
                 sample_every_n_steps: int | None = None, sample_max_new_tokens: int = 64) -> None:
        self.files, self.evaluator, self.prompts, self.tokenizer = files, evaluator, prompts, tokenizer
        self.history, self.ctx = history, ctx
        self.every_n_steps, self.sample_every_n_steps = every_n_steps, sample_every_n_steps
        self.sample_max_new_tokens = sample_max_new_tokens
        self.last: dict = {}  # the newest result (its log_history entry), in every checkpoint

    @classmethod
    def from_config(cls, cfg: DictConfig, tokenizer, history: LossHistory, ctx: RunContext) -> Evaluation:
        """The callback for `cfg.eval`, reading DIR/eval/*.jsonl as `cfg.data` reads training files."""
        data, settings = cfg.data, cfg.eval
        # Its own tokenizer copy: nothing evaluation does can change the one training batches use.
        spec = RecordSpec(data.format, data.text_field, data.prompt_field, data.completion_field, data.messages_field)
        encoder = Encoder(copy.deepcopy(tokenizer), data.max_length, spec)
        files = EvalFiles(Path(ctx.base_dir) / EVAL_DIR, encoder, data.max_line_bytes, settings.max_examples)
        evaluator = Evaluator(settings.batch_size or data.batch_size, tokenizer.pad_token_id)
        source = settings.sample_prompts
        prompts = SamplePrompts(source if isinstance(source, str) else list(source or []), Path(ctx.base_dir), encoder)
        return cls(files, evaluator, prompts, encoder.tokenizer, history, ctx, settings.every_n_steps,
                   settings.sample_every_n_steps, settings.sample_max_new_tokens)

    @property
    def state_key(self) -> str:
        return "Evaluation"

    def state_dict(self) -> dict:
        return {"last": dict(self.last)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.last = dict(state_dict.get("last") or {})

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.evaluator.forward_context = trainer.precision_plugin.forward_context  # autocast as in training

    def on_train_start(self, trainer, pl_module) -> None:
        if self.last:  # the restored run's newest evaluation, until the next one
            self.ctx.status.update(eval_loss=self.last["eval_loss"], eval_losses=self.last["eval_losses"],
                                   eval_step=self.last["step"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        info: BatchInfo = batch[INFO]
        if not info.window_end:
            return  # mid accumulation window: no optimizer step has completed
        step = trainer.global_step
        evaluate = info.file_end or _due(step, self.every_n_steps)
        sample = self.prompts.configured and (info.file_end or _due(step, self.sample_every_n_steps))
        if not (evaluate or sample):
            return
        if self._interrupted():
            log.info("Evaluation at step %d skipped: a stop was requested", step)
            return
        started = time.monotonic()
        model = getattr(pl_module, "model", pl_module)
        with isolated(pl_module):
            if evaluate:
                self._guarded("Evaluation", step, lambda: self._evaluate(trainer, model, step))
            if sample and not self._interrupted():
                self._guarded("Samples", step, lambda: self._sample(trainer, model, step))
        self.history.exclude(time.monotonic() - started)

    def _guarded(self, what: str, step: int, run) -> None:
        """An output must not end the run: a failure is an ERROR in the log (verify reports it)
        and a standing warning, and training goes on exactly as it would have."""
        try:
            run()
        except Exception as err:
            log.error("%s at step %d failed: %s: %s", what, step, type(err).__name__, escape(str(err)), exc_info=True)
            self.ctx.status.warn(f"{what.lower()} failed at step {step}: {type(err).__name__}: {err}")

    def _interrupted(self) -> bool:
        return self.ctx.stop.requested

    def _evaluate(self, trainer: L.Trainer, model: torch.nn.Module, step: int) -> None:
        started = time.monotonic()
        sets = self.files.load(self._interrupted)
        if not sets:
            return
        result = self.evaluator.evaluate(model, sets, self._interrupted)
        seconds = time.monotonic() - started
        if result is None:
            if self._interrupted():
                log.info("Evaluation at step %d interrupted by a stop request after %.2f s", step, seconds)
            return
        self._report(trainer, step, result, seconds)

    def _report(self, trainer: L.Trainer, step: int, result: EvalResult, seconds: float) -> None:
        losses = {name: round(loss, 6) for name, loss in result.losses.items()}
        # Like Hugging Face's evaluation entries: `eval_loss` and no `loss` (readers of the
        # training curve skip entries without one). No timing: the run state stays reproducible.
        self.last = {"step": step, "eval_loss": round(result.loss, 6), "eval_losses": losses,
                     "eval_tokens": result.tokens}
        self.history.add(dict(self.last))
        metrics = {"eval/loss": result.loss, **{f"eval/{_metric_name(n)}/loss": v for n, v in result.losses.items()}}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self.ctx.status.update(eval_loss=self.last["eval_loss"], eval_losses=losses, eval_step=step, write=True)
        each = ", ".join(f"{escape(name)}={loss:.4f}" for name, loss in result.losses.items())
        log.info("eval step %d: loss=%.4f (%s) over %d examples, %d tokens in %.2f s", step, result.loss, each,
                 result.examples, result.tokens, seconds)

    def _sample(self, trainer: L.Trainer, model: torch.nn.Module, step: int) -> None:
        prompts = self.prompts.load()
        if not prompts:
            return
        samples = generate(model, self.tokenizer, prompts, self.sample_max_new_tokens, step, self._interrupted)
        if samples is None:
            log.info("Samples at step %d interrupted by a stop request", step)
            return
        self.ctx.status.update(samples=[s.as_dict() for s in samples], write=True)
        for number, sample in enumerate(samples, 1):
            prompt = sample.prompt[:LOG_PROMPT_CHARS] + ("..." if len(sample.prompt) > LOG_PROMPT_CHARS else "")
            log.info("sample %d at step %d: %s -> %s", number, step, escape(prompt), escape(sample.completion))
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for number, sample in enumerate(samples, 1):
                    logger.experiment.add_text(f"samples/{number}", _markdown(sample), global_step=step)


def _due(step: int, every: int | None) -> bool:
    return every is not None and step % every == 0


def _metric_name(name: str) -> str:
    """An eval file's name as every logger accepts it in a metric key (MLflow refuses most symbols)."""
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", name)


def _markdown(sample: Sample) -> str:
    """TensorBoard renders text as Markdown: indented lines are shown verbatim."""
    def block(text: str) -> str:
        return "\n".join("    " + line for line in (text or "(empty)").splitlines() or [""])

    return f"**prompt**\n\n{block(sample.prompt)}\n\n**completion** (step {sample.step})\n\n{block(sample.completion)}"
