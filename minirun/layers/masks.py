"""Attention masks as FlexAttention `mask_mod` functions over cache slots.

Every row of a batch carries a segment id per cache slot:
  PAD (-1)   padding: never visible to other tokens;
  SHARED (0) prompt prefix and generated tokens: visible to every later token, and a SHARED
             query sees every earlier non-padding token (this is what fuses paraphrases);
  k > 0      paraphrase segment k: sees SHARED tokens and earlier tokens of segment k only;
  k <= BRANCH a branch (BRANCH - k, from 0): sees every earlier non-branch token and its own
             branch, never another branch; continuations scored side by side after one prompt.
Plain causal attention is the special case where every slot is SHARED. Queries and keys are
indexed by cache slot, never by RoPE position, so packed paraphrases may share positions.
"""
from __future__ import annotations

from typing import Callable

import torch

PAD = -1
SHARED = 0
BRANCH = -2


def branch(k: int) -> int:
    """The segment id of branch k (k = 0, 1, ...)."""
    return BRANCH - k

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
ScoreMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def segment_mask(segments: torch.Tensor) -> MaskMod:
    """mask_mod for per-slot segment ids `segments` [B, S] (causal in slot order)."""

    def mask_mod(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        seg_q, seg_kv = segments[b, q], segments[b, kv]
        fused = (seg_q == SHARED) | ((seg_q <= BRANCH) & (seg_kv > SHARED))  # sees every paraphrase
        visible = (seg_kv != PAD) & ((seg_kv == SHARED) | fused | (seg_kv == seg_q))
        # A query always sees itself, so no row is fully masked (fully masked rows give NaN).
        return (kv <= q) & (visible | (kv == q))

    return mask_mod


def offset_queries(mask_mod: MaskMod, offset: torch.Tensor) -> MaskMod:
    """Shift query indices by `offset` (a tensor, so compiled graphs are reused across steps)."""

    def shifted(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return mask_mod(b, h, q + offset, kv)

    return shifted


def fold_query_heads(mask_mod: MaskMod, groups: int) -> MaskMod:
    """`mask_mod` for one query per row seen with each kv head's `groups` query heads laid along the
    query axis: folded query i of kv head h is query head h * groups + i, at query index 0."""

    def folded(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return mask_mod(b, h * groups + q, torch.zeros_like(q), kv)

    return folded


def fold_query_heads_score(score_mod: ScoreMod, groups: int) -> ScoreMod:
    """`fold_query_heads` for a score_mod."""

    def folded(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        return score_mod(score, b, h * groups + q, torch.zeros_like(q), kv)

    return folded


def segment_bias(segments: torch.Tensor, log_weights: torch.Tensor, offset: torch.Tensor) -> ScoreMod:
    """score_mod adding log(w_k) to scores from SHARED or branch queries (the shared suffix, generated or scored
    tokens) to paraphrase segment k.

    `log_weights` [B, N+1] is indexed by segment id; rebalances how much the fused softmax draws
    from each paraphrase. `offset` shifts query indices as in `offset_queries`.
    """

    def score_mod(score: torch.Tensor, b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        seg_q, seg_kv = segments[b, q + offset], segments[b, kv]
        fused = ((seg_q == SHARED) | (seg_q <= BRANCH)) & (seg_kv > SHARED)
        return score + torch.where(fused, log_weights[b, seg_kv.clamp(min=0)], 0.0)

    return score_mod


def index_grids(batch: int, q_len: int, kv_len: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, ...]:
    """FlexAttention's (b, h, q, kv) indices as broadcasting tensors [B,1,1,1], [1,1,1,1], [1,1,Q,1], [1,1,1,KV]:
    a mask_mod or score_mod called on them yields its whole [B, 1, Q, KV] grid at once."""
    b = torch.arange(batch, device=device)[:, None, None, None]
    q = torch.arange(q_len, device=device)[None, None, :, None]
    kv = torch.arange(kv_len, device=device)[None, None, None, :]
    return b, torch.zeros_like(b[:1]), q, kv


def materialize(mask_mod: MaskMod, batch: int, q_len: int, kv_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Dense boolean mask [B, Q, KV]: for tests, pictures and the eager attention path (flex.py)."""
    return mask_mod(*index_grids(batch, q_len, kv_len, device)).expand(batch, 1, q_len, kv_len)[:, 0]


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as the bias SDPA would make of it (0 where visible, -inf elsewhere) in `dtype`;
    a float bias is cast. Made once per step for every layer: SDPA given booleans converts them in
    each call, and on CPU runs slower with them (bfloat16, 150 one-query rows over 170 keys: 3.9 vs
    1.6 ms a layer; the same bits, fully masked rows included)."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
