"""Mask functions checked against a reference built with plain loops."""
from __future__ import annotations

import torch

from minirun.masks import PAD, SHARED, materialize, offset_queries, segment_mask


def reference(segments: list[int]) -> list[list[bool]]:
    """The rule in words: causal; padding invisible; a segment sees itself and shared tokens;
    shared tokens (prefix, generated) see everything earlier; a token always sees itself."""
    n = len(segments)
    out = [[False] * n for _ in range(n)]
    for q in range(n):
        for kv in range(q + 1):
            sq, sk = segments[q], segments[kv]
            out[q][kv] = kv == q or (sk != PAD and (sk == SHARED or sq == SHARED or sk == sq))
    return out


LAYOUTS = [
    [0] * 6,  # plain causal
    [PAD, PAD, 0, 0, 0, 0],  # left padding
    [0, 0, 1, 1, 1, 2, 2, 3, 0, 0],  # prefix, three paraphrases, two generated
    [PAD, 1, 1, 2, 2, 2, 0, 0],  # padded row, no prefix
    [0, 0, PAD, 1, 1, 0],  # prefix, padding, one row paraphrase
]


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
