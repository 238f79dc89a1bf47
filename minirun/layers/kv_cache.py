"""The preallocated key/value cache: allocated once, written in place, never grown."""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of one layer, [batch, kv_heads, max_seq_len, head_dim].

    Registered buffers (not plain attributes) so CUDA-graph capture treats them as static state.
    `shared`: how many leading slots hold the same keys and values in every row (a head written once
    for all rows, see `update`), so dense attention may read them from one row for all.
    """

    def __init__(self, batch: int, kv_heads: int, max_seq_len: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        shape = (batch, kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.shared = 0

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [b, kv_heads, T, D] at cache `slots` [T]; return the cache rows they attend over.

        A batch-1 write into a larger cache broadcasts to every row: a shared prefix is computed
        once and then visible to all rows.
        """
        self.k.index_copy_(2, slots, k.expand(self.k.shape[0], -1, -1, -1))
        self.v.index_copy_(2, slots, v.expand(self.v.shape[0], -1, -1, -1))
        rows = k.shape[0]
        return self.k[:rows], self.v[:rows]

    def retain(self, rows: list[int], length: int) -> None:
        """Keep batch rows `rows` (ascending) as rows 0..b-1, their first `length` slots carried over.

        Rows already in place are not copied (dropping the last rows copies nothing); the cache
        becomes a view of its first b rows, so the steps that follow read and write only those. The
        shared slots stay shared: every kept row carries them.
        """
        moved = next((i for i, r in enumerate(rows) if r != i), len(rows))
        if moved < len(rows):
            index = torch.tensor(rows[moved:], device=self.k.device)
            for buffer in (self.k, self.v):
                buffer[moved:len(rows), :, :length] = buffer[index, :, :length]  # gathered first: overlap is safe
        self.k, self.v = self.k[:len(rows)], self.v[:len(rows)]
