"""Kernel choices that depend on the machine, measured once per CPU and cached on disk.

Which of two kernels wins differs between CPU kinds: MKL's few-row products are slow on AMD EPYC
and fast on Intel Xeon with AMX, and FlexAttention's C++ template against SDPA moves with the dtype
and the prompt length. So a compiled model times both candidates on its own shapes the first time it
meets a new (CPU model, torch version, dtype, shape) and keeps the answer in
`$MINIRUN_CACHE/calibration.json` (default `~/.cache/minirun`), keyed by the CPU model: a machine of
another kind measures again instead of inheriting a wrong answer. `MINIRUN_CALIBRATE=0` skips the
measuring and uses the defaults (the AMD EPYC figures in bench/README.md).
"""
from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from minirun.layers import flex
from minirun.layers.linear import STREAM_MAX_ROWS, pack, packed_product, packing_available, stream_product

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # what changes which kernels are fast
STREAM_ROWS = (1, 2, 4, 8, 12, 16, 24)  # row counts timed for the streaming-product threshold
PACKED_ROWS = (8, 40, 256)  # products timed for packed weights: decode steps of 8 and 40 rows, a prefill chunk
DEFAULT_PACKED = True  # measured on AMD EPYC (Zen 4): oneDNN on packed weights beat F.linear at every row count
DEFAULT_PREFILL = "sdpa"  # measured on AMD EPYC (Zen 4): SDPA over the written slots beat FlexAttention
DEFAULT_DENSE = "sdpa"  # uncalibrated dense attention: the kernel torch itself picks

_memo: dict[str, Any] = {}


@functools.cache
def _cpuinfo() -> tuple[str, dict[str, bool]] | None:
    """Model name and kernel flags from /proc/cpuinfo, read once per process (every prefill chunk asks)."""
    if not os.path.exists("/proc/cpuinfo"):
        return None
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), platform.processor())
    flags = set(next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), []))
    return model or "cpu", {f: f in flags for f in CPU_FLAGS}


def cpu_facts() -> dict[str, Any]:
    """The CPU model and the flags that decide kernel speed: results move between machine kinds."""
    facts: dict[str, Any] = {"cpu": platform.processor() or "cpu", "cores": os.cpu_count(),
                             "torch_threads": torch.get_num_threads()}
    if (info := _cpuinfo()) is not None:
        facts["cpu"], facts["flags"] = info[0], dict(info[1])
    return facts


def enabled() -> bool:
    return os.environ.get("MINIRUN_CALIBRATE", "1") != "0"


def cache_file() -> Path:
    return Path(os.environ.get("MINIRUN_CACHE", Path.home() / ".cache" / "minirun")) / "calibration.json"


def machine_key() -> str:
    """What a measurement is only true for: the CPU model and its kernel flags, the thread count, torch."""
    facts = cpu_facts()
    flags = ",".join(f for f, present in facts.get("flags", {}).items() if present)
    return f"{facts['cpu']} [{flags}] x{facts['torch_threads']} torch {torch.__version__}"


