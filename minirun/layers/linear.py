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
20x slower). GPUs keep F.linear.

Every other CPU product (eager ones: eval's default path; compiled: prefill chunks and decode steps
of more rows than the streaming form wins for) can run oneDNN on a weight copy reordered once into
its blocked layout (`set_packed`): F.linear hands float32 to MKL, which on an AMD EPYC runs 1.2x
slower for 128 rows and 2-3x slower for a few rows, and reorders a bfloat16 weight on every call.
The copy doubles the weights' memory, so the engine switches it on only where the machine measured
it faster and the copy fits (`layers.calibrate.packed_linear`).
"""
from __future__ import annotations

import functools
import weakref

import torch
import torch.nn.functional as F
from torch import nn

STREAM_MAX_ROWS = 10  # default crossover with BLAS (AMD EPYC, 2 cores); `layers.calibrate` measures each machine's

_max_rows: dict[torch.dtype, int] = {}
_packed: dict[torch.dtype, bool] = {}


def set_stream_max_rows(dtype: torch.dtype, rows: int) -> None:
    """Stream products of at most `rows` rows for weights of `dtype` (set before the first compile)."""
    _max_rows[dtype] = rows


def stream_max_rows(dtype: torch.dtype) -> int:
    return _max_rows.get(dtype, STREAM_MAX_ROWS)


@functools.cache
def packing_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether oneDNN's reordered-weight linear runs for `dtype` here: the torch build must have it
    (x86 builds do) and the CPU must support the dtype's path (float16 needs avx512_fp16 or
    avx_ne_convert, which an AMD EPYC Zen 4 lacks); probed once per dtype on a tiny product."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return False
    try:
        with torch.inference_mode():
            packed_product(torch.ones(1, 16, dtype=dtype), pack(torch.ones(16, 16, dtype=dtype)))
    except RuntimeError:
        return False
    return True


def set_packed(dtype: torch.dtype, enabled: bool) -> None:
    """Run CPU products of `dtype` that do not stream on a reordered weight copy (see the module docstring)."""
    _packed[dtype] = enabled and packing_available(dtype)


def is_packed(dtype: torch.dtype) -> bool:
    return _packed.get(dtype, False)


def pack(weight: torch.Tensor) -> torch.Tensor:
    """`weight` [N, K] reordered into oneDNN's blocked layout (an opaque tensor for `packed_product`)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach())


def packed_product(rows: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """rows [M, K] @ weight.T (+ bias) with the weight from `pack`: [M, N]."""
    return torch.ops.mkldnn._linear_pointwise(rows.contiguous(), packed, bias, "none", [], "")


_copies: dict[int, tuple[weakref.ref, tuple, torch.Tensor]] = {}  # id(weight) -> (weight, its state, packed copy)


def packed_copy(weight: torch.Tensor) -> torch.Tensor:
    """`pack(weight)`, made once per weight and redone when the weight is written to; freed with it."""
    state = (weight.data_ptr(), weight._version, weight.dtype, weight.shape)
    entry = _copies.get(id(weight))
    if entry is not None and entry[0]() is weight and entry[1] == state:
        return entry[2]
    if entry is None or entry[0]() is not weight:  # first sight of this weight: drop the copy with it
        weakref.finalize(weight, _copies.pop, id(weight), None)
    _copies[id(weight)] = (weakref.ref(weight), state, pack(weight))
    return _copies[id(weight)][2]


@torch.library.custom_op("minirun::packed_linear", mutates_args=())
def packed_linear(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """rows [M, K] @ weight.T (+ bias) on `weight`'s packed copy; an opaque call inside compiled
    graphs too (the copy cannot be a graph input), where Inductor keeps the weight's identity."""
    return packed_product(rows, packed_copy(weight), bias)


@packed_linear.register_fake
def _(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return rows.new_empty(rows.shape[0], weight.shape[0])


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
        if streams(x):
            y = stream_product(rows, self.weight, self.bias)
        elif is_packed(x.dtype) and x.device.type == "cpu":
            y = packed_linear(rows, self.weight, self.bias)
        else:
            y = F.linear(rows, self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)
