"""Tokenizer parity with transformers on the same files: ids, text and chat template."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from minirun.checkpoints.tokenizer import Tokenizer

TEXTS = ["The capital of France is Paris.", "  leading and   runs of spaces\n\n\ttabs", "Ünïcödé — 東京 🙂 café",
         "digits 1234567890 and 3.14159", "<|im_start|>user\nhi<|im_end|>", "", "def f(x):\n    return x ** 2"]
CHATS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who wrote Hamlet?"},
          {"role": "assistant", "content": "Shakespeare."}, {"role": "user", "content": "When?"}]]


@pytest.fixture(scope="module")
def pair(checkpoint_dirs):
    path = checkpoint_dirs["qwen2"]
    return AutoTokenizer.from_pretrained(path), Tokenizer(path)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match(pair, text):
    ref, ours = pair
    ids = ref.encode(text)
    assert ours.encode(text) == ids
    assert ours.decode(ids) == ref.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_identically(pair, messages, add_generation_prompt):
    ref, ours = pair
    expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_special_tokens(pair):
    ref, ours = pair
    assert ours.eos_token_id == ref.eos_token_id
    assert ours.pad_token_id == ref.pad_token_id
