"""The preallocated key/value cache: allocated once, written in place, never grown."""
from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    """Keys and values of one layer, [batch, kv_heads, max_seq_len, head_dim].

    Registered buffers (not plain attributes) so CUDA-graph capture treats them as static state.
    """

    def __init__(self, batch: int, kv_heads: int, max_seq_len: int, head_dim: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        shape = (batch, kv_heads, max_seq_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [b, kv_heads, T, D] at cache `slots` [T]; return the cache rows they attend over.

        A batch-1 write into a larger cache broadcasts to every row: a shared prefix is computed
        once and then visible to all rows.
        """
        self.k.index_copy_(2, slots, k.expand(self.k.shape[0], -1, -1, -1))
        self.v.index_copy_(2, slots, v.expand(self.v.shape[0], -1, -1, -1))
        rows = k.shape[0]
        return self.k[:rows], self.v[:rows]
