"""The dataset run loop: every (item, method) answered, matched and journalled.

Rows go to a `ResultStore` as soon as their batch finishes, so a killed run restarted with the
same arguments redoes nothing that finished; under `torchrun` each rank takes a deterministic
shard of the items and rank 0 merges, giving the table one process would have written.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import random
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeRemainingColumn)
from rich.text import Text

from minirun.checkpoints.loader import checkpoint_digest, checkpoint_source
from minirun.checkpoints.tokenizer import day_text, template_day
from minirun.engine.llm import LLM
from minirun.engine.session import out_of_memory
from minirun.errors import HubDataUnavailable, MinirunError, PromptTooLong, whole_number
from minirun.eval.data import NAMES, TASK_OF, Item, asked_items, ensemble_prompts, load_fewshot
from minirun.eval.matching import MatchResult, Matcher, harness_exact, harness_gsm8k, matcher_name, number_right
from minirun.eval.prompts import (
    CHOICE_FORMATS,
    LETTERS,
    MINIRUN,
    STOP,
    PromptFormat,
    build_prefix,
    check_choice_format,
    new_tokens,
    one_right_letter,
    option_list,
    prompt_format,
)
from minirun.eval.results import REBUILT, SOURCES, ResultStore, merge, read_results, recorded_run_key, run_kernels
from minirun.layers import calibrate
from minirun.layers.calibrate import device_name, seconds_set_aside
from minirun.methods import METHODS, EnsembleOptions, Question, run_method
from minirun.methods.choice import (
    ChoiceResult,
    asked_ids,
    check_gap_flex,
    gap_filled,
    score_blanks,
    score_choices,
    scored_as,
)
from minirun.methods.names import EVERY_ANSWER, OPTION_READERS, WEIGHTED
from minirun.methods.runner import (PROMPT_ROWS, answered_as, check_method,
                                    check_options_used, default_fusion_layer)
from minirun.text import THINK_END, THINKING_TOKENS, answer_start, extract_answer, final_number, normalize

log = logging.getLogger("minirun")

FEW_SHOT_DRAWS = ("shared", "per-question")  # one head for a pool's questions (encoded once a run), or one each
HARNESS_SEED = 1234  # lm-evaluation-harness's fewshot_random_seed: the generator its per-question draws come from
BATCH_QUESTIONS = 32  # the default batch: this many questions (bench/README.md, eval's defaults) ...
BATCH_ROWS = 256  # ... unless their prompts make more rows than this
# lettered items that all have their right option at one letter: refused from this many on (four-option items
# share one by chance with probability 4 x 4^-10, about 4e-6), warned of below
SAME_LETTER_REFUSED = 10


class RateColumn(ProgressColumn):
    """Units completed by this process per second since its task started (rich's own speed column formats bytes,
    and its recent-window speed reads rows that land a batch at a time as bursts); a task's `resumed` field holds
    the units an earlier process finished."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        done = task.completed - task.fields.get("resumed", 0)
        rate = done / task.elapsed if done > 0 and task.elapsed else None
        return Text(f"{rate:.2f} {self.unit}/s" if rate else f"? {self.unit}/s", style="cyan")


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn("items"),
                    TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


def shard(batches: list[list[Item]], rank: int, world_size: int) -> list[list[Item]]:
    """Rank r's batches: every world_size-th from r, so shards are disjoint, cover all, and are stable. Whole
    batches are dealt, never single items: each rank then runs the very batches one process would, and its
    rows are that process's rows (in bfloat16 an answer depends on the other rows of its batch)."""
    return batches[rank::world_size]


