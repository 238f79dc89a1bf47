"""Real weights: SmolLM2-135M-Instruct converted from its GGUF, minirun against transformers."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import minirun

LOGIT_ATOL = 1e-3
PROMPTS = ["What is the capital of France?", "Who wrote Romeo and Juliet?", "Explain photosynthesis in one sentence.",
           "List three prime numbers.", "Translate 'good morning' into Spanish.", "What is 12 times 7?",
           "Write a haiku about the sea.", "Name the largest planet in our solar system.",
           "What does DNA stand for?", "Give one tip for learning to code."]


@pytest.fixture(scope="module")
def pair(smollm2_f32_dir):
    ref = AutoModelForCausalLM.from_pretrained(smollm2_f32_dir, dtype=torch.float32).eval()
    return ref, AutoTokenizer.from_pretrained(smollm2_f32_dir), minirun.load(smollm2_f32_dir)


def test_logits_match_on_varied_prompts(pair):
    ref, _, llm = pair
    texts = ["The capital of France is", "def fibonacci(n):\n    ", "Ünïcödé 東京 🙂 — 3.14159",
             "<|im_start|>user\nHi!<|im_end|>\n", "   spaced    out\n\n\ttext"]
    for text in texts:
        ids = torch.tensor([llm.tokenizer.encode(text)])
        with torch.no_grad():
            diff = (ref(ids).logits - llm.model(ids)).abs().max().item()
        assert diff <= LOGIT_ATOL, (text, diff)


def test_greedy_chat_completions_token_identical(pair):
    ref, tok, llm = pair
    ours = llm.generate(PROMPTS, max_new_tokens=48)  # one left-padded batch
    for prompt, got in zip(PROMPTS, ours, strict=True):
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        assert ids[0].tolist() == llm.prompt_ids(prompt)
        with torch.no_grad():
            out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=48, do_sample=False)
        assert got.token_ids == out[0, ids.shape[1]:].tolist(), prompt


def test_tokenizer_matches_transformers_on_same_files(pair):
    _, tok, llm = pair
    for text in PROMPTS + ["Ünïcödé 東京 🙂", "  runs   of\n\n spaces", "<|im_start|>assistant\n"]:
        assert llm.tokenizer.encode(text) == tok.encode(text)
        assert llm.tokenizer.decode(tok.encode(text)) == tok.decode(tok.encode(text))
