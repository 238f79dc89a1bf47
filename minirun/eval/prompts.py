"""Few-shot prompts as plain strings, split into a shared prefix and a per-paraphrase question block.

Every paraphrase of an item (and every item) shares the same prefix, so the runtime can encode
it once and reuse its KV cache; only `question_block(paraphrase)` differs. The blocks are minirun's
("Q: … A:") except for the benchmarks lm-evaluation-harness defines (`prompt_format`). Chat templates
are the runtime's job, not ours.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, replace

from minirun.errors import MinirunError
from minirun.eval.data import Item
from minirun.text import blank_parts

INSTRUCTIONS = {
    "qa": "Answer the question from general world knowledge with a short, direct answer.",
    "fill": "Complete the sentence with the missing word or short phrase: give only the missing part.",
    "choice": "Answer the question from general world knowledge with the correct option.",
    "math": "Solve the problem step by step, then give the final answer as a number after \"####\".",
}
CHOICE_FORMATS = ("cloze", "letters")
STOP = ("\n", " Q:")  # a new line, or a next question on the same line ("HQ:" in an answer is no stop)
WORKED_STOP = ("\nQ:",)  # a worked solution runs over lines: it ends where a next question starts
ANSWER_TOKENS = 24  # new tokens a short answer gets unless told otherwise
WORKED_TOKENS = 256  # and a worked solution (lm-evaluation-harness's gsm8k `max_gen_toks`)
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class PromptFormat:
    """How a question and its few-shot head are written. minirun's own blocks ("Q: … A:") serve every
    dataset but the benchmarks whose lm-evaluation-harness template is the one papers report against:
    there the very same text, so an origin score can be set beside the harness's."""

    name: str  # recorded in a run's key: rows of two formats never share a table
    lead: str  # before each question
    cue: str  # after a question whose answer is generated or scored as a cloze continuation
    strip: bool = False  # questions without surrounding whitespace (the harness's `question.strip()`)
    header: str | None = None  # the head's first line ("{}": the MMLU subject); None: the task's instruction
    ordered: bool = False  # the first k few-shot examples in their order (TruthfulQA's primer), not k drawn
    # the harness draws k + 1 examples a question and keeps the first k (a task of its without a test split, whose
    # test document it takes out where drawn): what a draw per question (`build_prefix`'s rnd) takes
    draws_one_more: bool = False
    delimiter: str = "\n\n"  # after each few-shot example (the harness's `fewshot_delimiter`)
    ignored: str = ""  # what the harness's exact_match deletes before comparing (its `regexes_to_ignore`)
    stop: tuple[str, ...] = STOP  # where generation stops (the harness's QA tasks read past a " Q:" to the line's end)
    worked_stop: tuple[str, ...] = WORKED_STOP  # where a worked solution (a "math" item's) stops
    passage_lstrip: bool = True  # an item's passage without its leading whitespace (sciq's "support.lstrip()")

    def heading(self, task: str, subject: str | None) -> str:
        """The head's first line: MMLU's description of `subject`, none, or the task's instruction."""
        if self.header is None or (subject is None and "{}" in self.header):
            return INSTRUCTIONS[task]
        return self.header.format((subject or "").replace("_", " "))

    def question(self, text: str) -> str:
        """A question or paraphrase as the format writes it."""
        return text.strip() if self.strip else text

    def passage(self, context: str | None) -> str:
        """An item's passage as the format writes it before the question: its text (leading whitespace dropped unless
        the format keeps it: boolq's "{{passage}}") and a new line (an empty passage, a new line alone); none where
        the item has no passage."""
        if context is None:
            return ""
        return f"{context.lstrip() if self.passage_lstrip else context}\n"

    def stops(self, task: str) -> tuple[str, ...]:
        """Where generation of a `task` answer stops: a short answer's line, a worked solution's next question."""
        return self.worked_stop if task == "math" else self.stop


