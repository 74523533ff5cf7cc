"""The streaming DataModule: one endless epoch per burst of files, batches never span files.

A file's examples are taken in its seeded permutation and grouped into *units*: one example
each, or with `data.packing=true` runs of consecutive examples packed greedily into
`max_length` tokens. A micro-batch is `data.batch_size` units, an optimizer step
`accumulate_grad_batches` micro-batches; a file takes ceil(units / effective batch) steps.
Each micro-batch carries a `BatchInfo` (its file, how many examples, window/file ends) so that
the ledger advances from what was *trained*, not from what the loader prefetched.
"""

from __future__ import annotations

import bisect
import copy
import logging
import threading
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, IterableDataset

from lit_continual.claims import Claims
from lit_continual.context import RunContext
from lit_continual.data.batch import INFO, BatchInfo
from lit_continual.data.feed import InboxFeed
from lit_continual.data.file_index import FileChanged, FileIndex, Judge
from lit_continual.data.holdout import training_order
from lit_continual.data.prepare import FeedRules, PreparedFile
from lit_continual.data.records import IGNORE, BadLine, Encoder, Example, RecordSpec, collate, collate_packed
from lit_continual.data.replay import Allotment, Reservoir
from lit_continual.data.single_file import SingleFileFeed
from lit_continual.inbox import Inbox
from lit_continual.ledger import Ledger
from lit_continual.storage import Backoff

PACK_WINDOW = 1024

log = logging.getLogger("lit_continual")


