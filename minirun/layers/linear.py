"""`Linear`: nn.Linear whose few-row products compile to a weight-streaming kernel on CPU.

A decode step multiplies a handful of rows (one per batch row) by every weight matrix, so its cost
is reading the weights once. On CPU, BLAS's x @ W.T for a few rows streams float32 weights at only
~10 GB/s on 2 cores. Written instead as a broadcast multiply and a sum over the input dimension,
torch.compile's Inductor emits one vectorised reduction per matrix that walks each weight row once
and reuses it from L1 for every input row: for SmolLM2-135M's matrices, ~3x faster than BLAS for
one row and still faster up to 10 rows (bench/README.md, "Why decode is fast on CPU").

The input rows are pinned to a realised row-major buffer first. Left alone, Inductor inlines the
producer (RMSNorm, SiLU·up, the residual add) into the reduction, recomputing it for every output
row, and with several rows it vectorises across rows instead of along the weight row (measured
20x slower). Eager calls, GPUs and many-row products (prefill) keep F.linear, right for them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

STREAM_MAX_ROWS = 10  # measured crossover with BLAS on 2 cores: 1.2-5x faster up to 10 rows, slower from 12


def _row_major(rows: torch.Tensor) -> torch.Tensor:
    """`rows` [M, K] as a realised row-major buffer inside an Inductor graph (identity in value)."""
    import torch._inductor.inductor_prims  # noqa: F401 - registers the prim below

    return torch.ops.prims.inductor_force_stride_order(rows, [rows.shape[1], 1])


def streams(x: torch.Tensor) -> bool:
    """Whether `x @ W.T` takes the streaming form: compiling, on CPU, with few rows."""
    rows = x.numel() // x.shape[-1]
    return torch.compiler.is_compiling() and x.device.type == "cpu" and rows <= STREAM_MAX_ROWS


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not streams(x):
            return F.linear(x, self.weight, self.bias)
        rows = _row_major(x.reshape(-1, x.shape[-1]))  # [M, K]
        y = (self.weight[:, None, :] * rows[None]).sum(-1).t()  # [N, M] reduced over K, viewed [M, N]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)
