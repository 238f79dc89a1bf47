"""Which `minirun eval` settings finish a sweep soonest on this CPU: compiled or not, dtype, batch size.

    python bench/eval_defaults_cpu.py [--sizes 6 18] [--questions 200]

Each setting runs `minirun eval` (the default model, sample-qa, eval's five default methods, 5 prompts,
5-shot) as a fresh process at two sizes; the wall times give a fixed cost (load, and for compiled
runs the kernel calibration and the first compile: every run starts with empty caches) and a cost per question, and so
the predicted wall time of a `--questions`-question sweep. Writes bench/results/eval-defaults-cpu-<date>.json
with the CPU model named.
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

from minirun.eval.data import load_dataset
from minirun.layers.calibrate import cpu_facts

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {  # label: extra `minirun eval` flags
    "eager float32 batch 8": ["--dtype", "float32", "--batch-size", "8", "--no-compile"],
    "compiled float32 batch 8": ["--dtype", "float32", "--batch-size", "8", "--compile"],
    "eager bfloat16 batch 8": ["--dtype", "bfloat16", "--batch-size", "8", "--no-compile"],
    "compiled bfloat16 batch 8": ["--dtype", "bfloat16", "--batch-size", "8", "--compile"],
    "eager float32 batch 16": ["--dtype", "float32", "--batch-size", "16", "--no-compile"],
    "eager bfloat16 batch 16": ["--dtype", "bfloat16", "--batch-size", "16", "--no-compile"],
    "eager bfloat16 batch 4": ["--dtype", "bfloat16", "--batch-size", "4", "--no-compile"],
}


def wall_seconds(flags: list[str], questions: int) -> float:
    """One fresh `minirun eval` process: empty output, Inductor cache and kernel calibration (a new machine's
    first sweep); seconds from start to exit."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor", "MINIRUN_CACHE": f"{tmp}/cache"}
        cmd = [sys.executable, "-m", "minirun.cli", "eval", "--data", "sample-qa", "--max-samples", str(questions),
               "--output", f"{tmp}/run", "--no-progress", *flags]
        start = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs=2, default=(6, 18))
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--only", nargs="*", default=list(SETTINGS))
    args = parser.parse_args()
    small, large = args.sizes
    available = len(load_dataset("sample-qa"))
    if not 0 < small < large <= available:
        parser.error(f"--sizes must be two growing counts up to sample-qa's {available} questions, got {small} {large}")
    path = ROOT / "bench" / "results" / f"eval-defaults-cpu-{datetime.date.today()}.json"
    result = json.loads(path.read_text()) if path.is_file() else {"settings": {}}  # settings add up across runs
    result.update({"machine": cpu_facts(), "methods": "eval defaults (origin, per_prompt, avg, max, flex)",
                   "data": "sample-qa", "prompts": 5, "few_shot_k": 5})
    for label in args.only:
        t_small, t_large = wall_seconds(SETTINGS[label], small), wall_seconds(SETTINGS[label], large)
        per_question = (t_large - t_small) / (large - small)
        fixed = t_small - small * per_question
        result["settings"][label] = {"wall_s": {small: round(t_small, 1), large: round(t_large, 1)},
                                     "fixed_s": round(fixed, 1), "per_question_s": round(per_question, 3),
                                     f"predicted_{args.questions}q_s": round(fixed + args.questions * per_question, 1)}
        print(label, result["settings"][label], flush=True)
        path.write_text(json.dumps(result, indent=1))  # after every setting: a stopped run keeps what it measured
    print(path)


if __name__ == "__main__":
    main()
