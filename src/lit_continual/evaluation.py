"""Held-out evaluation: named sets of examples, their mean token loss, and the isolation that
keeps an evaluation from changing what is trained.

- `EvalSet`: a named list of tokenized examples (a file of DIR/eval/, or any other source:
  per-file probes plug in as more sets).
- `EvalFiles`: the sets of one directory's `*.jsonl` files, read with the training reader (any
  record format, bad lines skipped with a warning) and cached by (name, size, mtime): a file
  is re-read only when it changes.
- `Evaluator`: mean token loss per set and over all of them (token-weighted), in batches, with
  a check between batches so that a stop request interrupts it.
- `isolated(module)`: eval mode (dropout off), no autograd, and every random generator (torch
  CPU/CUDA, python, numpy) forked, so a run with evaluation trains bit-identically to one without.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lit_continual.data.file_index import FileIndex, IndexCancelled
from lit_continual.data.records import IGNORE, Encoder, Example, collate
from lit_continual.logs import escape

log = logging.getLogger("lit_continual")

SUFFIX = ".jsonl"


@dataclass(frozen=True)
class EvalSet:
    """Examples evaluated together under one name (`eval/<name>/loss`)."""

    name: str
    examples: list[Example]  # longest first: batches of similar lengths pad little
    bad_lines: int = 0


@dataclass(frozen=True)
class EvalResult:
    """One evaluation: mean token loss over all sets (token-weighted) and per set."""

    loss: float
    losses: dict[str, float]
    tokens: int
    examples: int


@dataclass
class EvalFiles:
    """The eval sets of `directory/*.jsonl`, each re-read only when its size or mtime changes."""

    directory: Path
    encoder: Encoder
    max_line_bytes: int
    max_examples: int | None = None
    _cache: dict[str, tuple[tuple, EvalSet]] = field(default_factory=dict)

    def load(self, cancelled: Callable[[], bool] = lambda: False, names: Collection[str] | None = None
             ) -> list[EvalSet]:
        """The current sets, sorted by name (files without a valid example are left out); only
        those named in `names` if given (a set's name is its file name without `.jsonl`)."""
        try:
            paths = sorted(p for p in self.directory.glob(f"*{SUFFIX}") if not p.name.startswith(".")
                           and (names is None or p.name[: -len(SUFFIX)] in names))
        except OSError as err:
            log.warning("Cannot list %s: %s", escape(str(self.directory)), err)
            return []
        sets = []
        for path in paths:
            name = path.name[: -len(SUFFIX)]
            found = self._read(path, name, cancelled)
            if found is not None and found.examples:
                sets.append(found)
        self._cache = {k: v for k, v in self._cache.items() if k in {p.name[: -len(SUFFIX)] for p in paths}}
        return sets

    def _read(self, path: Path, name: str, cancelled: Callable[[], bool]) -> EvalSet | None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as err:
            log.warning("Cannot read eval file %s: %s", escape(path.name), err)
            return None
        try:
            st = os.fstat(fd)
            version = (st.st_size, st.st_mtime_ns, st.st_ino)
            cached = self._cache.get(name)
            if cached is not None and cached[0] == version:
                return cached[1]
            found = self._scan(fd, path.name, name, cancelled)
            self._cache[name] = (version, found)
            return found
        except IndexCancelled:
            return None
        except OSError as err:
            log.warning("Cannot read eval file %s: %s", escape(path.name), err)
            return None
        finally:
            os.close(fd)

    def _scan(self, fd: int, filename: str, name: str, cancelled: Callable[[], bool]) -> EvalSet:
        """One pass with the training data's reader: a line that does not parse or tokenize is bad."""
        examples: list[Example] = []

        def tokenize(record: dict) -> None:  # called in line order, once per line that parses
            if self.max_examples is None or len(examples) < self.max_examples:
                examples.append(self.encoder.encode_one(record))  # raises: a bad line

        index = FileIndex.scan(fd, filename, self.encoder.spec, self.max_line_bytes, tokenize, cancelled)
        if index.bad_lines:
            shown = "; ".join(f"line {e['line']}: {e['error']}" for e in index.first_errors[:3])
            log.warning("eval/%s: %d bad line(s) of %d skipped (%s)", escape(filename), index.bad_lines,
                        index.total_lines, escape(shown))
        if not examples:
            log.warning("eval/%s has no valid example: not evaluated", escape(filename))
        elif len(examples) < index.examples:
            log.info("eval/%s: evaluating its first %d of %d examples (eval.max_examples)", escape(filename),
                     len(examples), index.examples)
        examples.sort(key=lambda example: -len(example[0]))  # stable: ties keep the file's order
        return EvalSet(name, examples, index.bad_lines)


@dataclass
class Evaluator:
    """Mean token loss of a model on named sets, in batches of `batch_size` examples."""

    batch_size: int
    pad_id: int
    forward_context: Callable[[], object] = nullcontext  # the trainer's precision (autocast) context

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, sets: Sequence[EvalSet],
                 interrupted: Callable[[], bool] = lambda: False) -> EvalResult | None:
        """Losses of `model` on `sets`; None if `interrupted()` turned true between two batches
        (or no set has a supervised token). Call it inside `isolated(...)`."""
        device = next(model.parameters()).device
        sums: dict[str, tuple[float, int]] = {}
        for eval_set in sets:
            total, count = 0.0, 0
            for start in range(0, len(eval_set.examples), self.batch_size):
                if interrupted():
                    return None
                batch = collate(eval_set.examples[start: start + self.batch_size], self.pad_id)
                with self.forward_context():
                    logits = model(input_ids=batch["input_ids"].to(device),
                                   attention_mask=batch["attention_mask"].to(device), use_cache=False).logits
                loss_sum, tokens = token_loss_sum(logits, batch["labels"].to(device))
                total, count = total + float(loss_sum), count + int(tokens)
            if count:
                sums[eval_set.name] = (total, count)
        if not sums:
            return None
        tokens = sum(count for _, count in sums.values())
        return EvalResult(loss=sum(total for total, _ in sums.values()) / tokens,
                          losses={name: total / count for name, (total, count) in sums.items()},
                          tokens=tokens, examples=sum(len(s.examples) for s in sets if s.name in sums))


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of next-token cross-entropy, supervised tokens): the training loss before its mean."""
    targets = F.pad(labels, (0, 1), value=IGNORE)[:, 1:]
    loss_sum = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE,
                               reduction="sum")
    return loss_sum, (targets != IGNORE).sum()


@contextmanager
def isolated(module: torch.nn.Module) -> Iterator[None]:
    """Run inference on a model in training without changing anything training depends on:
    every submodule's train/eval flag is put back as it was (Lightning keeps per-module modes,
    and a frozen base may be in eval mode on purpose), no autograd graph is built, and the torch
    (CPU and the module's CUDA device), python and numpy generators continue afterwards as if
    nothing had drawn from them."""
    modes = [(sub, sub.training) for sub in module.modules()]
    python_state, numpy_state = random.getstate(), np.random.get_state()
    device = next(module.parameters()).device
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            module.eval()
            yield
    finally:
        for sub, training in modes:
            sub.training = training
        random.setstate(python_state)
        np.random.set_state(numpy_state)
