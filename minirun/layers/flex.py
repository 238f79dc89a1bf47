"""Attention entry points, eager or compiled, chosen once per process.

Compiled, attention runs FlexAttention's block-sparse kernels. Eager, the same mask_mod and
score_mod are evaluated densely once per step (every layer reuses the mask) and handed to SDPA:
exact, and far faster than eager FlexAttention, whose fallback traces and vmaps the mask in every
layer (a SmolLM2-135M decode step on 2 CPU cores: 390 ms with it, 64 ms with SDPA).
`set_compiled(True)` switches attention and mask building.

The dense path has four kernels: SDPA, `folded_attention` (SDPA with each kv head's query heads
as one tile), `grouped_attention` (two batched products in float32) and `split_attention` (SDPA
twice: a shared head once for all rows, each row's own slots, merged). Which is faster depends on
the CPU and the shape (bfloat16 one-query attention, 40 rows over 384 slots on an AMD EPYC: SDPA's
CPU kernel 8 to 15 ms, the products under 3 ms), so the engine installs a measured chooser with
`set_dense_kernel`; the default is SDPA. Only the last two can read a few-shot head that every row
shares once for the whole batch rather than once per row.
"""
from __future__ import annotations

import warnings
import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import _DEFAULT_SPARSE_BLOCK_SIZE, BlockMask, create_block_mask, flex_attention

from minirun.layers.compiled import Compiled, raise_torch_limit
from minirun.layers.masks import additive, fold_query_heads, fold_query_heads_score, index_grids, materialize

warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")

BLOCK = _DEFAULT_SPARSE_BLOCK_SIZE  # BlockMask granularity (128): masks are built over whole blocks

DenseChooser = Callable[[torch.dtype, int, int, int, int, int, int, int], str]  # see set_dense_kernel


def _always_sdpa(dtype: torch.dtype, rows: int, heads: int, kv_heads: int, head_dim: int, queries: int,
                 keys: int, shared: int) -> str:
    return "sdpa"


_state: dict = {"compiled": False, "dense_kernel": _always_sdpa}
# Per mask: (score_mod, dense mask, kernel), made by the first layer that attends under it and reused by the
# rest of the forward; held weakly, so it goes with the mask.
_dense: weakref.WeakKeyDictionary[BlockMask, tuple[Callable | None, torch.Tensor, str]] = weakref.WeakKeyDictionary()
_compiled_flex = Compiled(
    flex_attention, "FlexAttention",
    lambda q, k, v, score_mod=None, block_mask=None, **_: (f"q {'x'.join(map(str, q.shape))}, "
                                                           f"kv {'x'.join(map(str, k.shape))}{', bias' if score_mod else ''}"),
    dynamic=False)
_compiled_block_mask = Compiled(
    create_block_mask, "create_block_mask",
    lambda mask_mod, batch, heads, q_len, kv_len, device=None: f"batch {batch}, {q_len}x{kv_len} slots", dynamic=False)


def set_compiled(enabled: bool) -> None:
    """Use compiled FlexAttention kernels (fast) or the eager reference path (kernels cached on disk: see
    `minirun.layers.compiled`)."""
    _state["compiled"] = enabled
    if enabled:
        raise_torch_limit()


def is_compiled() -> bool:
    return _state["compiled"]


