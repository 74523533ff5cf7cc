"""Record -> tokens. One place decides what a JSONL line means and which tokens carry loss.

Plain text today; chat and prompt/completion formats slot in as more `Format`s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

IGNORE = -100
# Text beyond max_length * this many characters cannot survive truncation (no tokenizer we
# know makes tokens that long), so it is cut before tokenizing: a 64 MiB line costs no more.
CHARS_PER_TOKEN_BOUND = 64


class BadLine(ValueError):
    """A line that is not a usable example; the message says why."""


def parse_line(raw: bytes, text_field: str) -> dict:
    """Decode and validate one JSONL line; raise BadLine with the reason."""
    try:
        record = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BadLine(f"not JSON: {err}") from None
    if not isinstance(record, dict):
        raise BadLine(f"not a JSON object ({type(record).__name__})")
    text = record.get(text_field)
    if not isinstance(text, str) or not text.strip():
        raise BadLine(f'no non-empty "{text_field}" string')
    return record


@dataclass
class TextFormat:
    """`{"text": ...}`: loss on every token; BOS prepended (no loss), EOS appended (with loss)."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int
    text_field: str = "text"

    def encode(self, records: list[dict]) -> list[tuple[list[int], list[int]]]:
        """(input_ids, labels) per record, truncated to max_length."""
        if not records:
            return []
        tok = self.tokenizer
        limit = self.max_length * CHARS_PER_TOKEN_BOUND
        texts = [r[self.text_field][:limit] for r in records]
        encoded = tok(texts, add_special_tokens=False)["input_ids"]
        prefix = [tok.bos_token_id] if tok.bos_token_id is not None else []
        out = []
        for ids in encoded:
            ids = (prefix + ids)[: self.max_length - 1] + [tok.eos_token_id]
            labels = [IGNORE] * len(prefix) + ids[len(prefix):]
            out.append((ids, labels))
        return out


def collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example. An empty list gives one all-ignored row (zero weight)."""
    if not examples:
        examples = [([pad_id], [IGNORE])]
        real = 0
    else:
        real = len(examples)
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (ids, lab) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(lab)] = torch.tensor(lab)
        attention[row, : len(ids)] = 1 if real else 0
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention}
