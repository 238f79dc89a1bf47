"""Sampling, stop conditions and the confidence cache."""
from __future__ import annotations

import pytest
import torch

import minirun
from minirun.engine.sampling import SamplingParams, filter_logits
from minirun.methods import EnsembleOptions, Question, confidence, run_method
from minirun.methods.packing import encode_question


@pytest.fixture(scope="module")
def llm(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["qwen3"])


PROMPT = "The capital of France is"


def test_seeded_sampling_is_reproducible_and_varies_with_seed(llm):
    a = llm.generate(PROMPT, max_new_tokens=16, temperature=1.0, seed=1, chat=False)
    b = llm.generate(PROMPT, max_new_tokens=16, temperature=1.0, seed=1, chat=False)
    c = llm.generate(PROMPT, max_new_tokens=16, temperature=1.0, seed=2, chat=False)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_top_k_one_is_greedy(llm):
    greedy = llm.generate(PROMPT, max_new_tokens=12, chat=False)
    assert llm.generate(PROMPT, max_new_tokens=12, temperature=0.8, top_k=1, seed=3, chat=False).token_ids == greedy.token_ids


def test_filter_logits_top_k_and_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    kept = filter_logits(logits, SamplingParams(1.0, top_k=2)).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    probs = logits.softmax(-1)[0]  # ~[0.64, 0.24, 0.09, 0.03]
    kept = filter_logits(logits, SamplingParams(1.0, top_p=0.8)).isfinite()
    assert kept.tolist() == [[True, True, False, False]] and probs[0] < 0.8 < probs[:2].sum()


def test_stop_string_cuts_text(llm):
    full = llm.generate(PROMPT, max_new_tokens=24, chat=False)
    stop = full.text[5:8]
    cut = llm.generate(PROMPT, max_new_tokens=24, chat=False, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]


def test_eos_ends_generation(llm):
    eos = llm.tokenizer.eos_token_id
    llm.config.eos_token_ids.append(llm.generate(PROMPT, max_new_tokens=3, chat=False).token_ids[2])
    try:
        out = llm.generate(PROMPT, max_new_tokens=24, chat=False)
        assert out.finish_reason == "eos" and len(out.token_ids) == 3
    finally:
        llm.config.eos_token_ids.pop()
    assert llm.tokenizer.eos_token_id == eos


def test_confidences_cached_and_reused(llm, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path))
    calls = []
    real = confidence.paraphrase_confidence
    monkeypatch.setattr(confidence, "paraphrase_confidence", lambda *a: calls.append(1) or real(*a))
    question = Question(PROMPT, [PROMPT, "Paris is the capital of"])
    options = EnsembleOptions(max_new_tokens=6, num_samples=8, chat=False, confidence_tokens=6)
    first = run_method(llm, "weighted_avg", [question], options)[0]
    assert len(calls) == 2 and all(0.0 <= c <= 1.0 for c in first.confidences)
    second = run_method(llm, "weighted_avg", [question], options)[0]
    assert len(calls) == 2 and second.confidences == first.confidences and second.token_ids == first.token_ids


def test_confidence_samples_share_one_prefill(llm, monkeypatch):
    """The S samples prefill the prompt once (batch 1), then decode S rows."""
    from minirun.engine.session import Session

    shapes = []
    real = Session.prefill
    monkeypatch.setattr(Session, "prefill", lambda self, tokens, *a: shapes.append(tuple(tokens.shape)) or real(self, tokens, *a))
    enc = encode_question(llm, [PROMPT], chat=False)
    options = EnsembleOptions(num_samples=16, confidence_tokens=4)
    confidence.paraphrase_confidence(llm, enc.full(0), options, confidence.normalised_equal)
    assert shapes[-1][0] == 1  # the sampling session prefilled one row for its 16 samples
