"""Where things are in a base dir, read without torch (`status` and `history` answer in well
under a second): checkpoint directories and their JSON files, the inbox, the daily logs.

Writers own the formats (checkpoints.py, ledger.py, logs.py, claims.py); these readers never
raise on a damaged or missing file: they return None and let the caller say so.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

from lit_continual.claims import CLAIMED
from lit_continual.inbox import IGNORED_SUFFIXES, SUFFIX

MODELS = "current_model"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")  # checkpoints.NAME is this one
MANIFEST, LEDGER, TRAINER_STATE, RUN_CONFIG = "manifest.json", "ledger.json", "trainer_state.json", "run_config.json"
ADAPTER_CONFIG = "adapter_config.json"
STATUS_FILE = Path("status") / "training_status.json"
# `<date> <time> <LEVEL> <message>`, as logs.FORMAT writes it; other lines continue a traceback.
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ([A-Z]+) (.*)$")


def step_of(path: Path) -> int | None:
    match = CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(base_dir: Path) -> list[Path]:
    """Every `current_model/checkpoint-<N>/` (complete or not), oldest first by step."""
    models = base_dir / MODELS
    if not models.is_dir():
        return []
    return sorted((p for p in models.iterdir() if step_of(p) is not None and p.is_dir()), key=step_of)


def complete_checkpoints(base_dir: Path) -> list[Path]:
    """The checkpoints with a manifest (written last), oldest first: as checkpoints.complete_checkpoints."""
    return [p for p in checkpoint_dirs(base_dir) if (p / MANIFEST).is_file()]


def read_json(path: Path) -> dict | None:
    """A JSON object from `path`, or None if it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def newest_with(base_dir: Path, name: str) -> tuple[Path, dict] | tuple[None, None]:
    """The newest complete checkpoint whose `name` (e.g. LEDGER) reads, and that file's content."""
    for path in reversed(complete_checkpoints(base_dir)):
        data = read_json(path / name)
        if data is not None:
            return path, data
    return None, None


def waiting(base_dir: Path) -> list[str]:
    """`inbox/*.jsonl` files waiting to be claimed, by name (in-transit `.part`/`.tmp` excluded)."""
    inbox = base_dir / "inbox"
    if not inbox.is_dir():
        return []
    return sorted(p.name for p in inbox.iterdir() if p.name.endswith(SUFFIX) and not p.name.startswith("."))


def claimed(base_dir: Path) -> list[str]:
    """Entries of `inbox/.claimed/` (relative to the inbox): claimed, in progress or next."""
    folder = base_dir / "inbox" / CLAIMED
    if not folder.is_dir():
        return []
    return sorted(f"{CLAIMED}/{n}" for n in (p.name for p in folder.iterdir()) if "-" in n and not n.startswith("."))


def strangers(base_dir: Path) -> list[str]:
    """Files in the inbox the daemon never trains (not `*.jsonl`, not in transit, not hidden)."""
    inbox = base_dir / "inbox"
    if not inbox.is_dir():
        return []
    return sorted(p.name for p in inbox.iterdir() if not p.name.startswith(".")
                  and not p.name.endswith((SUFFIX, *IGNORED_SUFFIXES)))


def daily_log(base_dir: Path, day: str | None = None) -> Path:
    """`logs/daemon_<day>.log` (local date, today by default), as logs.DailyFileHandler names it."""
    return base_dir / "logs" / f"daemon_{day or datetime.now().strftime('%Y%m%d')}.log"


def newest_log(base_dir: Path) -> Path | None:
    found = sorted((base_dir / "logs").glob("daemon_*.log")) if (base_dir / "logs").is_dir() else []
    return found[-1] if found else None


def seconds_since(stamp: str | None, now: datetime | None = None) -> float | None:
    """Seconds from an ISO time in the status file (UTC) to now, or None."""
    if not stamp:
        return None
    try:
        then = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    return ((now or datetime.now(timezone.utc)) - then).total_seconds()


def local_time(stamp: str | None) -> str:
    """An ISO time shown in local time to the second ("-" if missing, as written if unparsable)."""
    if not stamp:
        return "-"
    try:
        then = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return str(stamp)
    return (then if then.tzinfo else then.replace(tzinfo=timezone.utc)).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float | None) -> str:
    """`42 s ago`, `3 min ago`, `2.5 h ago`, `4.0 days ago`; "never" for None."""
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} days ago"


def sha256_file(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
