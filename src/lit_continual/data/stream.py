"""The streaming DataModule: one endless epoch per burst of files, batches never span files.

Each micro-batch carries `meta` (its file, how many examples, window/file ends) so that the
ledger advances from what was *trained*, not from what the loader prefetched.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, IterableDataset

from lit_continual.crash_guard import CrashGuard
from lit_continual.data.feed import FeedRules, InboxFeed, PreparedFile, SingleFileFeed
from lit_continual.data.records import TextFormat, collate
from lit_continual.inbox import Inbox
from lit_continual.ledger import Ledger
from lit_continual.status import Status
from lit_continual.stop import StopRequest


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
        dm, record = self.dm, prepared.record
        n = record.examples
        order = (np.random.default_rng(record.shuffle_seed).permutation(n)
                 if dm.shuffle else np.arange(n))
        size, windows = dm.batch_size, dm.accumulate
        start = position = record.examples_trained
        while position < n:
            if dm.stop.requested:
                return False
            window = order[position: position + size * windows]
            parts = [window[i: i + size] for i in range(0, len(window), size)]
            parts += [window[:0]] * (windows - len(parts))  # zero-weight fillers: a window never spans files
            file_end = position + len(window) >= n
            for j, positions in enumerate(parts):
                examples = dm.format.encode(prepared.index.read(positions, dm.text_field))
                batch = collate(examples, dm.pad_id)
                batch["meta"] = {
                    "file": record, "path": prepared.path, "examples": len(positions),
                    "tokens": int(batch["attention_mask"].sum()),
                    "first_of_file": position == start and j == 0, "window_start": j == 0,
                    "window_end": j == windows - 1, "file_end": file_end and j == windows - 1,
                    "delete_when_done": prepared.delete_when_done,
                }
                yield batch
            position += len(window)
        return True


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
        self.text_field = cfg.data.text_field
        self.pad_id = tokenizer.pad_token_id
        self.format = TextFormat(tokenizer, cfg.data.max_length, cfg.data.text_field)
        rules = FeedRules(seed=cfg.seed, text_field=cfg.data.text_field, max_line_bytes=cfg.data.max_line_bytes,
                          max_bad_fraction=cfg.data.max_bad_fraction, skip_duplicates=cfg.daemon.skip_duplicates)
        self.inbox = Inbox(base_dir, cfg.daemon.settle_seconds)
        if cfg.data.source == "file":
            self.feed = SingleFileFeed(Path(cfg.data.path).resolve(), lambda: self.ledger, rules)
        else:
            self.feed = InboxFeed(self.inbox, lambda: self.ledger, rules, stop, status, guard,
                                  cfg.daemon.poll_seconds, cfg.daemon.exit_when_idle)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.accumulate

    def train_dataloader(self) -> DataLoader:
        # Its own generator: creating the loader iterator must not consume the global torch RNG,
        # or a run with more idle gaps (epochs) would draw different dropout masks.
        return DataLoader(FileStream(self), batch_size=None, num_workers=0,
                          generator=torch.Generator().manual_seed(0))

    def state_dict(self) -> dict:
        return self.ledger.to_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.ledger = Ledger.from_dict(state_dict, self.ledger.max_done)
