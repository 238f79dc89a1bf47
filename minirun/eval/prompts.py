"""Few-shot prompts as plain strings, split into a shared prefix and a per-paraphrase question block.

Every paraphrase of an item (and every item) shares the same prefix, so the runtime can encode
it once and reuse its KV cache; only `question_block(paraphrase)` differs. Chat templates are
the runtime's job, not ours.
"""
from __future__ import annotations

import random

from minirun.errors import MinirunError
from minirun.eval.data import Item

INSTRUCTIONS = {
    "qa": "Answer the question from general world knowledge with a short, direct answer.",
    "fill": "Complete the sentence with the missing word or short phrase: give only the missing part.",
    "choice": "Answer the question from general world knowledge with the correct option.",
}
SUBJECT_INSTRUCTION = "The following are multiple choice questions (with answers) about {}."  # MMLU's, the harness's
CHOICE_FORMATS = ("cloze", "letters")
LETTERS = "ABCDEFGHIJ"


def question_block(paraphrase: str) -> str:
    """The per-paraphrase tail of a prompt; the model's answer follows 'A:'."""
    return f"Q: {paraphrase}\nA:"


def option_list(choices: list[str]) -> str:
    """The lettered options of `--choice-format letters`, between the question and "Answer:"."""
    if len(choices) > len(LETTERS):
        raise MinirunError(f"{len(choices)} options are more than the {len(LETTERS)} letters: use --choice-format cloze")
    return "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, choices)) + "\nAnswer:"


def example_block(item: Item, choice_format: str = "cloze") -> str:
    """One worked example: the item's question and its first (canonical) answer (or its letter)."""
    if item.choices is not None and choice_format == "letters":
        return f"Q: {item.question}{option_list(item.choices)} {LETTERS[item.answer]}"
    return f"{question_block(item.question)} {item.answers[0]}"


def build_prefix(task: str, examples: list[Item], k: int = 5, seed: int = 0, choice_format: str = "cloze",
                 subject: str | None = None) -> str:
    """Instruction plus `k` examples drawn with `seed`; ends with a blank line so that
    `prefix + question_block(p)` is the full prompt. An MMLU `subject` gets lm-evaluation-harness's head
    instead: its description naming the subject and the first k examples in order (its `first_n`)."""
    if task not in INSTRUCTIONS:
        raise MinirunError(f"unknown task {task!r}; use one of {', '.join(INSTRUCTIONS)}")
    if not 0 <= k <= len(examples):
        raise MinirunError(f"asked for k={k} few-shot examples but {len(examples)} are available: lower k (--few-shot-k)")
    if subject is None:
        instruction, shots = INSTRUCTIONS[task], random.Random(seed).sample(examples, k)
    else:
        instruction, shots = SUBJECT_INSTRUCTION.format(subject.replace("_", " ")), examples[:k]
    blocks = [example_block(shot, choice_format) for shot in shots]
    return "\n\n".join([instruction, *blocks]) + "\n\n"


