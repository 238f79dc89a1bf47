"""The preallocated key/value cache: allocated once, written in place, never grown within a generation."""
from __future__ import annotations

import torch
from torch import nn


def token_bytes(num_layers: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token of one row holds across all layers: a batch's cache is this times its rows
    times its slots (each row holds every slot, a shared head's included), what a plan of batch sizes needs."""
    return 2 * num_layers * kv_heads * head_dim * dtype.itemsize


class KVCache(nn.Module):
    """Keys and values of one layer, [batch, kv_heads, max_seq_len, head_dim].

    Registered buffers (not plain attributes) so CUDA-graph capture treats them as static state.
    `k` and `v` may be views of the first rows and slots of a larger allocation (`reset`).
    `shared`: how many leading slots hold the same keys and values in every row (a head written once
    for all rows, see `update`), so dense attention may read them from one row for all.
    """

    def __init__(self, batch: int, kv_heads: int, max_seq_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device):
        super().__init__()
        shape = (batch, kv_heads, max_seq_len, head_dim)
        # Not zeroed here: `reset` zeroes what a compiled step reads, and eager attention reads only
        # written slots. Zeroing touched every page of a fresh allocation (an eval batch's 150 rows x 384
        # slots, 1.33 GB for SmolLM2: 1.2 s of page faults on an Intel Xeon VM); now only written ones are.
        self.register_buffer("k", torch.empty(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.empty(shape, dtype=dtype, device=device), persistent=False)
        self.allocation = (self.k, self.v)  # what `k` and `v` view
        self.shared = 0

    def reset(self, batch: int, max_seq_len: int, exact: bool) -> bool:
        """Hold a new generation of `batch` rows x `max_seq_len` slots in these buffers, if they can.

        `exact` (compiled): only an allocation of that very shape is reused (a CUDA graph replays
        against the buffers it was captured with, and shapes are guarded), and it is zeroed, as masked
        slots inside a partly visible block still enter FlexAttention's P @ V with weight 0, which a
        NaN left by an earlier generation would turn into NaN. Otherwise (eager: dense attention reads
        only the slots this generation wrote) any allocation at least as large is viewed as it is:
        neither reallocated nor cleared, which for an evaluation batch of 150 rows cost ~0.5 s.
        """
        k, v = self.allocation
        rows, _, slots, _ = k.shape
        fits = (rows, slots) == (batch, max_seq_len) if exact else rows >= batch and slots >= max_seq_len
        if not fits:
            return False
        with torch.inference_mode():  # the buffers may be inference tensors (made by an earlier session)
            if exact:
                k.zero_()
                v.zero_()
            self.k, self.v = k[:batch, :, :max_seq_len], v[:batch, :, :max_seq_len]
        self.shared = 0
        return True

    def update(self, slots: torch.Tensor | slice, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k/v [b, kv_heads, T, D] at cache `slots` ([T] indices, or a slice of T consecutive slots:
        a strided copy, where index_copy_ took ~190 µs a call for 150 rows); return the cache rows
        they attend over.

        A batch-1 write into a larger cache broadcasts to every row: a shared prefix is computed
        once and then visible to all rows. A write of b > 1 rows fills the first b (questions' own heads,
        one row each, before `copy_rows` hands them to every prompt of their question).
        """
        rows = k.shape[0]
        keys, values = (self.k, self.v) if rows in (1, self.k.shape[0]) else (self.k[:rows], self.v[:rows])
        if isinstance(slots, slice):
            keys[:, :, slots] = k
            values[:, :, slots] = v
        else:
            keys.index_copy_(2, slots, k.expand(keys.shape[0], -1, -1, -1))
            values.index_copy_(2, slots, v.expand(values.shape[0], -1, -1, -1))
        return self.k[:rows], self.v[:rows]

    def copy_rows(self, sources: torch.Tensor, start: int, end: int) -> None:
        """Row r's slots [start, end) become row `sources[r]`'s, for every row (gathered first, so a row
        may be another's source and its own target)."""
        for buffer in (self.k, self.v):
            buffer[:, :, start:end] = buffer[sources, :, start:end]

    def retain(self, rows: list[int], length: int) -> None:
        """Keep batch rows `rows` (ascending) as rows 0..b-1, their first `length` slots carried over.

        Rows already in place are not copied (dropping the last rows copies nothing); the cache
        becomes a view of its first b rows, so the steps that follow read and write only those. The
        shared slots are not copied either: every row already holds the same keys and values there
        (an evaluation's few-shot head is most of a row: copying it made retiring rows ~10% of a
        per_prompt sweep).
        """
        moved = next((i for i, r in enumerate(rows) if r != i), len(rows))
        if moved < len(rows):
            index = torch.tensor(rows[moved:], device=self.k.device)
            own = slice(self.shared, length)
            for buffer in (self.k, self.v):
                buffer[moved:len(rows), :, own] = buffer[index, :, own]  # gathered first: overlap is safe
        self.k, self.v = self.k[:len(rows)], self.v[:len(rows)]
