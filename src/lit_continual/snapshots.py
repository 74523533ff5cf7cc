"""Snapshots: `DIR/snapshots/<YYYYMMDD-HHMM>-step<N>/`, the newest checkpoint kept for good.

A snapshot is the whole checkpoint directory (hard links: checkpoint files are never written
again once their directory is renamed into place, so a link costs no space and no time) plus
a copy of the base model's tokenizer files and `snapshot.json` (where it came from). So it is
at once a PEFT adapter directory that `AutoPeftModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` load offline, and a complete checkpoint (manifest included)
that a new base dir can resume from. Where the filesystem refuses links, files are copied.
Built in `snapshots/.tmp-*`, fsynced, then renamed: a snapshot appears whole or not at all.

Retention never deletes what a snapshot in progress reads: the daemon takes snapshots in its
training thread, the thread that also prunes checkpoints, so the two never overlap; the
command takes one only while holding the base dir's lock (no daemon). Beyond that, a linked
file outlives the checkpoint's deletion, and a checkpoint that vanishes under a copy
(FileNotFoundError) makes `take` start again from the then-newest checkpoint.

No torch here: `lit-continual snapshot` answers in well under a second.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import logging
import os
import re
import shutil
import time
from datetime import datetime, timedelta
from pathlib import Path

from lit_continual import atomic, generations, layout

log = logging.getLogger("lit_continual")

SNAPSHOTS, INFO, SCHEDULE_STATE = "snapshots", "snapshot.json", ".schedule.json"
NAME = re.compile(r"^(\d{8}-\d{4})-step(\d+)$")
# What a tokenizer's save_pretrained writes (slow and fast kinds); never a checkpoint file name.
TOKENIZER_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "chat_template*",
                      "additional_chat_templates", "vocab*", "merges.txt", "spiece.model", "sentencepiece*.model")
# Refusals that mean "this filesystem cannot hard-link here": copy instead.
NO_LINK = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES)


def newest_checkpoint(base_dir: Path) -> Path | None:
    """The newest complete checkpoint (name checkpoint-N, manifest present), read without torch."""
    found = layout.complete_checkpoints(Path(base_dir))
    return found[-1] if found else None


def base_model_dir(base_dir: Path, adapter_dir: Path) -> Path:
    """The base model directory an adapter was trained on (adapter_config.json), or, when that
    path no longer exists (a moved base dir), DIR/base_models/gen-<k> for a rebased run's
    generation k and DIR/base_model for model=tiny."""
    recorded = Path(json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"])
    number = generations.of_path(str(recorded))
    for candidate in (recorded, generations.directory(base_dir, number) if number else base_dir / "base_model"):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"the base model {recorded} named in {adapter_dir.name}/adapter_config.json is missing")


def copy_tokenizer(model_dir: Path, out: Path) -> list[str]:
    """Copy the tokenizer files of `model_dir` into `out` (copies: the base is the user's to change)."""
    names = sorted(p.name for p in model_dir.iterdir()
                   if any(fnmatch.fnmatch(p.name, pattern) for pattern in TOKENIZER_PATTERNS))
    if not names:
        raise FileNotFoundError(f"no tokenizer files in {model_dir}")
    for name in names:
        source = model_dir / name
        if source.is_dir():
            shutil.copytree(source, out / name)
        else:
            shutil.copy2(source, out / name)
    return names


def take(base_dir: Path, now: datetime | None = None, scheduled: bool = False) -> Path | None:
    """Snapshot the newest complete checkpoint; None when there is none yet.

    `now` (local time; default: the clock) names it. The same step in the same minute returns
    the existing snapshot. `scheduled` is recorded in snapshot.json (consolidation follows
    scheduled snapshots)."""
    base_dir, now = Path(base_dir), local(now)
    root = base_dir / SNAPSHOTS
    root.mkdir(parents=True, exist_ok=True)
    remove_leftovers(root)
    for attempt in range(3):
        source = newest_checkpoint(base_dir)
        if source is None:
            return None
        final = root / f"{now:%Y%m%d-%H%M}-step{source.name.split('-')[1]}"
        if final.is_dir():
            return final
        try:
            return _build(base_dir, source, final, now, scheduled)
        except FileNotFoundError:  # pruned under a copy: start again from the then-newest
            if attempt == 2 or source.exists():
                raise
    raise AssertionError("unreachable")


def _build(base_dir: Path, source: Path, final: Path, now: datetime, scheduled: bool) -> Path:
    started = time.monotonic()
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    try:
        tmp.mkdir()
        linked = _link_or_copy(source, tmp)
        model_dir = base_model_dir(base_dir, source)
        info = {"step": int(source.name.split("-")[1]), "source": str(source.relative_to(base_dir)),
                "taken_at": now.astimezone().isoformat(timespec="seconds"), "scheduled": scheduled,
                "files": "hard links" if linked else "copies", "base_model": str(model_dir),
                "tokenizer_files": copy_tokenizer(model_dir, tmp)}
        atomic.write_json(tmp / INFO, info, durable=False)
        atomic.fsync_tree(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic.fsync_dir(final.parent)
    log.debug("Snapshot %s taken from %s in %.3f s (%s)", final.name, source.name,
             time.monotonic() - started, info["files"])
    return final


def _link_or_copy(source: Path, out: Path) -> bool:
    """Hard-link every file of `source` into `out`, copying where links are refused.
    True when every file is a link."""
    linked = True
    for path in sorted(source.iterdir()):
        if linked:
            try:
                os.link(path, out / path.name)
                continue
            except OSError as err:
                if err.errno not in NO_LINK:
                    raise
                linked = False
        shutil.copy2(path, out / path.name)
    return linked


def listing(base_dir: Path) -> list[Path]:
    """The snapshots, oldest first (by time in the name, then step)."""
    root = Path(base_dir) / SNAPSHOTS
    found = [p for p in root.iterdir() if NAME.match(p.name) and p.is_dir()] if root.is_dir() else []
    return sorted(found, key=lambda p: (NAME.match(p.name).group(1), int(NAME.match(p.name).group(2))))


def taken_at(snapshot: Path) -> datetime:
    """The local time in a snapshot's name."""
    return datetime.strptime(NAME.match(snapshot.name).group(1), "%Y%m%d-%H%M")


def prune(base_dir: Path, keep_days: float, now: datetime | None = None) -> list[Path]:
    """Delete snapshots older than `keep_days` (by the time in their name); the newest stays."""
    cutoff = local(now) - timedelta(days=keep_days)
    removed = []
    for path in listing(base_dir)[:-1]:
        if taken_at(path) < cutoff:
            trash = path.with_name(f".trash-{path.name}")
            os.rename(path, trash)  # gone from the listing at once, even if the delete is cut short
            shutil.rmtree(trash)
            removed.append(path)
            log.info("Removed snapshot %s (older than %g days)", path.name, keep_days)
    return removed


def remove_leftovers(root: Path) -> None:
    """Delete `.tmp-*`/`.trash-*` directories a killed process left in `root` (lock holder only)."""
    if root.is_dir():
        for child in root.iterdir():
            if child.name.startswith((".tmp-", ".trash-")) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)


def take_and_prune(base_dir: Path, keep_days: float, now: datetime | None = None,
                   scheduled: bool = False) -> dict:
    """Take a snapshot, then prune: the result both the daemon's answer and the command print
    (ok, path, step, seconds, files, pruned; or ok=False and error). The caller logs it;
    only deletions are logged here."""
    started = time.monotonic()
    try:
        path = take(base_dir, now, scheduled)
        if path is None:
            return {"ok": False, "error": f"no checkpoint yet in {Path(base_dir) / 'current_model'}"}
        pruned = prune(base_dir, keep_days, now)
        generations.collect(base_dir)  # base generations only the pruned snapshots needed
        info = json.loads((path / INFO).read_text())
    except OSError as err:
        return {"ok": False, "error": f"snapshot failed: {err}"}
    return {"ok": True, "path": str(path), "step": info["step"], "files": info["files"],
            "seconds": round(time.monotonic() - started, 3), "pruned": [p.name for p in pruned]}


def local(now: datetime | None) -> datetime:
    """`now` as a naive local time (aware times are converted; None = the clock)."""
    if now is None:
        return datetime.now()
    return now.astimezone().replace(tzinfo=None) if now.tzinfo else now


class Schedule:
    """A cron schedule (local time) whose last handled time survives restarts in `state`.

    `due(now)` is true when a fire time lies in (last handled, now]: however many fire times a
    stopped daemon missed, the next start sees one due, once. Call `mark(now)` (the same `now`)
    after the attempt, success or not. A run with no state yet starts at `now`: nothing missed.
    `expr` None: never due."""

    def __init__(self, expr: str | None, state: Path) -> None:
        from croniter import croniter

        if expr is not None and not croniter.is_valid(expr):
            raise ValueError(f"not a cron expression: {expr!r}")
        self.expr, self.state = expr, Path(state)

    def due(self, now: datetime | None = None) -> bool:
        if self.expr is None:
            return False
        now = local(now)
        last = self.last_handled()
        if last is None:
            self.mark(now)
            return False
        return self.next_after(last) <= now

    def mark(self, now: datetime | None = None) -> None:
        """Record every fire time up to `now` as handled."""
        now = local(now)
        self.state.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_json(self.state, {"schedule": self.expr, "last_handled": now.isoformat(timespec="seconds"),
                                       "last_handled_epoch": now.timestamp()})

    def last_handled(self) -> datetime | None:
        try:
            return datetime.fromtimestamp(json.loads(self.state.read_text())["last_handled_epoch"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def next_after(self, when: datetime) -> datetime:
        """The first fire time strictly after `when` (local)."""
        from croniter import croniter

        return croniter(self.expr, local(when)).get_next(datetime)


def schedule(base_dir: Path, expr: str | None) -> Schedule:
    """The snapshot schedule of a base dir (`snapshot.schedule`), state in snapshots/.schedule.json."""
    return Schedule(expr, Path(base_dir) / SNAPSHOTS / SCHEDULE_STATE)
