"""How far bfloat16 moves greedy answers: minirun and transformers, each in bfloat16 and float32.

    python bench/bf16_agreement_cpu.py [--items N]

The default model, `minirun eval`'s origin prompts (5-shot, "Q: … A:") for the first N items of
sample-qa and sample-fill, 24 greedy tokens, the answer cut at the first newline. For each pair of
engines it reports the share of identical answer tokens and how far the first step's logits move,
as max |difference| / max |logit| (transformers' own tests allow 1e-2 in bfloat16). minirun runs
compiled, as `bench` and the issue's targets do, and bfloat16 also eager. Writes
bench/results/bf16-agreement-cpu-<date>.json with the CPU model named.
"""
from __future__ import annotations

import argparse
import datetime
import itertools
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from minirun.bench.run import write_json
from minirun.checkpoints.hub import default_model_path
from minirun.engine.llm import load
from minirun.eval.data import load_dataset
from minirun.eval.loop import few_shot_prefixes
from minirun.eval.prompts import MINIRUN
from minirun.layers import flex
from minirun.layers.calibrate import cpu_facts
from minirun.methods.packing import encode_question

ROOT = Path(__file__).resolve().parent.parent
NEW_TOKENS = 24


def answer(tokens: list[int], newline: set[int]) -> list[int]:
    return list(itertools.takewhile(lambda t: t not in newline, tokens))


@torch.inference_mode()
def transformers_greedy(model, ids: list[int]) -> tuple[list[int], torch.Tensor]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
                         return_dict_in_generate=True, pad_token_id=0)
    return out.sequences[0, len(ids):].tolist(), out.logits[0][0].float()


@torch.inference_mode()
def minirun_greedy(llm, ids: list[int]) -> tuple[list[int], torch.Tensor]:
    session = llm.session(1, len(ids) + NEW_TOKENS + 64)
    logits = session.prefill(torch.tensor([ids]), torch.arange(len(ids))[None], torch.zeros((1, len(ids)), dtype=torch.int32))
    first, tokens = logits[0].clone(), []
    for step in range(NEW_TOKENS):
        token = logits.argmax(-1)
        tokens.append(int(token))
        logits = session.decode(token, torch.tensor([len(ids) + step]))
    return tokens, first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=30, help="items per dataset")
    args = parser.parse_args()
    path = default_model_path()
    engines = {}
    for dtype in ("float32", "bfloat16"):
        engines[f"minirun {dtype}"] = load(path, dtype=dtype)
        engines[f"transformers {dtype}"] = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    engines["minirun bfloat16 eager"] = engines["minirun bfloat16"]
    llm = engines["minirun float32"]
    newline = {i for i in range(llm.config.vocab_size) if "\n" in llm.tokenizer.decode([i])} | llm.eos_ids
    prompts = []
    for name in ("sample-qa", "sample-fill"):
        items = load_dataset(name)[:args.items]
        prefixes = few_shot_prefixes(items, None, name, None, 5)
        prompts += [encode_question(llm, [item.question], prefixes[item.task] + MINIRUN.lead, MINIRUN.cue).full(0)
                    for item in items]
    answers: dict[str, list[list[int]]] = {name: [] for name in engines}
    firsts: dict[str, list[torch.Tensor]] = {name: [] for name in engines}
    for ids in prompts:
        for name, engine in engines.items():
            flex.set_compiled(not name.endswith("eager"))
            run = minirun_greedy if name.startswith("minirun") else transformers_greedy
            tokens, first = run(engine, ids)
            answers[name].append(answer(tokens, newline))
            firsts[name].append(first)
    pairs = [("minirun bfloat16", "transformers bfloat16"), ("minirun bfloat16 eager", "transformers bfloat16"),
             ("minirun bfloat16", "minirun float32"), ("transformers bfloat16", "transformers float32"),
             ("minirun float32", "transformers float32")]
    agreement, drift = {}, {}
    for a, b in pairs:
        agreement[f"{a} == {b}"] = sum(x == y for x, y in zip(answers[a], answers[b])) / len(prompts)
        rel = sorted(((x - y).abs().max() / y.abs().max()).item() for x, y in zip(firsts[a], firsts[b]))
        drift[f"{a} vs {b}"] = {"max": rel[-1], "median": rel[len(rel) // 2]}
    result = {"machine": cpu_facts(), "torch": torch.__version__, "model": str(path), "prompts": len(prompts),
              "new_tokens": NEW_TOKENS, "same_answer_tokens": agreement, "first_logits_rel_diff": drift}
    for a, b in pairs:
        print(f"{a} vs {b}: same answer {agreement[f'{a} == {b}']:.3f}, first-step logits max |diff| / max |logit| "
              f"median {drift[f'{a} vs {b}']['median']:.4f}, max {drift[f'{a} vs {b}']['max']:.4f}")
    out = ROOT / "bench" / "results" / f"bf16-agreement-cpu-{datetime.date.today()}.json"
    write_json(result, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
