"""The dataset run loop: every (item, method) answered, matched and journalled.

Rows go to a `ResultStore` as soon as their batch finishes, so a killed run restarted with the
same arguments redoes nothing that finished; under `torchrun` each rank takes a deterministic
shard of the items and rank 0 merges, giving the table one process would have written.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

from minirun.engine.llm import LLM
from minirun.errors import MinirunError
from minirun.eval.data import Item, load_fewshot
from minirun.eval.matching import Matcher, extract_answer
from minirun.eval.prompts import build_prefix
from minirun.eval.results import ResultStore, merge, read_results
from minirun.methods import METHODS, EnsembleOptions, Question, run_method
from minirun.methods.fusion import WEIGHTED

STOP = ("\n", "Q:")
SUFFIX = "\nA:"


class _Rate(ProgressColumn):
    """Completed units per second (rich's own speed column formats bytes)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        return Text(f"{task.speed:.2f} {self.unit}/s" if task.speed else f"? {self.unit}/s", style="cyan")


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), _Rate("items"),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


def shard(items: list[Item], rank: int, world_size: int) -> list[Item]:
    """Rank r's items: every world_size-th from r, so shards are disjoint, cover all, and are stable."""
    return items[rank::world_size]


def few_shot_prefixes(items: list[Item], fewshot_items: list[Item] | None, dataset: str, task: str | None,
                      k: int) -> dict[str, str]:
    """Instruction + k examples per task present (the dataset's own few-shot file unless given)."""
    out = {}
    for t in sorted({task or item.task for item in items}):
        examples = fewshot_items if fewshot_items is not None else load_fewshot(dataset, t)
        out[t] = build_prefix(t, examples, k)
    return out


def _dtype(llm: LLM) -> str:
    return str(next(llm.model.parameters()).dtype).removeprefix("torch.")


def evaluate(llm: LLM, items: list[Item], methods: list[str] | tuple[str, ...], output_dir: str | Path, *,
             dataset: str = "custom", num_paraphrases: int = 5, max_samples: int | None = None, few_shot_k: int = 5,
             fewshot_items: list[Item] | None = None, task: str | None = None, batch_size: int = 8,
             max_new_tokens: int = 24, bidirectional: bool = False, num_samples: int = 100, positions: str = "right",
             share_prefix: bool = True, chat: bool | None = None, rank: int = 0, world_size: int = 1,
             progress: bool = True, on_row: Callable[[dict], None] | None = None) -> pd.DataFrame:
    """Answer `items` with each method and journal one row per (item, method) in `output_dir`.

    Rows hold id, method, prompts, generated, answer, exact, correct (lemma match), tokens,
    seconds (the batch's wall time, confidences included, split evenly over its items), relation,
    task, answers, per_prompt_accuracy and confidences. For per_prompt, `correct`/`exact`/`answer`
    are those of the first prompt (the original question), so it stays comparable with `origin`,
    while `per_prompt_accuracy` is the fraction of paraphrases answered correctly and `tokens` sums
    all paraphrases. `dataset` names the data in the run key and picks the default few-shot file.
    Returns the merged table (world_size 1) or this rank's shard of it.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise MinirunError(f"unknown or no method(s) {unknown}: choose from {', '.join(METHODS)}")
    if batch_size < 1 or num_paraphrases < 1:
        raise MinirunError("batch_size and num_paraphrases must be at least 1")
    items = list(items)[:max_samples] if max_samples is not None else list(items)
    prefixes = few_shot_prefixes(items, fewshot_items, dataset, task, few_shot_k)
    run_key = {  # everything that changes a row; methods are not in it because their rows are independent
        "model": str(Path(llm.path).resolve()), "dtype": _dtype(llm), "dataset": dataset,
        "num_paraphrases": num_paraphrases, "few_shot": hashlib.sha256(json.dumps(prefixes).encode()).hexdigest()[:16],
        "max_new_tokens": max_new_tokens, "bidirectional": bidirectional, "num_samples": num_samples,
        "positions": positions, "share_prefix": share_prefix, "chat": chat,
    }
    options = EnsembleOptions(max_new_tokens=max_new_tokens, chat=chat, stop=STOP, share_prefix=share_prefix,
                              positions=positions, num_samples=num_samples)
    mine = shard(items, rank, world_size)
    matcher = Matcher()
    with ResultStore(output_dir, run_key, rank, [item.id for item in items]) as store, _progress(progress) as bar:
        todo = {m: [item for item in mine if item.id not in store.done(m)] for m in methods}
        total = len(mine) * len(methods)
        overall = bar.add_task("eval", total=total, completed=total - sum(map(len, todo.values())))
        for method in methods:
            bar.update(overall, description=f"eval {method}")
            for start in range(0, len(todo[method]), batch_size):
                batch = todo[method][start:start + batch_size]
                qs = [Question(item.question, item.prompts[:num_paraphrases], prefixes[task or item.task] + "Q: ", SUFFIX)
                      for item in batch]
                for row in _run_batch(llm, method, batch, qs, options, matcher, bidirectional, bar):
                    store.add(row)
                    bar.advance(overall)
                    if on_row is not None:
                        on_row(row)
        if world_size == 1:
            return store.finalize()
    table = read_results(output_dir)
    return table[table["id"].isin({item.id for item in mine})].reset_index(drop=True)


def _run_batch(llm: LLM, method: str, batch: list[Item], questions: list[Question], options: EnsembleOptions,
               matcher: Matcher, bidirectional: bool, bar: Progress) -> list[dict]:
    """One batched generation and one batched match for `batch`; its result rows."""
    start = time.perf_counter()
    if method in WEIGHTED:
        options = replace(options, confidences=_confidences(llm, questions, options, matcher, bar))
    results = run_method(llm, method, questions, options)
    answers = [[extract_answer(a, STOP) for a in (r.answers if r.answers is not None else [r.text])] for r in results]
    golds = [item.answers for item, a in zip(batch, answers) for _ in a]
    matches = iter(matcher.match([x for a in answers for x in a], golds, bidirectional))
    seconds = (time.perf_counter() - start) / len(batch)
    rows = []
    for item, result, mine in zip(batch, results, answers):
        found = [next(matches) for _ in mine]
        per_prompt = result.answers is not None
        rows.append({
            "id": item.id, "method": method, "prompts": result.prompts, "generated": result.text, "answer": mine[0],
            "exact": found[0].exact, "correct": found[0].lemma, "tokens": _generated_tokens(result),
            "seconds": seconds, "relation": item.relation, "task": item.task,
            "answers": mine if per_prompt else None,
            "per_prompt_accuracy": sum(m.lemma for m in found) / len(found) if per_prompt else None,
            "confidences": result.confidences,
        })
    return rows


def _generated_tokens(result) -> int:
    """Generated token count; per_prompt sums over its paraphrases' answers."""
    if result.answer_token_ids is not None:
        return sum(len(ids) for ids in result.answer_token_ids)
    return len(result.token_ids)


