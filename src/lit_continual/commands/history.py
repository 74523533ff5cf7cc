"""`lit-continual history`: one row per file of the newest checkpoint's ledger (the files
done, then the one in progress): name, sha256, examples, step range, start and finish times,
status, the loss logged last within its step range, and the loss on the fixed eval set
(DIR/eval) at its last step.

The ledger keeps the newest 1,000 files and trainer_state.json the newest
`checkpoint.log_history_max` loss entries: older files show no loss ("-").
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lit_continual import forgetting, layout
from lit_continual.logs import escape

EXIT_OK, EXIT_UNREADABLE, EXIT_NO_BASE_DIR = 0, 1, 2
COLUMNS = ("#", "file", "sha256", "examples", "steps", "started", "finished", "status", "loss", "eval_loss",
           "forgetting")


def add(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("history", help="one row per file the run has trained (from the ledger)",
                            description=__doc__.split("\n\n")[0],
                            epilog="exit codes: 0 shown (also when nothing is trained yet); 1 no checkpoint's "
                                   "ledger.json is readable; 2 the base dir does not exist")
    parser.add_argument("--base-dir", required=True, help="the run's directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object: {checkpoint, step, files: "
                        "[{name, sha256, examples, examples_trained, first_step, last_step, started_at, "
                        "finished_at, status, loss, loss_step, bad_lines, eval_loss, held_out, forgetting, "
                        "forgetting_after}], rejected}; eval_loss: DIR/eval at the file's last step; forgetting: "
                        "its probe's loss after file #forgetting_after (the newest evaluated) less its loss right "
                        "after it was trained (DIR/eval/forgetting.json)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    base_dir = Path(args.base_dir)
    if not base_dir.is_dir():
        print(f"lit-continual history: {base_dir} does not exist (or is not a directory)")
        return EXIT_NO_BASE_DIR
    found = gather(base_dir)
    if found is None:
        print(f"lit-continual history: no checkpoint in {base_dir / layout.MODELS} has a readable "
              f"{layout.LEDGER}")
        return EXIT_UNREADABLE
    print(json.dumps(found, indent=2) if args.json else render(found))
    return EXIT_OK


def gather(base_dir: Path) -> dict | None:
    """The rows of the newest checkpoint with a readable ledger; None if none is readable."""
    if not layout.complete_checkpoints(base_dir):
        return {"base_dir": str(base_dir.resolve()), "checkpoint": None, "step": 0, "files": [], "rejected": 0}
    path, ledger = layout.newest_with(base_dir, layout.LEDGER)
    if path is None:
        return None
    step = layout.step_of(path)
    losses = (layout.read_json(path / layout.TRAINER_STATE) or {}).get("log_history") or []
    matrix = forgetting.read(base_dir)
    now = forgetting.forgetting_now(matrix, step) if matrix else {}
    records = list(ledger.get("files_done") or [])
    if ledger.get("current"):
        records.append({**ledger["current"], "last_step": step, "status": "training"})
    return {"base_dir": str(base_dir.resolve()), "checkpoint": path.name, "step": step,
            "files": [_row(record, losses, now) for record in records],
            "rejected": len(ledger.get("files_rejected") or [])}


def _row(record: dict, losses: list[dict], now: dict[int, tuple[float, int]]) -> dict:
    first, last = record.get("first_step"), record.get("last_step")
    value, after = now.get(record.get("ordinal"), (None, None))
    loss = _loss_at_end(losses, first, last)
    return {"ordinal": record.get("ordinal"), "name": record.get("name"), "sha256": record.get("sha256"),
            "examples": record.get("examples"), "examples_trained": record.get("examples_trained"),
            "first_step": first, "last_step": last, "started_at": record.get("started_at"),
            "finished_at": record.get("finished_at"), "status": record.get("status"),
            "loss": loss.get("loss"), "loss_step": loss.get("step"), "bad_lines": record.get("bad_lines"),
            "eval_loss": next((e["eval_loss"] for e in losses if "eval_loss" in e and e.get("step") == last), None),
            "held_out": record.get("held_out", 0), "forgetting": None if value is None else round(value, 6),
            "forgetting_after": after}


def _loss_at_end(losses: list[dict], first: int | None, last: int | None) -> dict:
    """The newest loss entry at or before `last`, if it lies within the file's own steps."""
    if first is None or last is None:
        return {}
    within = [e for e in losses if "loss" in e and isinstance(e.get("step"), int) and first <= e["step"] <= last]
    return within[-1] if within else {}


def render(found: dict) -> str:
    """An aligned table, one row per file."""
    if found["checkpoint"] is None:
        return f"history of {escape(found['base_dir'])}: no checkpoint yet, no file trained"
    head = (f"history of {escape(found['base_dir'])} (ledger of {found['checkpoint']}, step {found['step']}): "
            f"{len(found['files'])} file(s)")
    newest = max((row["forgetting_after"] or 0 for row in found["files"]), default=0)
    rows = [COLUMNS] + [_cells(row, newest) for row in found["files"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = [head] + ["  " + "  ".join(_aligned(i, cell, width) for i, (cell, width)
                                       in enumerate(zip(row, widths, strict=True))).rstrip() for row in rows]
    if found["rejected"]:
        lines.append(f"  ({found['rejected']} file(s) rejected untrained: see failed/ and `lit-continual verify`)")
    return "\n".join(lines)


def _aligned(column: int, cell: str, width: int) -> str:
    return cell.rjust(width) if COLUMNS[column] in ("#", "examples") else cell.ljust(width)


def _cells(row: dict, newest: int) -> tuple[str, ...]:
    held, trainable = row["held_out"] or 0, row["examples"] - (row["held_out"] or 0)
    examples = str(trainable)
    if row["status"] == "training" or (row["examples_trained"] not in (None, trainable)):
        examples = f"{row['examples_trained']}/{trainable}"
    if held:  # held out as the file's probe: never trained, not missing
        examples += f" (+{held} probe)"
    first, last = row["first_step"], row["last_step"]
    steps = "-" if first is None else f"{first}-{last}" if last is None or last >= first else "none"
    loss = "-" if row["loss"] is None else f"{row['loss']:.4f}"
    # Blank, not "-", without an evaluation at the file's last step: a run without DIR/eval has none.
    eval_loss = "" if row["eval_loss"] is None else f"{row['eval_loss']:.4f}"
    # Blank without a probe; "(after #k)" when the probe was dropped (eval.max_probes) after file k.
    value, after = row["forgetting"], row["forgetting_after"]
    forgets = "" if value is None else f"{value:+.4f}" + (f" (after #{after})" if after != newest else "")
    return (str(row["ordinal"] if row["ordinal"] is not None else "-"), escape(str(row["name"])),
            str(row["sha256"] or "-")[:12], examples, steps, layout.local_time(row["started_at"]),
            layout.local_time(row["finished_at"]), str(row["status"]), loss, eval_loss, forgets)
