"""Per-method decode speed with 5 paraphrases against `origin` on one prompt, and the KV-cache
memory `flex` needs with and without the shared few-shot prefix. Writes one JSON to bench/results.

Usage: python bench/methods_cpu.py [--model DIR] [--compile/--eager]
"""
from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path

from minirun import load
from minirun.bench.run import run_bench, write_json
from minirun.eval.data import load_dataset, load_fewshot
from minirun.eval.prompts import MINIRUN, build_prefix
from minirun.methods.packing import encode_question, packed_row

ROOT = Path(__file__).resolve().parent.parent  # the model and results folders, wherever the script is run from

METHODS = ["origin", "per_prompt", "avg", "max", "weighted_avg", "weighted_max", "flex"]


def flex_cache_bytes(model: str) -> dict:
    """Slots and bytes of K/V for one sample-qa item packed for flex, prefix shared or repeated."""
    llm = load(model)
    c = llm.config
    per_slot = c.num_layers * 2 * c.num_kv_heads * c.head_dim * 4  # float32 K and V
    item = load_dataset("sample-qa")[0]
    prefix = build_prefix("qa", load_fewshot("sample-qa"), k=5) + MINIRUN.lead
    enc = encode_question(llm, item.prompts[:5], prefix, "\nA:")
    shared = len(packed_row(enc, share_head=True).tokens)
    repeated = len(packed_row(enc, share_head=False).tokens)
    return {"bytes_per_slot": per_slot, "head_tokens": len(enc.head), "shared_prefix_slots": shared,
            "repeated_prefix_slots": repeated, "shared_prefix_mb": shared * per_slot / 2**20,
            "repeated_prefix_mb": repeated * per_slot / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=str(ROOT / "models" / "smollm2-135m-instruct"))
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-tokens", type=int, default=48)
    args = parser.parse_args()
    out = {"model": args.model, "compile": args.compile, "methods": {}}
    for method in METHODS:
        r = run_bench(model=args.model, method=method, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                      num_paraphrases=5, repeats=3, dtype="float32", compile=args.compile)
        out["device"], out["torch"] = r["device"], r["torch"]
        out["methods"][method] = r["minirun"]
        print(method, json.dumps({k: r["minirun"].get(k) for k in ("decode_tokens_per_s", "ms_per_token")}), flush=True)
    origin = out["methods"]["origin"]["decode_tokens_per_s"]
    out["ratio_to_origin"] = {m: v["decode_tokens_per_s"] / origin for m, v in out["methods"].items()}
    out["flex_cache"] = flex_cache_bytes(args.model)
    path = ROOT / "bench" / "results" / f"methods-cpu-{datetime.date.today()}.json"
    write_json(out, path)
    print(json.dumps(out["ratio_to_origin"], indent=2), json.dumps(out["flex_cache"], indent=2))


if __name__ == "__main__":
    main()
