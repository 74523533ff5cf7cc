"""The streaming DataModule: one endless epoch per burst of files, batches never span files.

A file's examples are taken in its seeded permutation and grouped into *units*: one example
each, or with `data.packing=true` runs of consecutive examples packed greedily into
`max_length` tokens. A micro-batch is `data.batch_size` units, an optimizer step
`accumulate_grad_batches` micro-batches; a file takes ceil(units / effective batch) steps.
Each micro-batch carries `meta` (its file, how many examples, window/file ends) so that the
ledger advances from what was *trained*, not from what the loader prefetched.
"""

from __future__ import annotations

import bisect
import copy
import math
import threading
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, IterableDataset

from lit_continual.crash_guard import CrashGuard
from lit_continual.data.feed import FeedRules, InboxFeed, PreparedFile, SingleFileFeed
from lit_continual.data.records import Encoder, RecordSpec, collate, collate_packed
from lit_continual.inbox import Inbox
from lit_continual.ledger import Ledger
from lit_continual.status import Status
from lit_continual.stop import StopRequest

PACK_WINDOW = 1024


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

    def __iter__(self):
        self.dm.stop.install()
        block = True  # the first file of an epoch may wait; later ones end the epoch if not ready
        while not self.dm.stop.requested:
            prepared = self.dm.feed.next_file(block)
            if prepared is None:
                return
            block = False
            finished = yield from self._batches(prepared)
            if not finished:
                return

    def _batches(self, prepared: PreparedFile):
        dm, record, index = self.dm, prepared.record, prepared.index
        n = record.examples
        order = np.random.default_rng(record.shuffle_seed).permutation(n) if dm.shuffle else np.arange(n)
        if dm.packing:
            order, bounds = pack_plan(index.lengths, order, dm.max_length, record.shuffle_seed)
        else:
            bounds = np.arange(n + 1, dtype=np.int64)
        size, windows = dm.batch_size, dm.accumulate
        units_total = len(bounds) - 1
        unit = first = int(np.searchsorted(bounds, record.examples_trained))
        steps = {"file_steps_total": math.ceil(units_total / (size * windows)),
                 "file_steps_left": math.ceil((units_total - first) / (size * windows))}
        while unit < units_total:
            if dm.stop.requested:
                return False
            window_end_unit = min(unit + size * windows, units_total)
            parts = [(u, min(u + size, window_end_unit)) for u in range(unit, window_end_unit, size)]
            parts += [(window_end_unit, window_end_unit)] * (windows - len(parts))  # zero-weight fillers
            for j, (lo, hi) in enumerate(parts):
                batch = dm.make_batch(index, order, bounds[lo: hi + 1] if hi > lo else bounds[:0])
                examples = int(bounds[hi] - bounds[lo]) if hi > lo else 0
                last = j == windows - 1
                batch["meta"] = {
                    "file": record, "path": prepared.path, "examples": examples,
                    "tokens": int(batch.pop("real_tokens")), "first_of_file": unit == first and j == 0,
                    "window_start": j == 0, "window_end": last,
                    "file_end": last and window_end_unit == units_total,
                    "delete_when_done": prepared.delete_when_done, **steps,
                }
                yield batch
            unit = window_end_unit
        return True


def _length_meter(tokenizer, max_length: int, spec: RecordSpec):
    """Token length per record for the index pass (packing). It may run on the index-ahead
    thread, so it has its own tokenizer copy and a lock: Rust tokenizers are not re-entrant."""
    encoder, lock = Encoder(copy.deepcopy(tokenizer), max_length, spec), threading.Lock()

    def measure(records: list[dict]) -> list[int]:
        with lock:
            return [len(ids) for ids, _ in encoder.encode(records)]

    return measure


class ContinualDataModule(L.LightningDataModule):
    """Owns the ledger (its state_dict is the data position saved in every checkpoint)."""

    def __init__(self, cfg: DictConfig, tokenizer, base_dir: Path, stop: StopRequest,
                 status: Status, guard: CrashGuard) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.stop = stop
        self.batch_size = cfg.data.batch_size
        self.accumulate = cfg.trainer.accumulate_grad_batches
        self.shuffle = bool(cfg.data.shuffle)
        self.packing = bool(cfg.data.packing)
        self.max_length = cfg.data.max_length
        self.pad_id = tokenizer.pad_token_id
        self.spec = RecordSpec(cfg.data.format, cfg.data.text_field, cfg.data.prompt_field,
                               cfg.data.completion_field, cfg.data.messages_field)
        self.encoder = Encoder(tokenizer, cfg.data.max_length, self.spec)
        measure = _length_meter(tokenizer, cfg.data.max_length, self.spec) if self.packing else None
        rules = FeedRules(seed=cfg.seed, spec=self.spec, max_line_bytes=cfg.data.max_line_bytes,
                          max_bad_fraction=cfg.data.max_bad_fraction, skip_duplicates=cfg.daemon.skip_duplicates,
                          measure=measure)
        self.inbox = Inbox(base_dir, cfg.daemon.settle_seconds)
        if cfg.data.source == "file":
            self.feed = SingleFileFeed(Path(cfg.data.path).resolve(), lambda: self.ledger, rules)
        else:
            self.feed = InboxFeed(self.inbox, lambda: self.ledger, rules, stop, status, guard,
                                  cfg.daemon.poll_seconds, cfg.daemon.exit_when_idle)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accumulate

    def make_batch(self, index, order: np.ndarray, unit_bounds: np.ndarray) -> dict[str, torch.Tensor]:
        """Read, tokenize and collate the units whose bounds (into `order`) are given."""
        if len(unit_bounds) < 2:
            batch = collate([], self.pad_id)
            batch["real_tokens"] = torch.tensor(0)
            return batch
        positions = order[unit_bounds[0]: unit_bounds[-1]]
        examples = self.encoder.encode(index.read(positions, self.spec))
        if not self.packing:
            batch = collate(examples, self.pad_id)
            batch["real_tokens"] = batch["attention_mask"].sum()
            return batch
        cuts = (unit_bounds - unit_bounds[0]).tolist()
        rows = [examples[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        width = max(sum(len(ids) for ids, _ in row) for row in rows)
        return collate_packed(rows, self.pad_id, width)

    def train_dataloader(self) -> DataLoader:
        # Its own generator: creating the loader iterator must not consume the global torch RNG,
        # or a run with more idle gaps (epochs) would draw different dropout masks.
        return DataLoader(FileStream(self), batch_size=None, num_workers=0,
                          generator=torch.Generator().manual_seed(0))

    def state_dict(self) -> dict:
        return self.ledger.to_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.ledger = Ledger.from_dict(state_dict, self.ledger.max_done)
