"""Per-file probes and the forgetting matrix (docs/evaluation.md#per-file-probes-and-forgetting).

At the last optimizer step of a file that ends `done` and holds examples out
(`eval.holdout_fraction`), its probe is written to DIR/eval/probes/ while the inbox file is still
there (it is deleted only after the end-of-file checkpoint). Then, at every file end, the kept
probes (at most `eval.max_probes`; forgetting.kept_probes) are evaluated, the row is appended to
DIR/eval/forgetting.json and reported. This callback runs after Evaluation and before
FileLifecycle and the checkpointer, so the end-of-file checkpoint holds the row, and inside
`isolated(...)`, so training is bit-identical with or without probes being evaluated.

A file an operator skips or that is abandoned (changed in place) gets no probe: its held-out
examples were never trained either, but the file did not end as trained. Its end still gets a
row if there are kept probes (an abandoned file's last step is a file end; a skip is not).
A stop request interrupts the evaluation: the row is then evaluated when the next process
starts, from the checkpoint of that very step (same weights), before it trains anything.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from lit_continual import forgetting
from lit_continual.callbacks.evaluation import _metric_name
from lit_continual.callbacks.loss_history import LossHistory
from lit_continual.context import RunContext
from lit_continual.data.batch import INFO, BatchInfo
from lit_continual.data.file_index import FileChanged
from lit_continual.data.holdout import PROBES_DIR, probe_name, write_probe
from lit_continual.data.records import Encoder
from lit_continual.evaluation import SUFFIX, EvalFiles, Evaluator, isolated
from lit_continual.logs import escape

log = logging.getLogger("lit_continual")


class Forgetting(L.Callback):
    """Writes each file's probe, evaluates the kept probes at file ends, records the matrix."""

    def __init__(self, feed, files: EvalFiles, evaluator: Evaluator, history: LossHistory, ctx: RunContext,
                 max_probes: int) -> None:
        self.feed, self.files, self.evaluator, self.history, self.ctx = feed, files, evaluator, history, ctx
        self.max_probes = max_probes
        # The run state (this callback's state in every checkpoint): bounded by max_probes.
        self.columns: list[dict] = []  # kept probes: {ordinal, name, probe, first}, oldest first
        self.latest: dict | None = None  # the newest row of forgetting.json
        self.pending: dict | None = None  # a file end whose row a stop interrupted (evaluated at the next start)

    @classmethod
    def from_config(cls, cfg: DictConfig, datamodule, history: LossHistory, ctx: RunContext) -> Forgetting:
        """Probes read as the training data is (the same records, tokenized the same way), with a
        tokenizer copy of their own: nothing evaluation does can change the one training uses."""
        encoder = Encoder(copy.deepcopy(datamodule.encoder.tokenizer), cfg.data.max_length, datamodule.spec)
        files = EvalFiles(Path(ctx.base_dir) / PROBES_DIR, encoder, cfg.data.max_line_bytes)
        evaluator = Evaluator(cfg.eval.batch_size or cfg.data.batch_size, encoder.tokenizer.pad_token_id)
        return cls(datamodule.feed, files, evaluator, history, ctx, cfg.eval.max_probes)

    @property
    def state_key(self) -> str:
        return "Forgetting"

    def state_dict(self) -> dict:
        return {"columns": [dict(c) for c in self.columns], "latest": self.latest, "pending": self.pending}

    def load_state_dict(self, state_dict: dict) -> None:
        self.columns = [dict(c) for c in state_dict.get("columns") or []]
        self.latest, self.pending = state_dict.get("latest"), state_dict.get("pending")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.evaluator.forward_context = trainer.precision_plugin.forward_context

    def on_train_start(self, trainer, pl_module) -> None:
        if self.latest:
            self.ctx.status.update(forgetting=self._now())
        end = self.pending
        if end and trainer.is_global_zero:
            if end["step"] == trainer.global_step:  # the weights of that file end
                self._guarded(end["step"], lambda: self._evaluate(trainer, pl_module, end, between_steps=False))
            else:
                self._lose_pending()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        info: BatchInfo = batch[INFO]
        if not (info.window_end and info.file_end) or not trainer.is_global_zero:
            return  # files are written and evaluated once, by rank 0 (the one that saves checkpoints)
        self._guarded(trainer.global_step, lambda: self._file_end(trainer, pl_module, info))

    def _guarded(self, step: int, run) -> None:
        """An output must not end the run (as in Evaluation._guarded)."""
        try:
            run()
        except Exception as err:
            log.error("Forgetting evaluation at step %d failed: %s: %s", step, type(err).__name__,
                      escape(str(err)), exc_info=True)
            self.ctx.status.warn(f"forgetting evaluation failed at step {step}: {type(err).__name__}: {err}")

    def _file_end(self, trainer: L.Trainer, pl_module, info: BatchInfo) -> None:
        if self.pending:
            self._lose_pending()
        prepared = self.feed.live[info.handle]
        record = prepared.record
        if not info.abandoned and self._write_probe(record, prepared.index):
            self.columns = [c for c in self.columns if c["ordinal"] != record.ordinal]
            self.columns.append({"ordinal": record.ordinal, "name": record.name, "probe": probe_name(record),
                                 "first": None})
        kept = forgetting.kept_probes([c["ordinal"] for c in self.columns], self.max_probes)
        ended = [c for c in self.columns if c["ordinal"] not in kept]
        self.columns = [c for c in self.columns if c["ordinal"] in kept]
        for column in ended:
            (Path(self.ctx.base_dir) / PROBES_DIR / column["probe"]).unlink(missing_ok=True)
            log.info("Probe %s dropped after file #%d (eval.max_probes=%d): its column ends", escape(column["probe"]),
                     record.ordinal, self.max_probes)
        if not self.columns:
            return
        end = {"after_file": record.ordinal, "name": record.name, "step": trainer.global_step,
               "ended": [c["ordinal"] for c in ended]}
        if ended:  # recorded now: a row interrupted by a stop is evaluated later, the drop happened here
            forgetting.record(self.ctx.base_dir, end["after_file"], self.columns, end["ended"], None)
        self._evaluate(trainer, pl_module, end)

    def _write_probe(self, record, index) -> bool:
        """Write the file's probe; False if it holds none out or it cannot be written (the
        file's row is still recorded, without its column)."""
        try:
            return write_probe(self.ctx.base_dir, record, index) is not None
        except (OSError, FileChanged) as err:
            log.error("The probe of %s cannot be written: %s", escape(record.name), escape(str(err)))
            self.ctx.status.warn(f"probe of {record.name} not written: {err}")
            return False

    def _evaluate(self, trainer: L.Trainer, pl_module, end: dict, between_steps: bool = True) -> None:
        """Evaluate the kept probes for the file end `end`; on a stop request, keep it pending.
        `between_steps`: its time is left out of the throughput figures (before the first step
        of a process there is nothing to leave it out of)."""
        started, step = time.monotonic(), end["step"]
        names = {c["probe"][: -len(SUFFIX)] for c in self.columns}
        model = getattr(pl_module, "model", pl_module)
        with isolated(pl_module):
            sets = [] if self.ctx.stop.requested else self.files.load(lambda: self.ctx.stop.requested, names)
            result = self.evaluator.evaluate(model, sets, lambda: self.ctx.stop.requested) if sets else None
        seconds = time.monotonic() - started
        if between_steps:
            self.history.exclude(seconds)
        if result is None:
            self.pending = end if self.ctx.stop.requested else None
            if self.pending:
                log.info("Forgetting evaluation after file #%d interrupted by a stop request: it runs when the "
                         "run restarts", end["after_file"])
            return
        self.pending = None
        by_probe = {c["probe"][: -len(SUFFIX)]: c for c in self.columns}
        losses = {str(by_probe[name]["ordinal"]): round(loss, 6) for name, loss in sorted(result.losses.items())}
        for column in self.columns:
            if column["ordinal"] == end["after_file"] and column["first"] is None:
                column["first"] = losses.get(str(column["ordinal"]))
        self.latest = {"after_file": end["after_file"], "name": end["name"], "step": step,
                       "losses": dict(sorted(losses.items(), key=lambda item: int(item[0])))}
        doc = forgetting.record(self.ctx.base_dir, end["after_file"], self.columns, end["ended"], self.latest)
        self._report(trainer, doc, result.loss, seconds, result.examples)

    def _now(self) -> dict[str, float]:
        """Forgetting of each kept probe at the newest row, by probe name (`<ordinal>-<name>`)."""
        losses = (self.latest or {}).get("losses") or {}
        return {c["probe"][: -len(SUFFIX)]: round(losses[str(c["ordinal"])] - c["first"], 6) for c in self.columns
                if c["first"] is not None and str(c["ordinal"]) in losses}

    def _report(self, trainer: L.Trainer, doc: dict, mean_loss: float, seconds: float, examples: int) -> None:
        step, now = self.latest["step"], self._now()
        metrics = {"probes/loss": mean_loss, **{f"forgetting/{_metric_name(name)}": v for name, v in now.items()}}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("forgetting/matrix", forgetting.heatmap(doc), step, dataformats="HWC")
        self.ctx.status.update(forgetting=now, write=True)
        each = ", ".join(f"{escape(name)}={value:+.4f}" for name, value in now.items())
        log.info("forgetting after file #%d (step %d): %s; probe loss %.4f over %d probe(s), %d examples in %.2f s",
                 self.latest["after_file"], step, each or "-", mean_loss, len(self.latest["losses"]), examples,
                 seconds)

    def _lose_pending(self) -> None:
        log.warning("The forgetting row after file #%d was interrupted by a stop and the weights of its step are "
                    "gone: it is missing from forgetting.json", self.pending["after_file"])
        self.pending = None
