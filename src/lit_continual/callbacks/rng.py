"""RNG state in every checkpoint (Lightning stores none), as tensors so weights_only loads it."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch


def capture() -> dict:
    """torch (CPU and CUDA), python and numpy generator states, weights_only-loadable."""
    version, py_state, gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict) -> None:
    """Inverse of `capture`."""
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"],
                         npy["has_gauss"], npy["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RngState(L.Callback):
    """Saves the generators with each checkpoint; restores them just before training resumes."""

    def __init__(self) -> None:
        self._loaded: dict | None = None

    @property
    def state_key(self) -> str:
        return "RngState"

    def state_dict(self) -> dict:
        return capture()

    def load_state_dict(self, state_dict: dict) -> None:
        self._loaded = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Restored here, not in load_state_dict: model setup between the two may draw numbers.
        if self._loaded is not None:
            restore(self._loaded)
            self._loaded = None
