"""The base generations (rebase.py): the newest checkpoint's generation is on disk, every one a
checkpoint, snapshot or consolidated model refers to is there, and what they cost on disk."""

from __future__ import annotations

from lit_continual import generations
from lit_continual.verification import Check, size_text, verdict
from lit_continual.verification.survey import Survey


def base_generations(survey: Survey) -> Check:
    name = "base-generations"
    on_disk = {generations.number(p): p for p in generations.listing(survey.base_dir)}
    newest = survey.newest
    current = generations.of_checkpoint(newest) if newest is not None else 0
    if current == 0 and not on_disk:
        return Check(name, True, "generation 0 only (model.*): no rebase yet, or consolidate.rebase_every_files=null")
    problems = []
    needed = generations.referenced(survey.base_dir) | ({current} if current else set())
    for number in sorted(needed - set(on_disk)):
        who = "the newest checkpoint trains on it" if number == current else "a kept directory refers to it"
        problems.append(f"gen-{number} is missing from {generations.ROOT}/ but {who}")
    sizes = generations.disk_usage(survey.base_dir)
    listed = ", ".join(f"{n} {size_text(b)}" for n, b in sizes.items()) or "none"
    return verdict(name, problems, f"{newest.name if newest else 'no checkpoint'} trains on generation {current}; "
                                   f"in {generations.ROOT}/: {listed}")

