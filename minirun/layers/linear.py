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

STREAM_MAX_ROWS = 10  # default crossover with BLAS (AMD EPYC, 2 cores); `layers.calibrate` measures each machine's

_max_rows: dict[torch.dtype, int] = {}


def set_stream_max_rows(dtype: torch.dtype, rows: int) -> None:
    """Stream products of at most `rows` rows for weights of `dtype` (set before the first compile)."""
    _max_rows[dtype] = rows


def stream_max_rows(dtype: torch.dtype) -> int:
    return _max_rows.get(dtype, STREAM_MAX_ROWS)


def _row_major(rows: torch.Tensor) -> torch.Tensor:
    """`rows` [M, K] as a realised row-major buffer inside an Inductor graph (identity in value)."""
    import torch._inductor.inductor_prims  # noqa: F401 - registers the prim below

    return torch.ops.prims.inductor_force_stride_order(rows, [rows.shape[1], 1])


def streams(x: torch.Tensor) -> bool:
    """Whether `x @ W.T` takes the streaming form: compiling, on CPU, with few rows."""
    rows = x.numel() // x.shape[-1]
    return torch.compiler.is_compiling() and x.device.type == "cpu" and rows <= stream_max_rows(x.dtype)


def stream_product(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """rows [M, K] @ weight[N, K].T (+ bias) as a broadcast multiply and a sum over K: [M, N]."""
    y = (weight[:, None, :] * _row_major(rows)[None]).sum(-1).t()  # [N, M] reduced over K, viewed [M, N]
    return y if bias is None else y + bias


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # [M, K]: a 3-D input of one row takes a ~15x slower bfloat16 kernel
        y = stream_product(rows, self.weight, self.bias) if streams(x) else F.linear(rows, self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)
