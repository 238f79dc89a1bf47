"""Maths word problems (GSM8K, `sample-math`): final numbers taken out of worked solutions, lm-evaluation-harness's
gsm8k verdict, the prompts, a vote over final numbers, and the rows an evaluation writes."""
from __future__ import annotations

import json

import pytest

import minirun
from minirun.errors import MinirunError
from minirun.eval import loop, report
from minirun.eval.data import Item, load_dataset, load_fewshot
from minirun.eval.loop import evaluate
from minirun.eval.matching import harness_gsm8k, number_right
from minirun.eval.prompts import MINIRUN, build_prefix, new_tokens, prompt_format, question_block
from minirun.methods import MethodResult
from minirun.methods.vote import answer_key
from minirun.text import final_number, number_value

HARNESS_STOPS = ("Question:", "</s>", "<|im_end|>")


@pytest.fixture(scope="module")
def tiny(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["qwen2"])


@pytest.mark.parametrize("text, value", [
    ("72", "72"), ("1,250", "1250"), ("$1,250.00", "1250"), ("3.50", "3.5"), ("18.", "18"), ("-0", "0"),
    ("\u22124", "-4"), ("- 10", None), ("$ 5", "5"), (".5", "0.5"), ("-.25", "-0.25"), ("1,00", None),
    ("12 apples", None), ("", None), ("1e5", None)])
def test_number_value_is_one_number_in_canonical_form(text, value):
    assert number_value(text) == value


@pytest.mark.parametrize("text, final", [
    ("She sells 16 - 3 - 4 = 9 eggs.\nShe makes 9 * 2 = $18.\n#### 18", "18"),
    ("#### 1,250\n\nQuestion: what about 7?", "1250"),  # the mark's number, not a later one
    ("#### 20\n#### 18", "20"),  # the first mark, as the harness's strict-match
    ("So the answer is \\boxed{42}. Check: 6 * 7 = 42, 1 left", "42"),  # the last box, not the last number
    ("The total is 8-3 = 5 apples.", "5"), ("So 12 - 4", "4"),  # "-" of "8-3" and "12 - 4" subtracts: no sign
    ("#### .5", "0.5"), ("It costs $3.50.", "3.5"), ("It is -3 degrees", "-3"), ("1,2,3", "3"),  # a list, not 123
    ("<think>about 7</think> It is 12.", "12"),  # past the thinking
    ("<think>still 7 to go", None), ("no number here", None), ("", None)])
def test_final_number_is_the_marked_boxed_or_last_number(text, final):
    assert final_number(text) == final


# lm-evaluation-harness gsm8k's strict-match verdicts (its RegexFilter, take_first and exact_match_hf_evaluate run
# on each case at commit 4e7e0d47; gold 18 unless given): the first "#### " number, commas, "$" and one final "."
# dropped, compared as text
@pytest.mark.parametrize("generated, gold, right", [
    ("#### 18", "18", True), ("#### 18.", "18", True), ("#### $18", "18", False), ("####18", "18", False),
    ("#### 18..", "18", False), ("#### 18.00", "18", False), ("#### 3.50", "3.5", False), ("#### 018", "18", False),
    ("#### 1,234", "1,234", True), ("#### 1234", "1,234", True), ("#### -10", "-10", True),
    ("#### \u221210", "-10", False), ("#### - 10", "-10", False), ("#### 18%", "18", True),
    ("The answer is 18.", "18", False), ("#### 20\n#### 18", "18", False), ("#### 18\n#### 20", "18", True),
    ("9 * 2 = 18\nQuestion: and #### 18", "18", False),  # cut at its stop "Question:" first
    ("#### 18\n\nQuestion: what about 7?\nAnswer: #### 7", "18", True), ("", "18", False)])
def test_harness_gsm8k_is_its_strict_match(generated, gold, right):
    assert harness_gsm8k(generated, [gold], HARNESS_STOPS) is right


# and its flexible-extract verdicts, computed alike: the last run of digits, "$", "." and "," of two characters or more
# (else a digit), then compared as the strict-match's
@pytest.mark.parametrize("generated, gold, right", [
    ("The answer is 18.", "18", True), ("It costs $18.", "18", True), ("#### 18\nShe keeps 4 eggs.", "18", False),
    ("18 ...", "18", False), ("18...", "18", False), ("It is 3.50", "3.5", False), ("So 1,234", "1,234", True),
    ("She has 7", "7", True), ("9 * 2 = 18\nQuestion: and 4?", "18", True), ("no number", "18", False),
    ("COVID-19", "-19", True), ("#### \u221210", "-10", False)])
def test_harness_gsm8k_flexible_is_its_flexible_extract(generated, gold, right):
    assert harness_gsm8k(generated, [gold], HARNESS_STOPS, flexible=True) is right


def test_numbers_are_judged_and_voted_as_numbers():
    """minirun's own maths rule compares numbers, not their text: "$18.00" is right for 18, where the harness's
    strict-match says no; a vote counts "#### 18" and "18.00" as one answer."""
    assert number_right(final_number("It costs $18.00."), ["18"]) and not number_right("17", ["18"])
    assert number_right(final_number("#### 1250"), ["1,250"]) and not number_right(None, ["18"])
    assert answer_key("so 18.\n#### 18", worked=True) == answer_key("It is 18.00", worked=True) == "18"
    assert answer_key("It is 18.00", worked=False) != answer_key("so 18.\n#### 18", worked=False)


