"""Compile cost and time to first token on the default model, compiled decode, CPU.

Three fresh processes share one Inductor cache directory, empty at the start: the first pays the
first-ever compile, the next two find the on-disk cache. In each, question 1 is the first call
(tracing, compiling or loading kernels) and question 2 shows the steady state. Writes
bench/results/compile-cpu-<date>.json.

Usage: python bench/compile_cpu.py [--model DIR]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUESTIONS = ["What is the capital of France?", "Who wrote Hamlet?"]


def child(model: str) -> None:
    """One process: load, then two questions, stamping the first streamed text of each."""
    start = time.perf_counter()
    import minirun
    from minirun.layers import flex
    from minirun.layers.calibrate import device_name

    llm = minirun.load(model)
    flex.set_compiled(True)
    loaded = time.perf_counter()
    out = {"device": device_name(llm.device), "import_and_load_s": loaded - start, "questions": []}
    for question in QUESTIONS:
        stamps: list[float] = []
        begin = time.perf_counter()
        answer = llm.generate(question, max_new_tokens=16, on_text=lambda _: stamps.append(time.perf_counter()))
        out["questions"].append({"question": question, "ttft_s": stamps[0] - begin,
                                 "total_s": time.perf_counter() - begin, "answer": answer.text})
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="models/smollm2-135m-instruct")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.model)
    import torch

    runs = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        for label in ("first ever (empty cache)", "later process (disk cache)", "later process (disk cache)"):
            proc = subprocess.run([sys.executable, __file__, "--child", "--model", args.model], env=env,
                                  capture_output=True, text=True, check=True)
            runs.append({"process": label, **json.loads(proc.stdout.strip().splitlines()[-1])})
            print(label, json.dumps(runs[-1]["questions"]), flush=True)
    result = {"model": args.model, "torch": torch.__version__, "device": runs[0]["device"],
              "load_avg_1m": os.getloadavg()[0], "max_new_tokens": 16, "runs": runs}
    path = Path("bench/results") / f"compile-cpu-{datetime.date.today()}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
