"""Majority vote: the counting rule alone, then `vote` against per_prompt's own answers and picks, in generation,
multiple-choice scoring, eval rows, the report's re-picking and the command line."""
from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
from typer.testing import CliRunner

import minirun
from minirun.cli import app
from minirun.eval.data import load_dataset
from minirun.eval.loop import evaluate
from minirun.eval.report import select_choice_score
from minirun.methods import EnsembleOptions, Question, run_method, score_choices
from minirun.methods.choice import scored_as
from minirun.methods.choice_rules import method_pick
from minirun.methods.runner import answered_as
from minirun.methods.vote import answer_key, plurality, vote_shares

PREFIX = "Q: Water boils at\nA: 100 degrees\n\n"
QUESTION = "The capital of France is"
OTHER = "Who wrote Hamlet? William"
CHOICES = ["Paris", "Lyon and Marseille", "Berlin", "the city of Rome"]


@pytest.mark.parametrize("keys, winner", [
    (["paris", "lyon", "lyon"], 1),  # a majority against the first prompt
    (["paris", "lyon", "lyon", "paris"], 0),  # a tie: the key given first
    (["lyon", "paris", "paris", "lyon", "rome"], 0),
    ([None, "lyon", None, None], 1),  # an empty answer casts no vote, however many there are
    ([None, None], 0),  # nobody votes: the first prompt's
    (["a", "b", "c"], 0),  # all different: the first prompt's
    ([None, "b", "c"], 1),  # all different, the question's empty: the first prompt that answered
    ([2, 0, 2, 1], 0),  # picks vote as keys do
    ([3, 1, 1], 1),
])
def test_plurality_counts_votes_and_breaks_ties_by_the_first_given(keys, winner):
    assert plurality(keys) == winner


@pytest.mark.parametrize("a, b, same", [
    ("A: Paris.", "paris", True), ("\"Paris\"", "The Paris", True), ("Paris Q: What is", "Paris", True),
    ("Paris\nmore text", "Paris", True), ("Paris", "Lyon", False), ("2.5", "25", False),
])
def test_answers_vote_together_by_their_extracted_normalised_text(a, b, same):
    assert (answer_key(a) == answer_key(b)) == same


@pytest.mark.parametrize("text", ["", "  ", "A:", "\"\"", "."])
def test_an_empty_answer_has_no_key(text):
    assert answer_key(text) is None


def test_vote_shares_are_each_options_fraction_of_the_picks():
    assert vote_shares([2, 0, 2, 2], 4) == [0.25, 0.0, 0.75, 0.0]


@pytest.fixture(scope="module", params=["llama3", "qwen3"])
def llm(request, checkpoint_dirs):
    return minirun.load(checkpoint_dirs[request.param])


def opts(**kw) -> EnsembleOptions:
    return EnsembleOptions(**{"max_new_tokens": 12, "chat": False, "stop": ("\n",), **kw})


def test_vote_takes_the_answer_most_prompts_give(llm):
    """Prompts [A, B, B]: per_prompt answers each alone; the vote returns B's answer (where A's differs), with
    every prompt's answer kept, and its generated tokens are per_prompt's."""
    prompts = [QUESTION, OTHER, OTHER]
    question = [Question(QUESTION, prompts, PREFIX, "\nA:")]
    each = run_method(llm, "per_prompt", question, opts())[0]
    voted = run_method(llm, "vote", question, opts())[0]
    keys = [answer_key(a) for a in each.answers]
    assert keys[1] is not None and keys[0] != keys[1]  # the random checkpoints answer A and B differently
    assert voted.chosen == 1 and voted.text == each.answers[1] and voted.token_ids == each.answer_token_ids[1]
    assert voted.answers == each.answers and voted.answer_token_ids == each.answer_token_ids
    assert voted.prompt_tokens == each.prompt_tokens and each.chosen is None


def test_a_vote_of_identical_paraphrases_is_origin(llm):
    origin = run_method(llm, "origin", [Question(QUESTION, [], PREFIX, "\nA:")], opts())[0]
    voted = run_method(llm, "vote", [Question(QUESTION, [QUESTION] * 3, PREFIX, "\nA:")], opts())[0]
    assert (voted.text, voted.token_ids, voted.chosen) == (origin.text, origin.token_ids, 0)