def questions_per_batch(method: str, num_prompts: int, batch_size: int | None = None) -> int:
    """Questions per batched generation: `batch_size`, or by default BATCH_QUESTIONS, fewer where their
    rows (one per question for origin and flex, one per prompt otherwise) would pass BATCH_ROWS. Whole
    200-question sweeps of eval's five methods on an Intel Xeon (2 cores) finished soonest so: 32
    questions per batch 148.6 and 241.4 s in two runs against 163.0 and 285.3 s at 256 rows (256
    origin/flex questions, 51 of 5 prompts), 168.6 s at 8 and 193.1 s at 64 questions; since eager
    prefill skips padding and decode retires rows lazily, 32, 51 and 64 questions are within 2 %
    (220.0, 221.1, 224.9 s)."""
    if batch_size is not None:
        return batch_size
    return max(1, min(BATCH_QUESTIONS, BATCH_ROWS // (1 if method in ("origin", "flex") else num_prompts)))


def head_key(item: Item, task: str | None, per_subject: bool, per_question: bool = False) -> str:
    """Which few-shot head a question is asked under: its task's, or with `per_subject` (MMLU) its subject's; with
    `per_question` (`FEW_SHOT_DRAWS`) its own, drawn from that pool."""
    t = task or item.task
    key = f"{t}:{item.relation}" if per_subject and t == "choice" and item.relation else t
    return f"{key}#{item.id}" if per_question else key


def subject_heads(dataset: str, fewshot_items: list[Item] | None) -> bool:
    """Whether MMLU's questions get a head per subject: from its dev split, or from given examples that name
    their subjects (`relation`); examples without subjects make one head, as for any other dataset."""
    return dataset == "mmlu" and (fewshot_items is None or any(e.relation for e in fewshot_items))


def check_draw(draw: str, k: int, dataset: str, choice_format: str = "cloze",
               fewshot_items: list[Item] | None = None) -> None:
    """Refuse a few-shot draw (`FEW_SHOT_DRAWS`) that is unknown or would draw nothing, before any model time: none
    asked for (k = 0), or a format whose examples are the first k for every question (MMLU's per subject,
    TruthfulQA's worked questions)."""
    said = "--few-shot-draw (a sweep dataset's few_shot_draw)"
    if draw not in FEW_SHOT_DRAWS:
        raise MinirunError(f"unknown few-shot draw {draw!r} in {said}: choose {', '.join(FEW_SHOT_DRAWS)}")
    if draw == "per-question" and not k:
        raise MinirunError(f"{said} per-question draws each question's examples, and --few-shot-k 0 (few_shot_k = 0) "
                           "asks for none: drop one of them")
    first_k = subject_heads(dataset, fewshot_items) or prompt_format(dataset, choice_format).ordered
    if draw == "per-question" and first_k:
        raise MinirunError(f"{dataset}'s prompts take the first {k} examples for every question, as "
                           f"lm-evaluation-harness does, so {said} per-question would draw nothing: drop it")


def few_shot_prefixes(items: list[Item], fewshot_items: list[Item] | None, dataset: str, task: str | None,
                      k: int, choice_format: str = "cloze", revision: str | None = None,
                      draw: str = "shared") -> dict[str, str]:
    """Instruction + k examples per head (`head_key`): the dataset's own few-shot file unless given, drawn from
    that task's examples only and (shared) never from the questions under test: a demonstration that is a test
    question hands the model its gold answer (a multiple-choice one when its right option is the same too:
    MMLU's generic stems, "Which of the following is true?", recur across subjects with other answers). MMLU
    gets a head per subject from that subject's dev examples, as lm-evaluation-harness builds it, in its
    format (`prompts.prompt_format`). A Hub dataset's examples are read at `revision`, its test items' commit.
    `draw` (`FEW_SHOT_DRAWS`) "per-question" gives each question its own k, drawn as lm-evaluation-harness draws
    them (`prompts.build_prefix`): one `random.Random(1234)` per pool, sampled for the questions in their order from
    the whole pool, so the first N questions' heads are the same whatever N (its --limit)."""
    check_draw(draw, k, dataset, choice_format, fewshot_items)
    tested = {_asked(item, p) for item in items for p in (item.question, *item.paraphrases)}
    fmt = prompt_format(dataset, choice_format)
    per_subject = subject_heads(dataset, fewshot_items)
    per_question = draw == "per-question"
    subjects = {item.relation for item in items} if per_subject else set()
    subset = next(iter(subjects)) if len(subjects) == 1 else None  # one subject: load its dev examples alone
    pools: dict[str, list[Item]] = {}
    out = {}
    for key in sorted({head_key(item, task, per_subject) for item in items}):
        t, _, subject = key.partition(":")
        if t not in pools:
            given = fewshot_items if fewshot_items is not None else _dataset_examples(dataset, t, subset, revision, k)
            pools[t] = [e for e in given if e.task == t]
        pool = [e for e in pools[t] if e.relation == subject] if subject else pools[t]
        if k and not pool:
            if subject:
                raise MinirunError(f"no few-shot examples of MMLU subject {subject!r}: give few-shot items of that "
                                   "subject (their relation), or --few-shot-k 0")
            tasks = ", ".join(sorted({example.task for example in given})) or "no"
            raise MinirunError(f"the few-shot examples are {tasks} items but the questions are {t}: their prompts "
                               f"would teach another format; give few-shot items of task {t} (--few-shot FILE), or "
                               "--few-shot-k 0")
        if per_question:  # the harness's calls on the whole pool, so that every question's draw is its draw
            rnd = random.Random(HARNESS_SEED)
            for item in items:
                if head_key(item, task, per_subject) == key:
                    out[head_key(item, task, per_subject, True)] = build_prefix(
                        t, pool, k, choice_format=choice_format, fmt=fmt, rnd=rnd, asked=item)
            if (leaked := sum(_asked(e, e.question) in tested for e in pool)) and \
                    ("drawn", dataset, key, leaked) not in _WARNED:
                _WARNED.add(("drawn", dataset, key, leaked))
                log.warning(f"{leaked} of the {len(pool)} few-shot {key} examples are questions under test, and drawn "
                            "as lm-evaluation-harness draws them a question may be shown one, as there (its figure "
                            "counts them too); --few-shot-draw shared never shows one")
            continue
        examples = [e for e in pool if _asked(e, e.question) not in tested]
        if len(examples) < min(k, len(pool)):
            raise MinirunError(f"{len(pool) - len(examples)} of the {len(pool)} few-shot {key} examples are questions "
                               f"under test, which leaves {len(examples)} for --few-shot-k {k}: give few-shot items "
                               "apart from the test set, or lower --few-shot-k")
        if fmt.ordered and k < len(examples) and ("ordered", dataset, k, len(examples)) not in _WARNED:
            _WARNED.add(("ordered", dataset, k, len(examples)))
            log.warning(f"{dataset}'s prompt takes its {len(examples)} worked questions in order, and --few-shot-k {k} "
                        f"asks the first {k}; lm-evaluation-harness asks all {len(examples)} (--few-shot-k "
                        f"{len(examples)}, few_shot_k in a sweep)")
        out[key] = build_prefix(t, examples, k, choice_format=choice_format, subject=subject or None, fmt=fmt)
    return out


def _dataset_examples(dataset: str, task: str, subset: str | None, revision: str | None, k: int) -> list[Item]:
    """A dataset's own worked examples for `task`, none read where k is 0 (a benchmark asked without examples needs
    no Hub); one that cannot be read from the Hub says which fix serves examples."""
    if not k:
        return []
    try:
        return load_fewshot(dataset, task, subset, revision)
    except HubDataUnavailable as e:
        raise MinirunError(f"cannot read {dataset}'s few-shot examples, {e.what}: {e.reason}; or give them as a file "
                           "(--few-shot FILE, a sweep dataset's few_shot: items, or a local copy of those rows), or "
                           "ask for none (--few-shot-k 0)") from None


def _asked(item: Item, wording: str) -> tuple[str, str | None]:
    """What a demonstration must not repeat of a test question: its wording, and its right option if it has options."""
    return _normalized(wording), None if item.choices is None else _normalized(item.choices[item.answer])


@functools.lru_cache(maxsize=1 << 18)
def _normalized(text: str) -> str:
    """`normalize`, remembered: each of a sweep's runs checks its dataset's examples again (TriviaQA's 138,000:
    5.4 s a run, a Zen 3 core)."""
    return normalize(text)


Lane = tuple[int, str]  # (run, method): one method's batches of one run


@dataclass(frozen=True)
class Run:
    """One `evaluate` run laid out by `prepare`: what its batches need and where its rows go."""
    data: DataKey  # its items, their prompts and few-shot heads, and what they put into its key
    methods: tuple[str, ...]
    output_dir: Path
    run_key: dict
    method_keys: dict[str, dict]  # method -> the settings only it reads (`OPTION_READERS`)
    options: EnsembleOptions
    task: str | None
    num_prompts: int
    batch_size: int | None
    bidirectional: bool
    original: bool
    choice_format: str
    per_subject: bool  # MMLU's head per subject (`subject_heads`)
    per_question: bool  # each question its own head (`FEW_SHOT_DRAWS`)
    prompt_format: PromptFormat  # how its question blocks are written
    model_source: dict | None = None  # where the checkpoint came from (`checkpoint_source`), for run.json to cite
    data_source: dict | None = None  # where a Hub dataset's rows came from (`dataset_source`), likewise
    few_shot_source: dict | None = None  # where a benchmark's Hub examples came from, for a file's items

    @property
    def items(self) -> list[Item]:
        """The items it asks, in its order."""
        return self.data.items

    @property
    def prompts(self) -> dict[str, list[str]]:
        """Item id -> its prompts."""
        return self.data.prompts

    @property
    def prefixes(self) -> dict[str, str]:
        """Head key -> few-shot head."""
        return self.data.prefixes

    @property
    def sources(self) -> dict[str, dict | None]:
        return {kind: getattr(self, kind) for kind in SOURCES}

    def head(self, item: Item) -> str:
        """The key of the few-shot head `item` is asked under (`prefixes`)."""
        return head_key(item, self.task, self.per_subject, self.per_question)

    def pool(self, item: Item) -> str:
        """The key of the examples `item`'s head is drawn from: its batch's (a batch shares one head, or one pool)."""
        return head_key(item, self.task, self.per_subject)

    def question(self, item: Item) -> Question:
        """`item` as the methods are asked it: its question and prompts in the format's words, under its head and its
        passage (a head of its own, which the row methods encode once for all its prompts where it is long enough:
        `runner.own_heads_apart`)."""
        fmt = self.prompt_format
        return Question(fmt.question(item.question), self.prompts[item.id],
                        self.prefixes[self.head(item)] + fmt.passage(item.context) + fmt.lead,
                        _suffix(item, self.choice_format, fmt))

    def candidates(self, item: Item) -> list[str] | None:
        """What is scored after a choice item's prompt: its options' letters or texts (None: a generated answer)."""
        if item.choices is None:
            return None
        return list(LETTERS[:len(item.choices)]) if self.choice_format == "letters" else item.choices


def prepare(llm: LLM, items: list[Item], methods: list[str] | tuple[str, ...], output_dir: str | Path, *,
            dataset: str = "custom", num_prompts: int = 5, original: bool = True, max_samples: int | None = None,
            sample_seed: int | None = None,
            few_shot_k: int = 5, fewshot_items: list[Item] | None = None, task: str | None = None,
            batch_size: int | None = None, max_new_tokens: int | None = None, bidirectional: bool = False,
            num_samples: int = 100, positions: str = "right", share_prefix: bool = True, chat: bool | None = None,
            thinking: bool = False, flex_bias: float | str | None = None, fusion_layer: int | None = None,
            fusion_alpha: float = 1.0, few_shot_draw: str = "shared",
            choice_score: str = "mean", choice_format: str = "cloze", benchmark: str | None = None,
            template_date: str | None = None, data_source: dict | None = None,
            few_shot_source: dict | None = None) -> Run:
    """`evaluate`'s settings checked and its prompts, few-shot heads and run key laid out; nothing runs
    yet (`evaluate_runs`). Every problem is one MinirunError before any model time is spent. `benchmark`
    names the dataset whose prompt format and few-shot examples a file of its items is asked with (MMLU
    rewritten by `minirun paraphrase`: its subjects' heads, in the harness's words); by default `dataset`'s.
    `template_date` (YYYY-MM-DD) is the day a chat template that writes the date renders at; by default the day
    `output_dir` recorded, else today (a sweep gives its cells of one model and dataset one day). `data_source` is
    where a Hub dataset's items came from (`dataset_source`): its few-shot examples are read at the same commit,
    and run.json cites it; `few_shot_source` likewise for the Hub examples a `benchmark` asks a file's items with."""
    check_benchmark(dataset, benchmark)
    if template_date is not None:
        template_date = day_text(template_date)
    source = benchmark or dataset  # whose prompts these are
    if isinstance(methods, str):  # one method's name, not its letters
        methods = [methods]
    if not methods:
        raise MinirunError(f"no method given: choose from {', '.join(METHODS)}")
    # numpy's and torch's integers as Python's (a run key records them: np.int64(3) was the text '3')
    batch_size, num_prompts, few_shot_k, max_samples, sample_seed, max_new_tokens, num_samples, fusion_layer = (
        None if value is None else whole_number(value, name)
        for name, value in (("batch_size", batch_size), ("num_prompts", num_prompts), ("few_shot_k", few_shot_k),
                            ("max_samples", max_samples), ("sample_seed", sample_seed),
                            ("max_new_tokens", max_new_tokens), ("num_samples", num_samples),
                            ("fusion_layer", fusion_layer)))
    for name, value, least in (("batch_size", batch_size, 1), ("num_prompts", num_prompts, 1),
                               ("few_shot_k", few_shot_k, 0), ("max_samples", max_samples, 1)):
        if value is not None and value < least:
            raise MinirunError(f"{name} must be at least {least}, got {value}: pass {name} >= {least}")
    if choice_format not in CHOICE_FORMATS:
        raise MinirunError(f"unknown --choice-format {choice_format!r}: choose {', '.join(CHOICE_FORMATS)}")
    check_choice_format(source, choice_format)
    fmt = prompt_format(source, choice_format)
    if thinking and chat is False:
        raise MinirunError("--thinking is a chat template's switch, and --no-chat uses none: drop one of them")
    if fewshot_items is not None and few_shot_k == 0:
        raise MinirunError("--few-shot gives worked examples and --few-shot-k 0 asks for none (a sweep dataset's "
                           "few_shot and few_shot_k = 0): drop one of them")
    items = asked_items(list(items), max_samples, sample_seed, dataset)
    max_new_tokens = new_tokens(items, max_new_tokens)
    options = EnsembleOptions(max_new_tokens=max_new_tokens, chat=chat, thinking=thinking, stop=fmt.stop,
                              share_prefix=share_prefix, positions=positions, num_samples=num_samples, flex_bias=flex_bias,
                              fusion_layer=fusion_layer, fusion_alpha=fusion_alpha, choice_score=choice_score,
                              harness_spacing=fmt != MINIRUN)
    for method in methods:
        check_method(method, options)
    check_options_used(methods, options)
    if not items:
        raise MinirunError("no items to evaluate: the dataset is empty")
    seen: set[str] = set()
    if (twice := next((item.id for item in items if item.id in seen or seen.add(item.id)), None)) is not None:
        raise MinirunError(f"two items share the id {twice!r}, and a run keeps one row per item and method: give each "
                           "its own id")
    choice = [item.task == "choice" for item in items]
    if not any(choice) and (choice_format, choice_score) != ("cloze", "mean"):
        raise MinirunError(f"--choice-format and --choice-score apply to multiple-choice items; {dataset} has none: "
                           "drop them")
    if all(choice) and bidirectional:
        raise MinirunError(f"--match bidirectional compares generated answers; {dataset}'s items are multiple choice, "
                           "scored by their options: drop it")
    check_benchmark_task(items, benchmark, dataset)
    if choice_format == "letters" and (letter := one_right_letter(items)) and sum(choice) > 1:
        said = (f"every one of the {sum(choice)} multiple-choice items asked has its right option at {letter}, so "
                f"lettered, a model that always answers {letter} scores them all")
        if sum(choice) >= SAME_LETTER_REFUSED:
            raise MinirunError(f"{said}: use --choice-format cloze, or shuffle the options in the file")
        log.warning(f"{said} (refused from {SAME_LETTER_REFUSED} items on)")
    if choice_format == "letters" and (wide := next((item for item in items if len(item.choices or []) > len(LETTERS)),
                                                    None)):  # before a batch runs, not when its batch comes
        raise MinirunError(f"item {wide.id!r} has {len(wide.choices)} options, more than the {len(LETTERS)} letters: "
                           "use --choice-format cloze, or leave the item out")
    check_gaps(items, methods, source, fewshot_items)  # before any warning on prompts a refused run never asks
    prompts = item_prompts(items, fmt, original, num_prompts)
    if bare := [item_id for item_id, p in prompts.items() if not p]:
        raise MinirunError(f"{len(bare)} item(s), first {bare[0]!r}, have no paraphrase besides the question: "
                           "drop --no-original (original=False) or give them paraphrases")
    check_paraphrased(items, methods, dataset, num_prompts, original)
    check_worked(items, methods, dataset)
    has_template = llm.tokenizer.chat_template is not None
    templated = chat if chat is not None else has_template
    if "flex" in methods and not templated and any(not _suffix(item, choice_format, fmt) and item.blank is None
                                                   for item in items):  # a gap's option is its prompts' shared end
        raise MinirunError(f"flex fuses the paraphrases in the tokens all prompts end with, and {source}'s prompts "
                           f"({fmt.name}) end with the question itself, no cue after it, where no chat template "
                           "wraps them: ask them in the chat template (--chat), or lettered (--choice-format letters, "
                           "ending in \"Answer:\"), or leave flex out")
    prefixes = few_shot_prefixes(items, fewshot_items, source, task, few_shot_k, choice_format,
                                 examples_commit(benchmark, fewshot_items, data_source, few_shot_source), few_shot_draw)
    per_subject = subject_heads(source, fewshot_items)
    data = DataKey.of(items, prompts, prefixes, task, per_subject, few_shot_k, few_shot_draw, fmt, choice_format,
                      not templated)
    chat_key = resumed_chat(recorded_run_key(output_dir).get("chat", chat), chat, has_template)
    run_key = {  # what changes every method's rows; methods are not in it because their rows are independent
        "model": str(Path(llm.path).resolve()), "dtype": str(llm.dtype).removeprefix("torch."), "device": llm.device.type, "dataset": dataset,
        "weights_sha256": checkpoint_digest(llm.path),  # the path's content: other weights written there are another model
        "num_prompts": num_prompts, "original": original,
        **data.digests(),
        "max_new_tokens": max_new_tokens, "bidirectional": bidirectional, "share_prefix": share_prefix,
        "chat": chat_key, "thinking": thinking, "choice_score": choice_score, "choice_format": choice_format,
        "prompt_ids": "whole",  # each prompt encoded as the tokenizer encodes it alone (methods.packing)
        "prompt_format": fmt.name,  # the question blocks' text around each prompt
        "matcher": matcher_name(),  # the verdicts' rules: rows of two matchers never share a table
    }
    if llm.tokenizer.rebuilt:  # ids of a pipeline transformers 5 builds, which a minirun before took from the file
        run_key["tokenizer"] = REBUILT
    if thinking or llm.opens_reasoning(chat, thinking):  # answers after the thinking: not rows of minirun before it
        run_key["answers"] = "after thinking"
        if thinking and not llm.opens_reasoning(chat, thinking) and not llm.tokenizer.thinking_switch:
            # nothing thinks: `report` counts no answer cut off inside a thinking (a key earlier runs lack: resumed)
            run_key["thinks"] = False
            log.warning(f"{llm.path.name}'s chat template has no reasoning switch (Qwen3's enable_thinking): asking it "
                        "to think (--thinking, a sweep's thinking = true) changes none of its prompts")
        elif max_new_tokens < THINKING_TOKENS and any(item.choices is None for item in items):  # choices: scored
            log.warning(f"{llm.path.name} thinks before it answers, and {max_new_tokens} new tokens seldom reach the "
                        f"answer (none where the thinking does not end): give --max-new-tokens {THINKING_TOKENS} or "
                        "more")
    if chat is not False and llm.tokenizer.reads_clock:  # the template writes the day: the run keeps its first one
        run_key["template_date"] = (template_date or recorded_run_key(output_dir).get("template_date")
                                    or date.today().isoformat())
    # and what changes one method's rows only: a run of origin and avg can take hidden_avg at any fusion layer later
    # (hidden_avg's default layer is keyed None however it is asked for: its rows are the same)
    default_layer = default_fusion_layer(llm.config.num_layers)
    method_keys = {m: {name: None if name == "fusion_layer" and getattr(options, name) == default_layer
                       else getattr(options, name) for name, readers in OPTION_READERS.items() if m in readers}
                   for m in methods}
    run = Run(data, tuple(methods), Path(output_dir), run_key, method_keys, options, task,
              num_prompts, batch_size, bidirectional, original, choice_format, per_subject,
              few_shot_draw == "per-question", fmt, checkpoint_source(llm.path), data_source,
              few_shot_source if benchmark is not None and fewshot_items is None else None)
    if "flex" in methods and items[0].blank is not None:  # a gap question flex cannot fuse: refused before any row
        with llm.tokenizer.pinned_clock(template_clock(run)):
            check_gap_flex(llm, [run.question(item) for item in items], [run.candidates(item) for item in items],
                           items[0].blank, options)
    check_prompt_count(prompts, methods, dataset, num_prompts)  # a warning for a run that passed every check
    return run


def check_benchmark(dataset: str, benchmark: str | None) -> None:
    """A benchmark names how a file's items are asked: a known dataset's name, and given for a file only (a named
    dataset is asked as itself), checked before its data or examples are looked up on the Hub."""
    if benchmark is not None and benchmark not in NAMES:
        raise MinirunError(f"unknown benchmark {benchmark!r}: choose from {', '.join(NAMES)}")
    if benchmark is not None and dataset in NAMES:
        raise MinirunError(f"a benchmark asks a file's items as that dataset asks its own; {dataset} is a named "
                           "dataset, asked as itself: drop the benchmark")


def check_benchmark_task(items: list[Item], benchmark: str | None, dataset: str) -> None:
    """A benchmark asks its own task's questions: items of another (a file of short answers asked as MMLU) are
    refused, from their file, before the benchmark's examples are looked up on the Hub."""
    if benchmark is not None and (others := sorted({item.task for item in items} - {TASK_OF[benchmark]})):
        raise MinirunError(f"{benchmark} asks {TASK_OF[benchmark]} questions, and {dataset}'s items are "
                           f"{', '.join(others)}: drop the benchmark, or name one of their task")


def check_paraphrased(items: list[Item], methods: list[str] | tuple[str, ...], dataset: str, num_prompts: int,
                      original: bool) -> None:
    """An ensemble of one prompt is origin under another name: data with no paraphrases at all (WebQuestions,
    MMLU or CommonsenseQA as the Hub gives them), or one prompt per item that is the question, would fill every
    method's column with origin's answers, so it is refused; items of a dataset that lack them here and there are
    counted, as their methods equal origin there."""
    ensembles = [m for m in methods if m != "origin"]
    if ensembles and original and num_prompts == 1:
        raise MinirunError(f"num_prompts 1 leaves each item its question alone, so {', '.join(ensembles)} would repeat "
                           "origin: give 2 or more prompts per item (the question and its paraphrases), or run origin "
                           "alone")
    single = [item.id for item in items if len(ensemble_prompts(item.question, item.paraphrases)) < 2]
    if not ensembles or not single:
        return
    if len(single) == len(items):
        asked_as = f" --benchmark {dataset}" if dataset in NAMES else ""  # its words and few-shot examples kept
        raise MinirunError(f"{dataset}'s {len(items)} items asked have no paraphrases, so {', '.join(ensembles)} would "
                           f"repeat origin: run origin alone, or paraphrase them (`minirun paraphrase {dataset} "
                           f"paraphrased.jsonl --model <an instruct model>`, then `--data paraphrased.jsonl{asked_as}`)")
    if ("single", dataset, len(single), len(items)) not in _WARNED:  # once per data, not once per sweep cell
        _WARNED.add(("single", dataset, len(single), len(items)))
        log.warning("%d of %d items (first %r) have no paraphrase besides the question: there every method answers "
                    "as origin does", len(single), len(items), single[0])


def check_gaps(items: list[Item], methods: list[str] | tuple[str, ...], source: str,
               fewshot_items: list[Item] | None) -> None:
    """Refuse gap items (`Item.blank`: options that fill a gap, Winogrande's) where they cannot be asked as they are
    scored: beside items without a gap in one run, in a format other than Winogrande's (a file of them is asked as
    winogrande: --benchmark), under one of several gap marks, with few-shot examples of the other kind, or with a
    weighted method, whose confidences sample each prompt's answer, which a sentence with a gap has none of."""
    gaps = {item.blank for item in items}
    if None not in gaps and len(gaps) > 1:
        raise MinirunError(f"the items mark their gaps {' and '.join(map(repr, sorted(gaps)))}: one run asks one mark; "
                           "write every gap alike")
    if None in gaps and len(gaps) > 1:
        raise MinirunError("some items fill a gap (a 'blank' field) and others do not: one run asks either kind; "
                           "split the file")
    if None in gaps:
        if source == "winogrande":
            raise MinirunError("winogrande asks sentences with a gap its options fill, and these items have none (a "
                               "'blank' field, \"_\"): drop the benchmark, or give the items their gap")
        return
    if source != "winogrande":
        raise MinirunError(f"{source}'s items fill a gap (a 'blank' field), which is asked and scored as Winogrande "
                           "is: pass --benchmark winogrande (a sweep dataset's benchmark = \"winogrande\")")
    if fewshot_items is not None and any(e.blank is None for e in fewshot_items):
        raise MinirunError("the few-shot examples have no gap (a 'blank' field) and the questions do: give "
                           "examples of gap items (a file of them, or winogrande's own train split)")
    if weighted := [m for m in methods if m in WEIGHTED]:
        raise MinirunError(f"{weighted[0]} weighs each prompt by how often sampled answers repeat its own, and a "
                           "sentence with a gap has no answer to sample: use avg or max for gap items")


def check_worked(items: list[Item], methods: list[str] | tuple[str, ...], dataset: str) -> None:
    """The weighted methods' confidences come from short samples of each prompt's answer (`confidence_tokens`, 16),
    which never reach a worked solution's final number: refused for word problems, not run as weights that say
    nothing."""
    if (weighted := [m for m in methods if m in WEIGHTED]) and any(item.task == "math" for item in items):
        raise MinirunError(f"{', '.join(weighted)} weigh each prompt by how its {EnsembleOptions().confidence_tokens}"
                           f"-token samples agree, and a worked solution reaches its final number far later: leave "
                           f"{'them' if len(weighted) > 1 else 'it'} out for {dataset}'s word problems (vote is "
                           "self-consistency over the wordings)")


def check_prompt_count(prompts: dict[str, list[str]], methods: list[str] | tuple[str, ...], dataset: str,
                       num_prompts: int) -> None:
    """Items with fewer prompts than `num_prompts` fuse the ones they have, so an ensemble-size series past what
    the data holds would repeat its largest size's rows unseen: warned of (once per data and size), naming how many
    items fall short and the most any item has."""
    short = [item_id for item_id, p in prompts.items() if len(p) < num_prompts]
    told = ("short", dataset, num_prompts, len(short))
    if not short or all(m == "origin" for m in methods) or told in _WARNED:
        return
    _WARNED.add(told)
    most = max(map(len, prompts.values()))
    log.warning("%d of %d items (first %r) have fewer than %d distinct prompts to fuse (the most any item has: %d): "
                "their ensembles fuse the ones they have%s", len(short), len(prompts), short[0], num_prompts, most,
                f", so every item runs as at --num-prompts {most}" if len(short) == len(prompts) else "")


_WARNED: set[tuple[str, str, int, int]] = set()  # (what, dataset, a count, items) told of in this process


def resumed_chat(recorded: bool | None, chat: bool | None, has_template: bool) -> bool | None:
    """The `chat` a run keys: the one its rows `recorded` where that renders the template as `chat` does (a run begun
    with --chat, or with the model's default, resumes the other way), else `chat`."""
    templated = chat if chat is not None else has_template
    return recorded if (recorded if recorded is not None else has_template) == templated else chat


def item_prompts(items: list[Item], fmt: PromptFormat, original: bool, num_prompts: int) -> dict[str, list[str]]:
    """Each item's prompts as a run asks them: its question (unless not `original`), then its distinct paraphrases,
    in the format's words, the first `num_prompts`."""
    return {item.id: ensemble_prompts(fmt.question(item.question), [fmt.question(p) for p in item.paraphrases],
                                      original)[:num_prompts] for item in items}


def examples_commit(benchmark: str | None, fewshot_items: list[Item] | None, data_source: dict | None,
                    few_shot_source: dict | None) -> str | None:
    """The Hub commit a run's own few-shot examples are read at: its benchmark's examples' (a file asked as one),
    else its Hub dataset's; none where the examples are given."""
    shots = few_shot_source if benchmark is not None else data_source
    return (shots or {}).get("commit") if fewshot_items is None else None


@dataclass(frozen=True)
class DataKey:
    """What the data puts into a run's rows, which needs no model (a sweep's dry run makes it too): the items, their
    prompts, the few-shot heads (`heads`: each item's head key in `prefixes`), the count and draw behind them, and
    the items whose question the format rewrites (`reworded`: origin asks it as the other prompts are written)."""
    items: list[Item]
    prompts: dict[str, list[str]]
    prefixes: dict[str, str]
    heads: dict[str, str]
    few_shot_k: int
    few_shot_draw: str
    reworded: frozenset[str] = frozenset()
    spaced: frozenset[str] = frozenset()  # the items the harness's spacing scores otherwise (`harness_spaced`)
    spacing: bool = True  # whether that spacing is in effect: not under a chat template

    @classmethod
    def of(cls, items: list[Item], prompts: dict[str, list[str]], prefixes: dict[str, str], task: str | None,
           per_subject: bool, few_shot_k: int, few_shot_draw: str, fmt: PromptFormat, choice_format: str = "cloze",
           spacing: bool = True) -> DataKey:
        """The key of items asked in `fmt` under `prefixes` as `few_shot_prefixes` laid them out (`head_key`);
        `spacing` False under a chat template, where the harness's spacing is not in effect."""
        per_question = few_shot_draw == "per-question"
        heads = {item.id: head_key(item, task, per_subject, per_question) for item in items}
        reworded = frozenset(item.id for item in items if fmt.question(item.question) != item.question)
        spaced = frozenset(item.id for item in items if harness_spaced(item, fmt, choice_format))
        return cls(items, prompts, prefixes, heads, few_shot_k, few_shot_draw, reworded, spaced, spacing)

    def digests(self, ids: list[str] | None = None) -> dict[str, object]:
        """The run key's entries of the data (of the items `ids`, in that order; default all): the heads' text hashed
        with the count and draw behind them (named when they change), the items' content hashed, `scored` where
        every item is multiple choice (no row generates, so a later run with another max_new_tokens resumes it:
        `results.key_differences`), and `origin_question` where origin asks some item's question as formatted."""
        items = self.items if ids is None else [self.by_id[i] for i in ids]
        used = {self.heads[item.id] for item in items}
        prefixes = {key: head for key, head in self.prefixes.items() if key in used}
        return {"few_shot": hashlib.sha256(json.dumps(prefixes).encode()).hexdigest()[:16],
                "few_shot_k": self.few_shot_k, "few_shot_draw": self.few_shot_draw,
                "items": items_digest(items, self.prompts),
                **({"scored": "choices alone"} if scored_alone(items) else {}),
                **({"origin_question": "as formatted"} if any(item.id in self.reworded for item in items) else {}),
                **({"options_spaced": HARNESS_SPACING} if self.spacing and any(item.id in self.spaced for item in items)
                   else {})}

    def grown(self, recorded: list[str]) -> dict[str, object | None] | None:
        """Where a run directory holds the rows of items that are all among these (a pilot of the first 50 grown to
        200, a file with items appended): the run key's data entries as this run would make them for those items
        alone, an entry they would not have as None, which must be the ones recorded for the run to grow, keeping
        its rows; None where some recorded item is not asked now."""
        if not all(i in self.by_id for i in recorded):
            return None
        return dict.fromkeys(("scored", "origin_question", "options_spaced")) | self.digests(recorded)

    @functools.cached_property
    def by_id(self) -> dict[str, Item]:
        """Each item by its id: what `digests` of a run's part looks up."""
        return {item.id: item for item in self.items}


HARNESS_SPACING = "as lm-evaluation-harness"  # the run key's `options_spaced`, where that rule scores an item otherwise


def harness_spaced(item: Item, fmt: PromptFormat, choice_format: str = "cloze") -> bool:
    """Whether lm-evaluation-harness's spacing (`EnsembleOptions.harness_spacing`, a harness format's without a chat
    template) scores a choice item otherwise than minirun's rule did before it: an option with whitespace at an edge
    (HellaSwag's "[step] Water" ending, cleaned to " Water"; a gap item's option ending in it), or, in a format with no
    cue after the question, a wording ending in whitespace. Lettered options are scored as letters: never."""
    if fmt == MINIRUN or item.choices is None or choice_format == "letters":
        return False
    if item.blank is not None:  # written into the gap as given before too; the words after it are stripped
        return any(c != c.rstrip() for c in item.choices)
    ends = [fmt.question(text) for text in (item.question, *item.paraphrases)] if not fmt.cue else []
    return any(c != c.strip() for c in item.choices) or any(text != text.rstrip() for text in ends)


def scored_alone(items: list[Item]) -> bool:
    """Whether every item is multiple choice: scored, none generated, so no row depends on max_new_tokens."""
    return bool(items) and all(item.task == "choice" for item in items)


def items_digest(items: list[Item], prompts: dict[str, list[str]]) -> str:
    """A hash of what each item puts into its rows (question, the prompts run, gold answers, options, passage, gap):
    an edited dataset file resumed into an old run would otherwise pair new rows with stale ones."""
    # a set of right options hashed where an item lists one: the digests of runs before `true_options` stay as they were
    content = [[item.id, item.question, prompts[item.id], item.answers, item.task, item.relation, item.choices,
                item.answer, *([item.true_options] if item.true_options else []),
                *([{"context": item.context}] if item.context is not None else []),
                *([{"blank": item.blank}] if item.blank is not None else [])] for item in items]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()[:16]


def evaluate(llm: LLM, items: list[Item], methods: list[str] | tuple[str, ...], output_dir: str | Path, *,
             rank: int = 0, world_size: int = 1, progress: bool = True,
             on_row: Callable[[dict], None] | None = None, **settings: Any) -> pd.DataFrame:
    """Answer `items` with each method and journal one row per (item, method) in `output_dir`.

    An item's prompts are its question, then its distinct paraphrases (`Item.prompts`), the first
    `num_prompts` of them; `original=False` leaves the question out so ensembles run over the
    paraphrases only (`origin` still answers the question: it is the baseline).

    Rows hold id, method, prompts, generated, answer, exact, correct (under the run's rule: lemma
    containment, or both directions with `bidirectional`), correct_lemma, correct_bidirectional and correct_harness
    (both rules and lm-evaluation-harness's exact match, `harness_exact`, so a report can show any without a rerun),
    tokens, seconds (the batch's wall time, confidences included, split evenly over its items), machine (the device
    the seconds were timed on, `device_name`), relation, task, original, answers, per_prompt_correct,
    per_prompt_accuracy and confidences, and an item's popularity where its data gives one (report's bins). For
    per_prompt, `correct`/`exact`/`answer` are those of the first prompt (the question unless original=False), so
    it stays comparable with `origin`, while `answers` and `per_prompt_correct` hold every prompt's answer
    and verdict, `per_prompt_accuracy` their mean, and `tokens` sums all prompts; vote rows hold the same
    lists, with `answer` and the verdicts those of the answer most prompts gave. hidden_avg rows
    record the `fusion_layer` used. Multiple-choice items (`task` "choice") are scored, not
    generated: `choice` is the picked index, `choice_scores` every option's (fused) score under
    `choice_score` (per token, summed or per character; vote's: each option's share of the prompts' picks),
    `choice_logprobs` and `choice_tokens` every option's summed log-likelihood, token count and length
    (`choice_chars`), per_prompt's and vote's `per_prompt_logprobs` each prompt's, `choices` the options and
    `gold_choice` the right one's index, `true_options` every right one's where an item lists them as a set
    (TruthfulQA's MC2 sets; the pick is right when it is one of them; `report --choice-score` re-picks under another
    score from them),
    `answer` the picked option's text, and with `choice_format` "letters" the options are listed in the prompt
    and their letters scored. Maths items (`task` "math") are solved step by step (`max_new_tokens` by default
    `WORKED_TOKENS`, generation stopping at a next question): `answer` is the final number (`final_number`), judged as
    a number under every rule, `correct_harness` is lm-evaluation-harness's gsm8k "strict-match" verdict and
    `correct_flexible` its "flexible-extract" one (None on open answers; a choice row's pick); a vote counts final
    numbers.
    `dataset` names the data in the run key and picks the default few-shot file; `settings` are
    `prepare`'s keywords. Returns the merged table (world_size 1) or this rank's shard of it.
    """
    run = prepare(llm, items, methods, output_dir, **settings)
    return evaluate_runs(llm, [run], rank=rank, world_size=world_size, progress=progress, on_row=on_row)[0]


def check_resumable(run: Run, rank: int = 0) -> None:
    """Refuse now what `evaluate_runs` would refuse when it reached `run`: rows in its directory that
    its settings would not make (another process writing there included); nothing is written."""
    ResultStore(run.output_dir, run.run_key, rank, [item.id for item in run.items], run.method_keys,
                run.sources, run.data.grown, record=False).close()


def evaluate_runs(llm: LLM, runs: list[Run], *, rank: int = 0, world_size: int = 1, progress: bool = True,
                  on_row: Callable[[dict], None] | None = None) -> list[pd.DataFrame]:
    """Several prepared runs on one model (a sweep's cells of one dataset), each journalled in its own
    directory exactly as it would be alone, taken in `schedule`'s order so that the methods that prefill
    alike prefill each batch once across all of them. One table per run, as `evaluate` returns."""
    matcher = Matcher()
    machine = device_name(llm.device)  # each row's: a run resumed elsewhere holds seconds of two machines
    with contextlib.ExitStack() as stack:
        stores = [stack.enter_context(ResultStore(run.output_dir, run.run_key, rank, [item.id for item in run.items],
                                                  run.method_keys, run.sources, run.data.grown)) for run in runs]
        _pin_kernels(runs)
        stack.callback(calibrate.pin, {})  # the runs' choices, not a later generate's
        calibrate.time_new(world_size == 1)  # ranks timing side by side would choose apart (`time_new`)
        stack.callback(calibrate.time_new, True)
        bar = stack.enter_context(_progress(progress))
        lanes: dict[Lane, list[list[Item]]] = {}
        mine: list[set[tuple[str, str]]] = []  # this rank's (method, item id) of each run
        for i, (run, store) in enumerate(zip(runs, stores)):
            mine.append(set())
            for m in run.methods:
                # batched by few-shot head: its questions share its keys and values (a batch mixing heads
                # repeats each one in every row, ~7x the prefill of a 5-shot head; heads drawn per question are
                # batched by the pool they come from); a resumed batch keeps its unfinished questions together,
                # as the batch a fresh run would run
                batches = shard(_batches(run.items, questions_per_batch(m, run.num_prompts, run.batch_size),
                                         run.pool), rank, world_size)
                mine[i].update((m, item.id) for batch in batches for item in batch)
                done = store.done(m)
                lanes[(i, m)] = [todo for batch in batches if (todo := [item for item in batch if item.id not in done])]
        total = sum(map(len, mine))
        left = sum(len(batch) for batches in lanes.values() for batch in batches)
        overall = bar.add_task("eval", total=total, completed=total - left, resumed=total - left)
        kinds = len(lanes)  # a method's runs (a sweep's cells of it under two labels) each count
        if sum(m in PROMPT_ROWS for _, m in lanes) > 1:  # methods that can share a batch's prefill
            stack.enter_context(llm.reusing_prompts())
        twins = Twins(lambda: _reused_seconds(llm))
        fitting: dict[tuple[int, str], int] = {}  # (run, layout) -> questions a call holds, once memory ran out

        def answer(run: Run, method: str, part: list[Item]) -> list[dict]:
            qs = [run.question(item) for item in part]
            with llm.tokenizer.pinned_clock(template_clock(run)):
                return _run_batch(llm, method, part, qs, run, matcher, bar, twins)

        for (i, method), batch in schedule(lanes):
            run = runs[i]
            # the count is of items × methods: with several, the bar says so, lest 150 read as origin's items
            bar.update(overall, description=f"eval {kinds} runs, now {method}" if kinds > 1 else f"eval {method}")
            layout = (i, "rows" if method in PROMPT_ROWS else method)  # alike methods share a batch's memory
            rows = _within_memory(llm, functools.partial(answer, run, method), batch, method, fitting, layout)
            views = {item.id: item.popularity for item in batch if item.popularity is not None}  # report's bins
            rows = [{**row, "machine": machine, **({"popularity": views[row["id"]]} if row["id"] in views else {})}
                    for row in rows]
            stores[i].record_kernels(calibrate.chosen())  # first: rows kept without their kernels would be retimed
            stores[i].add_batch(rows)  # whole: a resumed run redoes whole batches, as a fresh run makes them
            bar.advance(overall, len(rows))
            for row in rows if on_row is not None else ():
                on_row(row)
        if world_size == 1:
            return [store.finalize() for store in stores]
    tables = []
    for run, pairs in zip(runs, mine):
        table = read_results(run.output_dir)
        mine_rows = pd.Series([pair in pairs for pair in zip(table["method"], table["id"])], index=table.index, dtype=bool)
        tables.append(table[mine_rows].reset_index(drop=True))  # a Series: an empty list would pick no columns
    return tables


def _pin_kernels(runs: list[Run]) -> None:
    """Pin the CPU kernel choices the runs' earlier processes made their rows with (the first run's where two
    differ): bfloat16 rows round by the kernels, so a resumed run (or a rank) choosing anew would mix two
    roundings in one table."""
    pins: dict[str, Any] = {}
    for run in runs:
        recorded = run_kernels(run.output_dir)
        if apart := [choice for choice in recorded.keys() & pins.keys() if recorded[choice] != pins[choice]]:
            log.warning(f"{run.output_dir} made its rows with other kernels than a run beside it ({apart[0]}): its "
                        "new rows take the first run's, and may round otherwise in bfloat16 (run it alone to keep "
                        "its own)")
        pins = {**recorded, **pins}
    try:
        calibrate.pin(pins)
    except ValueError as e:
        raise MinirunError(f"a kernels.rank*.json of {', '.join(str(run.output_dir) for run in runs)} records {e}: "
                           "delete that file (the run's next process records its own)") from None


def _within_memory(llm: LLM, answer: Callable[[list[Item]], list[dict]], batch: list[Item], method: str,
                   fitting: dict[tuple[int, str], int], layout: tuple[int, str]) -> list[dict]:
    """`answer`'s rows for `batch`, asked in parts small enough for the device's memory: where a part runs out
    (a 32B model's cache beside its weights on one GPU), the memory it held is freed and it is asked again in
    halves, and the size that fits (`fitting`, per run and layout) is where later batches start. A sweep of hours
    goes on at the size that fits instead of stopping at its first long batch; the batch's rows are still
    journalled whole, so a resumed run redoes the batches a fresh run makes. Only one question that does not fit
    alone ends the run, in one line."""
    rows: list[dict] = []
    most = fitting.get(layout, len(batch))
    while len(rows) < len(batch):
        part = batch[len(rows):len(rows) + most]
        try:
            rows += answer(part)
            continue
        except RuntimeError as e:
            if (asked := out_of_memory(e)) is None:
                raise
        if len(part) == 1:
            raise MinirunError(f"out of {llm.device.type} memory running {method} on one question, {part[0].id!r} "
                               f"({asked}): it does not fit alone; give fewer prompts, a smaller --max-new-tokens or "
                               "--dtype; the batches finished are kept")
        llm.release_memory()
        most = fitting[layout] = len(part) // 2
        log.warning(f"out of {llm.device.type} memory running {method} on {len(part)} questions at once, first "
                    f"{part[0].id!r} ({asked}): running {most} at a time from here on (--batch-size {most}, in a "
                    "sweep the model's batch_size, starts there)")
    return rows


def shown_prompts(llm: LLM, run: Run, count: int) -> list[str]:
    """The first `count` items' prompts decoded token for token as the run's methods ask them (chat template and
    special tokens, few-shot head, question block), with each choice item's options as scored after them: what
    the model reads, to check a dataset's prompts before a run of hours. A block of text per item."""
    tok, blocks = llm.tokenizer, []
    ensembles = [m for m in run.methods if m != "origin"]
    with tok.pinned_clock(template_clock(run)):
        for item in run.items[:count]:
            question, choices = run.question(item), run.candidates(item)
            if item.blank is not None:
                blocks.append(_shown_gaps(llm, run, item, question, choices))
                continue
            origin = asked_ids(llm, "origin", question, run.options, choices) if "origin" in run.methods else None
            prompts = asked_ids(llm, ensembles[0], question, run.options, choices) if ensembles else None
            shown = prompts or origin
            if origin is not None and prompts is not None and origin[0][0] in prompts[0]:
                heading = f"{len(prompts[0])} prompts; origin asks prompt {prompts[0].index(origin[0][0]) + 1}"
            else:
                heading = ("origin's prompt" if prompts is None else f"{len(prompts[0])} prompts") + \
                    ("" if origin is None or prompts is None else "; origin asks the question alone, below")
            lines = [f"=== item {item.id} ({heading})"]
            for i, ids in enumerate(shown[0]):
                lines += [f"--- prompt {i + 1} · {len(ids)} tokens", tok.decode(ids)]
            if origin is not None and prompts is not None and origin[0][0] not in prompts[0]:
                lines += [f"--- origin · {len(origin[0][0])} tokens", tok.decode(origin[0][0])]
            if shown[1] is not None:
                lines.append("--- options scored after each prompt: " + ", ".join(
                    f"{tok.decode(ids)!r} ({len(ids)} token{'s' if len(ids) > 1 else ''})" for ids in shown[1]))
            blocks.append("\n".join(lines))
    return blocks


def _shown_gaps(llm: LLM, run: Run, item: Item, question: Question, choices: list[str]) -> str:
    """`shown_prompts`' block of a gap item: each option written into the gap of the prompts the run's first method
    asks, and the words after the gap scored after each."""
    tok = llm.tokenizer
    method = run.methods[0]
    filled, tail = gap_filled(question, choices, item.blank)
    lines = [f"=== item {item.id} ({method}'s prompts, each option in the gap)"]
    for option, each in zip(choices, filled):
        prompts, (target,) = asked_ids(llm, method, each, run.options, [tail])
        for i, ids in enumerate(prompts):
            lines += [f"--- option {option!r} · prompt {i + 1} · {len(ids)} tokens", tok.decode(ids)]
        plural = "s" if len(target) > 1 else ""
        lines.append(f"--- scored after it: {tok.decode(target)!r} ({len(target)} token{plural})")
    return "\n".join(lines)


def template_clock(run: Run) -> datetime | None:
    """The moment a run's chat template renders at: the start of the day it recorded (None: no date recorded)."""
    day = run.run_key.get("template_date")
    return None if day is None else template_day(day)


def _batches(items: list[Item], size: int, pool: Callable[[Item], str]) -> list[list[Item]]:
    """Batches of `size` questions, each under one few-shot head or heads drawn from one pool (`Run.pool`)."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(pool(item), []).append(item)
    return [group[start:start + size] for _, group in sorted(groups.items()) for start in range(0, len(group), size)]


def schedule(lanes: dict[Lane, list[list[Item]]]) -> list[tuple[Lane, list[Item]]]:
    """(lane, batch) in the order they run: each lane's own batches, the same whatever else runs, lane
    after lane, except that lanes of a `PROMPT_ROWS` method with the very same batches (in one run or
    several) take them batch by batch together, so each batch is prefilled once for all of them (the
    later ones copy the first one's keys and values: `Session.prefill`)."""
    ids = {lane: [[item.id for item in batch] for batch in batches] for lane, batches in lanes.items()}
    order, placed = [], set()
    for lane, batches in lanes.items():
        if lane in placed:
            continue
        together = [lane] + [other for other in lanes if other not in placed and other != lane and
                             {lane[1], other[1]} <= set(PROMPT_ROWS) and ids[other] == ids[lane]]
        placed.update(together)
        order += [(member, lanes[member][i]) for i in range(len(batches)) for member in together]
    return order


def _suffix(item: Item, choice_format: str, fmt: PromptFormat) -> str:
    """What follows each prompt: the format's cue ("A:") before a generated or cloze-scored answer, else the
    lettered options."""
    return option_list(item.choices) if item.choices is not None and choice_format == "letters" else fmt.cue


class Twins:
    """per_prompt and vote answer (or score) every prompt alone, the very same tokens: on a batch both run, the
    second takes the first one's results as its own (`answered_as`, `scored_as`) instead of decoding again, and
    counts their seconds (`copied`, a running total), so its throughput reads as if it ran alone. One batch is
    kept per kind of call, which is all `schedule`, taking the two together batch by batch, needs."""

    def __init__(self, reused_seconds: Callable[[], float]) -> None:
        self.reused_seconds = reused_seconds  # the prefill time a call copied counts as its own
        self.kept: dict[str, tuple[str, list, float]] = {}  # kind -> (the call's inputs, results, seconds)
        self.copied = 0.0

    def run(self, method: str, kind: str, inputs: tuple, options: EnsembleOptions, compute: Callable[[], list],
            convert: Callable[[Any], Any]) -> list:
        """`compute()`'s results, or those a twin made of the same `inputs` and `options`, converted. The choice score
        is left out of the match: results carry what `convert` re-picks any score from."""
        if method not in EVERY_ANSWER:
            return compute()
        key = repr((inputs, replace(options, choice_score=EnsembleOptions().choice_score)))
        if kind in self.kept and self.kept[kind][0] == key:
            self.copied += self.kept[kind][2]
            return [convert(r) for r in self.kept[kind][1]]
        start, reused, aside = time.perf_counter(), self.reused_seconds(), seconds_set_aside()
        results = compute()
        spent = time.perf_counter() - start - (seconds_set_aside() - aside) + self.reused_seconds() - reused
        self.kept[kind] = key, results, spent
        return results


def _run_batch(llm: LLM, method: str, batch: list[Item], questions: list[Question], run: Run, matcher: Matcher,
               bar: Progress, twins: Twins) -> list[dict]:
    """One batched generation (or scoring, for choice items) and one batched match for `batch`.

    `seconds` is the batch's wall time per item plus the prefill time it copied from the method before
    it (`schedule`) and the time of the results it took from its twin (`Twins`), so a method's throughput
    reads the same whether it ran alone or after another, less any kernel calibration or compiling that ran inside
    it (`seconds_set_aside`: once per machine or process and shape, not the method's cost)."""
    start, reused, aside = time.perf_counter(), _reused_seconds(llm), seconds_set_aside()
    copied, options, original = twins.copied, run.options, run.original
    if method in WEIGHTED:
        options = replace(options, confidences=_confidences(llm, batch, questions, options, matcher, bar))
    scored = [i for i, item in enumerate(batch) if item.choices is not None]
    generated = [i for i, item in enumerate(batch) if item.choices is None]
    rows = {}
    if scored:
        picked = [batch[i] for i in scored]
        candidates = [run.candidates(item) for item in picked]
        pick_options = replace(options, confidences=[options.confidences[i] for i in scored]) \
            if options.confidences else options
        asked = [questions[i] for i in scored]
        blank = picked[0].blank  # a run's items all fill a gap, or none does (`check_gaps`)

        def score() -> list[ChoiceResult]:
            if blank is None:
                return score_choices(llm, method, asked, candidates, pick_options)
            return score_blanks(llm, method, asked, candidates, blank, pick_options)

        with _naming(picked):
            results = twins.run(method, "score", (asked, candidates), pick_options, score,
                                lambda r: scored_as(r, method, pick_options.choice_score))
        rows |= {i: _choice_row(item, method, r, original) for i, item, r in zip(scored, picked, results)}
    if generated:
        items = [batch[i] for i in generated]
        worked = items[0].task == "math"  # a batch is one few-shot head's, so of one task
        gen_options = replace(options, confidences=[options.confidences[i] for i in generated] if options.confidences
                              else None, stop=run.prompt_format.stops(items[0].task), worked=worked)
        found = _generate_rows(llm, method, items, [questions[i] for i in generated], gen_options, matcher,
                               run.bidirectional, original, twins, run.prompt_format.ignored)
        rows |= dict(zip(generated, found))
    elapsed = time.perf_counter() - start - (seconds_set_aside() - aside)
    seconds = (elapsed + _reused_seconds(llm) - reused + twins.copied - copied) / len(batch)
    return [{**rows[i], "seconds": seconds} for i in range(len(batch))]


def _harness_verdict(text: str, golds: list[str], reasoning: bool, ignored: str, options: EnsembleOptions,
                     flexible: bool = False) -> bool:
    """lm-evaluation-harness's verdict of a generation's answer part (none while its thinking goes on, as for
    `extract_answer`): `harness_exact`, or for a worked solution `harness_gsm8k` (its strict-match, or `flexible`)."""
    start = answer_start(text, reasoning or THINK_END in text)
    if start is None:
        return False
    if options.worked:
        return harness_gsm8k(text[start:], golds, options.stop, flexible)
    return harness_exact(text[start:], golds, ignored)


@contextlib.contextmanager
def _naming(items: list[Item]) -> Iterator[None]:
    """A prompt too long for the model's context, told with the item it belongs to: among thousands of items,
    "shorten the prompts" alone does not say which."""
    try:
        yield
    except PromptTooLong as e:
        item = items[e.question]
        raise MinirunError(f"item {item.id!r} ({textwrap.shorten(item.question, 48, placeholder='…')!r}): {e}, or "
                           "leave that item out") from None


def _reused_seconds(llm: LLM) -> float:
    return llm.prompts.reused_seconds if llm.prompts is not None else 0.0


def _choice_row(item: Item, method: str, result: ChoiceResult, original: bool) -> dict:
    """A scored item's row: right when the picked option is one of the item's right options (both matching rules)."""
    rights = item.right_options
    right = result.choice in rights
    picks = result.per_prompt_choices
    return {
        "id": item.id, "method": method, "prompts": result.prompts, "generated": item.choices[result.choice],
        "answer": item.choices[result.choice], "exact": right, "correct": right, "correct_lemma": right,
        "correct_bidirectional": right, "correct_harness": right, "correct_flexible": right, "tokens": 0,
        "relation": item.relation, "task": item.task, "original": original,
        "answers": [item.choices[c] for c in picks] if picks else None,
        "per_prompt_correct": [c in rights for c in picks] if picks else None,
        "per_prompt_accuracy": sum(c in rights for c in picks) / len(picks) if picks else None,
        "confidences": result.confidences, "fusion_layer": result.fusion_layer, "choice": result.choice,
        "choice_scores": result.scores, "choice_logprobs": result.logprobs, "choice_tokens": result.option_tokens,
        "per_prompt_logprobs": result.per_prompt_logprobs, "choice_chars": result.option_chars,
        "choices": item.choices, "gold_choice": item.answer, "true_options": item.true_options,
    }


def _generate_rows(llm: LLM, method: str, batch: list[Item], questions: list[Question], options: EnsembleOptions,
                   matcher: Matcher, bidirectional: bool, original: bool, twins: Twins, ignored: str) -> list[dict]:
    reasoning = llm.opens_reasoning(options.chat, options.thinking)  # answers come after thinking the prompt opened
    with _naming(batch):
        results = twins.run(method, "generate", (questions,), options,
                            lambda: run_method(llm, method, questions, options),
                            lambda r: answered_as(r, method, reasoning, options.worked))
    texts = [r.answers if r.answers is not None else [r.text] for r in results]
    if options.worked:  # worked solutions, judged by their final numbers under every rule
        numbers = [[final_number(a, reasoning) for a in mine] for mine in texts]
        verdicts = [MatchResult(right, right) for item, mine in zip(batch, numbers)
                    for right in (number_right(a, item.answers) for a in mine)]
        matches = iter(zip(verdicts, verdicts))
        answers = [[a or "" for a in mine] for mine in numbers]
    else:
        answers = [[extract_answer(a, STOP, reasoning) for a in mine] for mine in texts]
        predictions = [x for a in answers for x in a]
        golds = [item.answers for item, a in zip(batch, answers) for _ in a]
        # Both rules from one spaCy pass: the second call finds every lemma in the matcher's cache.
        matches = iter(zip(matcher.match(predictions, golds), matcher.match(predictions, golds, bidirectional=True)))
    rows = []
    for item, result, mine, text in zip(batch, results, answers, texts):
        both = [next(matches) for _ in mine]
        found = [two_way if bidirectional else one_way for one_way, two_way in both]
        every = result.answers is not None  # per_prompt and vote: every prompt's answer
        shown = result.chosen or 0  # per_prompt's first prompt, or the vote's winner
        rows.append({
            "id": item.id, "method": method, "prompts": result.prompts, "generated": result.text, "answer": mine[shown],
            "exact": found[shown].exact, "correct": found[shown].lemma, "correct_lemma": both[shown][0].lemma,
            "correct_bidirectional": both[shown][1].lemma, "tokens": _generated_tokens(result),
            "correct_harness": _harness_verdict(text[shown], item.answers, reasoning, ignored, options),
            "correct_flexible": _harness_verdict(text[shown], item.answers, reasoning, ignored, options, True)
            if options.worked else None,
            "relation": item.relation, "task": item.task, "original": original,
            "answers": mine if every else None,
            "per_prompt_correct": [m.lemma for m in found] if every else None,
            "per_prompt_accuracy": sum(m.lemma for m in found) / len(found) if every else None,
            "confidences": result.confidences, "fusion_layer": result.fusion_layer, "choice": None,
            "choice_scores": None, "choice_logprobs": None, "choice_tokens": None, "per_prompt_logprobs": None,
            "choice_chars": None, "choices": None, "gold_choice": None, "true_options": None,
        })
    return rows


def _generated_tokens(result) -> int:
    """Generated token count; per_prompt and vote sum over their prompts' answers."""
    if result.answer_token_ids is not None:
        return sum(len(ids) for ids in result.answer_token_ids)
    return len(result.token_ids)


def _confidences(llm: LLM, items: list[Item], questions: list[Question], options: EnsembleOptions, matcher: Matcher,
                 bar: Progress) -> list[list[float]]:
    """Each paraphrase's self-consistency (cached on disk), answers compared with the lemma
    matcher so "Paris, France" and "paris" agree; a bar of its own because S samples are slow."""
    from minirun.methods.confidence import confidences_for
    from minirun.methods.packing import encode_question

    def same(a: str, b: str) -> bool:
        return matcher.match([extract_answer(a, STOP)], [[extract_answer(b, STOP)]], bidirectional=True)[0].lemma

    same.cache_name = f"lemma {matcher_name()}"  # type: ignore[attr-defined]  (confidences of another matcher differ)

    task = bar.add_task("  confidence", total=sum(len(q.paraphrases) for q in questions))
    out = []
    try:  # a batch that runs out of memory here is split and retried: its bar goes with it
        for item, q in zip(items, questions):
            encoded = encode_question(llm, q.paraphrases, q.prefix, q.suffix, options.chat, options.thinking)
            with _naming([item]):
                out += confidences_for(llm, [encoded], options, same=same)
            bar.advance(task, len(q.paraphrases))
    finally:
        bar.remove_task(task)
    return out


def ranks() -> tuple[int, int]:
    """(this process's rank, the number of processes) as torchrun sets them in RANK and WORLD_SIZE; (0, 1) for
    one process, whatever RANK says (a rank alone runs all the work). A RANK outside 0..WORLD_SIZE-1 would
    skip a share of the items, so it is refused."""
    try:
        rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise MinirunError("RANK and WORLD_SIZE must be whole numbers (torchrun sets them): unset them to run in "
                           "one process") from None
    if world_size <= 1:
        return 0, 1
    if not 0 <= rank < world_size:
        raise MinirunError(f"RANK {rank} is outside 0..{world_size - 1} (WORLD_SIZE {world_size}): start the "
                           "processes with torchrun, or unset RANK and WORLD_SIZE to run in one")
    return rank, world_size


def wait_for_ranks() -> None:
    """Every rank's share done (before rank 0 merges them). A rank that stopped on an error (printed by it) ends
    the others' wait with one line, not gloo's traceback; every finished row stays journalled."""
    import torch.distributed as dist

    try:
        dist.barrier()
    except RuntimeError:  # gloo's "Connection closed by peer", a DistBackendError
        raise MinirunError("another rank stopped before finishing its share (its error is printed above); the rows "
                           "finished are kept: fix that and rerun the same command to finish the run") from None


@contextlib.contextmanager
def process_group(world_size: int) -> Iterator[None]:
    """A gloo group over the `torchrun` processes for the block (nothing with one process). gloo works
    on CPU and GPU hosts alike; the long timeout lets ranks finish far apart on uneven shards without a
    barrier giving up. Open one per command: a later group in the same processes can read an earlier
    one's addresses and fail to connect."""
    if world_size <= 1:
        yield
        return
    import torch.distributed as dist

    try:
        dist.init_process_group("gloo", timeout=timedelta(days=7))
    except ValueError as e:  # WORLD_SIZE set by hand, without torchrun's rendezvous (MASTER_ADDR, MASTER_PORT)
        raise MinirunError(f"WORLD_SIZE {world_size} asks for several processes, but no torchrun started them "
                           f"({e}): run `torchrun --nproc_per_node {world_size} -m minirun.cli …`, or unset WORLD_SIZE") \
            from None
    try:
        yield
    finally:
        with contextlib.suppress(RuntimeError):  # a group a failed rank broke cannot always be torn down cleanly
            dist.destroy_process_group()


def run_sharded(llm: LLM, items: list[Item], methods: list[str] | tuple[str, ...], output_dir: str | Path,
                **kwargs: Any) -> pd.DataFrame:
    """`evaluate`, sharded over the `torchrun` processes when WORLD_SIZE > 1: each rank journals its
    shard; after a barrier rank 0 merges them and returns the full table (other ranks their shard)."""
    _, world_size = ranks()
    if world_size <= 1:
        return evaluate(llm, items, methods, output_dir, **kwargs)
    import torch.distributed as dist

    with process_group(world_size):
        rank = dist.get_rank()
        table = evaluate(llm, items, methods, output_dir, rank=rank, world_size=world_size, **kwargs)
        wait_for_ranks()
        return merge(output_dir) if rank == 0 else table
