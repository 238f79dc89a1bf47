"""Dense attention kernels: folded SDPA, the grouped products and split attention equal SDPA, the chooser is asked once per mask,
eager decode over the written slots equals decode over the whole cache, and eager prompts are
padded to a few tokens rather than a compiled chunk."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import minirun
from minirun.engine import session as session_module
from minirun.engine.generate import left_padded
from minirun.engine.session import Session, cache_size, chunk_plan, decode_step, pad_unit
from minirun.layers import calibrate, flex
from minirun.methods import EnsembleOptions, Question, run_method



KERNELS = {"grouped": lambda q, k, v, mask: flex.grouped_attention(q, k, v, mask),
           "folded": lambda q, k, v, mask: flex.folded_attention(q, k, v, flex.fold_bias(mask, 3, q.dtype))}


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("queries", [1, 7])
@pytest.mark.parametrize("bias", [False, True])
def test_dense_kernels_equal_sdpa(kernel, dtype, queries, bias):
    """Float32: SDPA's result; bfloat16: no further from float32 than SDPA's own bfloat16 kernel."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 6, queries, 16, generator=g).to(dtype)
    k, v = (torch.randn(3, 2, 40, 16, generator=g).to(dtype) for _ in range(2))
    mask = torch.rand(3, 1, queries, 40, generator=g) < 0.5
    mask[..., 0] = True
    if bias:
        mask = torch.randn(3, 1, queries, 40, generator=g).to(dtype).masked_fill(~mask, float("-inf"))
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask if not bias else mask.float(),
                                              enable_gqa=True)
    got = KERNELS[kernel](q, k, v, mask)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert got.dtype == dtype and got.shape == expected.shape
    error = (got.float() - expected).abs().max().item()
    assert error <= 1e-5 if dtype == torch.float32 else error <= 1.25 * (sdpa.float() - expected).abs().max().item()


def test_folded_queries_keep_their_own_mask_rows():
    """The folded bias repeats each query's mask row once per query head of a kv head, in the order
    the folded queries take (head-major), so a mask whose rows are swapped gives another result."""
    g = torch.Generator().manual_seed(4)
    q, k, v = torch.randn(2, 6, 4, 16, generator=g), torch.randn(2, 2, 10, 16, generator=g), torch.randn(2, 2, 10, 16, generator=g)
    mask = torch.rand(2, 1, 4, 10, generator=g) < 0.5
    mask[..., 0] = True
    folded = flex.fold_bias(mask, 3, torch.float32)
    assert folded.shape == (2, 1, 12, 10) and all(torch.equal(folded[:, :, 4 * i:4 * i + 4], folded[:, :, :4]) for i in range(3))
    got = flex.folded_attention(q, k, v, folded)
    assert torch.allclose(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True), atol=1e-6)
    assert not torch.allclose(flex.folded_attention(q, k, v, flex.fold_bias(mask.flip(2), 3, torch.float32)), got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("queries", [1, 7])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shared", [24, 40])
def test_a_shared_head_read_once_gives_the_same_attention(dtype, queries, bias, shared):
    """Keys/values equal in every row's first `shared` slots, read from row 0 for all: the same result
    as reading every row's own copy, to float32 rounding (all 40 slots shared included)."""
    g = torch.Generator().manual_seed(1)
    q = torch.randn(3, 6, queries, 16, generator=g).to(dtype)
    k, v = (torch.randn(3, 2, 40, 16, generator=g).to(dtype) for _ in range(2))
    k[:, :, :shared], v[:, :, :shared] = k[:1, :, :shared], v[:1, :, :shared]
    mask = torch.rand(3, 1, queries, 40, generator=g) < 0.5
    mask[..., 0] = True
    if bias:
        mask = torch.randn(3, 1, queries, 40, generator=g).to(dtype).masked_fill(~mask, float("-inf"))
    once, per_row = flex.grouped_attention(q, k, v, mask, shared), flex.grouped_attention(q, k, v, mask)
    assert once.dtype == dtype and once.shape == per_row.shape
    ulp = 1e-6 if dtype == torch.float32 else 2 ** -7  # bfloat16: at most one rounding step apart
    assert torch.allclose(once.float(), per_row.float(), rtol=ulp, atol=ulp)
    k[1, 0, 0] += 1  # the head is then not the same in every row: reading row 0 for all is visibly wrong
    assert not torch.allclose(flex.grouped_attention(q, k, v, mask, shared).float(),
                              flex.grouped_attention(q, k, v, mask).float(), rtol=ulp, atol=ulp)


def test_grouped_attention_keeps_a_query_that_sees_nothing_finite():
    q, k, v = torch.randn(1, 4, 2, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    mask = torch.ones(1, 1, 2, 5, dtype=torch.bool)
    mask[0, 0, 1] = False  # the second query is padding: it sees no key
    out = flex.grouped_attention(q, k, v, mask)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[:, :, 0], F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)[:, :, 0],
                          atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_split_attention_equals_sdpa(dtype, bias):
    """A head every row holds, read once, merged with each row's own slots by log-sum-exp: float32
    SDPA's result; bfloat16 within 1.6x SDPA's own bfloat16 error (one more rounding of each part)."""
    g = torch.Generator().manual_seed(3)
    shared = 24
    q = torch.randn(5, 6, 1, 16, generator=g).to(dtype)
    k, v = (torch.randn(5, 2, 40, 16, generator=g).to(dtype) for _ in range(2))
    k[:, :, :shared], v[:, :, :shared] = k[:1, :, :shared], v[:1, :, :shared]
    mask = torch.rand(5, 1, 1, 40, generator=g) < 0.5
    mask[..., :shared] = True
    mask[..., -1] = True  # a decode query sees its own slot
    if bias:  # flex's segment weights: the head (the shared segment) is never biased
        weights = torch.randn(5, 1, 1, 40, generator=g).to(dtype)
        weights[..., :shared] = 0
        mask = weights.masked_fill(~mask, float("-inf"))
    expected = F.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                              attn_mask=mask.float() if bias else mask, enable_gqa=True)
    got = flex.split_attention(q, k, v, flex.split_bias(mask, shared, dtype, 3), shared)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    assert got.dtype == dtype and got.shape == expected.shape
    error = (got.float() - expected).abs().max().item()
    assert error <= 1e-5 if dtype == torch.float32 else error <= 1.6 * (sdpa.float() - expected).abs().max().item()