def test_questions_vote_in_a_batch_as_alone(llm):
    questions = [Question(QUESTION, [QUESTION, OTHER, OTHER], PREFIX, "\nA:"),
                 Question(OTHER, [OTHER, QUESTION], PREFIX, "\nA:")]
    batched = run_method(llm, "vote", questions, opts())
    alone = [run_method(llm, "vote", [q], opts())[0] for q in questions]
    assert [(r.chosen, r.token_ids, r.answers) for r in batched] == [(r.chosen, r.token_ids, r.answers) for r in alone]


def test_a_multiple_choice_vote_is_the_plurality_of_per_prompts_picks(llm):
    """Prompts [A, B, B]: B's pick wins over A's (the random checkpoints pick differently for them)."""
    question = [Question(QUESTION, [QUESTION, OTHER, OTHER], PREFIX, "\nA:")]
    each = score_choices(llm, "per_prompt", question, [CHOICES], opts())[0]
    voted = score_choices(llm, "vote", question, [CHOICES], opts())[0]
    picks = each.per_prompt_choices
    assert picks[0] != picks[1] == picks[2]
    assert voted.per_prompt_choices == picks and voted.per_prompt_logprobs == each.per_prompt_logprobs
    assert voted.choice == picks[1] and voted.scores == vote_shares(picks, 4) and voted.scores[picks[1]] == 2 / 3
    assert voted.logprobs == pytest.approx([sum(s) / 3 for s in zip(*each.per_prompt_logprobs)])
    same = score_choices(llm, "vote", [Question(QUESTION, [QUESTION] * 3, PREFIX, "\nA:")], [CHOICES], opts())[0]
    origin = score_choices(llm, "origin", [Question(QUESTION, [], PREFIX, "\nA:")], [CHOICES], opts())[0]
    assert same.choice == origin.choice and same.scores[origin.choice] == 1.0


def test_method_pick_counts_each_prompts_pick_under_the_mode():
    """Per token, prompts 0 and 1 pick the long option 1, prompt 2 the short option 0; summed, prompts 1 and 2 pick
    option 0: the vote follows the mode (the option, not the prompt that first gave it), while a fused method
    picks from its own sums."""
    tokens, chars = [1, 4], [5, 20]
    per_prompt = [[-3.0, -2.0], [-1.5, -4.0], [-1.0, -8.0]]
    assert method_pick("vote", [-9.0, -9.0], tokens, chars, "mean", per_prompt) == (1, [1 / 3, 2 / 3], [1, 1, 0])
    assert method_pick("vote", [-9.0, -9.0], tokens, chars, "sum", per_prompt) == (0, [2 / 3, 1 / 3], [1, 0, 0])
    assert method_pick("avg", [-1.0, -2.0], tokens, chars, "sum") == (0, [-1.0, -2.0], None)
    with pytest.raises(ValueError, match="per_prompt"):
        method_pick("vote", [-1.0, -2.0], tokens, chars, "sum")


def test_report_counts_a_choice_vote_again_under_another_score(checkpoint_dirs, tmp_path):
    """`report --choice-score` re-picks each prompt and counts the vote again: the same as a run scored that way."""
    tiny = minirun.load(checkpoint_dirs["qwen2"])
    items = load_dataset("sample-choice")[:4]
    settings = dict(dataset="sample-choice", num_prompts=3, few_shot_k=1, batch_size=2, progress=False)
    mean = evaluate(tiny, items, ["vote"], tmp_path / "mean", **settings)
    summed = evaluate(tiny, items, ["vote"], tmp_path / "sum", **settings, choice_score="sum")
    repicked = select_choice_score(mean, "sum").sort_values("id").reset_index(drop=True)
    summed = summed.sort_values("id").reset_index(drop=True)
    for column in ("choice", "correct", "answer"):
        assert repicked[column].tolist() == summed[column].tolist(), column
    assert [list(a) for a in repicked["answers"]] == [list(a) for a in summed["answers"]]
    assert [list(s) for s in repicked["choice_scores"]] == [list(s) for s in summed["choice_scores"]]


