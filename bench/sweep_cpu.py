"""Sweep throughput on CPU: `minirun eval`'s methods against a careful transformers hand loop.

    python bench/sweep_cpu.py [--items N] [--dtype float32|bfloat16] [--repeats R] [--label NAME]
                               [--methods origin,avg,...] [--hand-logits last|all]

The evaluation workload: the first N items of sample-qa and of sample-fill, 5-shot prefix, every
item's 5 prompts, answers of at most 24 tokens, stop at a newline. minirun runs `evaluate` (eager,
batches of 32 questions, the shared prefix prefilled once per dataset and reused by later batches
and methods: eval's defaults), after a warm-up (first-call costs such as weight packing and kernel
calibration are not throughput): minirun runs origin, per_prompt and flex over the items once,
meeting every batch shape the methods do, and the hand loop one question. The baseline is
`hand_loop`: what a researcher writes with transformers — one question at a time, its prompts
left-padded into one batch, a KV cache, logits fused per step (hidden_avg through forward hooks),
greedy, stopping at a newline (vote: the prompts decoded alone, then the majority of their answers); its forward runs the vocabulary head on each row's last position only
(transformers' `logits_to_keep=1`, as `generate` and minirun do; `--hand-logits all` runs it on every
position, as `model(ids).logits[:, -1]` does: the loop measured until the twenty-ninth session). flex
has no hand-written counterpart; it is compared with the avg loop. Same prompts, same token ids; the
answers' agreement is reported next to items/s and the ratio. With `--repeats R` each method runs R rounds,
minirun and the hand loop alternating, and the figures are medians with the per-round ratios beside them: a
shared 2-core VM drifts by 10-40 % over minutes, and alternating puts both sides under the same drift (the
ratio of one round is then fairer than either side's items/s). Writes
bench/results/sweep-cpu-<dtype>-<date>[-<label>].json with the CPU model named.
"""
from __future__ import annotations

import argparse
import datetime
import inspect
import statistics
import tempfile
import time
from typing import Callable
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, DynamicCache

from minirun.bench.run import write_json
from minirun.checkpoints.hub import default_model_path
from minirun.engine.llm import LLM, load
from minirun.eval.data import load_dataset
from minirun.eval.loop import STOP, evaluate, few_shot_prefixes
from minirun.eval.prompts import MINIRUN
from minirun.layers.calibrate import cpu_facts
from minirun.methods.packing import encode_question
from minirun.methods.runner import default_fusion_layer
from minirun.methods.vote import answer_key, plurality
from minirun.text import extract_answer

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("origin", "per_prompt", "vote", "avg", "max", "hidden_avg", "flex")
PROMPTS, NEW_TOKENS = 5, 24


