"""Live samples: fixed prompts completed greedily by the model in training, so an operator can
read what it is learning (TensorBoard text, the status file, the log).

`eval.sample_prompts` is a list of prompt strings or the path of a JSONL file whose lines are
`{"prompt": ...}`, `{"messages": [...]}` (rendered with the chat template up to a generation
prompt; trailing assistant turns are dropped) or `{"text": ...}`; the file is re-read when it
changes. Generation is greedy (no sampling): call it inside `evaluation.isolated(...)`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import GenerationConfig

from lit_continual.data.records import CHARS_PER_TOKEN_BOUND, BadLine, Encoder
from lit_continual.logs import escape

log = logging.getLogger("lit_continual")


@dataclass(frozen=True)
class Prompt:
    text: str  # as shown (a conversation: its rendering)
    ids: list[int]  # what the model continues


@dataclass(frozen=True)
class Sample:
    prompt: str
    completion: str
    step: int

    def as_dict(self) -> dict:
        return {"prompt": self.prompt, "completion": self.completion, "step": self.step}


@dataclass
class SamplePrompts:
    """The configured prompts, tokenized; a prompts file is re-read when its size or mtime changes."""

    source: list[str] | str | None
    base_dir: Path
    encoder: Encoder
    _version: tuple | str | None = None  # what was read: (size, mtime), () for a list, "unreadable"
    _prompts: list[Prompt] = field(default_factory=list)

    @property
    def configured(self) -> bool:
        return bool(self.source)

    @property
    def path(self) -> Path | None:
        if not isinstance(self.source, str):
            return None
        path = Path(self.source).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def load(self) -> list[Prompt]:
        if not self.source:
            return []
        if isinstance(self.source, list):
            if self._version is None:
                self._prompts, self._version = [self._tokenized(text) for text in self.source], ()
            return self._prompts
        path = self.path
        try:
            st = path.stat()
            if (st.st_size, st.st_mtime_ns) != self._version:
                self._prompts = self._read(path)
                self._version = (st.st_size, st.st_mtime_ns)
        except OSError as err:  # it may appear later: said once, until it can be read
            if self._version != "unreadable":
                log.warning("Cannot read eval.sample_prompts %s: %s (no samples until it can be read)",
                            escape(str(path)), err)
            self._prompts, self._version = [], "unreadable"
        return self._prompts

    def _read(self, path: Path) -> list[Prompt]:
        prompts, bad = [], []
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                prompts.append(self._from_record(json.loads(line)))
            except (ValueError, BadLine) as err:
                bad.append(f"line {number}: {err}")
            except Exception as err:  # a chat template's raise_exception, ...
                bad.append(f"line {number}: {type(err).__name__}: {err}")
        if bad:
            log.warning("%s: %d bad prompt line(s) skipped (%s)", escape(path.name), len(bad),
                        escape("; ".join(bad[:3])))
        return prompts

    def _from_record(self, record: object) -> Prompt:
        spec = self.encoder.spec
        if isinstance(record, str):
            return self._tokenized(record)
        if not isinstance(record, dict):
            raise BadLine("not a JSON object or string")
        messages = record.get(spec.messages_field)
        if isinstance(messages, list) and messages:
            return self._conversation(messages)
        for key in (spec.prompt_field, spec.text_field):
            if isinstance(record.get(key), str):
                return self._tokenized(record[key])
        raise BadLine(f'no "{spec.prompt_field}", "{spec.messages_field}" or "{spec.text_field}" field')

    def _tokenized(self, text: str) -> Prompt:
        tokenizer, room = self.encoder.tokenizer, self.encoder.max_length
        bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        ids = tokenizer(text[-room * CHARS_PER_TOKEN_BOUND:], add_special_tokens=False)["input_ids"]
        return Prompt(text, bos + ids[len(bos) - room:])  # a long prompt keeps its end

    def _conversation(self, messages: list) -> Prompt:
        while messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
            messages = messages[:-1]  # the model answers
        if not messages or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                   and isinstance(m.get("content"), str) for m in messages):
            raise BadLine('"messages" must hold {"role": str, "content": str} turns before the answer')
        tokenizer = self.encoder.tokenizer
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        bos = tokenizer.bos_token_id
        if bos is not None and not rendered.startswith(tokenizer.bos_token or "\0"):
            ids = [bos] + ids
        return Prompt(rendered, ids[-self.encoder.max_length:])


@torch.no_grad()
def generate(model: torch.nn.Module, tokenizer, prompts: list[Prompt], max_new_tokens: int, step: int,
             interrupted: Callable[[], bool] = lambda: False) -> list[Sample] | None:
    """Greedy completions of `prompts` (one at a time: no padding to get wrong); None if
    `interrupted()` turned true between two prompts."""
    device = next(model.parameters()).device
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              bos_token_id=tokenizer.bos_token_id)
    samples = []
    for prompt in prompts:
        if interrupted():
            return None
        ids = torch.tensor([prompt.ids], device=device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=config)
        completion = tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
        samples.append(Sample(prompt.text, completion, step))
    return samples

