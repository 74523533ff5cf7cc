"""Chat templates that are not prefix-stable: rendering turn by turn would mislabel tokens.

The synthetic template below moves the system prompt into the last user turn, as some real
templates do, so a conversation's rendering is not a prefix of the next turn's rendering.
Expected ids and labels are built by hand from the rendered text, split into supervised and
unsupervised pieces (the tiny tokenizer has one token per byte, so pieces tokenize alike
apart or together).
"""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from lit_continual.data.records import CHARS_PER_TOKEN_BOUND, IGNORE, BadLine, Encoder
from lit_continual.models import tiny

# Every turn is "<|role|>\n" + content + "</s>\n", except the last user turn, which carries the
# system prompt: "<|user|>\n" + system + "\n\n" + content + "</s>\n". The "\n" after "</s>" is
# part of the turn, so turn-by-turn rendering supervises it and the offsets method does not:
# that tells which method encoded a conversation.
SYSTEM_IN_LAST_USER_TURN = (
    "{% set ns = namespace(system='', last_user=-1) %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}{% set ns.system = m['content'] %}"
    "{% elif m['role'] == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% elif loop.index0 == ns.last_user and ns.system %}<|user|>\n{{ ns.system }}\n\n{{ m['content'] }}</s>\n"
    "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name?"},
                {"role": "assistant", "content": "Tiny."}]


@pytest.fixture(scope="module")
def stock(tmp_path_factory) -> PreTrainedTokenizerBase:
    """The tiny tokenizer as a run loads it: saved to a directory, read back (no download)."""
    directory = tmp_path_factory.mktemp("tiny-tokenizer")
    tiny.build_tokenizer().save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture(scope="module")
