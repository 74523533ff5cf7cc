"""Checkpoints complete, global step increasing and consistent with the ledger, retention."""

from __future__ import annotations

from pathlib import Path

from lit_continual import checkpoints, layout
from lit_continual.logs import escape
from lit_continual.verification import Check, verdict
from lit_continual.verification.survey import Survey

NO_CHECKPOINT = "no intact checkpoint to check"


def complete(survey: Survey) -> Check:
    """Every checkpoint directory verifies against its manifest (sizes and sha256)."""
    name = "checkpoints-complete"
    if not survey.found and not survey.strays:
        return Check(name, False, f"no checkpoint in {escape(str(survey.base_dir / layout.MODELS))}")
    problems = [f"{ckpt}: {escape(problem)}" for ckpt, problem in survey.damaged.items()]
    problems += [_stray(p, survey.base_dir) for p in survey.strays]
    return verdict(name, problems, f"{len(survey.found)} checkpoint(s), each verified against its manifest "
                                   "(sizes and sha256)")


def _stray(path: Path, base_dir: Path) -> str:
    if checkpoints.is_foreign(path):
        return (f"{path.name}: written by the Hugging Face Trainer (no {layout.MANIFEST}): the daemon will not "
                f"start; adopt it: lit-continual adopt --base-dir {escape(str(base_dir))} [overrides]")
    return f"{path.name}: no {layout.MANIFEST} (damaged, or not written by lit-continual): a restart will not use it"


def steps(survey: Survey) -> Check:
    """global_step = the directory's step, and each ledger's file step ranges lie within it, in order."""
    name = "global-step"
    if not survey.intact:
        return Check(name, False, NO_CHECKPOINT)
    problems = [f"{ckpt}: {problem}" for ckpt, problem in survey.misnamed.items()]
    for path in survey.intact:
        problems += ledger_problems(path.name, layout.step_of(path), survey.read(path, layout.LEDGER))
    shown = ", ".join(str(layout.step_of(p)) for p in survey.intact)
    return verdict(name, problems, f"increasing across checkpoints ({shown}); every ledger's file step ranges "
                                   "lie within its checkpoint's step, in order, without overlap")


def ledger_problems(checkpoint: str, step: int, ledger: dict) -> list[str]:
    """Where a ledger's step ranges contradict its checkpoint's step or each other."""
    problems, floor = [], 0  # floor: the last step an earlier file of this ledger trained
    for record in ledger.get("files_done") or []:
        first, last = record.get("first_step"), record.get("last_step")
        label = f"{checkpoint}: {escape(str(record.get('name')))} (steps {first}-{last}, {record.get('status')})"
        if not isinstance(first, int) or not isinstance(last, int):
            if record.get("status") == "done":
                problems.append(f"{label} has no step range")
            continue
        if first <= floor:
            problems.append(f"{label} starts at or before step {floor}, trained by an earlier file")
        if last > step:
            problems.append(f"{label} ends after the checkpoint's step {step}")
        if last < first - 1 or (last < first and record.get("status") == "done"):
            problems.append(f"{label} has a reversed or empty range")
        floor = max(floor, last)
    current = ledger.get("current")
    if current and isinstance(current.get("first_step"), int):
        first = current["first_step"]
        if not floor < first <= step + 1:
            problems.append(f"{checkpoint}: the file in progress, {escape(str(current.get('name')))}, starts at "
                            f"step {first}: not after step {floor} and by step {step + 1}")
    return problems


def retention(survey: Survey) -> Check:
    """No more checkpoints than callbacks.model_checkpoint.save_top_k of the newest one's config."""
    name = "retention"
    config = next((c for p in reversed(survey.found) if (c := layout.read_json(p / layout.RUN_CONFIG))), None)
    if config is None:
        if not survey.found:
            return Check(name, True, "no checkpoint: nothing to retain")
        return Check(name, False, f"no checkpoint has a readable {layout.RUN_CONFIG} (save_top_k unknown)")
    keep = ((config.get("callbacks") or {}).get("model_checkpoint") or {}).get("save_top_k")
    count = len(survey.found)
    if not isinstance(keep, int):
        return Check(name, False, f"{layout.RUN_CONFIG} has no callbacks.model_checkpoint.save_top_k")
    if count > keep:
        names = ", ".join(p.name for p in survey.found)
        return Check(name, False, f"{count} checkpoints ({names}) > save_top_k={keep}")
    return Check(name, True, f"{count} checkpoint(s) <= save_top_k={keep}")
