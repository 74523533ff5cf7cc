"""Lightning callbacks that carry the run across files: ledger, checkpoints, loss log, RNG, progress."""

from lit_continual.callbacks.files import FileLifecycle
from lit_continual.callbacks.loss_history import LossHistory
from lit_continual.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from lit_continual.callbacks.progress import FileProgressBar
from lit_continual.callbacks.rng import RngState

__all__ = ["FileLifecycle", "FileProgressBar", "LossHistory", "NonFiniteError", "NonFiniteGuard", "RngState"]
