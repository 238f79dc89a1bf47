"""Majority vote: the answer most of a question's prompts give when each is answered on its own.

The prompt-ensemble baseline every fusion rule should beat: per_prompt's answers (or multiple-choice picks)
fused once after decoding instead of at every step. Pure functions, so a report re-counts as the run did.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence

from minirun.text import extract_answer, final_number, normalize


def plurality(keys: Sequence[Hashable | None]) -> int:
    """The index of the first prompt giving the most frequent key; None (no answer) casts no vote. Ties go to
    the key given first — with the question as the first prompt, its own answer where that is tied — so a
    vote of all-different answers is the first prompt's that answered; 0 when no prompt votes."""
    counts = Counter(k for k in keys if k is not None)
    if not counts:
        return 0
    most = max(counts.values())
    return next(i for i, k in enumerate(keys) if k is not None and counts[k] == most)


def answer_key(text: str, reasoning: bool = False, worked: bool = False) -> str | None:
    """What two generations are compared on: the answer eval extracts (`extract_answer`: past any thinking, the first
    line, cut before any " Q:", without special tokens, an "A:" label, wrapping quotes or markdown and trailing
    punctuation) under `normalize`, as report's consistency compares them; a `worked` solution's final number
    (`final_number`: "#### 18" and "$18.00" agree); None when nothing is left."""
    if worked:
        return final_number(text, reasoning)
    return normalize(extract_answer(text, reasoning=reasoning)) or None


def vote_shares(picks: Sequence[int], options: int) -> list[float]:
    """Each option's share of the prompts' picks: a multiple-choice vote's scores."""
    return [sum(p == o for p in picks) / len(picks) for o in range(options)]