def test_maths_prompts_show_worked_solutions_in_the_harness_s_words():
    """GSM8K asked by name is lm-evaluation-harness's gsm8k prompt: each example "Question: …\\nAnswer: <its whole
    solution>" then a blank line, no heading, the question cued by "Answer:"; minirun's own format shows the solution
    after "A:" under the task's instruction, "#### N" alone for an example without one. Worked solutions stop at a
    next question, not at the end of a line; and get 256 new tokens unless told otherwise."""
    shots = load_fewshot("sample-math")[:2]
    fmt = prompt_format("gsm8k")
    head = build_prefix("math", shots, k=2, fmt=fmt)
    drawn = [s for s in shots if s.question in head]
    assert len(drawn) == 2
    assert head == "".join(f"Question: {s.question}\nAnswer: {s.solution}\n\n" for s in
                           sorted(drawn, key=lambda s: head.index(s.question)))
    assert question_block("How many?", fmt) == "Question: How many?\nAnswer:"
    assert fmt.stops("math") == HARNESS_STOPS and MINIRUN.stops("math") == ("\nQ:",) and MINIRUN.stops("qa") == (
        "\n", " Q:")
    bare = Item("m", "2 + 2?", [], ["4"], "math")
    own = build_prefix("math", [bare], k=1)
    assert own.startswith("Solve the problem step by step") and own.endswith("Q: 2 + 2?\nA: #### 4\n\n")
    maths, short = load_dataset("sample-math")[:1], load_dataset("sample-qa")[:1]
    assert (new_tokens(maths, None), new_tokens(short, None), new_tokens(maths, 8)) == (256, 24, 8)


def test_maths_rows_judge_final_numbers_and_a_vote_counts_them(tiny, tmp_path, monkeypatch):
    """A maths run generates past line ends to a next question, its rows' `answer` the final number and every rule's
    verdict the numbers' equality, `correct_harness` the harness's strict-match; vote picks the number most prompts
    reach, however they write it; the run is keyed with the 256 tokens it gave each answer; `report --match harness`
    scores by the strict-match verdicts."""
    texts = ["#### 20", "6 * 3 = 18, so she makes $18.", "She makes 9 * 2 = 18 dollars.\n#### 18"]
    seen = []

    def fake_run_method(llm, method, questions, options):
        seen.append((options.stop, options.worked, options.max_new_tokens))
        every = texts if method in ("per_prompt", "vote") else None
        shown = texts[2] if method == "origin" else texts[1]
        return [MethodResult(method, shown, [1], "stop", 4, q.paraphrases, answers=every,
                             answer_token_ids=[[1]] * 3 if every else None,
                             finish_reasons=["stop"] * 3 if every else None) for q in questions]

    monkeypatch.setattr(loop, "run_method", fake_run_method)
    items = [Item("ducks", "How much does Janet make?", ["What does Janet earn?", "Janet's earnings?"], ["18"], "math")]
    rows = evaluate(tiny, items, ["origin", "per_prompt", "vote", "avg"], tmp_path, dataset="sample-math",
                    num_prompts=3, few_shot_k=1, progress=False, chat=False).set_index("method")
    assert set(seen) == {(("\nQ:",), True, 256)}
    assert rows.loc["origin", ["answer", "correct", "correct_lemma", "correct_bidirectional", "exact",
                               "correct_harness", "correct_flexible"]].tolist() == ["18", True, True, True, True, True,
                                                                                    True]
    assert rows.loc["avg", ["answer", "correct", "correct_harness", "correct_flexible"]].tolist() == ["18", True,
                                                                                                      False, True]
    assert list(rows.loc["per_prompt", "answers"]) == ["20", "18", "18"]
    assert list(rows.loc["vote", "per_prompt_correct"]) == [False, True, True]
    assert rows.loc["vote", "answer"] == "18" and rows.loc["vote", "generated"] == texts[1]  # the first of the two
    assert json.loads((tmp_path / "run.json").read_text())["run_key"]["max_new_tokens"] == 256
    scored = report.select_match(rows.reset_index(), "harness")
    assert scored.set_index("method")["correct"].to_dict() == {"origin": True, "per_prompt": False, "vote": False,
                                                               "avg": False}
    flexible = report.select_match(rows.reset_index(), "flexible")
    assert flexible.set_index("method")["correct"].to_dict() == {"origin": True, "per_prompt": False, "vote": True,
                                                                 "avg": True}
    with pytest.raises(MinirunError, match="--match flexible is lm-evaluation-harness's gsm8k flexible-extract, a "
                                           "verdict of word problems, and 4 rows are short answers"):
        report.select_match(rows.reset_index().assign(task="qa"), "flexible")


def test_weighted_methods_are_refused_for_word_problems(tiny, tmp_path):
    """Their confidences come from 16-token samples, which never reach a worked solution's final number: refused
    before any model time, not run as weights that say nothing."""
    with pytest.raises(MinirunError, match=r"weighted_avg weigh each prompt by how its 16-token samples agree, and a "
                                           r"worked solution reaches its final number far later: leave it out for "
                                           r"sample-math's word problems \(vote is self-consistency"):
        evaluate(tiny, load_dataset("sample-math")[:1], ["origin", "weighted_avg"], tmp_path, dataset="sample-math",
                 progress=False)
    assert not (tmp_path / "run.json").exists()
