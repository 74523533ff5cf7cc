"""The verification report of the seed's guide: checkpoints, global steps, files consumed."""

from __future__ import annotations

import json
from pathlib import Path

from lit_continual import checkpoints

REQUIRED_FILES = ("adapter_model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json")


def render(base_dir: Path) -> tuple[str, bool]:
    """Return (report text, all checks passed)."""
    models_dir = base_dir / "current_model"
    found = checkpoints.complete_checkpoints(models_dir)
    lines = [f"=== Continual training verification report: {base_dir} ===", "", "Checkpoints:"]
    ok = bool(found)
    for path in found:
        state = json.loads((path / checkpoints.TRAINER_STATE).read_text())
        size = sum(f.stat().st_size for f in path.iterdir())
        missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
        ok &= not missing and state["global_step"] == checkpoints.step_of(path)
        lines.append(f"  {path.name}: global_step={state['global_step']} size={size / 1024:.1f} KiB"
                     + (f" MISSING {missing}" if missing else ""))
    if found:
        ledger = json.loads((found[-1] / checkpoints.LEDGER).read_text())
        state = json.loads((found[-1] / checkpoints.TRAINER_STATE).read_text())
        lines += ["", "Files consumed (ledger of the newest checkpoint):"]
        for rec in ledger["files_done"]:
            lines.append(f"  #{rec['ordinal']} {rec['name']}: {rec['examples']} examples, "
                         f"steps {rec['first_step']}-{rec['last_step']} ({rec['status']})")
        if ledger["current"]:
            cur = ledger["current"]
            lines.append(f"  in progress: {cur['name']} {cur['examples_trained']}/{cur['examples']}")
        history = state["log_history"]
        if history:
            first, last = history[0], history[-1]
            lines += ["", f"Loss: first logged {first['loss']:.4f} at step {first['step']}, "
                          f"last {last['loss']:.4f} at step {last['step']}"]
    inbox = sorted(p.name for p in (base_dir / "inbox").glob("*.jsonl"))
    lines += ["", f"Inbox: {len(inbox)} file(s) waiting {inbox if inbox else ''}".rstrip()]
    lines += ["", "RESULT: " + ("PASS" if ok else "FAIL")]
    return "\n".join(lines), ok
