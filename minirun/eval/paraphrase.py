"""Paraphrase generation: the target model rewrites each question N ways.

Rewrite i of a question is sampled with its own seed (seed + i), so results do not depend on how
questions are batched; all N rewrites of a batch of questions decode as one batch. The output
JSONL doubles as the cache: items already written with the same settings are not redone.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import torch

from minirun.engine.generate import decode_loop, plain_row, stack_rows
from minirun.engine.llm import LLM
from minirun.engine.sampling import SamplingParams, sample
from minirun.errors import MinirunError
from minirun.eval.data import Item
from minirun.eval.data.items import item_from_dict
from minirun.eval.results import drop_torn_line, lock_exclusively
from minirun.text import first_line, normalize

INSTRUCTION = ("Rewrite the question so that it keeps exactly the same meaning but uses different words and a "
               "different sentence structure. Reply with the rewritten question only.")
DEMOS = [  # written for minirun
    ("What is the capital of Japan?", "Which city serves as Japan's capital?"),
    ("Who painted the Mona Lisa?", "The Mona Lisa was painted by which artist?"),
    ("How many legs does a spider have?", "What is the number of legs on a spider?"),
    ("Where was Albert Einstein born?", "In which place did Albert Einstein come into the world?"),
]


DEMO_TEXTS = [normalize(text) for demo in DEMOS for text in demo]  # a rewrite containing one copied an example


def rewrite_prompt(question: str) -> str:
    demos = "\n\n".join(f"Question: {q}\nRewrite: {r}" for q, r in DEMOS)
    return f"{INSTRUCTION}\n\n{demos}\n\nQuestion: {question}\nRewrite:"


def clean_rewrite(text: str) -> str:
    """First line, without a leading 'Rewrite:' label or quotes."""
    line = first_line(text)
    line = re.sub(r"^(rewrite|question)\s*:\s*", "", line, flags=re.IGNORECASE)
    return line.strip(" \"'")


def keep(rewrite: str, item: Item, kept: list[str]) -> bool:
    """Drop empty rewrites, duplicates (of the question or each other), copies of the prompt's worked
    examples (a small model often repeats one) and rewrites giving the answer away."""
    norm = normalize(rewrite)
    if not norm or norm in {normalize(item.question), *map(normalize, kept)}:
        return False
    return not any(found and re.search(rf"\b{re.escape(found)}\b", norm)
                   for found in [*DEMO_TEXTS, *map(normalize, item.answers)])


def settings_key(llm: LLM, dataset: str, num: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int) -> str:
    raw = json.dumps([str(llm.path.resolve()), dataset, num, temperature, top_p, max_new_tokens, seed, INSTRUCTION,
                      DEMOS])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@torch.inference_mode()
def rewrite_batch(llm: LLM, items: list[Item], num: int, temperature: float, top_p: float, max_new_tokens: int,
                  seed: int) -> list[list[str]]:
    """`num` sampled rewrites per item, all items' rewrites in one batched generation."""
    ids = [llm.prompt_ids(rewrite_prompt(item.question), thinking=False) for item in items]  # a rewrite, not reasoning
    limit = llm.config.max_position_embeddings
    if long := [(item, len(p)) for item, p in zip(items, ids) if len(p) + max_new_tokens > limit]:
        item, n = long[0]
        raise MinirunError(f"the rewrite prompt of item {item.id!r} needs {n} + {max_new_tokens} tokens, beyond the "
                           f"model's context of {limit}: shorten the question or lower max_new_tokens")
    rows = [plain_row(p) for p in ids for _ in range(num)]
    layout = stack_rows(rows, llm.pad_id, llm.device)
    session = llm.session(len(rows), layout.length + max_new_tokens)
    logits = session.prefill(layout.tokens, layout.positions, layout.segments)
    params = SamplingParams(temperature, top_p=top_p)
    generators = [SamplingParams(temperature, seed=seed + i).generator(llm.device) for _ in items for i in range(num)]

    def choose(step_logits: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
        return torch.cat([sample(step_logits[i:i + 1], params, generators[r]) for i, r in enumerate(rows)])

    done = decode_loop(session, logits, layout.next_positions, choose, max_new_tokens, llm.stopper(("\n",)))
    return [[clean_rewrite(c.text) for c in done[i * num:(i + 1) * num]] for i in range(len(items))]


def paraphrase_file(llm: LLM, items: list[Item], out: Path, num: int = 5, temperature: float = 1.5, top_p: float = 0.9,
                    max_new_tokens: int = 30, seed: int = 0, batch_size: int = 8,
                    on_batch: Callable[[int], None] | None = None, dataset: str = "custom") -> list[Item]:
    """Write items with paraphrases = [original, kept rewrites...] to `out`, skipping finished ones.

    The original stays paraphrase 0 so the file reads the same with or without the question
    repeated: `Item.prompts` drops the repeat, and rewrites equal to the question are never kept.
    `dataset` names the items' source: a file holds one dataset's rewrites under one set of settings.
    """
    out = Path(out)
    for name, value in (("num", num), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if value < 1:
            raise MinirunError(f"{name} must be at least 1, got {value}: pass {name} >= 1")
    SamplingParams(temperature, top_p=top_p)  # refuses a bad temperature or top_p before any work
    key = settings_key(llm, dataset, num, temperature, top_p, max_new_tokens, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as f:
        lock_exclusively(f, out)
        finished = _read_finished(out, key)
        if changed := [item.id for item in items if item.id in finished and not _same_item(finished[item.id], item)]:
            raise MinirunError(f"{out} holds rewrites of item {changed[0]!r} as it read before an edit (its question or "
                               "answers differ now): write to another file, or delete that item's line to redo it")
        todo = [item for item in items if item.id not in finished]
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            for item, rewrites in zip(batch, rewrite_batch(llm, batch, num, temperature, top_p, max_new_tokens, seed)):
                kept: list[str] = []
                for r in rewrites:
                    if keep(r, item, kept):
                        kept.append(r)
                done = replace(item, paraphrases=[item.question, *kept])
                f.write(json.dumps({**asdict(done), "paraphrase_settings": key}, ensure_ascii=False) + "\n")
                finished[item.id] = done
            f.flush()
            os.fsync(f.fileno())
            if on_batch is not None:
                on_batch(len(batch))
    return [finished[item.id] for item in items]


ROW_START = '{"id": '  # how every row `paraphrase_file` writes begins (json.dumps of an Item)


def _read_finished(out: Path, key: str) -> dict[str, Item]:
    """Items already in `out`, every line checked before anything is written; a torn last row (a
    killed run) is then cut off so appending stays valid. A file minirun did not write is refused
    untouched."""
    found: dict[str, Item] = {}
    if not out.is_file():
        return found
    foreign = f"{out} is not a paraphrase file minirun wrote: choose another output file"
    try:
        text = out.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise MinirunError(foreign) from None
    complete, _, torn = text.rpartition("\n")
    if torn and not torn.startswith(ROW_START):
        raise MinirunError(foreign)
    for lineno, line in enumerate(complete.split("\n") if complete else [], 1):
        try:
            row = json.loads(line)
            item = item_from_dict(row)
        except (ValueError, TypeError, AttributeError):  # not JSON, not an object, not an item
            raise MinirunError(f"{out}:{lineno}: {foreign}") from None
        if row.get("paraphrase_settings") != key:
            raise MinirunError(f"{out}:{lineno} was written for another dataset or with other paraphrase settings: "
                               "use another output file or delete this one")
        found[item.id] = item
    drop_torn_line(out)
    return found


def _same_item(written: Item, item: Item) -> bool:
    """Whether a finished row still answers `item`: the rewrites depend on its question, and a kept
    rewrite was checked against its answers."""
    return (written.question, written.answers, written.task) == (item.question, item.answers, item.task)