MINIRUN = PromptFormat("minirun", "Q: ", "\nA:")
# lm-evaluation-harness's templates (tasks/mmlu/default, mmlu/continuation, commonsense_qa/default, arc/arc_easy and
# openbookqa/openbookqa.yaml): letters after the question then "Answer:", a cloze option after "Answer:"; the
# harness's MMLU heads describe the subject, the others have none. CommonsenseQA has no cloze task there, ARC,
# OpenBookQA and HellaSwag no letters task: those blocks are the harness's other form with the letters dropped or
# added. ARC and OpenBookQA ask the question as the row holds it (no strip); OpenBookQA's prompt is the question stem
# alone, HellaSwag's its cleaned context, each option its continuation after a space.
HARNESS = {
    ("mmlu", "letters"): PromptFormat("harness mmlu", "", "\nAnswer:", True,
                                      "The following are multiple choice questions (with answers) about {}."),
    ("mmlu", "cloze"): PromptFormat("harness mmlu_continuation", "Question: ", "\nAnswer:", True,
                                    "The following are questions (with answers) about {}."),
    ("commonsense_qa", "letters"): PromptFormat("harness commonsense_qa", "Question: ", "\nAnswer:", True, "",
                                                draws_one_more=True),
    ("commonsense_qa", "cloze"): PromptFormat("harness-style commonsense_qa cloze", "Question: ", "\nAnswer:", True,
                                              "", draws_one_more=True),
    **{(name, "cloze"): PromptFormat(f"harness {name}", "Question: ", "\nAnswer:", False, "")
       for name in ("arc_challenge", "arc_easy")},
    **{(name, "letters"): PromptFormat(f"harness-style {name} letters", "Question: ", "\nAnswer:", False, "")
       for name in ("arc_challenge", "arc_easy")},
    ("openbookqa", "cloze"): PromptFormat("harness openbookqa", "", "", False, ""),
    ("openbookqa", "letters"): PromptFormat("harness-style openbookqa letters", "", "\nAnswer:", False, ""),
    # hellaswag.yaml: the cleaned context ("{{query}}"), each ending its continuation after a space
    ("hellaswag", "cloze"): PromptFormat("harness hellaswag", "", "", False, "", draws_one_more=True),
    ("hellaswag", "letters"): PromptFormat("harness-style hellaswag letters", "", "\nAnswer:", False, "",
                                           draws_one_more=True),
    # piqa.yaml: "Question: {{goal}}\nAnswer:", each solution after a space; no test split, so a per-question draw
    # takes k + 1 and drops the question's own row
    ("piqa", "cloze"): PromptFormat("harness piqa", "Question: ", "\nAnswer:", False, "", draws_one_more=True),
    ("piqa", "letters"): PromptFormat("harness-style piqa letters", "Question: ", "\nAnswer:", False, "",
                                      draws_one_more=True),
    # boolq (super_glue/boolq/default.yaml): "{{passage}}\nQuestion: {{question}}?\nAnswer:", " no" or " yes" (cloze
    # only: `CLOZE_ONLY`); no test split, so a per-question draw takes k + 1
    ("boolq", "cloze"): PromptFormat("harness boolq", "Question: ", "?\nAnswer:", False, "", draws_one_more=True,
                                     passage_lstrip=False),
    # sciq.yaml: the support passage (`PromptFormat.passage`) then "Question: {{question}}\nAnswer:", each option
    # after a space (cloze only: `CLOZE_ONLY`); it has a test split, so a per-question draw takes k
    ("sciq", "cloze"): PromptFormat("harness sciq", "Question: ", "\nAnswer:", False, ""),
    # winogrande/default.yaml: partial scoring, each option written into the sentence's gap ("{{sentence[:gap]}}" and
    # the option, no lead or cue) and the words after the gap scored after a space (`Item.blank`); a few-shot example
    # is its sentence with the right option in the gap; no test split, so a per-question draw takes k + 1
    ("winogrande", "cloze"): PromptFormat("harness winogrande", "", "", False, "", draws_one_more=True),
    # truthfulqa_mc1.yaml (which truthfulqa_mc2.yaml includes): the paper's six worked questions ("Q: …\nA: …"), then
    # "Q: {question}\nA:"
    **{(name, "cloze"): PromptFormat(f"harness {name}", "Q: ", "\nA:", False, "", True)
       for name in ("truthfulqa_mc1", "truthfulqa_mc2")},
    # Generated answers (keyed "cloze", the one format a run of them takes): triviaqa/default.yaml asks "Question:
    # {{question}}?\nAnswer:" (a question mark after the question, whether it has one or not), its first alias after a
    # space; nq_open.yaml heads the prompt "Answer these questions:", asks "Q: {{question}}?\nA:", its examples one new
    # line apart, and its exact_match first deletes an article starting a word
    ("triviaqa", "cloze"): PromptFormat("harness triviaqa", "Question: ", "?\nAnswer:", False, "", stop=("\n",),
                                        draws_one_more=True),
    ("nq_open", "cloze"): PromptFormat("harness nq_open", "Q: ", "?\nA:", False, "Answer these questions:",
                                       delimiter="\n", ignored=r"\b(?:The |the |An |A |The |a |an )", stop=("\n",),
                                       draws_one_more=True),
    # gsm8k.yaml: "Question: {{question}}\nAnswer:", each example's whole solution after a space (calculator notes
    # and "#### 72" kept), no head; generation stops at "Question:" (or an end-of-text marker)
    ("gsm8k", "cloze"): PromptFormat("harness gsm8k", "Question: ", "\nAnswer:", False, "",
                                     worked_stop=("Question:", "</s>", "<|im_end|>")),
}
# benchmarks asked cloze only, and why letters would not do: rows putting a right option at one place in every question
# (TruthfulQA's first, SciQ's last), or options that are the answers themselves (BoolQ's)
_FIRST = "its rows put a right option first in every question, so lettered, A would be right every time"
CLOZE_ONLY = {"truthfulqa_mc1": _FIRST, "truthfulqa_mc2": _FIRST,
              "sciq": "its rows put a right option last in every question, so lettered, D would be right every time",
              "boolq": "its options are the answers no and yes themselves, which letters would only rename",
              "winogrande": "its options fill a gap in the sentence, and the words after the gap are what is scored"}


