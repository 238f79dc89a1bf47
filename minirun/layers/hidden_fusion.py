"""Hidden-state fusion: rows in the same group share their newest token's residual stream.

The decoder applies `fuse_newest` after every block from `first_block` on (1-based); the engine
passes a `HiddenFusion` built by `group_fusion`. The decoder knows nothing of questions or
methods, only "rows in these groups are fused from this block on". `HeadMix` does the same once,
after the last block: each group's final states mixed into one row before the vocabulary head.
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
    paraphrases exactly equal to one. Compiled steps take the same product: spelt as a broadcast sum
    (one fused loop, no matrix-product kernel), Inductor's CPU code for the whole decode step gave the
    first group of a batch of several questions wrong states (torch 2.13; alone, the function was right).
    """
    span = min(fusion.span, x.shape[1])
    newest = x[:, -span:].float()  # [B, S, E]
    anchor = newest.index_select(0, fusion.anchor)  # [B, S, E]
    mixed = torch.einsum("bc,cse->bse", fusion.mix, newest - anchor)
    fused = (anchor + mixed).to(x.dtype)
    return fused if span == x.shape[1] else torch.cat([x[:, :-span], fused], dim=1)


@dataclass(frozen=True)
class HeadMix:
    """Rows' final states combined per group before the vocabulary head: group q's logits are
    head(Σ_r mix[q, r]·state_r), one product per group instead of one per row.

    The head is linear, so where a fusion rule is a weighted sum of its rows' logits (a mean, a
    confidence-weighted mean, picking one row) this is the same rule with a group's head computed
    once. `anchor` [Q] is each group's row of largest weight and `group` [B] each row's group.
    """

    mix: torch.Tensor  # [Q, B] float32, rows of a group weighted, other rows 0
    anchor: torch.Tensor  # [Q] long
    group: torch.Tensor  # [B] long


def head_mix(groups: list[list[int]], weights: list[torch.Tensor], device: torch.device) -> HeadMix:
    """The mix of `groups` (row indices, each row in one group) with `weights[q]` [len(groups[q])]."""
    rows = sum(len(g) for g in groups)
    mix = torch.zeros(len(groups), rows)
    anchor = torch.empty(len(groups), dtype=torch.long)
    group = torch.empty(rows, dtype=torch.long)
    for q, (members, w) in enumerate(zip(groups, weights)):
        index = torch.tensor(members)
        mix[q, index] = w.float().cpu()
        anchor[q] = members[int(w.argmax())]  # argmax returns the first of equal weights
        group[index] = q
    return HeadMix(mix.to(device), anchor.to(device), group.to(device))


def retain_head_rows(mixing: HeadMix, rows: torch.Tensor) -> HeadMix:
    """`mixing` for the batch rows `rows` [b] only (ascending, whole groups), groups and rows renumbered."""
    kept = mixing.group[rows]
    groups = torch.unique(kept)  # ascending: the kept groups keep their order
    position = torch.full_like(mixing.group, -1)
    position[rows] = torch.arange(rows.numel(), device=rows.device)
    return HeadMix(mixing.mix[groups][:, rows], position[mixing.anchor[groups]], torch.searchsorted(groups, kept))


def mix_states(states: torch.Tensor, mixing: HeadMix) -> torch.Tensor:
    """states [B, E] -> each group's mixed state [Q, E], computed in float32.

    Written as anchor + mix @ (state − its group's anchor), as `fuse_newest`: a group whose weight is
    all on its anchor, or whose rows are identical, gets the anchor's state bit for bit (so N identical
    paraphrases still answer as one).
    """
    x = states.float()
    anchors = x.index_select(0, mixing.anchor)  # [Q, E]
    return (anchors + mixing.mix @ (x - anchors.index_select(0, mixing.group))).to(states.dtype)
