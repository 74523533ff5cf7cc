"""A per-file progress bar (step within the file / total, loss, tokens/s) on a terminal."""

from __future__ import annotations

import lightning as L
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lit_continual.data.batch import INFO
from lit_continual.status import Status


class FileProgressBar(L.Callback):
    """Only used when stderr is a terminal; otherwise the log lines tell the same story."""

    def __init__(self, status: Status) -> None:
        self.status = status
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("loss {task.fields[loss]}  {task.fields[tps]} tok/s"),
                                 TimeRemainingColumn(), transient=False)
        self.task = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.progress.start()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        info = batch[INFO]
        if info.first_of_file:
            total = info.file_steps_total
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(info.file.name, total=total, loss="-", tps="-",
                                               completed=total - info.file_steps_left)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.task is not None and batch[INFO].window_end:
            fields = self.status.fields
            self.progress.update(self.task, advance=1, loss=fields["loss"] or "-",
                                 tps=fields["tokens_per_second"] or "-")

    def on_train_end(self, trainer, pl_module) -> None:
        self.progress.stop()
