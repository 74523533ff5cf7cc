"""Short English-like sentences from a small grammar: demo batches and test data, no download."""

from __future__ import annotations

import itertools
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
    return _text(rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(ENDINGS))


def _text(subject: str, verb: str, obj: str, ending: str) -> str:
    text = f"{subject} {verb} {obj} {ending}."
    return text[0].upper() + text[1:]


def sentences(lines: int, seed: int) -> list[str]:
    """The `lines` sentences of the file `write_file(path, lines, seed)` writes, in order."""
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(lines)]


def held_out(lines: int, seed: int, trained: set[str]) -> list[str]:
    """`lines` distinct sentences that are not in `trained`, drawn by a generator of their own
    (seeded from the string `eval-<seed>`, so never the stream of a training file): an eval set
    of held-out examples, not copies of training lines. ValueError if the grammar has too few left."""
    pool = [_text(*words) for words in itertools.product(SUBJECTS, VERBS, OBJECTS, ENDINGS)]
    pool = [text for text in pool if text not in trained]
    if lines > len(pool):
        raise ValueError(f"only {len(pool)} sentences of the grammar are not in the training files; asked for {lines}")
    return random.Random(f"eval-{seed}").sample(pool, lines)


def write_file(path: Path, lines: int, seed: int) -> Path:
    """Write `lines` JSONL examples `{"text": ...}` atomically (as `name.part`, then renamed)."""
    return write_texts(path, sentences(lines, seed))


def write_texts(path: Path, texts: list[str]) -> Path:
    """Write one `{"text": ...}` line per text atomically (as `name.part`, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    with open(part, "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")
    part.rename(path)
    return path