def prompt_format(dataset: str, choice_format: str = "cloze") -> PromptFormat:
    """The format `dataset`'s prompts are written in: the harness's for its benchmarks, else minirun's."""
    return HARNESS.get((dataset, choice_format), MINIRUN)


def new_tokens(items: list[Item], given: int | None) -> int:
    """The new tokens each answer may take: as `given`, else a worked solution's budget where any item is maths,
    else a short answer's."""
    if given is not None:
        return given
    return WORKED_TOKENS if any(item.task == "math" for item in items) else ANSWER_TOKENS


def one_right_letter(items: list[Item]) -> str | None:
    """A letter right in every multiple-choice item where one is (TruthfulQA's rows put a right option first, SciQ's
    last; an item of several right options counts at each), else None: lettered, a model that always answers it would
    score every item."""
    rights = [set(item.right_options) for item in items if item.choices is not None]
    common = set.intersection(*rights) if rights else set()
    return LETTERS[min(common)] if common else None


def check_choice_format(dataset: str | None, choice_format: str) -> None:
    """Refuse letters for the benchmarks asked cloze only (`CLOZE_ONLY`): TruthfulQA's and SciQ's rows put a right
    option at one place in every question, so one letter would be right every time, which a model biased towards it
    would score on; BoolQ's options are its answers. A file asked as one (`--benchmark`) is asked in its form too."""
    if choice_format == "letters" and dataset in CLOZE_ONLY:
        raise MinirunError(f"{dataset} is asked cloze only, the harness's own form: {CLOZE_ONLY[dataset]}; use "
                           "--choice-format cloze (choice_format = \"cloze\" in a sweep)")


