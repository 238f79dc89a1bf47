"""Ragged batches: the real tokens of a left-padded [B, T] batch, packed as one [1, N] sequence.

Everything a decoder does per token (embedding, norms, products, RoPE, MLP) needs only the real
tokens; attention and the KV cache need the padded [B, T] grid, whose padding the mask hides. An
evaluation batch pads its prompts to the widest, and 24-30 % of its tokens are padding. These pure
functions move tensors between the two layouts; `Ragged` says where the real tokens are.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Ragged:
    """N real tokens of a [rows, width] batch: `index` [N], ascending flat indices into rows x width."""

    index: torch.Tensor
    rows: int
    width: int


def real_tokens(real: torch.Tensor) -> Ragged | None:
    """Where `real` [B, T] (booleans) is true, or None where every token is real (nothing to skip)."""
    if bool(real.all()):
        return None
    return Ragged(real.flatten().nonzero().squeeze(1), real.shape[0], real.shape[1])


def pack(x: torch.Tensor, r: Ragged) -> torch.Tensor:
    """[B, T, ...] -> the real tokens' [1, N, ...]."""
    return x.reshape(r.rows * r.width, *x.shape[2:]).index_select(0, r.index)[None]


def unpack(x: torch.Tensor, r: Ragged) -> torch.Tensor:
    """[1, N, ...] -> [B, T, ...], zeros where the batch is padding."""
    out = x.new_zeros(r.rows * r.width, *x.shape[2:])
    out.index_copy_(0, r.index, x[0])
    return out.view(r.rows, r.width, *x.shape[2:])


def unpack_heads(x: torch.Tensor, r: Ragged) -> torch.Tensor:
    """Per-head states [1, C, N, D] -> [B, C, T, D], zeros where the batch is padding."""
    return unpack(x.transpose(1, 2), r).transpose(1, 2)


def pack_heads(x: torch.Tensor, r: Ragged) -> torch.Tensor:
    """Per-head states [B, C, T, D] -> the real tokens' [1, C, N, D]."""
    return pack(x.transpose(1, 2), r).transpose(1, 2)


def last_of_rows(r: Ragged) -> torch.Tensor:
    """Where each row's last token sits among the packed real tokens, [B]: the row's last column,
    which must be real (a left-padded batch's is)."""
    ends = torch.arange(1, r.rows + 1, device=r.index.device) * r.width - 1
    return torch.searchsorted(r.index, ends)