def test_eval_rows_of_a_vote_hold_every_answer_and_the_winners_verdict(checkpoint_dirs, tmp_path):
    """vote beside per_prompt in one eval (one prefill for both): the same prompts' answers, and the row's answer
    and verdicts are those of the answer most prompts gave."""
    tiny = minirun.load(checkpoint_dirs["qwen2"])
    items = load_dataset("sample-qa")[:4]
    table = evaluate(tiny, items, ["per_prompt", "vote"], tmp_path, dataset="sample-qa", num_prompts=3, few_shot_k=1,
                     max_new_tokens=4, batch_size=2, progress=False)
    rows = {(r.method, r.id): r for r in table.itertuples()}
    for item in items:
        each, voted = rows[("per_prompt", item.id)], rows[("vote", item.id)]
        assert list(voted.answers) == list(each.answers) and voted.tokens == each.tokens
        won = plurality([answer_key(a) for a in voted.answers])
        assert voted.answer == voted.answers[won] and voted.correct == voted.per_prompt_correct[won]
    assert isinstance(table, pd.DataFrame) and set(table["method"]) == {"per_prompt", "vote"}


def test_generate_vote_prints_the_winner_and_names_it_in_json(checkpoint_dirs):
    args = ["generate", QUESTION, "--model", str(checkpoint_dirs["qwen2"]), "--method", "vote", "--raw",
            "-p", OTHER, "-p", "Water boils at", "--max-new-tokens", "6", "--stop", "\n"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["method"] == "vote" and len(out["answers"]) == 3 and out["text"] == out["answers"][out["chosen"]]
    assert out["chosen"] == plurality([answer_key(a) for a in out["answers"]])
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0, plain.output
    assert plain.stdout.strip() == out["text"].strip()
    listing = [line for line in plain.stderr.splitlines() if line.startswith(("* [", "  ["))]
    assert len(listing) == 3 and sum(line.startswith("*") for line in listing) == 1  # one line a prompt, its answer
    assert listing[out["chosen"]].startswith("*")  # as compared


def test_per_prompt_and_vote_results_are_each_others(llm):
    """`answered_as` / `scored_as`: one method's results as the other's equal the other's run — what lets an
    evaluation decode or score the prompts once for both."""
    questions = [Question(QUESTION, [QUESTION, OTHER, OTHER], PREFIX, "\nA:"), Question(OTHER, [OTHER], PREFIX, "\nA:")]
    runs = {m: run_method(llm, m, questions, opts()) for m in ("per_prompt", "vote")}
    scores = {m: score_choices(llm, m, questions, [CHOICES, CHOICES[:2]], opts()) for m in ("per_prompt", "vote")}
    for source, target in (("per_prompt", "vote"), ("vote", "per_prompt")):
        assert [answered_as(r, target) for r in runs[source]] == runs[target]
        assert [scored_as(r, target, "mean") for r in scores[source]] == scores[target]
    reasons = runs["vote"][0].finish_reasons
    assert reasons == runs["per_prompt"][0].finish_reasons and len(reasons) == 3
    with pytest.raises(ValueError, match="per_prompt and vote"):
        answered_as(runs["vote"][0], "avg")
    with pytest.raises(ValueError, match="per_prompt and vote"):
        scored_as(score_choices(llm, "avg", questions[:1], [CHOICES], opts())[0], "vote", "mean")


@pytest.mark.parametrize("dataset", ["sample-qa", "sample-choice", "mixed"])
def test_an_eval_of_per_prompt_and_vote_answers_the_prompts_once(checkpoint_dirs, tmp_path, monkeypatch, dataset):
    """Run together, vote takes per_prompt's decoded answers (or scores) instead of its own pass: the same rows as
    each run alone, one pass per batch (a batch of generated and multiple-choice items: one of each kind), and
    vote's seconds count the pass it took."""
    from minirun.eval import loop

    tiny = minirun.load(checkpoint_dirs["qwen2"])
    mixed = dataset == "mixed"  # no few-shot head, so both kinds share one batch of four
    items = load_dataset("sample-qa")[:2] + load_dataset("sample-choice")[:2] if mixed else load_dataset(dataset)[:4]
    settings = dict(dataset=dataset, num_prompts=3, few_shot_k=0 if mixed else 1, max_new_tokens=4,
                    batch_size=4 if mixed else 2, progress=False)
    alone = pd.concat([evaluate(tiny, items, [m], tmp_path / m, **settings) for m in ("per_prompt", "vote")])
    passes = []
    for name in ("run_method", "score_choices"):
        real = getattr(loop, name)
        monkeypatch.setattr(loop, name, lambda llm, method, *rest, real=real, name=name:
                            passes.append((name, method)) or real(llm, method, *rest))
    together = evaluate(tiny, items, ["per_prompt", "vote"], tmp_path / "both", **settings)
    kinds = {"sample-qa": ["run_method"] * 2, "sample-choice": ["score_choices"] * 2,  # two batches each
             "mixed": ["score_choices", "run_method"]}[dataset]  # one batch of both kinds
    assert passes == [(kind, "per_prompt") for kind in kinds]  # vote decoded and scored nothing
    canon = [df.drop(columns="seconds").sort_values(["method", "id"]).reset_index(drop=True)
             for df in (alone, together)]
    pd.testing.assert_frame_equal(*canon)
    seconds = together.groupby("method")["seconds"].sum()
    assert seconds["vote"] >= 0.5 * seconds["per_prompt"]


def test_twins_hand_over_results_and_their_seconds_once(monkeypatch):
    """The second of per_prompt and vote on the same inputs and options (the choice score aside: results carry what
    any score is re-picked from) takes the first one's results, converted, and their seconds, prefill copied
    included, once; other inputs, other options or another method compute their own."""
    from minirun.eval import loop

    now, reused, calls = [0.0], [0.0], []
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(loop, "seconds_set_aside", lambda: 0.0)

    def compute():
        now[0] += 3.0
        reused[0] += 0.5  # a prefill copied from an earlier method inside the call
        calls.append(1)
        return ["r"]

    twins, options = loop.Twins(lambda: reused[0]), EnsembleOptions()
    assert twins.run("per_prompt", "generate", ("q",), options, compute, lambda r: r + "!") == ["r"]
    assert twins.copied == 0.0
    assert twins.run("vote", "generate", ("q",), replace(options, choice_score="sum"), compute,
                     lambda r: r + "!") == ["r!"]
    assert (twins.copied, len(calls)) == (3.5, 1)
    assert twins.run("vote", "score", ("q",), options, compute, lambda r: r + "!") == ["r"]  # another kind of call
    assert twins.run("vote", "generate", ("other",), options, compute, lambda r: r + "!") == ["r"]
    assert twins.run("per_prompt", "generate", ("q",), replace(options, max_new_tokens=5), compute,
                     lambda r: r + "!") == ["r"]
    assert twins.run("avg", "generate", ("q",), options, compute, lambda r: r + "!") == ["r"]
    assert (twins.copied, len(calls)) == (3.5, 5)


def test_an_eval_vote_row_shows_the_answer_most_prompts_gave(checkpoint_dirs, tmp_path, monkeypatch):
    """Prompts answering "Paris", "Lyon", "lyon.": per_prompt's row shows the question's "Paris" (wrong), vote's the
    majority "Lyon" (right) from per_prompt's one pass."""
    from minirun.eval import loop
    from minirun.eval.data import Item
    from minirun.methods import MethodResult

    passes = []

    def fake_run_method(llm, method, questions, options):
        passes.append(method)
        return [answered_as(MethodResult("per_prompt", "Paris", [1], "stop", 4, q.paraphrases,
                                         answers=["Paris", "Lyon", "lyon."], answer_token_ids=[[1], [2], [2, 3]],
                                         finish_reasons=["stop"] * 3), method) for q in questions]

    monkeypatch.setattr(loop, "run_method", fake_run_method)
    item = Item("x", "Which city is the capital?", ["Name the capital city.", "The capital is which city?"], ["Lyon"])
    table = evaluate(minirun.load(checkpoint_dirs["qwen2"]), [item], ["per_prompt", "vote"], tmp_path,
                     dataset="sample-qa", num_prompts=3, few_shot_k=0, max_new_tokens=4, progress=False)
    rows = table.set_index("method")
    assert passes == ["per_prompt"]
    assert (rows.loc["per_prompt", "answer"], bool(rows.loc["per_prompt", "correct"])) == ("Paris", False)
    assert (rows.loc["vote", "answer"], bool(rows.loc["vote", "correct"])) == ("Lyon", True)
    assert rows.loc["vote", "generated"] == "Lyon" and list(rows.loc["vote", "per_prompt_correct"]) == [False, True, True]
    assert rows.loc["vote", "tokens"] == rows.loc["per_prompt", "tokens"] == 4


def test_answers_are_compared_past_a_reasoning_models_thinking():
    from minirun.methods.vote import answer_key

    assert answer_key("<think>\nHmm.\nParis?\n</think>\n\nParis.") == answer_key("Paris") == "paris"
    assert answer_key("So it is Rome.\n</think>\n\nRome") == "rome"  # thinking the prompt opened, ended
    assert answer_key("Still thinking", reasoning=True) is None and answer_key("Still thinking") == "still thinking"
    assert answer_key("<think>\nStill thinking") is None
