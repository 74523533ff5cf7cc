"""Record -> tokens. One place decides what a JSONL line means and which tokens carry loss.

Formats, detected per line with `data.format=auto` (messages first, then prompt/completion,
then text — by which keys the line has):
- text:              `{"text": ...}`               loss on every token + EOS;
- prompt_completion: `{"prompt": ..., "completion": ...}` loss on the completion + EOS only;
- messages:          `{"messages": [{"role", "content"}, ...]}` rendered with the tokenizer's
                     chat template; loss on the assistant turns only.
BOS (when the tokenizer has one) starts every example and carries no loss.
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

Example = tuple[list[int], list[int]]  # input_ids, labels (IGNORE where no loss)


class BadLine(ValueError):
    """A line that is not a usable example; the message says why."""


@dataclass(frozen=True)
class RecordSpec:
    """Which format to read and the JSON field names of each (data.format, data.*_field)."""

    format: str = "auto"
    text_field: str = "text"
    prompt_field: str = "prompt"
    completion_field: str = "completion"
    messages_field: str = "messages"

    def kind(self, record: dict) -> str:
        """The format of `record`, validated; raise BadLine if it matches none."""
        if self.format != "auto":
            _CHECKS[self.format](self, record)
            return self.format
        for kind in ("messages", "prompt_completion", "text"):
            if any(key in record for key in self._keys(kind)):
                _CHECKS[kind](self, record)
                return kind
        raise BadLine(f'matches no format: no "{self.messages_field}", "{self.prompt_field}"/'
                      f'"{self.completion_field}" or "{self.text_field}" field')

    def strings(self, record: dict, kind: str) -> list[str]:
        """The strings of a validated record that will be tokenized."""
        if kind == "messages":
            return [s for m in record[self.messages_field] for s in (m["role"], m["content"])]
        return [record[key] for key in self._keys(kind) if isinstance(record.get(key), str)]

    def _keys(self, kind: str) -> tuple[str, ...]:
        return {"messages": (self.messages_field,), "text": (self.text_field,),
                "prompt_completion": (self.prompt_field, self.completion_field)}[kind]


def _check_text(spec: RecordSpec, record: dict) -> None:
    text = record.get(spec.text_field)
    if not isinstance(text, str) or not text.strip():
        raise BadLine(f'no non-empty "{spec.text_field}" string')


def _check_prompt_completion(spec: RecordSpec, record: dict) -> None:
    prompt, completion = record.get(spec.prompt_field), record.get(spec.completion_field)
    if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
        raise BadLine(f'"{spec.prompt_field}" must be a string and "{spec.completion_field}" a non-empty string')


def _check_messages(spec: RecordSpec, record: dict) -> None:
    messages = record.get(spec.messages_field)
    if not isinstance(messages, list) or not messages:
        raise BadLine(f'"{spec.messages_field}" must be a non-empty list')
    for i, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise BadLine(f'"{spec.messages_field}"[{i}] must be {{"role": str, "content": str}}')
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise BadLine(f'"{spec.messages_field}" has no non-empty assistant turn')


_CHECKS = {"text": _check_text, "prompt_completion": _check_prompt_completion, "messages": _check_messages}


def parse_line(raw: bytes, spec: RecordSpec) -> dict:
    """Decode and validate one JSONL line; raise BadLine with the reason."""
    return parse_line_kind(raw, spec)[0]


def parse_line_kind(raw: bytes, spec: RecordSpec) -> tuple[dict, str]:
    """Decode and validate one JSONL line: (record, its format); raise BadLine with the reason.

    Whatever goes wrong with one line makes it a bad line, never an exception that escapes:
    invalid UTF-8 or JSON, nesting deep enough to exhaust the parser's recursion, integers
    beyond Python's digit limit, and strings holding lone surrogates (valid JSON escapes that
    no tokenizer can encode).
    """
    try:
        record = json.loads(raw)
    except RecursionError:
        raise BadLine("not JSON: nested too deeply to parse") from None
    except Exception as err:  # JSONDecodeError, UnicodeDecodeError, the int digit limit, MemoryError, ...
        raise BadLine(f"not JSON: {type(err).__name__}: {err}") from None
    if not isinstance(record, dict):
        raise BadLine(f"not a JSON object ({type(record).__name__})")
    kind = spec.kind(record)
    for text in spec.strings(record, kind):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise BadLine(f"not valid Unicode: a lone surrogate {text[err.start]!a} at character {err.start}") from None
    return record, kind


@dataclass
class Encoder:
    """Turns records into (input_ids, labels) of at most max_length tokens."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int
    spec: RecordSpec = RecordSpec()

    def encode(self, records: list[dict]) -> list[Example]:
        return [self.encode_one(r) for r in records]

    def check(self, record: dict) -> None:
        """Cheap index-time check of what tokenizing would need: a chat template renders the
        conversation (templates may `raise_exception`). Raises whatever the template raises."""
        if self.spec.kind(record) == "messages":
            self.tokenizer.apply_chat_template(record[self.spec.messages_field], tokenize=False)

    def encode_one(self, record: dict) -> Example:
        kind = self.spec.kind(record)
        if kind == "text":
            return self._text(record[self.spec.text_field])
        if kind == "prompt_completion":
            return self._prompt_completion(record[self.spec.prompt_field], record[self.spec.completion_field])
        return self._messages(record[self.spec.messages_field])

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text[: self.max_length * CHARS_PER_TOKEN_BOUND], add_special_tokens=False)["input_ids"]

    def _bos(self) -> list[int]:
        bos = self.tokenizer.bos_token_id
        return [bos] if bos is not None else []

    def _text(self, text: str) -> Example:
        bos = self._bos()
        ids = (bos + self._ids(text))[: self.max_length - 1] + [self.tokenizer.eos_token_id]
        return ids, [IGNORE] * len(bos) + ids[len(bos):]

    def _prompt_completion(self, prompt: str, completion: str) -> Example:
        bos = self._bos()
        answer = self._ids(completion)[: self.max_length - len(bos) - 1] + [self.tokenizer.eos_token_id]
        # A long prompt is cut from the left: the completion is what the example teaches.
        room = self.max_length - len(bos) - len(answer)
        question = self._ids(prompt[-room * CHARS_PER_TOKEN_BOUND:])[-room:] if room > 0 else []
        return bos + question + answer, [IGNORE] * (len(bos) + len(question)) + answer

    def _messages(self, messages: list[dict]) -> Example:
        """Supervise the assistant turns only.

        Turn by turn when every rendering extends the one before: each token's role is then
        exact. Some templates move text between turns (e.g. the system prompt into the last user
        turn), and whether they do can depend on the conversation, so this is checked per
        example; where it fails, the whole rendering is tokenized once and the assistant turns
        are found by character offsets.
        """
        renderings = self._renderings(messages)
        texts = [""] + [text for text, _ in renderings]
        rendered = texts[-1]
        if all(later.startswith(earlier) for earlier, later in zip(texts[:-1], texts[1:], strict=True)):
            ids, labels = self._by_turns(renderings)
        else:
            ids, labels = self._by_offsets(messages, rendered)
        bos = self._bos() if not rendered.startswith(self.tokenizer.bos_token or "\0") else []
        ids, labels = bos + ids, [IGNORE] * len(bos) + labels
        return ids[: self.max_length], labels[: self.max_length]

    def _renderings(self, messages: list[dict]) -> list[tuple[str, bool]]:
        """Each prefix of the conversation rendered, and whether the text it adds carries loss:
        before an assistant turn its generation header (no loss), then the turn itself (loss)."""
        template = self.tokenizer.apply_chat_template
        renderings = []
        for i, message in enumerate(messages):
            supervised = message["role"] == "assistant"
            if supervised:
                renderings.append((template(messages[:i], tokenize=False, add_generation_prompt=True), False))
            renderings.append((template(messages[: i + 1], tokenize=False), supervised))
        return renderings

    def _by_turns(self, renderings: list[tuple[str, bool]]) -> Example:
        """Tokenize what each rendering adds to the one before (right only if each extends it)."""
        ids, labels, rendered = [], [], ""
        for text, supervised in renderings:
            piece = self._ids(text[len(rendered):])
            ids += piece
            labels += piece if supervised else [IGNORE] * len(piece)
            rendered = text
        return ids, labels

    def _by_offsets(self, messages: list[dict], rendered: str) -> Example:
        """Tokenize the whole rendering once; supervise the tokens that start inside an assistant
        content and the special token (its end of turn) that starts where that content ends."""
        if not self.tokenizer.is_fast:
            raise BadLine("the chat template is not prefix-stable for this conversation, and a slow "
                          "tokenizer gives no character offsets to find the assistant turns by")
        spans = _assistant_spans(messages, rendered)
        encoded = self.tokenizer(rendered[: self.max_length * CHARS_PER_TOKEN_BOUND],
                                 add_special_tokens=False, return_offsets_mapping=True)
        ids, starts = encoded["input_ids"], [start for start, _ in encoded["offset_mapping"]]
        return ids, _span_labels(ids, starts, spans, set(self.tokenizer.all_special_ids))


