"""`lit-continual verify` (alias `report`): the verification guide as code."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_PASS, EXIT_FAIL = 0, 1
EPILOG = ("checks, one PASS/FAIL line each: checkpoints-complete, global-step, retention, optimizer-step, "
          "scheduler-step, log-errors, inbox-trained, adapter-loads; then what needs an operator. The report is "
          "also written to DIR/verification_report.txt. Exit codes: 0 every check passed; 1 a check failed, or "
          "DIR does not exist.")


def add(sub: argparse._SubParsersAction) -> None:
    for name in ("verify", "report"):
        parser = sub.add_parser(name, help="check a base dir against the verification guide"
                                + (" (alias of verify)" if name == "report" else ""),
                                description=__doc__, epilog=EPILOG)
        parser.add_argument("--base-dir", required=True, help="the run's directory")
        parser.add_argument("--json", action="store_true", help="print one JSON object: {result, checks: "
                            "[{name, ok, detail, notes}], needs_operator, checkpoints, report_file}")
        parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lit_continual import report  # torch, PEFT: only when a check runs

    base_dir = Path(args.base_dir)
    reason = report.missing(base_dir)
    if reason is not None:
        print(json.dumps({"base_dir": str(base_dir), "result": "FAIL", "reason": reason}) if args.json else reason)
        return EXIT_FAIL
    result = report.verify(base_dir)
    text = report.text(result)
    try:
        report.write(base_dir, text)
    except OSError as err:
        print(f"lit-continual verify: could not write {base_dir / report.REPORT_FILE}: {err}", file=sys.stderr)
    print(json.dumps(report.to_json(result), indent=2) if args.json else text)
    return EXIT_PASS if result.ok else EXIT_FAIL
