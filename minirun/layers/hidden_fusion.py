"""Hidden-state fusion: rows in the same group share their newest token's residual stream.

The decoder applies `fuse_newest` after every block from `first_block` on (1-based); the engine
passes a `HiddenFusion` built by `group_fusion`. The decoder knows nothing of questions or
methods, only "rows in these groups are fused from this block on".
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class HiddenFusion:
    """Fuse rows' newest `span` tokens from block `first_block` (1-based) to the last.

    `mix` [B, B] holds (1 − α)·I + α·(group mean), `anchor` [B] each row's group's first row.
    Both are tensors of fixed shape, so a compiled step serves every question of a batch size.
    `span` is 1 when generating (the newest token); scoring a continuation fuses all its tokens.
    """

    first_block: int
    mix: torch.Tensor  # [B, B] float32
    anchor: torch.Tensor  # [B] long
    span: int = 1


def group_fusion(groups: list[list[int]], alpha: float, first_block: int, device: torch.device) -> HiddenFusion:
    """The fusion of `groups` (row indices, each row in one group) with weight `alpha` on the mean."""
    rows = sum(len(g) for g in groups)
    mix = torch.eye(rows) * (1.0 - alpha)
    anchor = torch.empty(rows, dtype=torch.long)
    for group in groups:
        index = torch.tensor(group)
        mix[index[:, None], index[None, :]] += alpha / len(group)
        anchor[index] = group[0]
    return HiddenFusion(first_block, mix.to(device), anchor.to(device))


def retain_rows(fusion: HiddenFusion, rows: torch.Tensor) -> HiddenFusion:
    """`fusion` for the batch rows `rows` [b] only (ascending, whole groups), renumbered 0..b-1."""
    position = torch.full_like(fusion.anchor, -1)
    position[rows] = torch.arange(rows.numel(), device=rows.device)
    return replace(fusion, mix=fusion.mix[rows][:, rows], anchor=position[fusion.anchor[rows]])


def fuse_newest(x: torch.Tensor, fusion: HiddenFusion) -> torch.Tensor:
    """x [B, T, E] with its last `span` tokens replaced by `mix @ x[:, t]` each, computed in float32.

    Written as anchor + mix @ (x − anchor): the same value, but rows equal to their group's first
    row come out bit-identical (their differences are exactly zero), which keeps N identical
    paraphrases exactly equal to one. A compiled decode step (one token) spells the product as a
    broadcast sum, which the compiler fuses into one loop instead of launching a matrix-product
    kernel; eagerly that broadcast would materialise [B, B, E] (for a 150-row evaluation batch, 52 MB
    in each fused block of every step), so eager steps take the product.
    """
    span = min(fusion.span, x.shape[1])
    newest = x[:, -span:].float()  # [B, S, E]
    anchor = newest.index_select(0, fusion.anchor)  # [B, S, E]
    if span == 1 and torch.compiler.is_compiling():
        mixed = (fusion.mix[:, :, None, None] * (newest - anchor)[None]).sum(1)  # [B, 1, E]
    else:
        mixed = torch.einsum("bc,cse->bse", fusion.mix, newest - anchor)
    fused = (anchor + mixed).to(x.dtype)
    return fused if span == x.shape[1] else torch.cat([x[:, :-span], fused], dim=1)
