"""What bounds target 2 on a CPU: one decode step's products alone against the read rate they are judged by.

All of a SmolLM2-135M step's weight matrices (30 layers of q/k/v, o, gate/up, down, and the 49152-row head;
every one distinct, so nothing stays in cache: 538 MB in float32, 269 MB in bfloat16) are streamed for one row
in one compiled graph with minirun's `stream_product`, the form a compiled decode step takes; each timed round
alternates it with `torch.sum` over 512 MiB of float32, `bench`'s bandwidth reference. A step that also runs
attention, norms and Dynamo's guards cannot read faster than its products alone, so their fraction of the sum's
rate is the ceiling of the step's `bandwidth_fraction`. Writes bench/results/stream-read-cpu-<dtype>-<date>[-label].json.

Usage: python bench/stream_read_cpu.py [--dtype bfloat16] [--rounds 15] [--label zen4]
"""
from __future__ import annotations

import argparse
import datetime
import statistics
from pathlib import Path

import torch

from minirun.bench.run import write_json
from minirun.layers.calibrate import cpu_facts, median_seconds
from minirun.layers.linear import stream_product

SHAPES = [(960, 576)] * 30 + [(576, 576)] * 30 + [(3072, 576)] * 30 + [(576, 1536)] * 30 + [(49152, 576)]
SUM_BYTES = 512 * 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--label", default="", help="appended to the results file's name (the machine)")
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    weights = [torch.randn(n, k, dtype=dtype) for n, k in SHAPES]
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    rows = {k: torch.randn(1, k, dtype=dtype) for k in (576, 1536)}
    buffer = torch.ones(SUM_BYTES // 4)

    @torch.compile(dynamic=False)
    def products(x576: torch.Tensor, x1536: torch.Tensor, *ws: torch.Tensor) -> list[torch.Tensor]:
        return [stream_product(x1536 if w.shape[1] == 1536 else x576, w) for w in ws]

    step = lambda: products(rows[576], rows[1536], *weights)  # noqa: E731
    rounds = []
    with torch.inference_mode():
        for _ in range(3):  # compile, and pages touched
            step()
            buffer.sum()
        for r in range(args.rounds):
            step_s, sum_s = median_seconds(step, 3), median_seconds(buffer.sum, 5)
            rounds.append({"products_gb_s": weight_bytes / step_s / 1e9, "products_ms": step_s * 1e3,
                           "sum_gb_s": SUM_BYTES / sum_s / 1e9})
            print(f"round {r}: products {rounds[-1]['products_gb_s']:.1f} GB/s ({step_s * 1e3:.1f} ms), "
                  f"sum {rounds[-1]['sum_gb_s']:.1f} GB/s", flush=True)
    fraction = statistics.median(r["products_gb_s"] / r["sum_gb_s"] for r in rounds)
    print(f"products alone: {fraction:.2f} of torch.sum's read rate (median of the rounds' fractions)")
    result = {"machine": cpu_facts(), "torch": torch.__version__, "dtype": args.dtype, "weight_bytes": weight_bytes,
              "products_fraction": fraction, "rounds": rounds}
    name = f"stream-read-cpu-{args.dtype}-{datetime.date.today()}{'-' + args.label if args.label else ''}.json"
    print("wrote", write_json(result, Path(__file__).resolve().parent / "results" / name))


if __name__ == "__main__":
    main()