def set_dense_kernel(choose: DenseChooser | None) -> None:
    """Install `choose(dtype, rows, heads, kv_heads, head_dim, queries, keys, shared)` -> "sdpa",
    "folded", "grouped" or "split", asked once per mask (not per layer) for dense attention on CPU; None restores SDPA always."""
    _state["dense_kernel"] = choose or _always_sdpa


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask,
              score_mod: Callable | None = None, shared: int = 0) -> torch.Tensor:
    """q [B, H, T, D] against k/v [B, Hkv, S, D] under `block_mask`; GQA handled by the kernel. The
    first `shared` slots hold the same keys and values in every row (see `grouped_attention`)."""
    if torch.compiler.is_compiling():  # traced into a compiled graph (the decode step)
        if q.shape[2] == 1 and q.shape[1] > k.shape[1]:
            return one_query_flex(q, k, v, block_mask, score_mod)
        return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=True)
    live = block_mask.seq_lengths[1]  # keys past it are unwritten cache slots (session.mask_rows), never visible
    if _state["compiled"] and live == k.shape[2]:
        return _compiled_flex(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=True,
                              kernel_options=kernel_options(q.device.type, q.shape[2]))
    cached = _dense.get(block_mask)
    if cached is None or cached[0] is not score_mod:
        B, H, T, D = q.shape
        shape = (q.dtype, B, H, k.shape[1], D, T, live, shared)
        kernel = _state["dense_kernel"](*shape) if q.device.type == "cpu" else "sdpa"
        mask = dense_mask(block_mask, score_mod, q, live)
        if kernel == "split":  # SDPA where the head is not plainly visible to every query
            own = split_bias(mask, shared, q.dtype, H // k.shape[1]) if 0 < shared < live else None
            kernel, mask = ("sdpa", mask) if own is None else ("split", own)
        if kernel == "sdpa":
            mask = additive(mask, q.dtype)
        elif kernel == "folded":
            mask = fold_bias(mask, H // k.shape[1], q.dtype)
        cached = _dense[block_mask] = (score_mod, mask, kernel)
    k, v = k[:, :, :live], v[:, :, :live]
    if cached[2] == "folded":
        return folded_attention(q, k, v, cached[1])
    if cached[2] == "grouped":
        return grouped_attention(q, k, v, cached[1], shared)
    if cached[2] == "split":
        return split_attention(q, k, v, cached[1], shared)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=cached[1], enable_gqa=True)


def one_query_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask,
                   score_mod: Callable | None = None) -> torch.Tensor:
    """FlexAttention for one query per row, q [B, H, 1, D], with each kv head's G = H / Hkv query heads
    laid along the query axis ([B, Hkv, G, D], `masks.fold_query_heads`): K and V are read once per kv
    head, not once per query head. The same attention, computed in fewer, larger tiles: Inductor's CPU
    template took 62 against 93 µs (bfloat16, 9 heads over 3 kv heads, 512 slots, 1 row on 2 Zen 4 cores)
    and 170 against 390 µs (5 rows); on CUDA it picks the decoding kernel, which it otherwise keeps for a
    power-of-two G (SmolLM2's 3 took the main kernel, one program per row and query head)."""
    B, H, _, D = q.shape
    kv_heads = k.shape[1]
    groups = H // kv_heads
    folded = forward_only(block_mask, fold_query_heads(block_mask.mask_mod, groups),
                          (groups, block_mask.seq_lengths[1]))
    score = None if score_mod is None else fold_query_heads_score(score_mod, groups)
    out = flex_attention(q.reshape(B, kv_heads, groups, D), k, v, score_mod=score, block_mask=folded)
    return out.reshape(B, H, 1, D)


def kernel_options(device_type: str, queries: int) -> dict | None:
    """FlexAttention's options for `queries` per row: on CUDA, chunks of several queries take the main
    kernel. Inductor picks its decoding kernel for under 128 queries where the query heads per kv head
    are a power of two, with a query tile of next_pow2(queries x heads per kv head); past the mask's
    128-query blocks (a 64-token chunk of Llama-3.2-1B: 64 x 4) it has no valid config and compiling
    fails (`NoValidChoicesError`, torch 2.11 on an H200). A one-token decode step keeps the decoding kernel."""
    return {"FORCE_USE_FLEX_ATTENTION": True} if device_type == "cuda" and queries > 1 else None


def fold_bias(mask: torch.Tensor, groups: int, dtype: torch.dtype) -> torch.Tensor:
    """`folded_attention`'s bias [B, 1, G*T, S] from a dense mask [B, 1, T, S] (booleans, or a float
    bias): SDPA's additive form, repeated for each of the `groups` query heads that share a kv head."""
    return additive(mask, dtype).repeat(1, 1, groups, 1)


