"""Which `minirun eval` settings finish a sweep soonest on this CPU: compiled or not, dtype, batch size.

    python bench/eval_defaults_cpu.py [--questions 200] [--only LABEL ...] [--label NAME]

Each setting runs `minirun eval` (the default model, eval's five default methods, 5 prompts, 5-shot) over
`--questions` questions as one fresh process with an empty Inductor cache and kernel calibration (a new
machine's first sweep: load, calibration and any compile included), and records its wall time from start
to exit; a setting named "warm caches" times the second of two such processes sharing their caches. The
questions are sample-qa's and sample-fill's 60 items cycled with new ids, so every one has a real prompt,
answer and stop. Writes bench/results/eval-defaults-cpu-<date>[-NAME].json with the CPU model named.
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
from dataclasses import replace
from pathlib import Path

import torch

from minirun.bench.run import write_json
from minirun.eval.data import load_dataset
from minirun.eval.data.items import write_jsonl
from minirun.layers.calibrate import cpu_facts

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = {  # label: extra `minirun eval` flags (no --batch-size: the default, 32 questions within 256 rows)
    "eager bfloat16 batch 8": ["--dtype", "bfloat16", "--batch-size", "8", "--no-compile"],
    "eager bfloat16 default batches": ["--dtype", "bfloat16", "--no-compile"],
    "eager bfloat16 batch 51 (256 rows of 5 prompts)": ["--dtype", "bfloat16", "--batch-size", "51", "--no-compile"],
    "eager bfloat16 batch 64": ["--dtype", "bfloat16", "--batch-size", "64", "--no-compile"],
    "eager float32 default batches": ["--dtype", "float32", "--no-compile"],
    "eager float32 batch 8": ["--dtype", "float32", "--batch-size", "8", "--no-compile"],
    "eager float32 batch 64": ["--dtype", "float32", "--batch-size", "64", "--no-compile"],
    "compiled float32 default batches": ["--dtype", "float32", "--compile"],
    "compiled bfloat16 default batches": ["--dtype", "bfloat16", "--compile"],
    "eager bfloat16 default batches, warm caches": ["--dtype", "bfloat16", "--no-compile"],
    "compiled bfloat16 default batches, warm caches": ["--dtype", "bfloat16", "--compile"],
}


def questions_file(count: int, path: Path) -> Path:
    """`count` questions: sample-qa's and sample-fill's items in turn, cycled, each copy with its own id."""
    base = [item for pair in zip(load_dataset("sample-qa"), load_dataset("sample-fill")) for item in pair]
    write_jsonl([replace(base[i % len(base)], id=f"{base[i % len(base)].id}-{i // len(base)}") for i in range(count)],
                path)
    return path


def wall_seconds(flags: list[str], data: Path, warm: bool = False) -> float:
    """One fresh `minirun eval` process with empty caches, seconds from start to exit; with `warm`, the
    process after an untimed one of the same sweep, as a researcher's later sweeps find Inductor's
    on-disk cache and the kernel calibration."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": f"{tmp}/inductor", "MINIRUN_CACHE": f"{tmp}/cache"}
        for run in ("warm-up", "timed") if warm else ("timed",):
            cmd = [sys.executable, "-m", "minirun.cli", "eval", "--data", str(data), "--output", f"{tmp}/{run}",
                   "--no-progress", *flags]
            start = time.perf_counter()
            subprocess.run(cmd, env=env, check=True, capture_output=True)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--only", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--label", default="", help="appended to the results file's name (the machine, the change)")
    args = parser.parse_args()
    if args.questions < 1:
        parser.error(f"--questions must be at least 1, got {args.questions}")
    label = f"-{args.label}" if args.label else ""
    path = ROOT / "bench" / "results" / f"eval-defaults-cpu-{datetime.date.today()}{label}.json"
    result = json.loads(path.read_text()) if path.is_file() else {"settings": {}}  # settings add up across runs
    result.update({"machine": cpu_facts(), "methods": "eval defaults (origin, per_prompt, avg, max, flex)",
                   "data": "sample-qa and sample-fill items in turn, cycled", "questions": args.questions,
                   "prompts": 5, "few_shot_k": 5})
    with tempfile.TemporaryDirectory() as tmp:
        data = questions_file(args.questions, Path(tmp) / "questions.jsonl")
        for label in args.only:
            seconds = wall_seconds(SETTINGS[label], data, warm=label.endswith("warm caches"))
            result["settings"][label] = {"flags": SETTINGS[label], "wall_s": round(seconds, 1),
                                         "items_per_s": round(5 * args.questions / seconds, 2),
                                         "questions": args.questions, "machine": cpu_facts(),  # a later run's may differ
                                         "torch": torch.__version__}
            print(label, result["settings"][label], flush=True)
            write_json(result, path)  # after every setting: a stopped run keeps them
    print(path)


if __name__ == "__main__":
    main()
