"""No trained file still waits in the inbox (by name and sha256, against the newest ledger).

What the inbox will not let go of (the hardening cases: a file copied to failed/ but not
removable, a file trained in place whose delete was refused) and a claimed file whose delete a
kill interrupted (the next start deletes it) are warnings: the daemon knows them and never
trains them again.
"""

from __future__ import annotations

import os
from pathlib import Path

from lit_continual import layout
from lit_continual.layout import sha256_file
from lit_continual.logs import escape
from lit_continual.verification import Check, verdict
from lit_continual.verification.survey import Survey


def inbox_trained(survey: Survey) -> Check:
    name = "inbox-trained"
    inbox = survey.base_dir / "inbox"
    if survey.newest is None:
        return Check(name, True, "no intact checkpoint: no file is recorded as trained")
    ledger = survey.read(survey.newest, layout.LEDGER)
    records = [r for r in ledger.get("files_done") or [] if r.get("status") != "abandoned"]
    problems, warnings = [], []
    for file in layout.waiting(survey.base_dir):
        problem, warning = _judge(inbox / file, file, records, ledger.get("files_rejected") or [])
        problems += [problem] if problem else []
        warnings += [warning] if warning else []
    finished = {r.get("claimed_as"): r for r in ledger.get("files_done") or [] if r.get("claimed_as")}
    for claimed_as in layout.claimed(survey.base_dir):
        if (record := finished.get(claimed_as)) is not None:
            warnings.append(f"warning: inbox/{escape(claimed_as)} was finished ({record.get('status')}, steps "
                            f"{record.get('first_step')}-{record.get('last_step')}) by a process that stopped "
                            f"before disposing of it: the next start does ({record.get('disposal') or 'delete'})")
    waiting = len(layout.waiting(survey.base_dir))
    passed = ((f"none of the {waiting} file(s) waiting in inbox/ is in the ledger of {survey.newest.name}"
               if waiting else "no file waiting in inbox/")
              + (f" ({len(warnings)} warning(s) below)" if warnings else ""))
    return verdict(name, problems, passed, warnings)


def _judge(path: Path, name: str, records: list[dict], rejected: list[dict]) -> tuple[str | None, str | None]:
    """(problem, warning) for one waiting file; content is hashed only if its name was trained."""
    same_name = [r for r in records if r.get("name") == name]
    kept = [r for r in rejected if r.get("name") == name and "kept_inode" in r]
    if not same_name and not kept:
        return None, None
    try:
        inode, digest = os.lstat(path).st_ino, sha256_file(path)
    except OSError:
        return None, None  # gone or unreadable meanwhile: not a file the ledger can match
    shown = escape(name)
    for entry in kept:
        if entry["kept_inode"] == inode and entry.get("sha256") in (None, digest):
            return None, (f"warning: inbox/{shown} was copied to failed/ but cannot be removed "
                          f"({escape(str(entry.get('reason')))}): remove it by hand")
    for record in reversed(same_name):
        if record.get("sha256") != digest:
            continue
        where = f"steps {record.get('first_step')}-{record.get('last_step')}, {record.get('status')}"
        if record.get("claimed_as") is None and record.get("inode") == inode:
            return None, (f"warning: inbox/{shown} was trained in place ({where}) and its delete was refused: "
                          "remove it by hand")
        return (f"inbox/{shown} is already in the ledger ({where}, sha256 {digest[:12]}): the daemon would "
                "train it again as a new file", None)
    return None, None

