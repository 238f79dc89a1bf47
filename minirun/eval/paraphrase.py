"""Paraphrase generation: the target model rewrites each question N ways.

Rewrite i of an item is sampled with its own seed, a hash of (seed, item id, i), so items get
different rewrites and results do not depend on how items are batched or which others are in the
file; all N rewrites of a batch of items decode as one batch. The output JSONL doubles as the
cache: items already written with the same settings are not redone.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import IO

import torch

from minirun.checkpoints.tokenizer import day_text, template_day
from minirun.engine.generate import Completion, decode_loop, plain_row, stack_rows
from minirun.engine.llm import LLM
from minirun.engine.sampling import SamplingParams, sample
from minirun.errors import MinirunError
from minirun.eval.data import Item
from minirun.eval.data.items import item_from_dict, item_record
from minirun.eval.prompts import WORKED_TOKENS
from minirun.eval.results import RECORDED_BEFORE, REBUILT, drop_torn_line, lock_exclusively
from minirun.text import THINKING_TOKENS, answer_start, blank_parts, first_line, normalize, number_values

log = logging.getLogger("minirun")

INSTRUCTION = ("Rewrite the question so that it keeps exactly the same meaning but uses different words and a "
               "different sentence structure. Reply with the rewritten question only.")
DEMOS = [  # written for minirun; facts not in sample-qa or sample-choice (a test item's rewrite would be dropped as a copy)
    ("Which river flows through Vienna?", "Vienna lies on the banks of which river?"),
    ("Who wrote The Old Man and the Sea?", "The Old Man and the Sea was written by which author?"),
    ("How many legs does a spider have?", "What is the number of legs on a spider?"),
    ("Where was Albert Einstein born?", "In which place did Albert Einstein come into the world?"),
]


# A fill prompt stops where its answer goes: asked to reword it as a question, a model completes it
# ("The capital of Egypt is Egypt."), so it gets a rewrite that must stop at the same place.
FILL_INSTRUCTION = ("Rewrite the unfinished sentence so that it keeps exactly the same meaning but uses different "
                    "words and a different sentence structure. The rewrite must stop where the original stops, right "
                    "before the missing answer: do not add the answer. Reply with the rewritten unfinished sentence "
                    "only.")
FILL_DEMOS = [  # written for minirun; facts not in sample-fill
    ("The chemical symbol for gold is", "In chemistry, gold is written with the symbol"),
    ("The Mona Lisa was painted by", "The painter of the Mona Lisa was"),
    ("The largest planet in the solar system is", "Of all the planets in the solar system, the biggest one is"),
    ("Isaac Newton was born in the country of", "The country where Isaac Newton was born is"),
]
# A word problem is reworded whole, every quantity kept: a rewrite that changes a number changes the answer
MATH_INSTRUCTION = ("Rewrite the word problem so that it keeps exactly the same meaning and every number but uses "
                    "different words and a different sentence structure. Do not solve it. Reply with the rewritten "
                    "problem only, on one line.")
MATH_DEMOS = [  # written for minirun; problems not in sample-math
    ("A baker makes 24 muffins and sells 3 boxes of 6 muffins each. How many muffins are left?",
     "After selling 3 boxes holding 6 muffins apiece, how many of the 24 muffins a baker made remain?"),
    ("Lena walks 2 miles every day for 5 days and then 4 miles on Saturday. How far does she walk in total?",
     "What total distance does Lena cover if she walks 4 miles on Saturday after walking 2 miles a day for 5 days?"),
    ("A ticket costs $12 and a drink costs $3. How much do 4 tickets and 2 drinks cost?",
     "What is the price of 2 drinks at $3 each together with 4 tickets at $12 each?"),
]
QUESTION_PROMPT = (INSTRUCTION, DEMOS, "Question")
# task -> instruction, worked examples, label; a choice item's stem is asked as a question ("Q: ...")
PROMPTS = {"qa": QUESTION_PROMPT, "choice": QUESTION_PROMPT, "fill": (FILL_INSTRUCTION, FILL_DEMOS, "Sentence")}
MATH_PROMPT = (MATH_INSTRUCTION, MATH_DEMOS, "Problem")  # not in PROMPTS, which every file's settings key holds
DEMO_TEXTS = {task: [normalize(text) for demo in demos for text in demo]  # a rewrite containing one copied an example
              for task, (_, demos, _) in {**PROMPTS, "math": MATH_PROMPT}.items()}
REWRITE_TOKENS = 30  # new tokens a rewrite gets unless told otherwise; a word problem's, reworded whole, as many as
# its solution gets (`WORKED_TOKENS`: GSM8K's longest problem is 188 SmolLM2 tokens)
CLOZE_END = re.compile(r"[^\W_]$")  # a fill prompt ends in a word or number, where its answer follows
# In the settings key: bump when the same settings give other rewrites (2: seeds hashed from the item id, fill
# prompts, stricter filters; 3: an answer the original names does not drop a rewrite, dtype and device in the key;
# 4: a rewrite sharing no content word with the original is dropped; 5: a choice item's unfinished stem is rewritten
# as an unfinished sentence; 6: letters Unicode does not decompose fold in the copy and off-topic filters, "Søren" as
# "Soren"), so a file an older minirun wrote is refused, not resumed under mixed rules
REWRITE_VERSION = 6
# Files of yes/no questions (`yes_no`) key this rule too: since it, their rewrites are questions, never unfinished
# sentences, without a question mark where the original has none (other files' keys stay as they were)
YES_NO_RULE = "yes/no questions rewritten as questions, a question mark only where the original has one"
# Files of gap items (`Item.blank`, Winogrande's) key this rule: the words before the gap are rewritten as an unfinished
# sentence, the gap and the words after it kept as they are (the options are scored by those words, in every wording;
# `rewritten_part`, `gap_kept`, `with_gap`)
GAP_RULE = ("gap items: the words before the gap rewritten as an unfinished sentence, the punctuation before the gap, "
            "the gap and what follows kept; no rewrite naming an option more often, ending in one, or holding the gap")


def yes_no(item: Item) -> bool:
    """Whether a choice item's options are the answers no and yes (BoolQ's): its question is answered by them, not
    continued, however it ends (BoolQ's questions carry no question mark: the harness's prompt adds one)."""
    return item.choices is not None and sorted(c.strip().lower() for c in item.choices) == ["no", "yes"]


def rewrite_kind(item: Item) -> str:
    """How an item's wording is rewritten: as a question, or as an unfinished sentence ("fill") where it stops where
    its answer goes — a fill item's, and a choice item's stem that its options continue (HellaSwag's contexts,
    OpenBookQA's "The sun is responsible for"), which reworded as a question would no longer lead into them; a yes/no
    question is a question."""
    continued = item.task == "choice" and not yes_no(item) and CLOZE_END.search(item.question.rstrip())
    return "fill" if item.task == "fill" or continued else item.task


def fitted(rewrite: str, item: Item) -> str:
    """A rewrite ending as its yes/no question ends: without a question mark where the original has none, as a prompt
    that adds one (BoolQ's "{{question}}?") would otherwise ask "…??" of the rewrites and "…?" of the original."""
    if yes_no(item) and not item.question.rstrip().endswith("?"):
        return rewrite.rstrip().rstrip("?").rstrip()
    return rewrite


def gap_joint(item: Item) -> tuple[str, str]:
    """A gap item's words before its gap split into (what is rewritten, the joint kept before the gap): the joint is
    the punctuation and spacing between the last word and the gap ("Bob, " in "…than Bob, _ paid"), which a fill
    prompt's rewrite, ending in a word, would otherwise drop."""
    before = blank_parts(item.question, item.blank)[0]
    core = re.sub(r"[\W_]*$", "", before)
    return core, before[len(core):]


def rewritten_part(item: Item) -> Item | None:
    """What of an item is rewritten, as an item: itself, or for a gap item the words before its gap (`gap_joint`) as
    an unfinished sentence (a fill item's rules: it must stop where the option goes), each of its options as an
    answer none of its rewrites may name more often (the right one alone would choose wordings by the answer); None
    where the gap opens the sentence (nothing before it to rewrite)."""
    if item.blank is None:
        return item
    core = gap_joint(item)[0]
    if not core.strip():
        return None
    return replace(item, question=core, paraphrases=[], answers=list(item.choices), task="fill", choices=None,
                   answer=None, true_options=None, blank=None)


def gap_kept(item: Item, rewrite: str) -> bool:
    """Whether a rewrite the fill rules kept may stand before a gap item's gap: not holding the gap mark itself (the
    wording would hold two gaps), not ending in one of the options, or its possessive, where the original does not (one
    written before the gap garbles the sentence: "…because the ball _ was fragile."), and where punctuation joins the
    last word to the gap (`gap_joint`: "than Bob, _", "Mr. _") ending in the original's last word, which the
    punctuation belongs to ("…richer than Bob, so, _" would not read)."""
    if item.blank is None:
        return True
    core, joint = gap_joint(item)

    def option_last(text: str) -> bool:
        words = " " + normalize(re.sub(r"['’]s$", "", text.rstrip()))
        return any(words.endswith(f" {normalize(option)}") for option in item.choices)

    def last_word(text: str) -> str:
        return (re.findall(r"[^\W_]+", text.casefold()) or [""])[-1]

    return item.blank not in rewrite and (not option_last(rewrite) or option_last(core)) and \
        (not joint.strip() or last_word(rewrite) == last_word(core))


def with_gap(item: Item, rewrite: str) -> str:
    """A kept rewrite as the item's wording: itself, or a gap item's rewritten start followed by the joint, the gap and
    the words after it as the sentence has them."""
    if item.blank is None:
        return rewrite
    after = blank_parts(item.question, item.blank)[1]
    return f"{rewrite.rstrip()}{gap_joint(item)[1] or ' '}{item.blank}{after}"


def rewrite_prompt(item: Item) -> str:
    kind = rewrite_kind(item)
    instruction, demos, label = MATH_PROMPT if kind == "math" else PROMPTS[kind]
    shots = "\n\n".join(f"{label}: {q}\nRewrite: {r}" for q, r in demos)
    return f"{instruction}\n\n{shots}\n\n{label}: {item.question}\nRewrite:"


def rewrite_seed(seed: int, item_id: str, i: int) -> int:
    """Rewrite i's sampling seed, a stable hash (not Python's salted hash()) of (seed, item id, i): with
    seed + i every item drew from the same streams and different questions got the same rewrites."""
    return int.from_bytes(hashlib.sha256(json.dumps([seed, item_id, i]).encode()).digest()[:8], "big")


def clean_rewrite(text: str) -> str:
    """First line, without a leading 'Rewrite:' label or quotes."""
    line = first_line(text)
    line = re.sub(r"^(rewrite|question|sentence)\s*:\s*", "", line, flags=re.IGNORECASE)
    return line.strip(" \"'")


def keep(rewrite: str, item: Item, kept: list[str]) -> bool:
    """Drop empty rewrites, duplicates of each other, rewrites starting with the whole original (the
    question itself, or it plus more: a fill prompt's completion, an answer after the question), copies
    of the prompt's worked examples (a small model often repeats one), rewrites giving the answer away
    (naming it more often than the original does: "Which U.S. state is New York City in?" keeps rewrites
    that say "New York City"), rewrites sharing no content word with the original ("The answer to this question
    is:", which a small model writes and which asks nothing), fill rewrites (`rewrite_kind`: of a fill item, or of
    a choice stem its options continue) that do not end in a word where the answer can follow ("... is Cairo."), and
    word problems' rewrites whose numbers are not the original's (`quantities`: one changed, dropped or added is
    another problem, with another answer)."""
    norm, original = normalize(rewrite), normalize(item.question)
    if not norm or norm in map(normalize, kept) or f"{norm} ".startswith(f"{original} "):
        return False
    if rewrite_kind(item) == "fill" and not CLOZE_END.search(rewrite):
        return False
    if any(_mentions(norm, demo) for demo in DEMO_TEXTS[rewrite_kind(item)]):
        return False
    if (asked := content_stems(item.question)) and not asked & content_stems(rewrite):
        return False
    if item.task == "math" and quantities(rewrite) != quantities(item.question):
        return False
    return not any(_mentions(norm, answer) > _mentions(original, answer) for answer in map(normalize, item.answers))


NUMBER_WORDS = {word: str(n) for n, word in enumerate("zero one two three four five six seven eight nine ten eleven "
                                                        "twelve".split())}


def content_stems(text: str) -> set[str]:
    """The text's words that carry content: numbers (small ones spelled out read as digits: "7 times 8" and "seven
    multiplied by eight" share them) and words of three letters or more that are not spaCy's English stop words, cut
    to five letters so that inflections meet ("capital"/"capitals", "invented"/"inventor")."""
    from spacy.lang.en.stop_words import STOP_WORDS

    words = [NUMBER_WORDS.get(word, word) for word in normalize(text).split()]
    return {word[:5] for word in words if any(c.isdigit() for c in word) or len(word) > 2 and word not in STOP_WORDS}


# A word problem's spelt quantities: numbers in words ("sixteen", "twenty-five", "two hundred", "a dozen") and the
# ratios words state ("half", "twice", "a third"), which a rewrite must keep as the digits it writes
SPELT = {word: n for n, word in enumerate("zero one two three four five six seven eight nine ten eleven twelve "
                                          "thirteen fourteen fifteen sixteen seventeen eighteen nineteen".split())} \
    | {word: 10 * n for n, word in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
SCALES = {"dozen": 12, "hundred": 100, "thousand": 1000, "million": 10**6}
RATIOS = {"half": "1/2", "halves": "1/2", "third": "1/3", "thirds": "1/3", "quarter": "1/4", "quarters": "1/4",
          "twice": "x2", "double": "x2", "doubled": "x2", "triple": "x3", "tripled": "x3", "thrice": "x3"}


def spelt_quantities(text: str) -> set[str]:
    """The quantities `text` writes in words, as values ("twenty-five" 25, "two hundred" 200, "a dozen" 12, "half"
    "1/2"); punctuation ends a number ("five, six" are two)."""
    words = re.findall(r"[a-z]+|[^\sa-z]", re.sub(r"(?<=[a-z])-(?=[a-z])", " ", text.lower()))
    found: set[str] = set()
    total, current, inside = 0, 0, False
    for word in [*words, "."]:
        if word in SPELT:
            current, inside = current + SPELT[word], True
        elif word in SCALES:
            if SCALES[word] >= 1000:
                total, current = total + (current or 1) * SCALES[word], 0
            else:
                current = (current or 1) * SCALES[word]
            inside = True
        else:
            if inside:
                found.add(str(total + current))
            total, current, inside = 0, 0, False
            if word in RATIOS:
                found.add(RATIOS[word])
    return found


def quantities(text: str) -> set[str]:
    """The quantities a text states: numbers in digits ("$1,200" is 1200) or words, and ratios (`spelt_quantities`),
    so "She eats three" and "she has 3" state the same; never 1, a pronoun as often ("one of them") and no quantity
    compared ("$1" is "a dollar", "one third" "a third")."""
    return (number_values(text) | spelt_quantities(text)) - {"1"}


def _mentions(text: str, phrase: str) -> int:
    """How often `phrase` occurs in `text` as whole words (both normalised); an empty phrase never does."""
    return len(re.findall(rf"\b{re.escape(phrase)}\b", text)) if phrase else 0


def settings_record(llm: LLM, dataset: str, num: int, temperature: float, top_p: float, max_new_tokens: int,
                    seed: int, day: str | None = None) -> dict:
    """The settings `settings_key` hashes, by name (the rewrite prompts by version): each row keeps them, so a resume
    under other settings says which one changed."""
    source = str(Path(dataset).resolve()) if Path(dataset).is_file() else dataset
    return {"model": str(llm.path.resolve()), "dataset": source, "num": num, "temperature": temperature,
            "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed, "version": REWRITE_VERSION,
            "dtype": str(llm.dtype).removeprefix("torch."), "device": llm.device.type, "template_date": day,
            **({"tokenizer": REBUILT} if llm.tokenizer.rebuilt else {})}  # as a run key records it


def settings_key(llm: LLM, dataset: str, num: int, temperature: float, top_p: float, max_new_tokens: int,
                 seed: int, day: str | None = None, worked: bool = False, yes_no_questions: bool = False,
                 gaps: bool = False) -> str:
    """What the rewrites depend on; a dataset file counts by its resolved path (however it is spelt), and the
    `day` a dated chat template renders at where there is one, and a tokenizer pipeline transformers 5 builds where
    its ids differ from the file's (`Tokenizer.rebuilt`; files of other templates and tokenizers keep their keys),
    and for word problems (`worked`) their rewrite prompt, and for yes/no questions `YES_NO_RULE`, for gap items
    `GAP_RULE` (other files' keys stay as they were)."""
    source = str(Path(dataset).resolve()) if Path(dataset).is_file() else dataset
    settings = [str(llm.path.resolve()), source, num, temperature, top_p, max_new_tokens, seed, REWRITE_VERSION,
                PROMPTS, str(llm.dtype), llm.device.type]
    raw = json.dumps(settings + ([day] if day is not None else []) + ([REBUILT] if llm.tokenizer.rebuilt else [])
                     + ([MATH_PROMPT] if worked else []) + ([YES_NO_RULE] if yes_no_questions else [])
                     + ([GAP_RULE] if gaps else []))
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


@torch.inference_mode()
def rewrite_batch(llm: LLM, items: list[Item], num: int, temperature: float, top_p: float, max_new_tokens: int,
                  seed: int, budget: str | None = "--max-new-tokens") -> list[list[str]]:
    """`num` sampled rewrites per item, all items' rewrites in one batched generation. A rewrite cut off
    at `max_new_tokens` comes back empty: it is unfinished (a cut-off sentence even looks like a fill prompt).
    `budget`: the option that sets `max_new_tokens`, which a prompt past the context names (None: none does)."""
    ids = [llm.prompt_ids(rewrite_prompt(item), thinking=False) for item in items]  # a rewrite, not reasoning
    limit = llm.config.max_position_embeddings
    if long := [(item, len(p)) for item, p in zip(items, ids) if len(p) + max_new_tokens > limit]:
        item, n = long[0]
        whose = "the question's rewrite prompt" if budget is None else f"the rewrite prompt of item {item.id!r}"
        own = len(llm.tokenizer.encode(item.question, add_special_tokens=False))
        most = "the item's own text" if 2 * own > n else "the instruction and worked examples"
        fixes = ["rewrite with a model of a longer context"]
        if n < limit and budget:  # fewer new tokens fit only beside a prompt that fits
            fixes.append(f"lower {budget}")
        fixes.append("shorten or drop that item" if budget else "give --paraphrase")
        raise MinirunError(f"{whose} needs {n} tokens (most of them {most}) + {max_new_tokens} new ones, beyond the "
                           f"model's context of {limit}: {', or '.join(fixes)}")
    rows = [plain_row(p) for p in ids for _ in range(num)]
    layout = stack_rows(rows, llm.pad_id, llm.device)
    session = llm.session(len(rows), layout.length + max_new_tokens)
    logits = session.prefill(layout.tokens, layout.positions, layout.segments)
    params = SamplingParams(temperature, top_p=top_p)
    generators = [SamplingParams(temperature, seed=rewrite_seed(seed, item.id, i)).generator(llm.device)
                  for item in items for i in range(num)]

    def choose(step_logits: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
        return torch.cat([sample(step_logits[i:i + 1], params, generators[r]) for i, r in enumerate(rows)])

    reasoning = llm.opens_reasoning(None, False)  # a template that opens thinking whatever the switch (R1 distills)
    done = decode_loop(session, logits, layout.next_positions, choose, max_new_tokens,
                       llm.stopper(("\n",), reasoning=reasoning))
    return [[_rewrite(c, reasoning) for c in done[i * num:(i + 1) * num]] for i in range(len(items))]


def _rewrite(completion: Completion, reasoning: bool) -> str:
    """A finished rewrite's text past any thinking; an unfinished one, or one still thinking, is none."""
    start = answer_start(completion.text, reasoning)
    if completion.finish_reason == "length" or start is None:
        return ""
    return clean_rewrite(completion.text[start:])


def kept_rewrites(rewrites: list[str], item: Item) -> list[str]:
    """The rewrites `keep` lets through, in order, each checked against those kept before it."""
    kept: list[str] = []
    for rewrite in (fitted(r, item) for r in rewrites):
        if keep(rewrite, item, kept):
            kept.append(rewrite)
    return kept


def rewrite_question(llm: LLM, question: str, num: int, temperature: float = 1.5, top_p: float = 0.9,
                     max_new_tokens: int | None = None, seed: int = 0, task: str = "qa") -> list[str]:
    """One question's kept rewrites (of `num` sampled), under the rules and defaults `minirun paraphrase` uses for a
    dataset's item of `task` (a "fill" prompt into fill prompts); its answer is unknown, so none is dropped for
    giving it away; `max_new_tokens` as `paraphrase_file`'s."""
    check_sampling(num, temperature, top_p)
    if max_new_tokens is None:
        max_new_tokens = WORKED_TOKENS if task == "math" else REWRITE_TOKENS
    warn_thinking(llm, max_new_tokens)
    item = Item("question", question, [question], [], task)
    return kept_rewrites(rewrite_batch(llm, [item], num, temperature, top_p, max_new_tokens, seed, None)[0], item)


def warn_thinking(llm: LLM, max_new_tokens: int) -> None:
    """A template that opens thinking whatever the switch (DeepSeek-R1's distills) makes every rewrite wait for its
    </think>: too few new tokens give none at all, which the kept count alone would not explain."""
    if llm.opens_reasoning(None, False) and max_new_tokens < THINKING_TOKENS:
        log.warning(f"{llm.path.name}'s template opens its thinking, and {max_new_tokens} new tokens seldom see it "
                    f"end (a rewrite still thinking is none): give --max-new-tokens {THINKING_TOKENS} or more")


def check_sampling(num: int, temperature: float, top_p: float) -> None:
    """Refuse sampling settings that cannot give `num` different rewrites (the command checks before loading)."""
    SamplingParams(temperature, top_p=top_p)  # a bad temperature or top_p
    if temperature == 0 and num > 1:
        raise MinirunError(f"temperature 0 makes all {num} rewrites of a question the same greedy text: use a "
                           "temperature above 0 (the default is 1.5)")


def paraphrase_file(llm: LLM, items: list[Item], out: Path, num: int = 5, temperature: float = 1.5, top_p: float = 0.9,
                    max_new_tokens: int | None = None, seed: int = 0, batch_size: int = 8,
                    on_progress: Callable[[int], None] | None = None, dataset: str = "custom",
                    template_date: str | None = None, data_source: dict | None = None,
                    of: list[Item] | None = None) -> list[Item]:
    """Write items with paraphrases = [original, kept rewrites...] to `out`, skipping finished ones.

    The original stays paraphrase 0 so the file reads the same with or without the question
    repeated: `Item.prompts` drops the repeat, and rewrites equal to the question are never kept.
    The dataset's own paraphrases are not carried over. `dataset` names the items' source: a file holds
    one dataset's rewrites under one set of settings. `on_progress` hears how many items are done:
    first those finished before (resumed), then after each batch. A chat template that writes the date
    renders at `template_date` (YYYY-MM-DD), by default the day the file's first rows recorded, else today. A rewrite
    gets `max_new_tokens`, by default `REWRITE_TOKENS` (`WORKED_TOKENS` for word problems, reworded whole).
    Each row records `data_source`, where a Hub dataset's items were read (`data.load_cited`; read a resumed
    file's again with `paraphrased_from`), so a run on the file cites the data it rewrote. `of` is the whole dataset
    `items` were asked from (default `items`): its kinds of item (word problems, yes/no questions, gaps) decide the
    file's key and default rewrite length, so a pilot of its first N grows, whatever kinds those N hold.
    """
    out = Path(out)
    of = items if of is None else of
    worked = any(item.task == "math" for item in of)
    if max_new_tokens is None:
        max_new_tokens = WORKED_TOKENS if worked else REWRITE_TOKENS
    for name, value in (("num", num), ("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if value < 1:
            raise MinirunError(f"{name} must be at least 1, got {value}: pass {name} >= 1")
    check_sampling(num, temperature, top_p)
    warn_thinking(llm, max_new_tokens)
    if template_date is not None:
        template_date = day_text(template_date)
    settings = (llm, dataset, num, temperature, top_p, max_new_tokens, seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    made = not out.exists()
    with out.open("a", encoding="utf-8") as f:
        lock_exclusively(f, out)
        if not _same_file(f, out):  # another process removed the file it made while this one opened it
            raise MinirunError(f"another minirun process was writing {out}: run this again")
        try:
            day = None
            if llm.tokenizer.reads_clock:  # the rewrite prompt carries a date: one day for the whole file
                day = template_date or _recorded_day(out) or date.today().isoformat()
            with llm.tokenizer.pinned_clock(None if day is None else template_day(day)):
                recorded = {"template_date": day} if day is not None else {}
                if data_source is not None:
                    recorded["data_source"] = data_source
                key = settings_key(*settings, day, worked, any(map(yes_no, of)),
                                   any(item.blank is not None for item in of))
                setup = settings_record(*settings, day)
                return _paraphrase_into(f, llm, items, out, key, setup, recorded, num, temperature, top_p,
                                        max_new_tokens, seed, batch_size, on_progress)
        except BaseException:  # failed or stopped before its first item: no empty file left behind (lock held)
            with contextlib.suppress(OSError):  # a full disk refuses this too: the error to tell is the first one
                f.flush()  # rows written but still buffered count: they are not lost to the removal
            if made and os.fstat(f.fileno()).st_size == 0:
                out.unlink()
            raise


def _same_file(f: IO, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(f.fileno()), os.stat(path))
    except FileNotFoundError:
        return False


def _first_row(out: Path) -> dict:
    """A paraphrase file's first row as written, or {} (no file, no row, or a foreign file, refused later)."""
    try:
        with out.open(encoding="utf-8") as lines:
            row = json.loads(next(lines, "{}"))
    except (OSError, ValueError):
        return {}
    return row if isinstance(row, dict) else {}


def _recorded_day(out: Path) -> str | None:
    """The template day a paraphrase file's first row recorded, if it has one."""
    day = _first_row(out).get("template_date")
    return day if isinstance(day, str) else None


def paraphrased_from(out: Path) -> dict | None:
    """The Hub dataset source a paraphrase file's first row recorded (`data_source`), if it has one: where a resume
    reads the items again."""
    source = _first_row(out).get("data_source")
    return source if isinstance(source, dict) else None


def _paraphrase_into(f: IO, llm: LLM, items: list[Item], out: Path, key: str, setup: dict, recorded: dict, num: int,
                     temperature: float, top_p: float, max_new_tokens: int, seed: int, batch_size: int,
                     on_progress: Callable[[int], None] | None) -> list[Item]:
    """`paraphrase_file`'s work, appending to `f`, the locked `out`; each row carries its settings key and `setup`
    (`settings_record`), then `recorded` (its template day, its data source)."""
    finished = _read_finished(out, key, setup, items)
    if changed := [item.id for item in items if item.id in finished and not _same_item(finished[item.id], item)]:
        raise MinirunError(f"{out} holds rewrites of item {changed[0]!r} as it read before an edit (a field other "
                           "than its paraphrases differs now): write to another file, or delete that item's line "
                           "to redo it")
    todo = [item for item in items if item.id not in finished]
    if on_progress is not None:
        on_progress(len(items) - len(todo))
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        parts = {item.id: part for item in batch if (part := rewritten_part(item)) is not None}
        rewritten = dict(zip(parts, rewrite_batch(llm, list(parts.values()), num, temperature, top_p, max_new_tokens,
                                                  seed))) if parts else {}
        for item in batch:
            kept = [r for r in kept_rewrites(rewritten[item.id], parts[item.id]) if gap_kept(item, r)] \
                if item.id in parts else []
            done = replace(item, paraphrases=[item.question, *(with_gap(item, r) for r in kept)])
            row = {**item_record(done), "paraphrase_settings": key, "paraphrase_setup": setup, **recorded}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            finished[item.id] = done
        f.flush()
        os.fsync(f.fileno())
        if on_progress is not None:
            on_progress(len(items) - len(todo) + start + len(batch))
    return [replace(finished[item.id], popularity=item.popularity) for item in items]  # a line of before holds none


ROW_START = b'{"id": '  # how every row `paraphrase_file` writes begins (json.dumps of an Item)


def _read_finished(out: Path, key: str, setup: dict, items: list[Item]) -> dict[str, Item]:
    """Items already in `out`, every line checked before anything is written; a torn last row (a
    killed run, cut anywhere, even inside a character) is then cut off so appending stays valid. A
    file minirun did not write is refused untouched, a last line without its newline included (alone in the file,
    it is a torn row only where it begins as this run's row of one of `items` would: a user's half-typed item is no
    row of ours)."""
    found: dict[str, Item] = {}
    if not out.is_file():
        return found
    foreign = f"{out} is not a paraphrase file minirun wrote: choose another output file"
    complete, newline, torn = out.read_bytes().rpartition(b"\n")
    lines = complete.split(b"\n") if newline else []
    heads = [] if lines else [_row_head(item) for item in items]
    cut = _cut_row(torn) and (lines or any(h.startswith(torn) or torn.startswith(h) for h in heads))
    unended = [torn] if torn and not cut else []  # a whole line without its newline: checked, then redone
    for lineno, line in enumerate(lines + unended, 1):
        if not line.strip():  # left where a row was deleted to redo it, as the refusals advise: eval reads past it
            continue
        try:
            row = json.loads(line.decode("utf-8"))
            item = item_from_dict(row)
        except (ValueError, TypeError, AttributeError):  # not UTF-8 or JSON, not an object, not an item
            raise MinirunError(f"{out}:{lineno}: {foreign}") from None
        if "paraphrase_settings" not in row:
            raise MinirunError(f"{out}:{lineno}: {foreign}")
        if row["paraphrase_settings"] != key:
            before = row.get("paraphrase_setup") if isinstance(row.get("paraphrase_setup"), dict) else {}
            before = {"tokenizer": RECORDED_BEFORE["tokenizer"], **before} if before else {}  # recorded where rebuilt
            named = [f"{k}: {before[k]!r} -> {v!r}" for k, v in setup.items() if k in before and before[k] != v]
            which = f"({'; '.join(named)})" if named else ("(model, dtype, device kind, dataset file, num, "
                                                           "temperature, top_p, max_new_tokens, seed or template date) "
                                                           "or by an older minirun")
            raise MinirunError(f"{out}:{lineno} was written with other settings {which}: use another output file or "
                               "delete this one")
        if lineno <= len(lines):
            found[item.id] = item
    if not found and lines and not unended:  # blank lines alone: no file minirun wrote
        raise MinirunError(f"{out}:1: {foreign}")
    drop_torn_line(out)
    return found


def _row_head(item: Item) -> bytes:
    """How `paraphrase_file`'s row of `item` begins, to its paraphrases: its id and question, as json.dumps writes
    an Item's first fields."""
    return json.dumps({"id": item.id, "question": item.question}, ensure_ascii=False)[:-1].encode() + \
        b', "paraphrases": ['


def _cut_row(line: bytes) -> bool:
    """Whether a last line without its newline is a row `paraphrase_file` began and a kill cut: not JSON,
    and starting as every row starts (or cut before even that)."""
    try:
        json.loads(line.decode("utf-8"))
        return False
    except ValueError:  # UnicodeDecodeError is one
        return line.startswith(ROW_START) or ROW_START.startswith(line)


def _same_item(written: Item, item: Item) -> bool:
    """Whether a finished row still answers `item`: the rewrites depend on its question, a kept rewrite was
    checked against its answers, and every other field (choices, relation, ...) is copied into the file; but its
    popularity, which no rewrite reads (PopQA rows written before items held one resume)."""
    return replace(written, paraphrases=[], popularity=None) == replace(item, paraphrases=[], popularity=None)
