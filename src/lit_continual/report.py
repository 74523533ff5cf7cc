"""The verification report (`lit-continual verify`, alias `report`): the seed's verification
guide as code. What the run holds (checkpoints, files consumed, loss, inbox), one PASS/FAIL
line per check (verification/), and what needs an operator. Written to
DIR/verification_report.txt as well as printed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lit_continual import atomic, layout
from lit_continual.claims import claimed_name
from lit_continual.logs import escape
from lit_continual.verification import Check, adapter, counters, generations, inbox, log_errors, operator, replay, state
from lit_continual.verification.survey import Survey, global_step

REPORT_FILE = "verification_report.txt"
# In the guide's order; each takes the Survey and returns a Check.
CHECKS = (state.complete, state.steps, state.retention, counters.optimizer_step, counters.scheduler_step,
          log_errors.log_errors, inbox.inbox_trained, adapter.adapter_loads, replay.reservoir,
          generations.base_generations)


@dataclass
class Verification:
    survey: Survey
    checks: list[Check]
    operator: list[str]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)


ATTEMPTS = 3  # a live daemon may prune a checkpoint while it is read: look again


def verify(base_dir: Path) -> Verification:
    """Run every check on an existing base dir. A file that vanishes while it is read (retention
    of a running daemon removed that checkpoint) means the survey is stale: it is taken again."""
    for attempt in range(ATTEMPTS):
        try:
            survey = Survey.of(base_dir)
            result = Verification(survey, [check(survey) for check in CHECKS], operator.needs_operator(survey))
            text(result)  # the report reads sizes too
            return result
        except FileNotFoundError:
            if attempt == ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


def missing(base_dir: Path) -> str | None:
    """The one-line reason when there is no base dir to verify, else None."""
    if base_dir.is_dir():
        return None
    return f"FAIL base-dir: {escape(str(base_dir))} does not exist (or is not a directory): nothing to verify"


def text(result: Verification) -> str:
    """The report as printed and written to REPORT_FILE."""
    survey = result.survey
    lines = [f"=== Continual training verification report: {escape(str(survey.base_dir))} ===",
             f"Date: {datetime.now().astimezone():%Y-%m-%d %H:%M:%S %Z}", "", "Checkpoints:"]
    lines += [_checkpoint_line(path, survey.problem(path)) for path in survey.found]
    lines += [_checkpoint_line(path, f"no {layout.MANIFEST}") for path in survey.strays]
    if not survey.found and not survey.strays:
        lines.append("  (none)")
    if survey.newest is not None:
        lines += _newest_lines(survey, survey.newest)
    lines += ["", _inbox_line(survey.base_dir)]
    held = [escape(claimed_name(n)) for n in layout.claimed(survey.base_dir)]
    if held:
        lines.append(f"Claimed (in progress or next, under inbox/.claimed/): {held}")
    lines += ["", "Checks:"]
    for check in result.checks:
        lines += [check.line] + [f"  - {note}" for note in check.notes]
    lines += ["", "Needs an operator:" + ("" if result.operator else " nothing")]
    lines += [f"  - {item}" for item in result.operator]
    lines += ["", "RESULT: " + ("PASS" if result.ok else "FAIL")]
    return "\n".join(lines)


def to_json(result: Verification) -> dict:
    survey = result.survey
    return {"base_dir": str(survey.base_dir.resolve()), "result": "PASS" if result.ok else "FAIL",
            "checks": [check.to_dict() for check in result.checks], "needs_operator": result.operator,
            "checkpoints": [{"name": p.name, "step": layout.step_of(p), "problem": survey.problem(p)}
                            for p in survey.found]
                           + [{"name": p.name, "step": layout.step_of(p), "problem": f"no {layout.MANIFEST}"}
                              for p in survey.strays],
            "report_file": str(survey.base_dir.resolve() / REPORT_FILE)}


def write(base_dir: Path, report: str) -> Path:
    """Write the report into the base dir atomically; returns its path."""
    path = base_dir / REPORT_FILE
    atomic.write_bytes(path, (report + "\n").encode("utf-8"))
    return path


def _checkpoint_line(path: Path, problem: str | None) -> str:
    """One checkpoint's step, size and problem, if any."""
    step = global_step(path)
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    line = f"  {path.name}: global_step={'?' if step is None else step} size={size / 1024:.1f} KiB"
    return line + (f" PROBLEM: {escape(problem)}" if problem else "")


def _newest_lines(survey: Survey, path: Path) -> list[str]:
    """Ledger and loss of the newest intact checkpoint: the one a restart would resume from."""
    ledger = survey.read(path, layout.LEDGER)
    entries = survey.read(path, layout.TRAINER_STATE).get("log_history") or []
    history = [e for e in entries if "loss" in e]  # training entries (evaluation ones hold eval_loss)
    source = "the newest checkpoint" if path == survey.found[-1] else f"{path.name}, the newest intact one"
    lines = ["", f"Files consumed (ledger of {source}):"]
    for rec in ledger.get("files_done") or []:
        lines.append(f"  #{rec.get('ordinal')} {escape(str(rec.get('name')))}: {rec.get('examples')} examples, "
                     f"steps {rec.get('first_step')}-{rec.get('last_step')} ({rec.get('status')})")
    if ledger.get("current"):
        cur = ledger["current"]
        lines.append(f"  in progress: {escape(str(cur.get('name')))} {cur.get('examples_trained')}/"
                     f"{cur.get('examples')}")
    if history:
        first, last = history[0], history[-1]
        lines += ["", f"Loss: first logged {first['loss']:.4f} at step {first['step']}, "
                      f"last {last['loss']:.4f} at step {last['step']}"]
    evals = [e for e in entries if "eval_loss" in e]
    if evals:
        lines.append(f"Eval loss (DIR/eval): first {evals[0]['eval_loss']:.4f} at step {evals[0]['step']}, "
                     f"last {evals[-1]['eval_loss']:.4f} at step {evals[-1]['step']}")
    return lines


def _inbox_line(base_dir: Path) -> str:
    waiting = [escape(name) for name in layout.waiting(base_dir)]
    return f"Inbox: {len(waiting)} file(s) waiting {waiting if waiting else ''}".rstrip()