def test_split_attention_needs_a_head_every_query_sees():
    mask = torch.ones(2, 1, 1, 10, dtype=torch.bool)
    assert flex.split_bias(mask, 4, torch.float32).shape == (2, 1, 1, 6)
    assert flex.split_bias(mask, 4, torch.float32, 3).shape == (2, 1, 3, 6)
    hidden = mask.clone()
    hidden[1, 0, 0, 2] = False  # a head slot this row does not see
    assert flex.split_bias(hidden, 4, torch.float32) is None
    blind = mask.clone()
    blind[0, 0, 0, 4:] = False  # a query that sees none of its own slots
    assert flex.split_bias(blind, 4, torch.float32) is None
    biased = torch.zeros(2, 1, 1, 10)
    biased[0, 0, 0, 1] = 0.5  # a weighted head slot
    assert flex.split_bias(biased, 4, torch.float32) is None


@pytest.fixture
def llm(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["qwen3"])


@pytest.mark.parametrize("method", ["origin", "avg", "flex"])
def test_both_dense_kernels_give_the_same_answers(llm, monkeypatch, method):
    """Every dense attention call of a whole eager generation (prefill, head, decode) on either kernel."""
    question = Question("The capital of France is", ["Paris is the capital of", "France's capital city is"],
                        "Q: Water boils at\nA: 100 degrees\n\n")
    options = EnsembleOptions(max_new_tokens=12, ignore_eos=True, flex_bias="inv_n")
    asked = []

    def choose(*shape) -> str:
        asked.append(shape)
        return kernel

    monkeypatch.setattr(calibrate, "dense_attention", choose)
    split_calls = []
    split = flex.split_attention
    monkeypatch.setattr(flex, "split_attention", lambda *a: split_calls.append(1) or split(*a))
    answers = {}
    try:
        for kernel in ("sdpa", "folded", "grouped", "split"):  # split falls back to SDPA where it does not apply
            answers[kernel] = run_method(llm, method, [question], options)[0].token_ids
    finally:
        flex.set_dense_kernel(None)  # no forced kernel left for later tests, whatever happened here
    assert answers["sdpa"] == answers["folded"] == answers["grouped"] == answers["split"] and len(answers["sdpa"]) == 12
    steps = 4 * 11  # four runs of 11 decode steps each, one question per step, not one per layer
    assert steps <= len(asked) <= steps + 4 * 4  # + each run's prefill chunks
    assert {shape[0] for shape in asked} == {torch.float32}
    if method == "avg":  # its 2 rows (the paraphrases) attend over the few-shot head as one shared region
        assert len(split_calls) >= 11 * llm.config.num_layers  # every decode step, every layer (and unpadded chunks)
        assert {shape[1] for shape in asked} == {1, 2} and all(shape[-1] > 0 for shape in asked if shape[1] == 2)


def test_eager_decode_over_written_slots_equals_the_whole_cache(llm):
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (30, 11)]
    layout = left_padded(rows, llm.pad_id, llm.device)
    session = Session(llm.model, 2, cache_size(layout.length + 4))
    with torch.inference_mode():  # the whole-cache step reads unwritten slots: zeroed, as a compiled cache's are
        for layer in llm.model.layers:
            layer.attn.kv_cache.k.zero_()
            layer.attn.kv_cache.v.zero_()
    session.prefill(layout.tokens, layout.positions, layout.segments)
    tokens, positions = torch.tensor([5, 7]), layout.positions[:, -1] + 1
    session.slot.fill_(session.length)
    args = (llm.model, tokens, positions, session.slot, session.full_mask(), session.segments, None)
    with torch.inference_mode():
        narrow = decode_step(*args, live=session.length + 1)
        whole = decode_step(*args)
    assert session.length + 1 < session.max_slots
    assert (narrow - whole).abs().max().item() <= 1e-5


def test_eager_prompts_are_not_padded_and_compiled_ones_are_padded_to_chunks():
    assert pad_unit() == 1
    flex.set_compiled(True)
    try:
        assert pad_unit() == session_module.CHUNK
    finally:
        flex.set_compiled(False)
    assert chunk_plan(136, 24, aligned=False) == [24]
    assert chunk_plan(0, 1200, aligned=False) == [512, 512, 176]


def test_chunks_of_several_queries_take_flexattentions_main_kernel_on_cuda():
    """Inductor's decoding kernel has no config for a 64-query chunk at 4 query heads per kv head
    (an H200, torch 2.11): prompt chunks force the main kernel there; decode steps and CPU keep the default."""
    assert flex.kernel_options("cuda", 64) == {"FORCE_USE_FLEX_ATTENTION": True}
    assert flex.kernel_options("cuda", 1) is None and flex.kernel_options("cpu", 64) is None