def pack_plan(lengths: np.ndarray, order: np.ndarray, max_length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pack examples into units of at most `max_length` tokens: (packed order, unit bounds).

    Best-fit decreasing within consecutive windows of PACK_WINDOW examples of the seeded
    permutation (near-optimal fill, bounded cost, shuffle locality kept); the units of each
    window are then shuffled. Units are contiguous runs of the packed order, so the data
    position stays "examples consumed", and the plan is a pure function of its inputs: a
    restarted process rebuilds exactly the same units.
    """
    packed, bounds = [], [0]
    for start in range(0, len(order), PACK_WINDOW):
        window = order[start: start + PACK_WINDOW]
        sizes = lengths[window]
        room: list[int] = []  # remaining capacity of the open units, ascending
        units_by_room: list[list[int]] = []  # same order as `room`
        units: list[list[int]] = []
        for i in np.argsort(-sizes, kind="stable").tolist():
            size = int(sizes[i])
            k = bisect.bisect_left(room, size)  # the fullest open unit this example still fits in
            if k == len(room):
                unit, left = [], max_length
                units.append(unit)
            else:
                left, unit = room.pop(k), units_by_room.pop(k)
            unit.append(int(window[i]))
            if left > size:  # a full unit leaves the search
                k = bisect.bisect_left(room, left - size)
                room.insert(k, left - size)
                units_by_room.insert(k, unit)
        rng = np.random.default_rng([seed, start])
        for j in rng.permutation(len(units)).tolist():
            packed.extend(units[j])
            bounds.append(len(packed))
    return np.asarray(packed, dtype=np.int64), np.asarray(bounds, dtype=np.int64)


class FileStream(IterableDataset):
    """Yields micro-batches file after file; ends the epoch when the feed has nothing ready."""

    def __init__(self, datamodule: ContinualDataModule) -> None:
        self.dm = datamodule
        self.step = 0  # the 0-based optimizer step the next window trains (replay's allotment)

    def __iter__(self):
        # An epoch starts after the previous one's steps (or the restore): one window is one step.
        self.step = self.dm.trainer.global_step if self.dm.trainer is not None else 0
        block = True  # the first file of an epoch may wait; later ones end the epoch if not ready
        while not self.dm.stop.requested:
            prepared = self.dm.feed.next_file(block)
            if prepared is None:
                return
            block = False
            finished = yield from self._batches(prepared)
            if not finished or self.dm.replay is not None:
                # With replay, an epoch is one file: the loader fetches a batch ahead, and the
                # next file's batches must be made after this file joined the reservoir.
                return

    def _batches(self, prepared: PreparedFile):
        dm, record, index = self.dm, prepared.record, prepared.index
        order = training_order(record, dm.shuffle)
        if dm.packing:
            order, bounds = pack_plan(index.lengths, order, dm.max_length, record.shuffle_seed)
        else:
            bounds = np.arange(len(order) + 1, dtype=np.int64)
        prepared.order, prepared.bounds = order, bounds  # what was trained of it joins the reservoir
        size, windows = dm.batch_size, dm.accumulate
        units_total = len(bounds) - 1
        unit = first = int(np.searchsorted(bounds, record.examples_trained))
        replaying = dm.replaying  # the reservoir changes only at file ends: fixed for this file
        first_step = record.first_step - 1 if record.first_step is not None else self.step
        steps_total = dm.allotment.steps(units_total, first_step, replaying)
        steps_left = dm.allotment.steps(units_total - first, self.step, replaying)
        abandoned: str | None = None
        while unit < units_total and abandoned is None:
            if dm.stop.requested or record.status == "skipped":
                return False
            dm.feed.look_ahead()
            step = self.step
            new = dm.allotment.new_units(step) if replaying else [size] * windows
            parts, end = [], unit  # (first unit, end unit, replayed units) of each real micro-batch
            for part in range(windows):
                if end >= units_total:
                    break
                hi = min(end + new[part], units_total)
                parts.append((end, hi, size - new[part]))
                end = hi
            real = len(parts)
            parts += [(end, end, 0)] * (windows - real)  # zero-weight fillers
            for j, (lo, hi, replayed) in enumerate(parts):
                if record.status == "skipped":
                    # An operator skipped the file at the step before (its claim is closed): this
                    # epoch ends; the next one starts with the next file (LoRAModule drops the
                    # micro-batch fetched before the skip).
                    return False
                batch = None
                if abandoned is None and (hi > lo or replayed):
                    try:
                        batch = dm.make_batch(index, order, bounds[lo: hi + 1], dm.replay_units(step, j, replayed))
                    except OSError as err:  # rewritten in place, or unreadable: the rest is abandoned
                        abandoned = "changed" if isinstance(err, FileChanged) else f"{type(err).__name__}: {err}"
                        log.error("%s", err)
                examples = int(bounds[hi] - bounds[lo]) if batch is not None else 0
                replayed_examples = int(batch.pop("replayed")) if batch is not None else 0
                batch = batch if batch is not None else dm.make_batch(index, order, bounds[:0])
                batch.pop("replayed", None)
                last = j == windows - 1
                batch[INFO] = BatchInfo(
                    file=record, handle=prepared.handle, examples=examples, tokens=int(batch.pop("real_tokens")),
                    first_of_file=unit == first and j == 0, window_start=j == 0, window_end=last,
                    window_parts=real, file_end=last and (end == units_total or abandoned is not None),
                    abandoned=abandoned, file_steps_total=steps_total, file_steps_left=steps_left,
                    replayed=replayed_examples)
                yield batch
            unit = end
            self.step += 1
        return record.status != "skipped"  # never hand out the next file in an epoch that is ending


def index_judge(tokenizer, max_length: int, spec: RecordSpec, packing: bool) -> Judge:
    """What the index pass checks of each record beyond its JSON: with packing it tokenizes it
    (the token length plans the packs), otherwise it renders chat templates (which may raise).
    It runs on the index-ahead thread, so it has its own tokenizer copy and a lock: Rust
    tokenizers are not re-entrant."""
    encoder, lock = Encoder(copy.deepcopy(tokenizer), max_length, spec), threading.Lock()

    def judge(record: dict) -> int | None:
        with lock:
            if packing:
                return len(encoder.encode_one(record)[0])
            encoder.check(record)
            return None

    return judge


class ContinualDataModule(L.LightningDataModule):
    """Owns the ledger (its state_dict is the data position saved in every checkpoint).

    Lightning stores a DataModule's state under its class `__qualname__` (it has no
    `state_key`): this class name is part of the checkpoint format (checkpoints.LEDGER_KEY).
    """

    def __init__(self, cfg: DictConfig, tokenizer, ctx: RunContext) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.stop = ctx.stop
        self.batch_size = cfg.data.batch_size
        self.accumulate = cfg.trainer.accumulate_grad_batches
        self.shuffle = bool(cfg.data.shuffle)
        self.packing = bool(cfg.data.packing)
        self.max_length = cfg.data.max_length
        self.pad_id = tokenizer.pad_token_id
        self.spec = RecordSpec(cfg.data.format, cfg.data.text_field, cfg.data.prompt_field,
                               cfg.data.completion_field, cfg.data.messages_field)
        self.encoder = Encoder(tokenizer, cfg.data.max_length, self.spec)
        # Replay (data/replay.py): the reservoir is run state (the ReplayBuffer callback saves it).
        self.allotment = Allotment(cfg.data.replay_fraction, self.batch_size, self.accumulate)
        self.replay = (Reservoir(ctx.base_dir, cfg.data.replay_buffer_size, cfg.seed, self.spec)
                       if cfg.data.replay_fraction > 0 else None)
        rules = FeedRules(seed=cfg.seed, spec=self.spec, max_line_bytes=cfg.data.max_line_bytes,
                          max_bad_fraction=cfg.data.max_bad_fraction, skip_duplicates=cfg.daemon.skip_duplicates,
                          judge=index_judge(tokenizer, cfg.data.max_length, self.spec, self.packing),
                          holdout_fraction=cfg.eval.holdout_fraction, holdout_max=cfg.eval.holdout_max)
        self.single_file = cfg.data.source == "file"  # train.py's mode: one file, then exit
        if self.single_file:
            self.feed = SingleFileFeed(Path(cfg.data.path).resolve(), lambda: self.ledger, rules, ctx.stop)
        else:
            inbox = Inbox(ctx.base_dir, cfg.daemon.settle_seconds, cfg.daemon.poll_seconds)
            backoff = Backoff(cfg.daemon.retry_initial_seconds, cfg.daemon.retry_max_seconds)
            self.feed = InboxFeed(inbox, Claims(inbox.dir, ctx.base_dir / "failed"), lambda: self.ledger, rules,
                                  ctx, lambda: self.trainer.global_step, backoff,
                                  cfg.daemon.exit_when_idle)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accumulate

    @property
    def replaying(self) -> bool:
        """Batches replay past examples: data.replay_fraction > 0 and the reservoir holds some."""
        return self.replay is not None and len(self.replay) > 0

    def replay_units(self, step: int, part: int, count: int) -> list[list[Example]]:
        """The `count` replayed units of micro-batch `part` of step `step` (data/replay.py)."""
        if not count or not self.replaying:
            return []
        return self.replay.draw(step, part, count, self._encode_replayed, self.max_length if self.packing else None)

    def _encode_replayed(self, record: dict | None) -> Example:
        if record is not None:
            try:
                return self.encoder.encode_one(record)
            except Exception as err:
                log.warning("A replayed example cannot be encoded, trained with zero weight: %s: %s",
                            type(err).__name__, err)
        return [self.pad_id], [IGNORE]

    def make_batch(self, index: FileIndex, order: np.ndarray, unit_bounds: np.ndarray,
                   replayed: list[list[Example]] = ()) -> dict[str, torch.Tensor]:
        """Read, tokenize and collate the units whose bounds (into `order`) are given, followed
        by the `replayed` units (each a list of examples; one without packing).

        Raises FileChanged/OSError if the claimed file cannot give back what was indexed.
        """
        rows: list[list[Example]] = []
        if len(unit_bounds) >= 2:
            positions = order[unit_bounds[0]: unit_bounds[-1]]
            records = index.read(positions, self.spec)
            examples = [self._encode(index, int(pos), record) for pos, record in zip(positions, records, strict=True)]
            cuts = (unit_bounds - unit_bounds[0]).tolist()
            rows = [examples[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        rows += list(replayed)
        replayed_examples = sum(len(unit) for unit in replayed)
        if not rows:
            batch = collate([], self.pad_id)
            batch["real_tokens"], batch["replayed"] = torch.tensor(0), 0
            return batch
        if not self.packing:
            batch = collate([example for row in rows for example in row], self.pad_id)
            batch["real_tokens"] = batch["attention_mask"].sum()
        else:
            width = max(sum(len(ids) for ids, _ in row) for row in rows)
            batch = collate_packed(rows, self.pad_id, width)
        batch["replayed"] = replayed_examples
        return batch

    def _encode(self, index: FileIndex, position: int, record: dict | BadLine) -> Example:
        """One example; a line found bad only now keeps its slot with zero weight (exact steps)."""
        try:
            if isinstance(record, BadLine):
                raise record
            return self.encoder.encode_one(record)
        except Exception as err:
            log.warning("%s line %d: bad line found while batching, trained with zero weight: %s: %s",
                        index.name, index.line_number(position), type(err).__name__, err)
            return [self.pad_id], [IGNORE]

    def train_dataloader(self) -> DataLoader:
        # Its own generator: creating the loader iterator must not consume the global torch RNG,
        # or a run with more idle gaps (epochs) would draw different dropout masks.
        return DataLoader(FileStream(self), batch_size=None, num_workers=0,
                          generator=torch.Generator().manual_seed(0))

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        # The BatchInfo stays as it is (Lightning would try to rebuild the frozen dataclass).
        tensors = {k: v for k, v in batch.items() if k != INFO}
        moved = super().transfer_batch_to_device(tensors, device, dataloader_idx)
        moved[INFO] = batch[INFO]
        return moved

    def state_dict(self) -> dict:
        return self.ledger.to_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.ledger = Ledger.from_dict(state_dict, self.ledger.max_done)
