"""Multiple-choice scoring cost on the real default model: a question's 4 options against 1.

    python bench/choice_cpu.py [--items N] [--repeats R]

Each item of `sample-choice` is prompted as `minirun eval` does (5-shot prefix, 5 prompts), float32,
eager (eval's default). For origin, avg, hidden_avg and flex, `score_choices` runs with all 4
options and with the first option alone; the prompt is prefilled once either way and the options
share one batched forward over its cache, so 4 options should cost little more than 1. Writes
bench/results/choice-cpu-<date>.json with the CPU model named.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import torch

from minirun.bench.run import write_json
from minirun.checkpoints.hub import default_model_path
from minirun.engine.llm import load
from minirun.eval.data import load_dataset
from minirun.eval.loop import few_shot_prefixes
from minirun.eval.prompts import MINIRUN
from minirun.layers.calibrate import cpu_facts
from minirun.methods import EnsembleOptions, Question
from minirun.methods.choice import score_choices

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("origin", "avg", "hidden_avg", "flex")


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    llm = load(default_model_path(), dtype="float32")
    items = load_dataset("sample-choice")[:args.items]
    prefix = few_shot_prefixes(items, None, "sample-choice", None, 5)["choice"]
    options = EnsembleOptions()
    result = {"machine": cpu_facts(), "torch": torch.__version__, "model": str(default_model_path()),
              "items": len(items), "repeats": args.repeats, "methods": {}}
    for method in METHODS:
        four, one = [], []
        for item in items:
            q = Question(item.question, item.prompts, prefix + MINIRUN.lead, MINIRUN.cue)
            score_choices(llm, method, [q], [item.choices], options)  # warm-up for this prompt shape
            four.append(min(seconds(lambda: score_choices(llm, method, [q], [item.choices], options))
                            for _ in range(args.repeats)))
            one.append(min(seconds(lambda: score_choices(llm, method, [q], [item.choices[:1]], options))
                           for _ in range(args.repeats)))
        ratio = statistics.median(f / o for f, o in zip(four, one))
        result["methods"][method] = {"four_options_s": statistics.median(four), "one_option_s": statistics.median(one),
                                     "four_over_one": ratio}
        print(f"{method:>10}: 4 options {statistics.median(four) * 1e3:.0f} ms, 1 option "
              f"{statistics.median(one) * 1e3:.0f} ms, ratio {ratio:.2f}")
    path = ROOT / "bench" / "results" / f"choice-cpu-{datetime.date.today()}.json"
    write_json(result, path)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