def _assistant_spans(messages: list[dict], rendered: str) -> list[tuple[int, int]]:
    """Character spans of the non-empty assistant contents in `rendered`, each searched for
    after the previous one; BadLine if one is not there verbatim (the template rewrote it)."""
    spans, cursor = [], 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or not message["content"]:
            continue
        before = messages[i - 1] if i else {"role": "assistant"}
        prompt = before["content"] if before["role"] != "assistant" else ""
        start = _find_answer(rendered, message["content"], prompt, cursor)
        if start < 0:
            raise BadLine(f"messages[{i}] (assistant) is not in the chat template's rendering verbatim, "
                          "so its tokens cannot be located")
        cursor = start + len(message["content"])
        spans.append((start, cursor))
    return spans


def _find_answer(rendered: str, answer: str, prompt: str, cursor: int) -> int:
    """Where `answer` starts at or after `cursor`, after its `prompt` when that is found there:
    an answer quoted in its own question ("Say OK." -> "OK") is not matched in the question."""
    prompt_at = rendered.find(prompt, cursor) if prompt else -1
    if prompt_at >= 0:
        start = rendered.find(answer, prompt_at + len(prompt))
        if start >= 0:
            return start
    return rendered.find(answer, cursor)


def _span_labels(ids: list[int], starts: list[int], spans: list[tuple[int, int]], specials: set[int]) -> list[int]:
    """Labels for tokens starting at `starts`: the token where it starts inside a span, or where
    it is the first special token starting at a span's end; IGNORE elsewhere. Spans are sorted."""
    labels, k = [], 0
    for token, start in zip(ids, starts, strict=True):
        # Past span k unless this token starts inside it or is a special token at its end.
        while k < len(spans) and (start > spans[k][1] or (start == spans[k][1] and token not in specials)):
            k += 1
        inside = k < len(spans) and spans[k][0] <= start < spans[k][1]
        closes = k < len(spans) and start == spans[k][1]
        labels.append(token if inside or closes else IGNORE)
        k += closes
    return labels


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
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


def collate_packed(rows: list[list[Example]], pad_id: int, width: int) -> dict[str, torch.Tensor]:
    """Each row holds several examples back to back; position ids restart at every example.

    No attention mask is passed: transformers then derives a block-diagonal causal mask from
    the restarting position ids (SDPA/eager), so no token attends across examples. The tail
    padding is its own block, with no loss.
    """
    rows = rows or [[]]
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    real_tokens = 0
    for row, examples in enumerate(rows):
        start = 0
        for ids, lab in examples:
            end = start + len(ids)
            input_ids[row, start:end] = torch.tensor(ids)
            labels[row, start:end] = torch.tensor(lab)
            # An example's first token is never predicted (unpacked, nothing precedes it), so
            # no loss crosses from one example into the next.
            labels[row, start] = IGNORE
            positions[row, start:end] = torch.arange(len(ids))
            start = end
        real_tokens += start
        positions[row, start:] = torch.arange(width - start)
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions,
            "real_tokens": torch.tensor(real_tokens)}
