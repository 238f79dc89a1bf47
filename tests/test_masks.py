"""Mask functions checked against a reference built with plain loops."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minirun.layers.compiled import compiled_shapes
from minirun.layers.masks import BRANCH, PAD, SHARED, additive, branch, materialize, offset_queries, segment_mask


def reference(segments: list[int]) -> list[list[bool]]:
    """The rule in words: causal; padding invisible; a segment sees itself and shared tokens;
    shared tokens (prefix, generated) see everything earlier; a branch sees every earlier
    non-branch token and itself, never another branch; a token always sees itself."""
    n = len(segments)
    out = [[False] * n for _ in range(n)]
    for q in range(n):
        for kv in range(q + 1):
            sq, sk = segments[q], segments[kv]
            branch_sees = sq <= BRANCH and sk > SHARED
            out[q][kv] = kv == q or (sk != PAD and (sk == SHARED or sq == SHARED or sk == sq or branch_sees))
    return out


LAYOUTS = [
    [0] * 6,  # plain causal
    [PAD, PAD, 0, 0, 0, 0],  # left padding
    [0, 0, 1, 1, 1, 2, 2, 3, 0, 0],  # prefix, three paraphrases, two generated
    [PAD, 1, 1, 2, 2, 2, 0, 0],  # padded row, no prefix
    [0, 0, PAD, 1, 1, 0],  # prefix, padding, one row paraphrase
    [0, 1, 1, 2, 0, -2, -2, -3, -3, -3],  # packed prompt, then two branches (options scored side by side)
    [0, 0, PAD, -2, -3, -3, -4],  # plain prompt, padding, three branches
]


def test_branches_see_the_prompt_and_themselves_only():
    segs = [0, 1, 1, 2, 0, branch(0), branch(0), branch(1), branch(1)]
    m = materialize(segment_mask(torch.tensor([segs])), 1, 9, 9)[0]
    assert m[5:9, 0:5].all()  # both branches see the head, every paraphrase and the tail
    assert not m[7:9, 5:7].any()  # branch 1 never sees branch 0
    assert m[6, 5] and m[8, 7]  # a branch sees its own earlier tokens


def test_segment_mask_equals_reference():
    for segs in LAYOUTS:
        got = materialize(segment_mask(torch.tensor([segs])), 1, len(segs), len(segs))[0]
        assert got.tolist() == reference(segs), segs


def test_isolation_and_fusion_properties():
    segs = [0, 0, 1, 1, 2, 2, 2, 0]
    m = materialize(segment_mask(torch.tensor([segs])), 1, 8, 8)[0]
    assert not m[4:7, 2:4].any()  # paraphrase 2 never sees paraphrase 1
    assert m[2:7, 0:2].all()  # every paraphrase sees the prefix
    assert m[7, :8].all()  # the generated token sees everything
    assert not m.triu(1).any()  # causal


def test_padding_never_visible_and_no_empty_rows():
    segs = [PAD, PAD, 0, 0, 1, 1]
    m = materialize(segment_mask(torch.tensor([segs])), 1, 6, 6)[0]
    assert not m[2:, :2].any()
    assert m.any(dim=1).all()


def test_offset_queries_selects_rows():
    segs = torch.tensor([[0, 1, 1, 2, 2, 0, 0]])
    full = materialize(segment_mask(segs), 1, 7, 7)
    row = materialize(offset_queries(segment_mask(segs), torch.tensor(5)), 1, 2, 7)
    assert torch.equal(row, full[:, 5:7])


def test_batch_rows_use_their_own_segments():
    segs = torch.tensor([[0, 1, 2, 0], [PAD, 1, 1, 0]])
    m = materialize(segment_mask(segs), 2, 4, 4)
    assert m[0].tolist() == reference(segs[0].tolist())
    assert m[1].tolist() == reference(segs[1].tolist())


def _block_kinds(block_mask) -> torch.Tensor:
    """[B, q_blocks, kv_blocks]: 0 skipped, 1 partial (mask_mod applied), 2 full (mask_mod skipped)."""
    kinds = block_mask.to_dense()[:, 0].clone()  # partial or full
    if block_mask.full_kv_num_blocks is None:  # eager's unstructured mask: every block partial
        return kinds
    counts, indices = block_mask.full_kv_num_blocks[:, 0], block_mask.full_kv_indices[:, 0]
    for b in range(kinds.shape[0]):
        for q in range(kinds.shape[1]):
            kinds[b, q, indices[b, q, :counts[b, q]].long()] = 2
    return kinds


def _session_segments(slots: int) -> torch.Tensor:
    """Two rows as a session holds them: prefix, padding, paraphrases, then unwritten (SHARED) slots."""
    segs = torch.zeros((2, slots), dtype=torch.int32)
    segs[0, 10:64] = PAD
    segs[0, 64:120], segs[0, 120:150], segs[0, 150:192] = 1, 2, 3
    segs[1, :40] = PAD
    segs[1, 40:130], segs[1, 130:192] = 1, 2
    return segs


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("start, length", [(0, 64), (64, 64), (128, 64), (192, 1), (200, 1), (300, 1)])
def test_sliced_session_mask_is_exact(compiled, start, length):
    """The kernel visits every visible key block and skips mask_mod only where all keys are visible."""
    from minirun.engine.session import mask_rows
    from minirun.layers import flex

    slots = 384
    segs = _session_segments(slots)
    flex.set_compiled(compiled)
    try:
        full = flex.block_mask(segment_mask(segs), 2, slots, slots, torch.device("cpu"))
    finally:
        flex.set_compiled(False)
    part = mask_rows(full, segs, 2, torch.tensor(start), length)
    assert full.q_indices is None and part.q_indices is None  # forward only: no transpose rebuilt per slice
    dense = materialize(part.mask_mod, 2, length, slots)  # [B, length, S] element by element
    assert torch.equal(dense, materialize(segment_mask(segs), 2, slots, slots)[:, start:start + length])
    kinds = _block_kinds(part)[:, 0]  # [B, kv_blocks]
    for j in range(slots // 128):
        keys = dense[:, :, j * 128:(j + 1) * 128]
        assert not keys[kinds[:, j] == 0].any(), (j, "visible keys in a skipped block")
        assert keys[kinds[:, j] == 2].all(), (j, "a block marked full hides keys")


def test_compiled_block_mask_equals_eager():
    from torch.nn.attention.flex_attention import create_block_mask

    from minirun.layers import flex

    segs = _session_segments(256)
    eager = create_block_mask(segment_mask(segs), 2, None, 256, 256, device="cpu")
    flex.set_compiled(True)
    try:
        compiled = flex.block_mask(segment_mask(segs), 2, 256, 256, torch.device("cpu"))
    finally:
        flex.set_compiled(False)
    assert "batch 2, 256x256 slots" in compiled_shapes()["create_block_mask"]  # built by the compiled builder
    assert torch.equal(_block_kinds(compiled), _block_kinds(eager))


@pytest.mark.parametrize("start, length", [(0, 64), (128, 64), (200, 1)])
@pytest.mark.parametrize("bias", [False, True])
def test_eager_attention_equals_flex_attention(start, length, bias):
    """The eager path (mask_mod and score_mod evaluated densely, then SDPA) computes what
    FlexAttention computes under the same sliced session mask, GQA and segment bias included."""
    from torch.nn.attention.flex_attention import flex_attention

    from minirun.engine.session import mask_rows
    from minirun.layers import flex
    from minirun.layers.masks import segment_bias

    slots = 384
    segs = _session_segments(slots)
    full = flex.block_mask(segment_mask(segs), 2, slots, slots, torch.device("cpu"))
    start_t = torch.tensor(start)
    part = mask_rows(full, segs, 2, start_t, length)
    log_weights = torch.log(torch.tensor([[1.0, 0.5, 0.3, 0.2], [1.0, 0.7, 0.3, 1.0]]))
    score_mod = segment_bias(segs, log_weights, start_t) if bias else None
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 6, length, 16), torch.randn(2, 2, slots, 16), torch.randn(2, 2, slots, 16)
    got = flex.attention(q, k, v, part, score_mod)
    want = flex_attention(q, k, v, score_mod=score_mod, block_mask=part, enable_gqa=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if bias and start >= 192:  # generated (SHARED) queries attend to paraphrases: the bias must show
        plain = flex.attention(q, k, v, part, None)
        assert not torch.allclose(got, plain, atol=1e-3)


@pytest.mark.parametrize("start", [192, 300])
@pytest.mark.parametrize("bias", [False, True])
def test_one_query_step_folds_query_heads_inside_a_compiled_graph(start, bias):
    """In a compiled decode step, one query per row runs with each kv head's query heads along the query
    axis (`flex.one_query_flex`): the same attention as FlexAttention's GQA, segment bias included."""
    from torch.nn.attention.flex_attention import flex_attention

    from minirun.engine.session import mask_rows
    from minirun.layers import flex
    from minirun.layers.masks import segment_bias

    slots = 384
    segs = _session_segments(slots)
    full = flex.block_mask(segment_mask(segs), 2, slots, slots, torch.device("cpu"))
    start_t = torch.tensor(start)
    part = mask_rows(full, segs, 2, start_t, 1)
    log_weights = torch.log(torch.tensor([[1.0, 0.5, 0.3, 0.2], [1.0, 0.7, 0.3, 1.0]]))
    score_mod = segment_bias(segs, log_weights, start_t) if bias else None
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 6, 1, 16), torch.randn(2, 2, slots, 16), torch.randn(2, 2, slots, 16)
    traced: list[bool] = []

    def step(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        traced.append(torch.compiler.is_compiling())
        return flex.attention(q, k, v, part, score_mod)

    got = torch.compile(step, dynamic=False, fullgraph=True)(q, k, v)
    want = flex_attention(q, k, v, score_mod=score_mod, block_mask=part, enable_gqa=True)
    assert traced == [True]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flex.one_query_flex(q, k, v, part, score_mod), want, rtol=1e-5, atol=1e-5)
    if bias:  # generated (SHARED) queries attend to paraphrases: the bias must show
        assert not torch.allclose(got, flex_attention(q, k, v, block_mask=part, enable_gqa=True), atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_an_additive_mask_gives_sdpa_the_same_bits_as_booleans(dtype):
    """`additive` is what SDPA makes of booleans itself: 0 / -inf in the query's dtype, with the same
    outputs to the bit, rows that see nothing included (one-query decode and multi-query chunks)."""
    torch.manual_seed(0)
    mask = torch.rand(4, 1, 3, 10) < 0.5
    mask[0] = False  # a row that sees nothing
    bias = additive(mask, dtype)
    assert bias.dtype == dtype and torch.equal(bias == 0, mask) and torch.isneginf(bias[~mask]).all()
    assert torch.equal(additive(bias.float(), dtype), bias)  # a float bias is only cast
    for queries in (1, 3):
        q = torch.randn(4, 6, queries, 16, dtype=dtype)
        k, v = (torch.randn(4, 2, 10, 16, dtype=dtype) for _ in range(2))
        m = mask[:, :, :queries]
        expected = F.scaled_dot_product_attention(q, k, v, attn_mask=m, enable_gqa=True)
        got = F.scaled_dot_product_attention(q, k, v, attn_mask=additive(m, dtype), enable_gqa=True)
        assert torch.equal(got, expected)
