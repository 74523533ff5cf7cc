"""The verification report of the seed's guide: checkpoints, global steps, files consumed."""

from __future__ import annotations

import json
from pathlib import Path

from lit_continual import checkpoints
from lit_continual.claims import CLAIMED, Claims, claimed_name
from lit_continual.logs import escape


def render(base_dir: Path) -> tuple[str, bool]:
    """Return (report text, all checks passed)."""
    found = checkpoints.complete_checkpoints(base_dir / "current_model")
    lines = [f"=== Continual training verification report: {base_dir} ===", "", "Checkpoints:"]
    rows = [(path, *_checkpoint_line(path)) for path in found]
    lines += [line for _, line, _ in rows]
    intact = [path for path, _, problem in rows if problem is None]
    ok = bool(found) and len(intact) == len(found)
    if intact:
        lines += _newest_lines(intact[-1], is_newest=intact[-1] == found[-1])
    inbox = sorted(escape(p.name) for p in (base_dir / "inbox").glob("*.jsonl"))
    lines += ["", f"Inbox: {len(inbox)} file(s) waiting {inbox if inbox else ''}".rstrip()]
    held = sorted(escape(claimed_name(n)) for n in Claims(base_dir / "inbox", base_dir / "failed").pending())
    if held:
        lines.append(f"Claimed (in progress or next, under inbox/{CLAIMED}/): {held}")
    lines += ["", "RESULT: " + ("PASS" if ok else "FAIL")]
    return "\n".join(lines), ok


def _checkpoint_line(path: Path) -> tuple[str, str | None]:
    """One checkpoint's line and its problem, if any.

    The manifest (sizes and sha256) is what proves a checkpoint whole: files that merely
    exist can be truncated, and the daemon itself would set such a checkpoint aside.
    """
    problem = checkpoints.verify(path) or _step_problem(path)
    step = _global_step(path)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    line = f"  {path.name}: global_step={'?' if step is None else step} size={size / 1024:.1f} KiB"
    return line + (f" PROBLEM: {escape(problem)}" if problem else ""), problem


def _global_step(path: Path) -> int | None:
    """The step trainer_state.json records, or None when a damaged checkpoint's cannot be read."""
    try:
        step = json.loads((path / checkpoints.TRAINER_STATE).read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return step if isinstance(step, int) else None


def _step_problem(path: Path) -> str | None:
    """A checkpoint whose state disagrees with its directory name would resume at the wrong step."""
    step = _global_step(path)
    if step is None:
        return f"unreadable {checkpoints.TRAINER_STATE}"
    if step != checkpoints.step_of(path):
        return f"{checkpoints.TRAINER_STATE} says global_step={step}"
    return None


def _newest_lines(path: Path, is_newest: bool) -> list[str]:
    """Ledger and loss of the newest intact checkpoint: the one a restart would resume from."""
    ledger = json.loads((path / checkpoints.LEDGER).read_text())
    state = json.loads((path / checkpoints.TRAINER_STATE).read_text())
    source = "the newest checkpoint" if is_newest else f"{path.name}, the newest intact one"
    lines = ["", f"Files consumed (ledger of {source}):"]
    for rec in ledger["files_done"]:
        lines.append(f"  #{rec['ordinal']} {escape(rec['name'])}: {rec['examples']} examples, "
                     f"steps {rec['first_step']}-{rec['last_step']} ({rec['status']})")
    if ledger["current"]:
        cur = ledger["current"]
        lines.append(f"  in progress: {escape(cur['name'])} {cur['examples_trained']}/{cur['examples']}")
    history = state["log_history"]
    if history:
        first, last = history[0], history[-1]
        lines += ["", f"Loss: first logged {first['loss']:.4f} at step {first['step']}, "
                      f"last {last['loss']:.4f} at step {last['step']}"]
    return lines