def question_block(paraphrase: str, fmt: PromptFormat = MINIRUN) -> str:
    """The per-paraphrase tail of a prompt; the model's answer follows the format's cue ('A:')."""
    return f"{fmt.lead}{fmt.question(paraphrase)}{fmt.cue}"


def option_list(choices: list[str]) -> str:
    """The lettered options of `--choice-format letters`, between the question and "Answer:"."""
    if len(choices) > len(LETTERS):
        raise MinirunError(f"{len(choices)} options are more than the {len(LETTERS)} letters: use --choice-format cloze")
    return "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, choices)) + "\nAnswer:"


def example_block(item: Item, choice_format: str = "cloze", fmt: PromptFormat = MINIRUN) -> str:
    """One worked example: the item's passage if it has one, its question and its first (canonical) answer (or its
    letter; a gap item's sentence with its right option in the gap; a math item's worked solution, or where it has
    none its answer as a solution ends, "#### 72")."""
    passage = fmt.passage(item.context)
    if item.blank is not None:  # the sentence with its right option in the gap, as the harness writes the example
        before, after = blank_parts(item.question, item.blank)
        return f"{passage}{fmt.lead}{before}{item.choices[item.answer]} {after.strip()}"
    if item.choices is not None and choice_format == "letters":
        return f"{passage}{fmt.lead}{fmt.question(item.question)}{option_list(item.choices)} {LETTERS[item.answer]}"
    if item.task == "math":
        return f"{passage}{question_block(item.question, fmt)} {item.solution or f'#### {item.answers[0]}'}"
    return f"{passage}{question_block(item.question, fmt)} {item.answers[0]}"


def same_row(example: Item, asked: Item | None) -> bool:
    """Whether a few-shot example is the row of the question `asked`, as lm-evaluation-harness compares a document
    with its drawn examples (the whole row; a paraphrased file's paraphrases are no part of it)."""
    return asked is not None and example == replace(asked, paraphrases=example.paraphrases)


def build_prefix(task: str, examples: list[Item], k: int = 5, seed: int = 0, choice_format: str = "cloze",
                 subject: str | None = None, fmt: PromptFormat = MINIRUN, rnd: random.Random | None = None,
                 asked: Item | None = None) -> str:
    """The format's heading plus `k` examples drawn with `seed`, each followed by the format's delimiter (a blank line,
    NQ-open's one new line), so that `prefix + question_block(p, fmt)` is the full prompt (an empty heading and
    k = 0: no prefix at all). An MMLU `subject` takes the first k examples in order, as lm-evaluation-harness does
    (its `first_n`), and so does an `ordered` format (TruthfulQA's six worked questions: k = 6 is the harness's
    prompt). With `rnd`, the examples are the question `asked`'s as the harness draws a test document's from the
    generator it draws every question's from in turn: `rnd.sample` of k, or where the format `draws_one_more` of
    k + 1, keeping the first k that are not `asked`'s own row (its `x != doc`)."""
    if task not in INSTRUCTIONS:
        raise MinirunError(f"unknown task {task!r}; use one of {', '.join(INSTRUCTIONS)}")
    if not 0 <= k <= len(examples):
        raise MinirunError(f"asked for k={k} few-shot examples but {len(examples)} are available: lower k "
                           "(--few-shot-k; a sweep dataset's few_shot_k)")
    if subject is not None or fmt.ordered:
        shots = examples[:k]
    elif rnd is None:
        shots = random.Random(seed).sample(examples, k)
    elif fmt.draws_one_more:
        shots = [e for e in rnd.sample(examples, min(k + 1, len(examples))) if not same_row(e, asked)][:k]
    else:
        shots = rnd.sample(examples, k)
    heading = fmt.heading(task, subject)
    return (f"{heading}\n\n" if heading else "") + "".join(f"{example_block(shot, choice_format, fmt)}{fmt.delimiter}"
                                                          for shot in shots)
