"""No ERROR line in today's daily log other than documented input rejections.

An input rejection is the daemon doing its job on bad input: it is listed, not failed. Each
pattern below is the exact message of the code that logs it (keep them in step):
"""

from __future__ import annotations

import re
from pathlib import Path

from lit_continual import layout
from lit_continual.logs import escape
from lit_continual.verification import Check, verdict
from lit_continual.verification.survey import Survey

REJECTIONS = (
    # claims.Claims.quarantine: a file moved to failed/ (bad lines, no example, duplicate, crash loop, ...)
    re.compile(r"Moved inbox/.+ to failed/.+: .+"),
    # callbacks/files.FileLifecycle.on_checkpoint_saved: a file that could not be read as claimed
    re.compile(r"File .+ abandoned at step \d+ with \d+ example\(s\) untrained: it could not be read as it was "
               r"claimed"),
    # ledger.Ledger.begin: a file left unfinished when the next one began
    re.compile(r".+ was left unfinished with \d+ example\(s\) untrained: recorded as abandoned"),
    # data/feed.py (_resume_current): the unfinished file is gone or changed at a restart
    re.compile(r"inbox/.+ (is missing|changed \(sha256 differs\)|is unreadable \(.*\)): abandoning it with \d+ "
               r"example\(s\) untrained"),
    # data/stream.py logging data/file_index.FileChanged: a claimed file rewritten while it trained
    re.compile(r".+: the example at byte \d+ is not what was indexed \(the claimed file was rewritten or "
               r"truncated in place\)"),
    # disposal.Disposal.left_in_inbox: an inbox that will not let go of a file (a warning in verify)
    re.compile(r"inbox/.+ was .+: it is ignored while it stays there"),
)


def log_errors(survey: Survey) -> Check:
    """FAIL on any other ERROR (or CRITICAL) line of today's log; the rejections become notes."""
    name = "log-errors"
    path = layout.daily_log(survey.base_dir)
    if not path.is_file():
        path = layout.newest_log(survey.base_dir)
        if path is None:
            return Check(name, True, "no daily log in logs/ (the daemon has not run here)")
    shown = f"logs/{path.name}" + ("" if path == layout.daily_log(survey.base_dir) else " (no log today: the newest)")
    errors, rejections = _error_lines(path)
    notes = [f"documented input rejection: {line}" for line in rejections]
    passed = f"no ERROR line in {shown}" + (f" other than {len(rejections)} documented input rejection(s), "
                                            "listed below" if rejections else "")
    problems = [f"{shown}: {line}" for line in errors]
    return verdict(name, problems, passed, notes)


def _error_lines(path: Path) -> tuple[list[str], list[str]]:
    """(unexplained ERROR lines, documented rejections) of one log file, escaped for display."""
    errors, rejections = [], []
    with open(path, "rb") as handle:
        for raw in handle:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            match = layout.LOG_LINE.match(line)
            if match is None or match.group(2) not in ("ERROR", "CRITICAL"):
                continue  # INFO/WARNING, or a traceback line under the ERROR that starts it
            documented = any(pattern.fullmatch(match.group(3)) for pattern in REJECTIONS)
            (rejections if documented else errors).append(escape(line))
    return errors, rejections
