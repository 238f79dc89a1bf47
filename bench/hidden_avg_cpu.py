"""hidden_avg on the real default model: decode speed against avg with the same rows, and how often
the KV-cached fusion answers differently from the reference project's cache-free recompute.

    python bench/hidden_avg_cpu.py [--items N]

Speed: `run_bench` for avg and hidden_avg, one process, compiled, 5 paraphrases, batch 1. Answers:
every sample-qa and sample-fill item prompted as `minirun eval` does (5-shot prefix, 5 prompts, stop
at a newline), greedy, float32; hidden_avg through `run_method` (KV cache: earlier answer tokens keep
their fused states) against `tests/hidden_reference.py` (every step recomputed, only the newest
position fused). Writes bench/results/hidden-avg-cpu-<date>.json with the CPU model named.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from hidden_reference import recompute_hidden_avg  # noqa: E402

from minirun.bench.run import run_bench, write_json  # noqa: E402
from minirun.checkpoints.hub import default_model_path  # noqa: E402
from minirun.engine.llm import load  # noqa: E402
from minirun.eval.data import load_dataset  # noqa: E402
from minirun.eval.loop import STOP, few_shot_prefixes  # noqa: E402
from minirun.eval.prompts import MINIRUN  # noqa: E402
from minirun.layers import flex  # noqa: E402
from minirun.layers.calibrate import cpu_facts  # noqa: E402
from minirun.methods import EnsembleOptions, Question, run_method  # noqa: E402
from minirun.methods.packing import encode_question  # noqa: E402
from minirun.methods.runner import default_fusion_layer  # noqa: E402
from minirun.text import extract_answer  # noqa: E402

PROMPTS = 5


def speed(model: str) -> dict:
    """avg and hidden_avg decode tokens/s with the same rows, in this process."""
    out = {}
    for method in ("avg", "hidden_avg"):
        result = run_bench(model=model, method=method, prompt_tokens=128, new_tokens=64, num_paraphrases=PROMPTS,
                           repeats=5, dtype="float32")
        out[method] = result["minirun"]
    out["hidden_avg_over_avg"] = out["hidden_avg"]["decode_tokens_per_s"] / out["avg"]["decode_tokens_per_s"]
    return out


def cached_vs_recompute(model: str, items_per_dataset: int | None) -> dict:
    flex.set_compiled(False)
    llm = load(model, dtype="float32")
    layer = default_fusion_layer(llm.config.num_layers)
    options = EnsembleOptions(max_new_tokens=24, stop=STOP, fusion_layer=layer)
    out = {"fusion_layer": layer}
    for dataset in ("sample-qa", "sample-fill"):
        items = load_dataset(dataset)[:items_per_dataset]
        prefixes = few_shot_prefixes(items, None, dataset, None, 5)
        differ, examples = 0, []
        for item in items:
            question = Question(item.question, item.prompts[:PROMPTS], prefixes[item.task] + MINIRUN.lead, MINIRUN.cue)
            cached = extract_answer(run_method(llm, "hidden_avg", [question], options)[0].text, STOP)
            enc = encode_question(llm, question.paraphrases, question.prefix, question.suffix)
            ids = recompute_hidden_avg(llm, enc, layer, 1.0, 24,
                                       stop=lambda a: any(s in llm.tokenizer.decode(a) for s in STOP))
            reference = extract_answer(llm.tokenizer.decode(ids, skip_special_tokens=True), STOP)
            if cached != reference:
                differ += 1
                examples.append({"id": item.id, "cached": cached, "recompute": reference})
        out[dataset] = {"items": len(items), "different_answers": differ, "fraction": differ / len(items),
                        "examples": examples}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=None, help="items per dataset (default all)")
    parser.add_argument("--speed-only", action="store_true", help="re-measure speed, keep the answers part")
    args = parser.parse_args()
    model = str(default_model_path())
    path = ROOT / "bench" / "results" / f"hidden-avg-cpu-{datetime.date.today()}.json"
    result = {"machine": cpu_facts(), "torch": torch.__version__, "model": model}
    if args.speed_only and path.is_file():
        result["cached_vs_recompute"] = json.loads(path.read_text())["cached_vs_recompute"]
    else:
        result["cached_vs_recompute"] = cached_vs_recompute(model, args.items)
    result["speed"] = speed(model)
    write_json(result, path)
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
