"""What needs an operator: nothing here fails verify, but someone should look.

Files in failed/ with their reasons, bad-line counts per trained file, files in the inbox the
daemon never trains, checkpoints whose recorded base model path is gone, damaged checkpoints
set aside in current_model/.corrupt/, a Hugging Face Trainer's checkpoints kept in
current_model/.adopted/ after adoption.
"""

from __future__ import annotations

import json
from pathlib import Path

from lit_continual import layout
from lit_continual.checkpoints import ADOPTED, CORRUPT
from lit_continual.logs import escape
from lit_continual.verification.adapter import base_model_path
from lit_continual.verification.survey import Survey

REPORT_SUFFIX = ".error.json"


def needs_operator(survey: Survey) -> list[str]:
    """One line per item, grouped by kind."""
    return (_failed(survey.base_dir) + _bad_lines(survey) + _strangers(survey.base_dir)
            + _moved_base(survey) + _set_aside(survey.base_dir))


def _failed(base_dir: Path) -> list[str]:
    folder = base_dir / "failed"
    if not folder.is_dir():
        return []
    lines = []
    for path in sorted(p for p in folder.iterdir() if not p.name.endswith(REPORT_SUFFIX)
                       and not p.name.startswith(".")):
        report = _report(path.with_name(path.name + REPORT_SUFFIX))
        if report is None:
            lines.append(f"failed/{escape(path.name)}: no readable {REPORT_SUFFIX} report")
            continue
        counts = ""
        if isinstance(report.get("bad_lines"), int) and isinstance(report.get("total_lines"), int):
            counts = f" ({report['bad_lines']} bad line(s) of {report['total_lines']})"
        lines.append(f"failed/{escape(path.name)}: {escape(str(report.get('reason')))}{counts}")
    return lines


def _report(path: Path) -> dict | None:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def _bad_lines(survey: Survey) -> list[str]:
    if survey.newest is None:
        return []
    ledger = survey.read(survey.newest, layout.LEDGER)
    records = list(ledger.get("files_done") or []) + ([ledger["current"]] if ledger.get("current") else [])
    return [f"{escape(str(r.get('name')))} (#{r.get('ordinal')}): {r['bad_lines']} bad line(s) left out of "
            f"training, {r.get('examples')} examples trained (the log names the first bad lines)"
            for r in records if isinstance(r.get("bad_lines"), int) and r["bad_lines"] > 0]


def _strangers(base_dir: Path) -> list[str]:
    return [f"inbox/{escape(name)}: not a *.jsonl file, never trained (rename it to .jsonl or move it away)"
            for name in layout.strangers(base_dir)]


def _moved_base(survey: Survey) -> list[str]:
    lines = []
    for path in survey.found:
        recorded, now = base_model_path(survey.base_dir, path)
        if recorded is not None and not Path(recorded).exists():
            where = f"; found at {escape(str(now))}" if now is not None else ""
            lines.append(f"{path.name}: its recorded base model path {escape(recorded)} no longer exists (moved "
                         f"base dir?{where}); the daemon's next checkpoints record the current path")
    return lines


def _set_aside(base_dir: Path) -> list[str]:
    """Damaged checkpoints moved to .corrupt/, and a Hugging Face Trainer's kept after adoption."""
    why = {CORRUPT: "a damaged checkpoint set aside", ADOPTED: "the Hugging Face Trainer's checkpoint, kept after "
           "`lit-continual adopt`"}
    lines = []
    for folder, reason in why.items():
        path = base_dir / layout.MODELS / folder
        if path.is_dir():
            lines += [f"{layout.MODELS}/{folder}/{escape(p.name)}: {reason} (delete it once no longer needed)"
                      for p in sorted(path.iterdir())]
    return lines