def _confidences(llm: LLM, questions: list[Question], options: EnsembleOptions, matcher: Matcher,
                 bar: Progress) -> list[list[float]]:
    """Each paraphrase's self-consistency (cached on disk), answers compared with the lemma
    matcher so "Paris, France" and "paris" agree; a bar of its own because S samples are slow."""
    from minirun.methods.confidence import confidences_for
    from minirun.methods.packing import encode_question

    def same(a: str, b: str) -> bool:
        return matcher.match([extract_answer(a, STOP)], [[extract_answer(b, STOP)]], bidirectional=True)[0].lemma

    task = bar.add_task("  confidence", total=sum(len(q.paraphrases) for q in questions))
    out = []
    for q in questions:
        encoded = encode_question(llm, q.paraphrases, q.prefix, q.suffix, options.chat)
        out += confidences_for(llm, [encoded], options, same=same)
        bar.advance(task, len(q.paraphrases))
    bar.remove_task(task)
    return out


def run_sharded(llm: LLM, items: list[Item], methods: list[str] | tuple[str, ...], output_dir: str | Path,
                **kwargs) -> pd.DataFrame:
    """`evaluate`, sharded over the `torchrun` processes when WORLD_SIZE > 1.

    Each rank journals its shard; after a barrier rank 0 merges them and returns the full table
    (other ranks return their shard). gloo works on CPU and GPU hosts alike; the long timeout
    lets ranks finish far apart on uneven shards without the barrier giving up.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return evaluate(llm, items, methods, output_dir, **kwargs)
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(days=7))
    try:
        rank = dist.get_rank()
        table = evaluate(llm, items, methods, output_dir, rank=rank, world_size=world_size, **kwargs)
        dist.barrier()
        return merge(output_dir) if rank == 0 else table
    finally:
        dist.destroy_process_group()
