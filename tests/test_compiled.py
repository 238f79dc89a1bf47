"""The compiled path (compiled decode step, FlexAttention and mask builder) against the eager one,
its bounded shapes, and the decode loop's freedom from per-step host syncs."""
from __future__ import annotations

import collections
import logging

import pytest
import torch
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

import minirun
from minirun import engine, flex
from minirun.compiled import Compiled
from minirun.engine import CHUNK, cache_size
from minirun.methods import EnsembleOptions, Question, run_method
from minirun.methods import runner
from minirun.methods.packing import encode_question, packed_row
from minirun.methods.runner import METHODS

PARAS = ["France's capital?", "Capital city?"]
OPTIONS = EnsembleOptions(max_new_tokens=12, confidences=[[0.2, 0.5, 0.3]])
FACT = "The capital of France is Paris and the capital of Japan is Tokyo. "
# Prompts of 3 to 6 prefill chunks, all inside one cache bucket (checked below).
QUESTIONS = [FACT * k + "Which city?" for k in (3, 4, 5, 6, 8)]


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


@pytest.mark.parametrize("method", METHODS)
def test_compiled_tokens_equal_eager(llm, method):
    eager = run(llm, method, "Capital of France?")
    flex.set_compiled(True)
    try:
        assert run(llm, method, "Capital of France?") == eager
    finally:
        flex.set_compiled(False)


@pytest.mark.parametrize("method", ["origin", "flex"])
def test_no_recompilation_across_questions(llm, compiled, method):
    lengths = []
    for q in QUESTIONS:
        enc = encode_question(llm, [q] if method == "origin" else [q, *PARAS], "", "", None)
        lengths.append(len(packed_row(enc).tokens))
    assert len({-(-n // CHUNK) for n in lengths}) >= 3, lengths  # the prompts really differ in chunks
    assert len({cache_size(n + OPTIONS.max_new_tokens) for n in lengths}) == 1, lengths
    run(llm, method, QUESTIONS[0])  # warm-up: compiles prefill, decode and the mask builder once
    before = counters["stats"]["unique_graphs"]
    for question in QUESTIONS[1:]:
        run(llm, method, question)
    assert counters["stats"]["unique_graphs"] == before


def test_cache_sizes_come_in_few_buckets(compiled):
    sizes = {cache_size(n) for n in range(1, 4000)}
    assert sizes == {256, 512, 1024, 2048, 4096, 8192}
    assert all(cache_size(n) >= n + 2 * CHUNK for n in range(1, 4000))


def test_recompile_budget_warns_and_runs_eagerly(monkeypatch, caplog):
    monkeypatch.setenv("MINIRUN_RECOMPILE_LIMIT", "1")
    calls = []

    def double(x: torch.Tensor) -> torch.Tensor:
        calls.append(torch.compiler.is_compiling())
        return x * 2

    fn = Compiled(double, "double", lambda x: tuple(x.shape), dynamic=False)
    with caplog.at_level(logging.INFO, logger="minirun"):
        assert torch.equal(fn(torch.ones(2)), torch.full((2,), 2.0))
        assert torch.equal(fn(torch.ones(3)), torch.full((3,), 2.0))
        fn(torch.ones(3))
    assert calls == [True, False, False]  # the first shape traced (compiled), the second ran eagerly twice
    assert any("compiling double for (2,)" in r.getMessage() for r in caplog.records)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "(3,) runs uncompiled" in warnings[0] and "MINIRUN_RECOMPILE_LIMIT=1" in warnings[0]


def test_compiled_mode_lifts_torch_limit_above_minirun(compiled):
    assert torch._dynamo.config.recompile_limit >= 4 * 16


SCALAR_READS = (torch.ops.aten.item.default, torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default)


class _ScalarReads(TorchDispatchMode):
    """Counts the aten ops a Python script runs; SCALAR_READS wait for the device (.item(), int(t), if t:)."""

    def __init__(self):
        super().__init__()
        self.count = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count[func] += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", ["origin", "per_prompt", "avg", "max", "weighted_avg", "weighted_max", "flex"])
def test_decode_loop_reads_no_scalars_from_the_device(llm, monkeypatch, method):
    """Fusion, sampling and slot bookkeeping never wait for the device; only the model step is excluded."""
    recorder = _ScalarReads()
    real_step, real_loop = engine.decode_step, runner.decode_loop

    def step(*args, **kwargs):
        with _disable_current_modes():
            return real_step(*args, **kwargs)

    def loop(*args, **kwargs):
        with recorder:
            return real_loop(*args, **kwargs)

    monkeypatch.setattr(engine, "decode_step", step)
    monkeypatch.setattr(runner, "decode_loop", loop)
    run(llm, method, "Capital of France?")
    assert sum(recorder.count.values()) > 0  # the recorder saw the loop's work
    assert sum(recorder.count[op] for op in SCALAR_READS) == 0
