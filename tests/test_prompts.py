"""Few-shot prompts: a shared prefix plus a per-paraphrase question block."""
from __future__ import annotations

import pytest

from minirun.errors import MinirunError
from minirun.eval.data import Item, load_fewshot
from minirun.eval.prompts import INSTRUCTIONS, build_prefix, question_block

EXAMPLES = [Item(f"e{i}", f"Question {i}?", [], [f"Answer {i}", "alias"]) for i in range(8)]


def test_question_block():
    assert question_block("Capital of France?") == "Q: Capital of France?\nA:"


def test_prefix_layout():
    prefix = build_prefix("qa", EXAMPLES, k=2, seed=0)
    blocks = prefix.split("\n\n")
    assert blocks[0] == INSTRUCTIONS["qa"] and blocks[-1] == "" and len(blocks) == 4
    for block in blocks[1:3]:
        q, a = block.split("\n")
        i = q.removeprefix("Q: Question ").removesuffix("?")
        assert a == f"A: Answer {i}"  # first answer only
    assert prefix.endswith("\n\n") and (prefix + question_block("Who?")).endswith("\n\nQ: Who?\nA:")


def test_seeded_draw():
    assert build_prefix("qa", EXAMPLES, k=3, seed=7) == build_prefix("qa", EXAMPLES, k=3, seed=7)
    assert len({build_prefix("qa", EXAMPLES, k=3, seed=s) for s in range(5)}) > 1


def test_zero_shot_and_fill_instruction():
    assert build_prefix("fill", EXAMPLES, k=0) == INSTRUCTIONS["fill"] + "\n\n"
    prefix = build_prefix("fill", load_fewshot("sample-fill"), k=5)
    assert prefix.count("\nA: ") == 5 and "missing" in prefix


@pytest.mark.parametrize("task,k", [("essay", 1), ("qa", 9), ("qa", -1)])
def test_bad_arguments(task, k):
    with pytest.raises(MinirunError):
        build_prefix(task, EXAMPLES, k=k)
