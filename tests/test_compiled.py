"""The compiled path (torch.compile'd decode step, compiled FlexAttention) against the eager one."""
from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import minirun
from minirun import flex
from minirun.methods import EnsembleOptions, Question, run_method

# Different lengths, all inside one 64-token prefill bucket (a prompt crossing a bucket compiles once more).
QUESTIONS = ["Capital of France?", "Who wrote Hamlet?", "Boiling point?", "Name a prime.", "Largest planet?"]
PARAS = ["France's capital?", "Capital city?"]
OPTIONS = EnsembleOptions(max_new_tokens=12, confidences=[[0.2, 0.5, 0.3]])


@pytest.fixture(scope="module")
def llm(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["llama3"])


@pytest.fixture
def compiled():
    flex.set_compiled(True)
    yield
    flex.set_compiled(False)


def run(llm, method: str, question: str) -> list[int]:
    return run_method(llm, method, [Question(question, [question, *PARAS])], OPTIONS)[0].token_ids


@pytest.mark.parametrize("method", ["origin", "per_prompt", "avg", "weighted_avg", "flex"])
def test_compiled_tokens_equal_eager(llm, method):
    eager = run(llm, method, QUESTIONS[0])
    flex.set_compiled(True)
    try:
        assert run(llm, method, QUESTIONS[0]) == eager
    finally:
        flex.set_compiled(False)


@pytest.mark.parametrize("method", ["origin", "flex"])
def test_no_recompilation_across_questions(llm, compiled, method):
    run(llm, method, QUESTIONS[0])  # warm-up: compiles prefill and decode once for this shape
    before = counters["stats"]["unique_graphs"]
    for question in QUESTIONS[1:]:
        run(llm, method, question)
    assert counters["stats"]["unique_graphs"] == before