def moving(tmp_path_factory) -> PreTrainedTokenizerBase:
    """A copy of the tiny tokenizer whose template moves the system prompt."""
    directory = tmp_path_factory.mktemp("moving-tokenizer")
    tokenizer = tiny.build_tokenizer()
    tokenizer.chat_template = SYSTEM_IN_LAST_USER_TURN
    tokenizer.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def _by_hand(tokenizer, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    """BOS, then each piece's tokens, labelled with themselves where the piece is supervised."""
    ids, labels = [tokenizer.bos_token_id], [IGNORE]
    for text, supervised in pieces:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if supervised else [IGNORE] * len(piece)
    return ids, labels


def _supervised_spans(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """Decode each maximal run of supervised tokens."""
    spans, current = [], []
    for token, label in zip(ids, labels, strict=True):
        if label == IGNORE:
            spans, current = spans + [current] if current else spans, []
        else:
            assert label == token
            current.append(token)
    return [tokenizer.decode(span) for span in spans + ([current] if current else [])]


def test_synthetic_template_is_not_prefix_stable(moving):
    whole = moving.apply_chat_template(CONVERSATION, tokenize=False)
    first_turn = moving.apply_chat_template(CONVERSATION[:3], tokenize=False)
    assert whole == ("<|user|>\nHi?</s>\n<|assistant|>\nHello.</s>\n"
                     "<|user|>\nBe brief.\n\nName?</s>\n<|assistant|>\nTiny.</s>\n")
    assert first_turn == "<|user|>\nBe brief.\n\nHi?</s>\n<|assistant|>\nHello.</s>\n"
    assert not whole.startswith(first_turn)


def test_moved_system_prompt_supervises_each_answer_and_its_end_of_turn(moving):
    ids, labels = Encoder(moving, 256).encode_one({"messages": CONVERSATION})
    assert _supervised_spans(moving, ids, labels) == ["Hello.</s>", "Tiny.</s>"]
    rendered = moving.apply_chat_template(CONVERSATION, tokenize=False)
    assert ids == [moving.bos_token_id] + moving(rendered, add_special_tokens=False)["input_ids"]
    assert (ids, labels) == _by_hand(moving, [
        ("<|user|>\nHi?</s>\n<|assistant|>\n", False), ("Hello.</s>", True),
        ("\n<|user|>\nBe brief.\n\nName?</s>\n<|assistant|>\n", False), ("Tiny.</s>", True), ("\n", False)])


def test_prefix_stability_is_decided_per_conversation(moving):
    """Without a system message the same template extends turn by turn, so that method is kept
    (it supervises the whole turn, "</s>\\n"; the offsets method would stop at "</s>")."""
    messages = CONVERSATION[1:]
    ids, labels = Encoder(moving, 256).encode_one({"messages": messages})
    assert (ids, labels) == _by_hand(moving, [
        ("<|user|>\nHi?</s>\n<|assistant|>\n", False), ("Hello.</s>\n", True),
        ("<|user|>\nName?</s>\n<|assistant|>\n", False), ("Tiny.</s>\n", True)])


def test_stock_template_is_encoded_turn_by_turn_as_before(stock, monkeypatch):
    def offsets_not_expected(*args, **kwargs):
        raise AssertionError("the stock template is prefix-stable; no offsets needed")

    monkeypatch.setattr(Encoder, "_by_offsets", offsets_not_expected)
    ids, labels = Encoder(stock, 256).encode_one({"messages": CONVERSATION})
    assert (ids, labels) == _by_hand(stock, [
        ("<|system|>\nBe brief.</s><|user|>\nHi?</s><|assistant|>\n", False), ("Hello.</s>", True),
        ("<|user|>\nName?</s><|assistant|>\n", False), ("Tiny.</s>", True)])


def test_answer_quoted_in_its_question_is_supervised_in_the_answer(moving):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say OK."},
                {"role": "assistant", "content": "OK"}, {"role": "user", "content": "Again."},
                {"role": "assistant", "content": "OK"}]
    ids, labels = Encoder(moving, 256).encode_one({"messages": messages})
    assert (ids, labels) == _by_hand(moving, [
        ("<|user|>\nSay OK.</s>\n<|assistant|>\n", False), ("OK</s>", True),
        ("\n<|user|>\nBe brief.\n\nAgain.</s>\n<|assistant|>\n", False), ("OK</s>", True), ("\n", False)])


def test_answer_the_template_rewrites_is_a_bad_line(moving):
    rewriting = AutoTokenizer.from_pretrained(moving.name_or_path)
    turn = "{% else %}<|{{ m['role'] }}|>\n{{ m['content'] }}"
    rewriting.chat_template = SYSTEM_IN_LAST_USER_TURN.replace(turn, turn.replace("['content']", "['content'] | upper"))
    with pytest.raises(BadLine, match=r"messages\[2\] \(assistant\) is not in the chat template's rendering"):
        Encoder(rewriting, 256).encode_one({"messages": CONVERSATION})


def test_moved_system_prompt_truncates_like_turn_by_turn(moving):
    full_ids, full_labels = Encoder(moving, 256).encode_one({"messages": CONVERSATION})
    ids, labels = Encoder(moving, 40).encode_one({"messages": CONVERSATION})
    assert (ids, labels) == (full_ids[:40], full_labels[:40])
    assert _supervised_spans(moving, ids, labels) == ["Hello.</s>"]


def test_moved_system_prompt_never_tokenizes_text_beyond_the_bound(moving, monkeypatch):
    messages = [dict(m) for m in CONVERSATION]
    messages[1]["content"] = "u" * 100_000
    seen: list[int] = []
    call = type(moving).__call__

    def measuring(self, text, *args, **kwargs):
        seen.append(len(text))
        return call(self, text, *args, **kwargs)

    monkeypatch.setattr(type(moving), "__call__", measuring)
    ids, labels = Encoder(moving, 32).encode_one({"messages": messages})
    assert ids == [moving.bos_token_id] + call(moving, "<|user|>\n" + "u" * 22, add_special_tokens=False)["input_ids"]
    assert all(label == IGNORE for label in labels)
    assert seen and max(seen) <= 32 * CHARS_PER_TOKEN_BOUND
