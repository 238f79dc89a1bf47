"""`Linear`: nn.Linear whose CPU products take whichever of three kernels this machine runs fastest.

- "stream" (compiled graphs only): a few-row product written as a broadcast multiply and a sum over
  the input dimension; torch.compile's Inductor emits one vectorised reduction per matrix that walks
  each weight row once and reuses it from L1 for every input row. On an AMD EPYC, where BLAS's
  few-row float32 products stream weights at ~10 GB/s on 2 cores, this is ~3x faster for one row
  (bench/README.md, "Why decode is fast on CPU"). The input rows are pinned to a realised row-major
  buffer first: left alone, Inductor inlines the producer (RMSNorm, SiLU·up, the residual add) into
  the reduction, recomputing it for every output row, and with several rows it vectorises across
  rows instead of along the weight row (measured 20x slower).
- "packed": oneDNN on a weight copy reordered once into its blocked layout. F.linear hands float32
  to MKL, which on an AMD EPYC runs 1.2x slower for 128 rows and 2-3x slower for a few rows, and
  reorders a bfloat16 weight on every call. The copy doubles the weights' memory.
- "library": F.linear (MKL for float32, oneDNN for bfloat16): on an Intel Xeon with AMX, MKL's
  one-row float32 product reads weights at the machine's full bandwidth, faster than either.

Which wins depends on the CPU kind, the dtype, the row count and whether the product runs inside a
compiled graph (where each opaque packed call costs more), so the engine installs a plan measured
on the machine (`set_plan`, from `layers.calibrate.product_plan`). GPUs take F.linear (cuBLAS) unless
`set_device_stream_rows` asks compiled graphs to stream their few-row products.
"""
from __future__ import annotations

import functools
import weakref

import torch
import torch.nn.functional as F
from torch import nn

KERNELS = ("stream", "packed", "library")
STREAM_MAX_ROWS = 10  # the uncalibrated plan streams up to this many rows when compiled (AMD EPYC, 2 cores)

Plan = dict[int, str]  # {row count measured: kernel}; a product takes the entry of the next row count up
_plans: dict[tuple[torch.dtype, bool], tuple[tuple[int, str], ...]] = {}  # (dtype, compiled) -> sorted plan
_choices: dict[tuple[torch.dtype, bool, int], str] = {}  # memo of `product_kernel`: asked by every eager product
_device_stream = {"rows": 0}  # GPU products of at most this many rows stream inside compiled graphs


def set_device_stream_rows(rows: int) -> None:
    """On a GPU, run products of at most `rows` rows inside compiled graphs as `stream_product` (a
    reduction kernel Inductor writes for the shape) instead of cuBLAS; 0, the default, keeps cuBLAS for
    all. On an H200 cuBLAS ran the Llama-3.2-1B shape's narrow one-row products (q/k/v and o: 48 and 32
    thread blocks on 132 SMs) at 1.8 TB/s against 3.7 for the wide ones (bench/README.md): this is how
    a device run measures the alternative. Set it before the first compile, which bakes it in."""
    if rows < 0:
        raise ValueError(f"stream rows must be 0 or more, got {rows}")
    _device_stream["rows"] = rows


def device_stream_rows() -> int:
    return _device_stream["rows"]


def untuned_plan(compiled: bool) -> Plan:
    """The plan before an engine installs one (a bare layer): stream few rows when compiled, F.linear otherwise."""
    return {STREAM_MAX_ROWS: "stream", STREAM_MAX_ROWS + 1: "library"} if compiled else {1: "library"}


def set_plan(dtype: torch.dtype, compiled: bool, plan: Plan | None) -> None:
    """Run CPU products of `dtype` (inside compiled graphs, or eager) by `plan`; None restores the default.
    A compiled plan must be set before the first compile, which bakes it in. "packed" entries fall back
    to "library" where oneDNN cannot pack this dtype here; "stream" is refused for eager products (the
    broadcast would materialise [N, M, K])."""
    plan = untuned_plan(compiled) if plan is None else plan
    if unknown := set(plan.values()) - set(KERNELS):
        raise ValueError(f"unknown product kernels {sorted(unknown)}: choose from {', '.join(KERNELS)}")
    if not compiled and "stream" in plan.values():
        raise ValueError("eager products cannot stream: the broadcast form only pays inside a compiled graph")
    packable = packing_available(dtype)
    entries = tuple((rows, kernel if kernel != "packed" or packable else "library") for rows, kernel in sorted(plan.items()))
    if _plans.get((dtype, compiled)) != entries:  # every session sets its plan: forget choices only when it changes
        _plans[(dtype, compiled)] = entries
        for key in [k for k in _choices if k[:2] == (dtype, compiled)]:
            del _choices[key]


def current_plan(dtype: torch.dtype, compiled: bool) -> Plan:
    """The plan CPU products of `dtype` follow now (inside compiled graphs, or eager)."""
    entries = _plans.get((dtype, compiled))
    return dict(entries) if entries else untuned_plan(compiled)


def product_kernel(dtype: torch.dtype, rows: int, compiled: bool) -> str:
    """The plan's kernel for a `rows`-row CPU product: the entry of the smallest measured row count at
    or above `rows`, or the largest one's beyond the plan. Memoised for eager calls only: a memo
    written while tracing would change the globals the compiled graph is guarded on, and so
    recompile the next block's identical graph."""
    key, tracing = (dtype, compiled, rows), torch.compiler.is_compiling()
    if not tracing and key in _choices:
        return _choices[key]
    plan = sorted(current_plan(dtype, compiled).items())
    kernel = next((kernel for limit, kernel in plan if rows <= limit), plan[-1][1])
    if not tracing:
        _choices[key] = kernel
    return kernel


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


def kernel_for(x: torch.Tensor) -> str:
    """The kernel `x @ W.T` takes: the plan's for its dtype, row count and context on CPU; elsewhere
    F.linear, or inside a compiled graph "stream" up to `set_device_stream_rows`' row count."""
    rows = x.numel() // x.shape[-1]
    if x.device.type != "cpu":
        return "stream" if torch.compiler.is_compiling() and rows <= _device_stream["rows"] else "library"
    return product_kernel(x.dtype, rows, torch.compiler.is_compiling())


def stream_product(rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """rows [M, K] @ weight[N, K].T (+ bias) as a broadcast multiply and a sum over K: [M, N]."""
    y = (weight[:, None, :] * _row_major(rows)[None]).sum(-1).t()  # [N, M] reduced over K, viewed [M, N]
    return y if bias is None else y + bias


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])  # [M, K]: a 3-D input of one row takes a ~15x slower bfloat16 kernel
        kernel = kernel_for(x)
        if kernel == "stream":
            y = stream_product(rows, self.weight, self.bias)
        elif kernel == "packed" and torch.compiler.is_compiling():
            y = packed_linear(rows, self.weight, self.bias)
        elif kernel == "packed":  # eager: the custom op's dispatch cost ~30 us a call, a quarter of a decode product
            y = packed_product(rows, packed_copy(self.weight), self.bias)
        else:
            y = F.linear(rows, self.weight, self.bias)
        return y.reshape(*x.shape[:-1], self.out_features)
