"""Short English-like sentences from a small grammar: demo batches and test data, no download."""

from __future__ import annotations

import json
import random
from pathlib import Path

SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the teacher", "a small bird",
            "the farmer", "our neighbour", "the young girl", "a tired horse"]
VERBS = ["sees", "likes", "finds", "carries", "watches", "paints", "follows", "cleans", "builds", "reads"]
OBJECTS = ["the red ball", "a green apple", "the long road", "a quiet house", "the river",
           "a wooden box", "the morning paper", "a bright star", "the garden gate", "a warm coat"]
ENDINGS = ["in the morning", "after dinner", "near the river", "every day", "with great care",
           "before the rain", "at the market", "on sunday", "by the window", "without a word"]


def sentence(rng: random.Random) -> str:
    """One sentence such as 'The cat finds a wooden box near the river.'"""
    text = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ENDINGS)}."
    return text[0].upper() + text[1:]


def write_file(path: Path, lines: int, seed: int) -> Path:
    """Write `lines` JSONL examples `{"text": ...}` atomically (as `name.part`, then renamed)."""
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with open(part, "w", encoding="utf-8") as handle:
        for _ in range(lines):
            handle.write(json.dumps({"text": sentence(rng)}) + "\n")
    part.rename(path)
    return path
