"""SIGTERM/SIGINT handlers installed from a hook, after Lightning's own (which abort fit())."""

from __future__ import annotations

import lightning as L

from lit_continual.stop import StopRequest


class StopSignals(L.Callback):
    """Routes SIGTERM/SIGINT to the run's stop request once fit() has started.

    Lightning registers its signal handlers after `on_fit_start` and before the training loop;
    `on_train_start` runs after that, so ours win and a signal means "stop after this step".
    """

    def __init__(self, stop: StopRequest) -> None:
        self.stop = stop

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.stop.install()
