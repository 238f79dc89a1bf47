"""Multiple-choice scoring: option log-likelihoods against transformers, exact degenerate cases,
and batching invariances (float32, CPU, random-weight checkpoints)."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import minirun
from minirun.methods import EnsembleOptions, Question
from minirun.methods.choice import option_ids, score_choices
from minirun.methods.packing import encode_question

PREFIX = "Q: Water boils at\nA: 100 degrees\n\n"
QUESTION = "What is the capital of France?"
PARAS = [QUESTION, "Which city is France's capital?", "France's capital city is which?"]
CHOICES = ["Paris", "Lyon and Marseille", "Berlin", "the city of Rome"]
ATOL = 1e-4


@pytest.fixture(scope="module", params=["llama3", "qwen2", "qwen3"])
def llm(request, checkpoint_dirs):
    return minirun.load(checkpoint_dirs[request.param])


def score(llm, method, paraphrases=PARAS, choices=CHOICES, **kw):
    options = EnsembleOptions(**{"chat": False, "choice_score": "sum", **kw})
    return score_choices(llm, method, [Question(QUESTION, paraphrases, PREFIX, "\nA:")], [choices], options)[0]


def test_origin_log_likelihoods_equal_transformers(llm):
    enc = encode_question(llm, [QUESTION], PREFIX, "\nA:", chat=False)
    prompt = enc.full(0)
    reference = AutoModelForCausalLM.from_pretrained(llm.path, dtype=torch.float32).eval()
    expected = []
    for ids in option_ids(llm, enc, CHOICES):
        with torch.no_grad():
            logp = reference(torch.tensor([prompt + ids])).logits[0].float().log_softmax(-1)
        expected.append(sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(ids)))
    got = score(llm, "origin").scores
    assert max(abs(a - b) for a, b in zip(got, expected)) <= ATOL
    assert len({round(s, 3) for s in expected}) == len(CHOICES)  # the options differ: the check has teeth


def test_options_get_a_leading_space_after_a_plain_prompt(llm):
    enc = encode_question(llm, [QUESTION], PREFIX, "\nA:", chat=False)
    assert option_ids(llm, enc, ["Paris"])[0] == llm.tokenizer.encode(" Paris", add_special_tokens=False)


@pytest.mark.parametrize("method, extra", [("avg", {}), ("avg_logprob", {}), ("max", {}), ("hidden_avg", {}),
                                           ("hidden_avg", {"fusion_layer": 1}), ("flex", {"flex_bias": "inv_n"})])
def test_identical_paraphrases_score_as_origin(llm, method, extra):
    origin = score(llm, "origin").scores
    fused = score(llm, method, [QUESTION] * 3, **extra).scores
    assert max(abs(a - b) for a, b in zip(fused, origin)) <= ATOL


@pytest.mark.parametrize("method", ["origin", "avg", "max", "hidden_avg", "flex"])
def test_batched_options_equal_options_scored_one_by_one(llm, method):
    together = score(llm, method).scores
    alone = [score(llm, method, choices=[c]).scores[0] for c in CHOICES]
    assert max(abs(a - b) for a, b in zip(together, alone)) <= ATOL


def test_questions_batched_equal_questions_alone(llm):
    questions = [Question(QUESTION, PARAS, PREFIX, "\nA:"), Question("Who wrote Hamlet?", ["Who wrote Hamlet?",
                 "Hamlet's author?"], PREFIX, "\nA:")]
    choices = [CHOICES, ["Shakespeare", "Marlowe"]]
    options = EnsembleOptions(chat=False, fusion_layer=1)
    for method in ("avg", "hidden_avg", "per_prompt"):
        batched = score_choices(llm, method, questions, choices, options)
        alone = [score_choices(llm, method, [q], [c], options)[0] for q, c in zip(questions, choices)]
        for b, a in zip(batched, alone):
            assert b.choice == a.choice and max(abs(x - y) for x, y in zip(b.scores, a.scores)) <= ATOL


def test_per_prompt_scores_each_prompt_as_origin_would(llm):
    result = score(llm, "per_prompt")
    assert len(result.per_prompt_scores) == len(PARAS) and result.scores == result.per_prompt_scores[0]
    for paraphrase, scores, pick in zip(PARAS, result.per_prompt_scores, result.per_prompt_choices):
        alone = score_choices(llm, "origin", [Question(paraphrase, [], PREFIX, "\nA:")], [CHOICES],
                              EnsembleOptions(chat=False, choice_score="sum"))[0]
        assert max(abs(a - b) for a, b in zip(scores, alone.scores)) <= ATOL and pick == alone.choice


def test_mean_is_sum_over_option_length(llm):
    enc = encode_question(llm, [QUESTION], PREFIX, "\nA:", chat=False)
    lengths = [len(ids) for ids in option_ids(llm, enc, CHOICES)]
    summed, mean = score(llm, "origin").scores, score(llm, "origin", choice_score="mean").scores
    assert all(math.isclose(m, s / n, abs_tol=1e-6) for m, s, n in zip(mean, summed, lengths))
    assert len(set(lengths)) > 1


def test_fusion_moves_the_scores(llm):
    """The premise of the identity tests: distinct paraphrases change fused scores."""
    origin = score(llm, "origin").scores
    for method in ("avg", "hidden_avg", "flex"):
        fused = score(llm, method, fusion_layer=1).scores
        assert max(abs(a - b) for a, b in zip(fused, origin)) > 1e-3, method


def test_hidden_avg_records_layer_and_bad_score_mode_fails(llm):
    assert score(llm, "hidden_avg", fusion_layer=1).fusion_layer == 1
    with pytest.raises(minirun.MinirunError, match="unknown --choice-score 'median'"):
        score(llm, "avg", choice_score="median")


def test_a_prompt_near_the_end_of_the_context_is_scored(llm):
    # the options' last position is the limit's: room for them but not for another 64 tokens of padding,
    # which are cache slots without positions and must not count against the context
    limit, longest = llm.config.max_position_embeddings, max(len(o) for o in CHOICES)
    words = " ".join(["capital"] * 2000)

    def ends_at(question: str) -> int:
        enc = encode_question(llm, [question], PREFIX, "\nA:", chat=False)
        return len(enc.full(0)) + max(map(len, option_ids(llm, enc, CHOICES)))

    low, high = 0, len(words)  # the longest question whose options still fit
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if ends_at(words[:mid]) <= limit else (low, mid - 1)
    question = words[:low]
    assert limit - 64 < ends_at(question) <= limit and longest
    options = EnsembleOptions(chat=False)
    for method in ("origin", "avg"):
        result = score_choices(llm, method, [Question(question, [question] * 2, PREFIX, "\nA:")], [CHOICES], options)
        assert len(result[0].scores) == len(CHOICES) and all(math.isfinite(s) for s in result[0].scores)
    with pytest.raises(minirun.MinirunError, match="beyond the model's context"):
        score_choices(llm, "origin", [Question(words[:low + 40], [], PREFIX, "\nA:")], [CHOICES], options)
