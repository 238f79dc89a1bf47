"""Why decode is fast on CPU: one decode step's matrix products, BLAS against minirun's streaming form.

For each row count M (batch rows in a decode step) it times, compiled, every weight matrix of one
SmolLM2-135M step (30 layers of q/k/v, o, gate/up, down, plus the 49152-row lm_head) as
F.linear (Inductor calls BLAS) and as minirun's `Linear` under torch.compile (a broadcast
multiply + sum Inductor turns into a weight-streaming reduction), in one process, interleaved.
Also the machine's read bandwidth (a 512 MiB sum), the ceiling for M = 1.
Writes bench/results/gemv-cpu-<date>.json; the default STREAM_MAX_ROWS in
minirun/layers/linear.py came from it (layers/calibrate.py now measures each machine's own plan).

Usage: python bench/gemv_cpu.py [--rows 1,2,...]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F

from minirun.bench.run import write_json
from minirun.layers.calibrate import device_name, median_seconds
from minirun.layers.linear import Linear, set_plan

# (out_features, in_features, matrices per step) for SmolLM2-135M
SHAPES = {"qkv": (960, 576, 30), "o": (576, 576, 30), "gate_up": (3072, 576, 30), "down": (576, 1536, 30),
          "lm_head": (49152, 576, 1)}
DISTINCT = 4  # distinct weights timed per shape (more would not fit the cache either; scaled to the count)


def step_seconds(layers: dict[str, list[Linear]], rows: int, streaming: bool) -> float:
    """Time of all products of one decode step with `rows` input rows."""
    total = 0.0
    for name, (n, k, count) in SHAPES.items():
        x = torch.randn(rows, k)
        fns = [torch.compile(layer if streaming else (lambda x, w=layer.weight: F.linear(x, w)), dynamic=False)
               for layer in layers[name]]
        with torch.no_grad():
            total += median_seconds(lambda: [f(x) for f in fns]) / len(fns) * count
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", default="1,2,3,4,5,6,7,8,9,10,12,16,24,40")
    args = parser.parse_args()
    torch._dynamo.config.recompile_limit = 1024
    set_plan(torch.float32, True, {1: "stream"})  # stream at every row count, to find where BLAS overtakes it
    torch.manual_seed(0)
    layers = {name: [Linear(k, n, bias=False) for _ in range(DISTINCT)] for name, (n, k, _) in SHAPES.items()}
    weight_bytes = sum(n * k * count * 4 for n, k, count in SHAPES.values())
    big = torch.randn(2**27)
    read_gb_s = big.numel() * 4 / median_seconds(lambda: big.sum(), 5) / 1e9
    rows = {}
    for m in (int(r) for r in args.rows.split(",")):
        blas, stream = step_seconds(layers, m, False), step_seconds(layers, m, True)
        rows[m] = {"blas_ms": blas * 1e3, "stream_ms": stream * 1e3, "stream_speedup": blas / stream,
                   "stream_gb_s": weight_bytes / stream / 1e9}
        print(m, json.dumps({k: round(v, 2) for k, v in rows[m].items()}), flush=True)
    result = {"device": device_name(torch.device("cpu")), "torch": torch.__version__, "dtype": "float32",
              "load_avg_1m": os.getloadavg()[0], "weight_bytes_per_step": weight_bytes, "read_gb_s": read_gb_s,
              "rows": rows}
    path = Path("bench/results") / f"gemv-cpu-{datetime.date.today()}.json"
    write_json(result, path)
    print(f"read bandwidth {read_gb_s:.1f} GB/s; wrote {path}")


if __name__ == "__main__":
    main()
