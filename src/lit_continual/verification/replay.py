"""The replay reservoir (data/replay.py) of the newest checkpoint: its segments exist, it holds
no more than its capacity, and what it costs on disk (DIR/replay/, bounded by
data.replay_buffer_size examples plus what older retained checkpoints still refer to)."""

from __future__ import annotations

import json

from lit_continual.logs import escape
from lit_continual.verification import Check, size_text, verdict
from lit_continual.verification.survey import Survey

STATE_FILE, REPLAY_DIR = "replay.json", "replay"  # data/replay.py's names (torch-free here)


def reservoir(survey: Survey) -> Check:
    name = "replay"
    newest = survey.newest
    if newest is None or not (newest / STATE_FILE).is_file():
        return Check(name, True, "off (data.replay_fraction=0 when the newest checkpoint was written)")
    state = survey.read(newest, STATE_FILE)
    directory = survey.base_dir / REPLAY_DIR
    problems = []
    slots, capacity = len(state.get("slot_segment", [])), int(state.get("capacity", 0))
    if slots > capacity:
        problems.append(f"{newest.name}: the reservoir holds {slots} examples, more than its capacity {capacity}")
    needed: dict[int, int] = {}  # segment index -> lines the reservoir needs of it
    for segment, line in zip(state.get("slot_segment", []), state.get("slot_line", []), strict=False):
        needed[segment] = max(needed.get(segment, 0), line + 1)
    for number, segment in enumerate(state.get("segments", [])):
        path = directory / segment
        if not path.is_file():
            problems.append(f"{newest.name} refers to {REPLAY_DIR}/{escape(segment)}, which is missing (its "
                            "examples replay with zero weight)")
        elif (lines := len(path.read_bytes().splitlines())) < needed.get(number, 0):
            problems.append(f"{REPLAY_DIR}/{escape(segment)} has {lines} line(s); {newest.name} refers to line "
                            f"{needed[number]} (truncated: the missing examples replay with zero weight)")
    referenced = set()
    for path in survey.intact:
        try:
            referenced |= set(json.loads((path / STATE_FILE).read_text()).get("segments", []))
        except (OSError, ValueError):
            continue
    files = sorted(directory.glob("*.jsonl")) if directory.is_dir() else []
    unreferenced = [p.name for p in files if p.name not in referenced]
    size = sum(p.stat().st_size for p in files)
    notes = [f"{REPLAY_DIR}/{escape(n)} is referred to by no checkpoint (removed after the next checkpoint)"
             for n in unreferenced]
    return verdict(name, problems, f"{slots} of {capacity} examples from {len(state.get('segments', []))} file(s), "
                                   f"{state.get('seen', 0)} offered; {len(files)} segment(s) in {REPLAY_DIR}/, "
                                   f"{size_text(size)}", notes)