def folded_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SDPA's result for q [B, H, T, D] over k/v [B, Hkv, S, D], each kv head's G = H / Hkv query
    heads stacked as one tile of G*T queries, with `fold_bias`'s mask.

    SDPA's CPU kernel with `enable_gqa` takes one (row, query head) tile at a time; with one query per
    row (a decode step) that is mostly per-tile cost, paid G times per kv head. Folded, each tile
    carries G queries (bfloat16, 5 rows x 9 heads over 160 keys on an AMD EPYC Zen 4: 0.13 vs
    0.52 ms a layer). Each query still sums over its own keys alone: the same attention.
    """
    B, H, T, D = q.shape
    kv_heads = k.shape[1]
    rows = q.reshape(B, kv_heads, H // kv_heads * T, D)  # [B, Hkv, G*T, D]: query head h = kv head h // G
    return F.scaled_dot_product_attention(rows, k, v, attn_mask=bias).reshape(B, H, T, D)


def split_bias(mask: torch.Tensor, shared: int, dtype: torch.dtype, groups: int = 1) -> torch.Tensor | None:
    """`split_attention`'s bias [B, 1, groups*T, S - shared] for the slots after a head of `shared`
    slots, from a dense mask [B, 1, T, S] (booleans, or a float bias), repeated for the `groups`
    query heads of a kv head (`fold_bias`): None unless every query sees every head slot unbiased and
    at least one of its own slots, which the merge relies on."""
    head, own = mask[..., :shared], mask[..., shared:]
    if mask.dtype == torch.bool:
        if not (head.all() and own.any(-1).all()):
            return None
    elif not ((head == 0).all() and (own > float("-inf")).any(-1).all()):
        return None
    return fold_bias(own, groups, dtype)


def split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, own_bias: torch.Tensor,
                    shared: int) -> torch.Tensor:
    """SDPA's result for q [B, H, T, D] over k/v [B, Hkv, S, D] whose first `shared` slots hold the
    same keys and values in every row and are visible to every query (`split_bias` checks), with
    `own_bias` [B, 1, G*T, S - shared] over the rest (G = H / Hkv query heads per kv head).

    SDPA pays per (row, head) tile, so one query per row over a long head is mostly overhead: here
    the head is one SDPA call with every row's queries against row 0's copy, the rows' own slots a
    second with each kv head's query heads folded into one tile (as `folded_attention`), and the two
    softmaxes are merged by their log-sum-exp: the head's share of the mass is
    sigmoid(lse_head - lse_own). The merge runs in float32 (one more rounding of each part in
    bfloat16 than SDPA alone, within transformers' 1e-2). CPU only: it needs the flash kernel's lse.
    Folding the own part (bfloat16, 64 one-query rows over a 129-slot head and 25 own slots, AMD
    EPYC Zen 4: 1.06 vs 1.90 ms a layer) moved float32 results by ~1e-7 and no bfloat16 one-query bit.
    """
    B, H, T, D = q.shape
    kv_heads = k.shape[1]
    rows = q.reshape(B, kv_heads, H // kv_heads * T, D)  # [B, Hkv, G*T, D]
    stacked = rows.transpose(0, 1).reshape(1, kv_heads, -1, D)  # [1, Hkv, B*G*T, D]: every row's queries
    head, head_lse = _flash_with_lse(stacked, k[:1, :, :shared], v[:1, :, :shared])
    head = head.view(kv_heads, B, -1, D).transpose(0, 1)  # [B, Hkv, G*T, D]
    head_lse = head_lse.view(kv_heads, B, -1).transpose(0, 1)  # [B, Hkv, G*T]
    own, own_lse = _flash_with_lse(rows, k[:, :, shared:], v[:, :, shared:], own_bias)
    weight = torch.sigmoid(head_lse - own_lse)[..., None]
    return torch.lerp(own.float(), head.float(), weight).to(q.dtype).reshape(B, H, T, D)


def _flash_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's CPU flash kernel (GQA by head count), returning its output and the float32 log-sum-exp [B, H, T]."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias)


def grouped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                      shared: int = 0) -> torch.Tensor:
    """SDPA's result for q [B, H, T, D], k/v [B, Hkv, S, D] and mask [B, 1, T, S] (booleans, or a
    float bias with -inf where hidden) as batched products: each kv head's query heads are stacked as
    rows of one product, so K and V are read once, not repeated per query head.

    Where the first `shared` slots are the same in every row (a few-shot head written once), their
    keys and values are read from row 0 only: one product per kv head takes every row's queries
    against them, instead of B small ones over B copies. The scores of both parts are softmaxed
    together, so this is the same attention, only summed in two parts.

    Computed in float32 whatever the dtype: bfloat16 scores and probabilities (transformers' eager
    attention) are 1.6× further from float32 than SDPA's CPU kernel, in float32 they are as close.
    A query that sees nothing gets an average over its keys instead of NaN: it is padding, and a NaN
    would reach visible rows through P @ V later.
    """
    B, H, T, D = q.shape
    kv_heads, S = k.shape[1], k.shape[2]
    group = H // kv_heads
    P = shared if B > 1 else 0  # one row: nothing to share
    rows = q.reshape(B, kv_heads, group * T, D).float()  # [B, Hkv, G*T, D]
    scores = torch.matmul(rows, k[:, :, P:].float().transpose(-1, -2))  # [B, Hkv, G*T, S-P]
    if P:
        stacked = rows.transpose(0, 1).reshape(kv_heads, B * group * T, D)  # every row's queries, per kv head
        head = torch.matmul(stacked, k[0, :, :P].float().transpose(-1, -2))  # [Hkv, B*G*T, P]
        scores = torch.cat([head.view(kv_heads, B, group * T, P).transpose(0, 1), scores], dim=-1)
    scores = scores.view(B, kv_heads, group, T, S) * D ** -0.5  # [B, Hkv, G, T, S]
    floor = torch.finfo(torch.float32).min
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask[:, :, None], floor)
    else:
        scores = (scores + mask[:, :, None].float()).clamp_(min=floor)
    probs = scores.softmax(-1).view(B, kv_heads, group * T, S)
    out = torch.matmul(probs[..., P:], v[:, :, P:].float())  # [B, Hkv, G*T, D]
    if P:
        head_probs = probs[..., :P].transpose(0, 1).reshape(kv_heads, B * group * T, P)
        out += torch.matmul(head_probs, v[0, :, :P].float()).view(kv_heads, B, group * T, D).transpose(0, 1)
    return out.view(B, H, T, D).to(q.dtype)


def dense_mask(block_mask: BlockMask, score_mod: Callable | None, q: torch.Tensor, kv_len: int) -> torch.Tensor:
    """SDPA's attn_mask [B, 1, T, S] for q [B, H, T, D]: the mask_mod's booleans, or with a score_mod
    its bias (the score_mod applied to 0) where visible and -inf elsewhere."""
    B, _, T, _ = q.shape
    visible = materialize(block_mask.mask_mod, B, T, kv_len, q.device)[:, None]  # [B, 1, T, S]
    if score_mod is None:
        return visible
    bias = score_mod(torch.zeros((), dtype=q.dtype, device=q.device), *index_grids(B, T, kv_len, q.device))
    return bias.to(q.dtype).expand(B, 1, T, kv_len).masked_fill(~visible, float("-inf"))


def block_mask(mask_mod: Callable, batch: int, q_len: int, kv_len: int, device: torch.device) -> BlockMask:
    """Build a BlockMask; compiled (no dense Q×KV temporary) when q_len is whole blocks.

    torch 2.13's Inductor emits C++ that does not compile for a partial query block on CPU (a
    VecMask<int>/VecMask<float> mismatch), so the session always builds over whole blocks. Eager,
    attention evaluates the mask_mod densely anyway, so the block structure is not computed at all
    (`unstructured_block_mask`): building it cost 36 ms per 40-row session on 2 CPU cores.
    """
    if not _state["compiled"] and not torch.compiler.is_compiling():
        return unstructured_block_mask(mask_mod, batch, q_len, kv_len, device)
    use_compiled = _state["compiled"] and q_len % BLOCK == 0 and not torch.compiler.is_compiling()
    fn = _compiled_block_mask if use_compiled else create_block_mask
    return forward_only(fn(mask_mod, batch, None, q_len, kv_len, device=device))


def forward_only(mask: BlockMask, mask_mod: Callable | None = None,
                 seq_lengths: tuple[int, int] | None = None) -> BlockMask:
    """`mask`'s blocks without their query-block transpose (q_num_blocks, q_indices), which only a
    backward pass reads, optionally with another `mask_mod` and `seq_lengths` over the same blocks. A
    BlockMask sliced for a decode step or a prefill chunk rebuilds that transpose (a sort) unless the
    mask it is sliced from has none: 300 of the 320 µs a slice took on 2 CPU cores."""
    return BlockMask.from_kv_blocks(mask.kv_num_blocks, mask.kv_indices, mask.full_kv_num_blocks,
                                    mask.full_kv_indices, BLOCK_SIZE=mask.BLOCK_SIZE,
                                    mask_mod=mask_mod or mask.mask_mod, seq_lengths=seq_lengths or mask.seq_lengths,
                                    compute_q_blocks=False)


def unstructured_block_mask(mask_mod: Callable, batch: int, q_len: int, kv_len: int,
                            device: torch.device) -> BlockMask:
    """A BlockMask that marks every block partly visible, leaving all masking to `mask_mod`: correct
    for any kernel, sparse for none, and free to build (no mask_mod evaluation)."""
    q_blocks, kv_blocks = -(-q_len // BLOCK), -(-kv_len // BLOCK)
    counts = torch.full((batch, 1, q_blocks), kv_blocks, dtype=torch.int32, device=device)
    indices = torch.arange(kv_blocks, dtype=torch.int32, device=device).expand(batch, 1, q_blocks, kv_blocks)
    return BlockMask.from_kv_blocks(counts, indices.contiguous(), BLOCK_SIZE=BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(q_len, kv_len), compute_q_blocks=False)
