"""The forgetting matrix: which per-file probes are kept, the append-only `DIR/eval/forgetting.json`,
and its picture.

Row k is the evaluation after file k's last step; column j the probe of file j (j <= k); the
value the mean token loss of the model on that probe. Forgetting of file j after file k is
loss(k, j) - first(j), where first(j) = loss(j, j), right after file j was trained.

`forgetting.json` (version 1) is an output: the run state keeps only what resume needs (the kept
columns with their first values and the newest row; callbacks/forgetting.py), and this file is
read back only to append to it. A row is never changed once written, except that a process killed
after writing row k and before its checkpoint redoes file k's end: rows from k on are replaced
(with the same values: training is bit-identical), never duplicated.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from lit_continual import atomic
from lit_continual.logs import escape

log = logging.getLogger("lit_continual")

FORGETTING_JSON = Path("eval") / "forgetting.json"  # under the base dir
VERSION = 1
MAX_PICTURE_CELLS = 64  # rows and columns of the heatmap: the newest ones
PICTURE_PIXELS = 256  # the heatmap's longer side, at most (cells are 2-16 px)
MISSING = (96, 96, 96)  # a cell without a value (j > k, or a dropped probe)


def kept_probes(ordinals: list[int], maximum: int) -> list[int]:
    """Which probes (file ordinals, ascending) stay: all if at most `maximum`; otherwise the newest
    half (rounded up) plus older ones nearest to evenly spaced points from the oldest to the
    newest older one (so the first file's probe stays as long as any older one does)."""
    ordinals = sorted(ordinals)
    if len(ordinals) <= maximum:
        return ordinals
    newest_count = maximum - maximum // 2
    older, newest = ordinals[:-newest_count], ordinals[-newest_count:]
    picks: list[int] = []
    for target in np.linspace(older[0], older[-1], maximum - newest_count):
        picks.append(min((o for o in older if o not in picks), key=lambda o: (abs(o - target), o)))
    return sorted(picks) + newest


def read(base_dir: Path) -> dict | None:
    """The matrix file, or None if there is none (or it is not a version-1 matrix)."""
    path = Path(base_dir) / FORGETTING_JSON
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("Cannot read %s: %s", escape(str(path)), err)
        return None
    if not (isinstance(doc, dict) and doc.get("version") == VERSION and isinstance(doc.get("columns"), list)
            and isinstance(doc.get("rows"), list)):
        log.warning("%s is not a version-%d forgetting matrix: starting a new one", escape(str(path)), VERSION)
        return None
    return doc


def record(base_dir: Path, after_file: int, kept: list[dict], ended: list[int], row: dict | None) -> dict:
    """Bring `forgetting.json` to file `after_file`'s end and return it: anything written after an
    earlier end of that file (a process killed before its checkpoint) goes, the `kept` columns
    (ordinal, name, probe, first) are added or updated, the `ended` ones get `ended_after`, and
    `row` (if any) is appended. Written atomically."""
    doc = read(base_dir) or {"version": VERSION, "columns": [], "rows": []}
    rows = [r for r in doc["rows"] if r.get("after_file", 0) < after_file]
    columns = {c["ordinal"]: c for c in doc["columns"] if c.get("ordinal", 0) <= after_file}
    for column in columns.values():
        if column.get("ended_after") is not None and column["ended_after"] >= after_file:
            column["ended_after"] = None
    for column in kept:
        columns[column["ordinal"]] = {**columns.get(column["ordinal"], {}), **column, "ended_after": None}
    for ordinal in ended:
        if ordinal in columns:
            columns[ordinal]["ended_after"] = after_file
    doc = {"version": VERSION, "columns": [columns[o] for o in sorted(columns)], "rows": rows + ([row] if row else [])}
    path = Path(base_dir) / FORGETTING_JSON
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, doc)
    return doc


def forgetting_now(doc: dict, up_to_step: int | None = None) -> dict[int, tuple[float, int]]:
    """Per column with a first value: (its newest loss - first, the file it was measured after),
    from the rows at or before `up_to_step` (None: all)."""
    found: dict[int, tuple[float, int]] = {}
    firsts = {c["ordinal"]: c.get("first") for c in doc.get("columns") or []}
    for row in doc.get("rows") or []:
        if up_to_step is not None and row.get("step", 0) > up_to_step:
            continue
        for key, loss in (row.get("losses") or {}).items():
            first = firsts.get(int(key))
            if first is not None and loss is not None:
                found[int(key)] = (loss - first, row["after_file"])
    return found


def heatmap(doc: dict) -> np.ndarray:
    """The matrix as an RGB picture (uint8, height x width x 3): a row per file end (oldest at the
    top), a column per probe (oldest at the left), the newest MAX_PICTURE_CELLS of each; a cell's
    colour is its forgetting (loss - first): white 0, red worse, blue better, full colour at the
    largest |forgetting| in the picture; grey where there is no value."""
    rows = (doc.get("rows") or [])[-MAX_PICTURE_CELLS:]
    firsts = {c["ordinal"]: c.get("first") for c in doc.get("columns") or []}
    ordinals = sorted({int(k) for r in rows for k in r.get("losses") or {}})[-MAX_PICTURE_CELLS:] or [0]
    values = np.full((max(len(rows), 1), len(ordinals)), np.nan)
    for i, row in enumerate(rows):
        for j, ordinal in enumerate(ordinals):
            loss, first = (row.get("losses") or {}).get(str(ordinal)), firsts.get(ordinal)
            if loss is not None and first is not None:
                values[i, j] = loss - first
    scale = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.0
    v = np.clip(np.nan_to_num(values / scale if scale > 0 else values * 0), -1, 1)[..., None]
    red, blue, white = np.array([214, 39, 40]), np.array([31, 119, 180]), np.array([255, 255, 255])
    rgb = np.where(v > 0, white + v * (red - white), white - v * (blue - white))
    rgb[np.isnan(values)] = MISSING
    cell = int(np.clip(PICTURE_PIXELS // max(values.shape), 2, 16))
    return np.repeat(np.repeat(rgb.round().astype(np.uint8), cell, axis=0), cell, axis=1)
