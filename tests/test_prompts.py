"""Few-shot prompts: a shared prefix plus a per-paraphrase question block."""
from __future__ import annotations

import pytest

from minirun.errors import MinirunError
from minirun.eval.data import Item, load_fewshot
from minirun.eval.prompts import INSTRUCTIONS, build_prefix, one_right_letter, question_block

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


def test_few_shot_examples_are_of_the_task_and_never_a_test_question():
    from minirun.eval.loop import few_shot_prefixes

    fills = [Item(f"f{i}", f"Statement {i} is", [], [f"Fill {i}"], task="fill") for i in range(3)]
    tests = [Item("t0", "question 1?", [], ["x"]), Item("t1", "Question 2 ?", [], ["y"])]  # case and spacing aside
    prefix = few_shot_prefixes(tests, EXAMPLES + fills, "mine", None, 6)["qa"]
    assert "Statement" not in prefix  # another task's format is never a demonstration
    assert "Question 1?" not in prefix and "Question 2?" not in prefix  # nor is a question under test
    assert prefix.count("Q: ") == 6
    with pytest.raises(MinirunError, match="2 of the 8 few-shot qa examples are questions under test, which leaves 6"):
        few_shot_prefixes(tests, EXAMPLES, "mine", None, 7)


def test_one_right_letter_counts_every_right_option_of_an_item():
    """A letter right in every item, even where it is not each item's first right option (sets of right options),
    is found; items with no letter in common are not flagged."""
    def item(n: int, rights: list[int]) -> Item:
        return Item(f"i{n}", "Q?", [], ["x"], "choice", None, ["w", "x", "y", "z"], rights[0], rights)

    assert one_right_letter([item(0, [0, 2]), item(1, [1, 2]), item(2, [2, 3])]) == "C"
    assert one_right_letter([item(0, [0, 2]), item(1, [1, 3])]) is None
    assert one_right_letter([item(0, [1]), item(1, [1])]) == "B"