def measured(name: str, shape: dict[str, Any], measure: Callable[[], dict[str, Any]], default: Any) -> Any:
    """The cached `value` of measurement `name` at `shape` on this machine, measuring it once if new.

    `measure()` returns {"value": ..., plus the timings behind it}; all of it is written to the cache
    file so a reader can see why a kernel was chosen.
    """
    if not enabled():
        return default
    key = f"{machine_key()} | {name} | " + ", ".join(f"{k}={v}" for k, v in sorted(shape.items()))
    if key in _memo:
        return _memo[key]
    path = cache_file()
    entries = json.loads(path.read_text()) if path.is_file() else {}
    if key not in entries:
        entries[key] = {**measure(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(entries, indent=1, sort_keys=True))
        temp.replace(path)  # atomic: a concurrent process sees the old file or the new one
    _memo[key] = entries[key]["value"]
    return _memo[key]


def median_seconds(fn: Callable[[], Any], repeats: int = 15) -> float:
    """Median wall time of `fn` over `repeats` calls after 3 warm-up calls: robust to a noisy machine."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _product_ms(weights: list[torch.Tensor], rows: tuple[int, ...], first: Callable[[torch.Tensor], Any],
                second: Callable[[torch.Tensor], Any]) -> dict[int, tuple[float, ...]]:
    """{rows: (ms of `first(x)`, ms of `second(x)`)} for a random input x of that many rows; each
    multiplies x by every matrix of `weights` (one per block, alike in shape and dtype: a decode step's
    working set, far larger than the L3 cache, as it is in a model; one matrix alone stays cached and
    times the wrong thing)."""
    times = {}
    with torch.inference_mode():
        for m in rows:
            x = torch.randn(m, weights[0].shape[1], dtype=weights[0].dtype)
            times[m] = tuple(round(median_seconds(lambda: fn(x), 7) * 1e3, 3) for fn in (first, second))
    return times


def stream_max_rows(weights: list[torch.Tensor], rows: tuple[int, ...] = STREAM_ROWS) -> int:
    """The most rows for which the compiled streaming product beats BLAS, timed over `weights` (see
    `_product_ms`). The threshold is the last row count before BLAS first wins (0: BLAS always).
    """
    out_features, in_features = weights[0].shape

    def measure() -> dict[str, Any]:
        ws = [w.detach() for w in weights]
        # one graph for all matrices, as in a decode step; `x * 1` gives the products a producer
        streamed = torch.compile(lambda x: [stream_product(x * 1, w) for w in ws], dynamic=False)
        times = _product_ms(ws, rows, lambda x: [F.linear(x, w) for w in ws], streamed)
        limit = 0
        for m in rows:
            if times[m][1] >= times[m][0]:
                break
            limit = m
        return {"value": limit, "ms_blas_vs_stream": times}

    if weights[0].device.type != "cpu":
        return STREAM_MAX_ROWS
    shape = {"dtype": weights[0].dtype, "matrices": f"{len(weights)}x{out_features}x{in_features}"}
    return measured("stream_max_rows", shape, measure, STREAM_MAX_ROWS)


def packed_linear(weights: list[torch.Tensor], rows: tuple[int, ...] = PACKED_ROWS) -> bool:
    """Whether library products run faster on oneDNN-packed weights (`linear.pack`) than with F.linear,
    timed over `weights` (see `_product_ms`) at every row count in `rows`: packed only if it wins at
    all of them."""
    out_features, in_features = weights[0].shape
    dtype = weights[0].dtype

    def measure() -> dict[str, Any]:
        ws = [w.detach() for w in weights]
        copies = [pack(w) for w in ws]
        times = _product_ms(ws, rows, lambda x: [F.linear(x, w) for w in ws],
                            lambda x: [packed_product(x, c) for c in copies])
        return {"value": all(p < b for b, p in times.values()), "ms_blas_vs_packed": times}

    if weights[0].device.type != "cpu" or not packing_available(dtype):
        return False
    shape = {"dtype": dtype, "matrices": f"{len(weights)}x{out_features}x{in_features}"}
    return measured("packed_linear", shape, measure, DEFAULT_PACKED)


def _bucket(n: int) -> int:
    return 1 << (n - 1).bit_length()


def prefill_attention(dtype: torch.dtype, rows: int, heads: int, kv_heads: int, head_dim: int, queries: int) -> str:
    """"sdpa" or "flex": the faster kernel for a compiled prefill chunk of `queries` tokens per row.

    Timed on the second chunk of a causal prompt: FlexAttention over a cache of four chunks
    (block-sparse), SDPA with the dense mask over the two chunks written so far.
    """
    def measure() -> dict[str, Any]:
        live, slots = 2 * queries, max(4 * queries, flex.BLOCK)
        q = torch.randn(rows, heads, queries, head_dim, dtype=dtype)
        k, v = (torch.randn(rows, kv_heads, slots, head_dim, dtype=dtype) for _ in range(2))

        def causal(b: torch.Tensor, h: torch.Tensor, qi: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return kv <= qi + queries

        sparse = flex.block_mask(causal, rows, queries, slots, q.device)
        dense = flex.block_mask(causal, rows, queries, live, q.device)
        with torch.inference_mode():
            times = {"flex": median_seconds(lambda: flex.attention(q, k, v, sparse)),
                     "sdpa": median_seconds(lambda: flex.attention(q, k, v, dense))}
        return {"value": min(times, key=times.get), "ms": {n: round(t * 1e3, 4) for n, t in times.items()}}

    rows = _bucket(rows)  # measured at the next power of two: few shapes to time
    shape = {"dtype": dtype, "rows": rows, "heads": f"{heads}/{kv_heads}x{head_dim}", "queries": queries}
    return measured("prefill_attention", shape, measure, DEFAULT_PREFILL)


def dense_attention(dtype: torch.dtype, rows: int, heads: int, kv_heads: int, head_dim: int, queries: int,
                    keys: int, shared: int = 0) -> str:
    """"sdpa" or "grouped" (`flex.grouped_attention`): the faster dense attention kernel for this shape,
    timed at the next power of two of rows, queries and keys (few shapes to measure) under a random
    mask that leaves every query its first key, as a decode step or a causal chunk does. With a head
    of `shared` slots common to every row (timed at the power of two below it), the grouped kernel
    reads it once for all rows, which SDPA cannot: a long few-shot head moves the answer."""
    rows, queries, keys = _bucket(rows), _bucket(queries), _bucket(keys)
    shared = min(1 << (shared.bit_length() - 1), keys) if shared and rows > 1 else 0

    def measure() -> dict[str, Any]:
        q = torch.randn(rows, heads, queries, head_dim, dtype=dtype)
        k, v = (torch.randn(rows, kv_heads, keys, head_dim, dtype=dtype) for _ in range(2))
        mask = torch.rand(rows, 1, queries, keys) < 0.7
        mask[..., 0] = True
        with torch.inference_mode():
            times = {"sdpa": median_seconds(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                                   enable_gqa=True), 7),
                     "grouped": median_seconds(lambda: flex.grouped_attention(q, k, v, mask, shared), 7)}
        return {"value": min(times, key=times.get), "ms": {n: round(t * 1e3, 4) for n, t in times.items()}}

    shape = {"dtype": dtype, "rows": rows, "heads": f"{heads}/{kv_heads}x{head_dim}", "queries": queries, "keys": keys}
    if shared:  # keys of measurements made before shared heads were read once stay valid
        shape["shared"] = shared
    return measured("dense_attention", shape, measure, DEFAULT_DENSE)