@torch.inference_mode()
def hand_loop(model, rows: list[list[int]], method: str, pad_id: int, stops: Callable[[list[int]], bool],
              fusion_layer: int, head: str = "last") -> list[list[int]]:
    """One question: its prompts as one left-padded batch with a KV cache, fused greedy decoding, a row done once
    `stops(its answer's ids)`. `head="last"` runs the vocabulary head on the last position only (the prompt's
    others are never read)."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    hooks = []
    if method == "hidden_avg":  # replace the newest token's state by the rows' mean from block L on
        def fuse(module, args, output):
            states = output[0] if isinstance(output, tuple) else output
            states[:, -1] = states[:, -1].mean(0, keepdim=True)
            return output

        hooks = [layer.register_forward_hook(fuse) for layer in model.model.layers[fusion_layer - 1:]]
    cache, out, done = DynamicCache(), [[] for _ in rows], [False] * len(rows)
    # transformers renamed `past_key_values` to `cache` (5.25 warns that the old name goes in 5.40)
    parameters = inspect.signature(model.forward).parameters
    cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
    keep = {"logits_to_keep": 1} if head == "last" and "logits_to_keep" in parameters else {}
    try:
        for step in range(NEW_TOKENS):
            logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, **{cache_kwarg: cache},
                           use_cache=True, **keep).logits[:, -1].float()
            if method in ("per_prompt", "vote"):  # every prompt on its own
                tokens = logits.argmax(-1)
            else:
                fused = logits.softmax(-1).amax(0) if method == "max" else logits.mean(0)
                tokens = fused.argmax().expand(len(rows))
            for r, t in enumerate(tokens.tolist()):
                if not done[r]:
                    out[r].append(t)
                    done[r] = stops(out[r])
            if all(done):
                break
            ids = tokens[:, None]
            mask = torch.cat([mask, torch.ones(len(rows), 1, dtype=mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1
    finally:
        for h in hooks:
            h.remove()
    return out


def hand_run(llm: LLM, model, items, prefixes: dict[str, str], method: str,
             head: str = "last") -> tuple[float, list[str]]:
    def stops(ids: list[int]) -> bool:  # where eval's rows stop: an end token, or a text of STOP ("\n", " Q:")
        return ids[-1] in llm.eos_ids or any(stop in llm.tokenizer.decode(ids) for stop in STOP)

    layer = default_fusion_layer(llm.config.num_layers)
    answers = []
    start = time.perf_counter()
    for item in items:
        prompts = [item.question] if method == "origin" else item.prompts[:PROMPTS]
        enc = encode_question(llm, prompts, prefixes[item.task] + MINIRUN.lead, MINIRUN.cue)
        rows = [enc.full(i) for i in range(len(prompts))]
        out = hand_loop(model, rows, "avg" if method == "flex" else method, llm.pad_id, stops, layer, head)
        texts = [llm.tokenizer.decode(ids, skip_special_tokens=True) for ids in out]
        shown = plurality([answer_key(t) for t in texts]) if method == "vote" else 0  # the majority, or the first
        answers.append(extract_answer(texts[shown], STOP))
    return time.perf_counter() - start, answers


def minirun_run(llm: LLM, items, dataset: str, method: str) -> tuple[float, list[str]]:
    llm.prefixes.clear()  # the few-shot head is encoded in every timed run, as a fresh eval encodes it once
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        table = evaluate(llm, items, [method], out, dataset=dataset, num_prompts=PROMPTS, few_shot_k=5,
                         max_new_tokens=NEW_TOKENS, progress=False)
        seconds = time.perf_counter() - start
    order = {item.id: i for i, item in enumerate(items)}
    table = table.sort_values("id", key=lambda ids: ids.map(order))
    return seconds, table["answer"].fillna("").tolist()


def run_round(llm: LLM, model, data: dict, prefixes: dict[str, dict[str, str]],
              method: str, head: str = "last") -> tuple[float, float, int, list[str]]:
    """One round of `method` over every dataset, each minirun run followed by the hand loop's:
    seconds for each side, how many answers agree, and minirun's answers."""
    ours, theirs, same, answers = 0.0, 0.0, 0, []
    for name, items in data.items():
        seconds, mine = minirun_run(llm, items, name, method)
        hand_seconds, hand_answers = hand_run(llm, model, items, prefixes[name], method, head)
        ours, theirs = ours + seconds, theirs + hand_seconds
        same += sum(a == b for a, b in zip(mine, hand_answers))
        answers += mine
    return ours, theirs, same, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10, help="items per dataset")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=1, help="rounds per method, minirun and the hand loop alternating")
    parser.add_argument("--label", default="", help="appended to the results file's name (the machine, the change)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated, of " + ", ".join(METHODS))
    parser.add_argument("--hand-logits", choices=("last", "all"), default="last",
                        help="the hand loop's logits: the last position's only, or the whole prompt's")
    args = parser.parse_args()
    if args.repeats < 1 or args.items < 1:
        parser.error("--repeats and --items must be at least 1")
    methods = [m.strip() for m in args.methods.split(",")]
    if unknown := [m for m in methods if m not in METHODS]:
        parser.error(f"unknown method {unknown[0]!r}: choose from {', '.join(METHODS)}")
    path = default_model_path()
    llm = load(path, dtype=args.dtype)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, args.dtype)).eval()
    data = {name: load_dataset(name)[:args.items] for name in ("sample-qa", "sample-fill")}
    prefixes = {name: few_shot_prefixes(items, None, name, None, 5) for name, items in data.items()}
    result = {"machine": cpu_facts(), "torch": torch.__version__, "transformers": transformers.__version__,
              "dtype": args.dtype, "model": str(path),
              "items": sum(map(len, data.values())), "prompts": PROMPTS, "max_new_tokens": NEW_TOKENS,
              "repeats": args.repeats, "hand_loop_logits": args.hand_logits, "methods": {}}
    for name, items in data.items():  # warm-up: one-time costs (weight packing, calibration) are not throughput
        for method in ("origin", "per_prompt", "flex"):  # every batch shape the methods meet is calibrated here
            minirun_run(llm, items, name, method)
        hand_run(llm, model, items[:1], prefixes[name], "origin")
    label = f"-{args.label}" if args.label else ""
    out = ROOT / "bench" / "results" / f"sweep-cpu-{args.dtype}-{datetime.date.today()}{label}.json"
    for method in methods:
        rounds = [run_round(llm, model, data, prefixes, method, args.hand_logits) for _ in range(args.repeats)]
        n = result["items"]
        ours = statistics.median(r[0] for r in rounds)
        theirs = statistics.median(r[1] for r in rounds)
        ratios = [r[1] / r[0] for r in rounds]
        if any(r[3] != rounds[0][3] for r in rounds):  # greedy and batch-independent: a repeat must answer alike
            raise SystemExit(f"{method}: minirun's answers changed between rounds")
        same = rounds[0][2]
        result["methods"][method] = {"minirun_items_per_s": n / ours, "hand_loop_items_per_s": n / theirs,
                                     "ratio": statistics.median(ratios), "ratio_rounds": ratios,
                                     "same_answer": same / n,
                                     "baseline": "avg hand loop" if method == "flex" else f"{method} hand loop"}
        print(f"{method:>10}: minirun {n / ours:.2f} items/s, hand loop {n / theirs:.2f} items/s, "
              f"{statistics.median(ratios):.2f}x (rounds {', '.join(f'{r:.2f}' for r in ratios)}), same answer {same}/{n}")
        write_json(result, out)  # after every method: a stopped run keeps them
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
