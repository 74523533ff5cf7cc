"""Lightning callbacks that carry the run across files: ledger, checkpoints, loss log, RNG,
signals, logger runs, operator controls, evaluation, progress. Each stateful one has a fixed
`state_key` (the checkpoint format): renaming a class must not change it."""

from lit_continual.callbacks.checkpointer import Checkpointer
from lit_continual.callbacks.controls import OperatorControls
from lit_continual.callbacks.evaluation import Evaluation
from lit_continual.callbacks.files import FileLifecycle
from lit_continual.callbacks.logger_runs import LoggerRuns
from lit_continual.callbacks.loss_history import LossHistory
from lit_continual.callbacks.nonfinite import NonFiniteError, NonFiniteGuard
from lit_continual.callbacks.progress import FileProgressBar
from lit_continual.callbacks.replay import ReplayBuffer
from lit_continual.callbacks.rng import RngState
from lit_continual.callbacks.step_offset import StepOffset
from lit_continual.callbacks.stop_signals import StopSignals

__all__ = ["Checkpointer", "Evaluation", "FileLifecycle", "FileProgressBar", "LoggerRuns", "LossHistory",
           "NonFiniteError", "NonFiniteGuard", "OperatorControls", "ReplayBuffer",
           "RngState", "StepOffset", "StopSignals"]
