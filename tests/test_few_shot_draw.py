"""Few-shot examples drawn per question (`--few-shot-draw per-question`), as lm-evaluation-harness draws them: each
question its own k examples from one generator seeded 1234, in the questions' order; the run, its batches, its key,
a sweep's cells and `report --match harness` told of the draw."""
from __future__ import annotations

import json

import pandas as pd
import pytest
from typer.testing import CliRunner

import minirun
from minirun.cli import app
from minirun.errors import MinirunError
from minirun.eval import loop
from minirun.eval.data import Item, load_dataset, load_fewshot
from minirun.eval.loop import evaluate, few_shot_prefixes
from minirun.eval.prompts import example_block, prompt_format
from minirun.eval.report import harness_notes

SETTINGS = dict(dataset="sample-qa", num_prompts=2, few_shot_k=2, max_new_tokens=4, progress=False, chat=False)


@pytest.fixture(scope="module")
def tiny(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["qwen2"])


def _pool(n: int, task: str = "qa") -> list[Item]:
    return [Item(f"train-{i}", f"Question number {i} of the pool?", [], [str(i)], task) for i in range(n)]


def _drawn(head: str, pool: list[Item]) -> list[int]:
    """The pool indices of the examples a head shows, in the order it shows them."""
    at = {i: head.find(f"Question number {i} of") for i in range(len(pool))}
    return sorted((i for i in at if at[i] >= 0), key=at.get)


# lm-evaluation-harness's draws at 4e7e0d47 (simple_evaluate with its default fewshot_random_seed, a dummy model, on
# tasks of these pool sizes): ContextSampler.sample takes rnd.sample(pool, k) for each test document in turn from one
# random.Random(1234) (gsm8k, with its own fewshot_split), or rnd.sample(pool, k + 1) and keeps the first k (tasks
# without a test split, such as triviaqa: their documents are taken out where drawn)
HARNESS_DRAWS = [
    ("gsm8k", "math", 7473, [[6374, 3610, 957, 61, 742], [7462, 6610, 4769, 286, 5501], [5677, 687, 806, 6279, 2905]]),
    ("triviaqa", "qa", 7473, [[6374, 3610, 957, 61, 742], [6610, 4769, 286, 5501, 5677], [806, 6279, 2905, 1939, 142]]),
    ("gsm8k", "math", 12, [[7, 1, 0, 10, 9], [10, 1, 11, 5, 3], [0, 11, 10, 5, 7]]),
    ("triviaqa", "qa", 12, [[7, 1, 0, 10, 9], [11, 1, 10, 5, 3], [0, 11, 5, 7, 8]]),  # not sample(pool, 5) after one
]


@pytest.mark.parametrize("dataset, task, size, draws", HARNESS_DRAWS)
def test_each_question_gets_the_examples_the_harness_draws_for_it(dataset, task, size, draws):
    """The first question gets the harness's first draw, the second its next, and each head is the format's head of
    those examples in the order drawn."""
    pool = _pool(size, task)
    items = [Item(f"q{i}", f"Asked question {i}?", [], ["1"], task) for i in range(len(draws))]
    heads = few_shot_prefixes(items, pool, dataset, None, 5, draw="per-question")
    fmt = prompt_format(dataset)
    assert list(heads) == [f"{task}#{item.id}" for item in items]
    for item, shots in zip(items, draws):
        assert _drawn(heads[f"{task}#{item.id}"], pool) == shots
        assert heads[f"{task}#{item.id}"] == "".join(example_block(pool[i], fmt=fmt) + fmt.delimiter for i in shots)


def test_the_first_questions_heads_are_the_same_however_many_are_asked():
    """The draws follow the questions' order, so a run of the first N questions (--max-samples, the harness's --limit)
    asks them under the heads a whole run gives them; questions of another pool draw from their own generator."""
    items = load_dataset("sample-qa")[:6]
    whole = few_shot_prefixes(items, _pool(40), "sample-qa", None, 3, draw="per-question")
    first = few_shot_prefixes(items[:2], _pool(40), "sample-qa", None, 3, draw="per-question")
    assert first == {key: whole[key] for key in first} and len(set(whole.values())) == 6
    fill = [Item(f"f{i}", f"Paris is the capital of {i}", [], ["x"], "fill") for i in range(2)]
    shots = _pool(40) + [Item(f"e{i}", f"A fill example {i}", [], ["y"], "fill") for i in range(8)]
    mixed = few_shot_prefixes(fill + items[:2], shots, "sample-qa", None, 3, draw="per-question")
    alone = few_shot_prefixes(items[:2], shots, "sample-qa", None, 3, draw="per-question")
    assert {key: mixed[key] for key in alone} == alone


def test_shared_draw_is_one_head_per_pool_as_before():
    items = load_dataset("sample-qa")[:4]
    heads = few_shot_prefixes(items, None, "sample-qa", None, 2)
    assert heads == few_shot_prefixes(items, None, "sample-qa", None, 2, draw="shared") and list(heads) == ["qa"]


def test_a_test_question_in_the_pool_is_drawn_as_the_harness_draws_it_whatever_questions_are_asked(caplog):
    """The draws are the harness's calls on the whole pool: a pool example that is a question under test is drawn
    where the harness draws it (said in a warning), so no question's examples depend on which others are asked; only
    where the harness's task takes a document's own row out of its k + 1 (triviaqa's) is a question's own row left
    out of its examples, and the next one drawn shown instead."""
    pool = _pool(12)
    items = [pool[i] for i in (7, 11, 0)]  # asked: rows of the pool (NQ-open's train and validation share some)
    whole = few_shot_prefixes(items, pool, "nq_open", None, 5, draw="per-question")
    assert "3 of the 12 few-shot qa examples are questions under test" in caplog.text
    first = few_shot_prefixes(items[:1], pool, "nq_open", None, 5, draw="per-question")
    assert first == {"qa#train-7": whole["qa#train-7"]}
    # the harness's draws of 6 from 12 for three documents, without each document's own row
    drawn = [[7, 1, 0, 10, 9, 5], [11, 1, 10, 5, 3, 0], [0, 11, 5, 7, 8, 1]]
    for item, six in zip(items, drawn):
        own = int(item.id.removeprefix("train-"))
        assert _drawn(whole[f"qa#{item.id}"], pool) == [i for i in six if i != own][:5]
    maths = _pool(12, "math")
    heads = few_shot_prefixes([maths[7]], maths, "gsm8k", None, 5, draw="per-question")
    assert _drawn(heads["math#train-7"], maths) == [7, 1, 0, 10, 9]  # gsm8k's harness task shows a question its row


@pytest.mark.parametrize("dataset, k, items, message", [
    ("sample-qa", 0, "sample-qa", "--few-shot-k 0 .few_shot_k = 0. asks for none"),
    ("mmlu", 1, "mmlu", "take the first 1 examples for every question"),
    ("truthfulqa_mc1", 6, "sample-choice", "take the first 6 examples for every question"),
])
def test_a_draw_per_question_where_nothing_is_drawn_is_refused(dataset, k, items, message):
    from dataclasses import replace

    asked = load_dataset("sample-choice" if items != "sample-qa" else "sample-qa")[:2]
    shots = load_fewshot("sample-choice" if items != "sample-qa" else "sample-qa")
    if items == "mmlu":
        asked, shots = [replace(i, relation="virology") for i in asked], [replace(s, relation="virology") for s in shots]
    with pytest.raises(MinirunError, match=message):
        few_shot_prefixes(asked, shots, dataset, None, k, draw="per-question")
    with pytest.raises(MinirunError, match="unknown few-shot draw 'each' in --few-shot-draw .a sweep dataset's "
                                           "few_shot_draw.: choose shared, per-question"):
        few_shot_prefixes(asked, shots, dataset, None, k, draw="each")


def test_questions_with_their_own_heads_batch_together_and_answer_as_alone(tiny, tmp_path, monkeypatch):
    """Heads drawn per question are batched by their pool (a batch of 3 holds 3 heads, the prompts of a question
    under its own), and every row is the row that question gets in a batch of its own; the run key names the draw."""
    items = load_dataset("sample-qa")[:5]
    heads = []
    real = loop.run_method
    monkeypatch.setattr(loop, "run_method", lambda llm, method, qs, *a: heads.append([q.prefix for q in qs]) or
                        real(llm, method, qs, *a))
    batched = evaluate(tiny, items, ["origin", "avg"], tmp_path / "b", **SETTINGS, batch_size=3,
                       few_shot_draw="per-question")
    assert [len(set(h)) for h in heads] == [3, 2, 3, 2]
    alone = evaluate(tiny, items, ["origin", "avg"], tmp_path / "a", **SETTINGS, batch_size=1,
                     few_shot_draw="per-question")
    columns = ["id", "method", "generated", "answer", "correct"]
    pd.testing.assert_frame_equal(batched[columns].sort_values(["method", "id"]).reset_index(drop=True),
                                  alone[columns].sort_values(["method", "id"]).reset_index(drop=True))
    key = json.loads((tmp_path / "b" / "run.json").read_text())["run_key"]
    assert (key["few_shot_k"], key["few_shot_draw"]) == (2, "per-question")
    shared = evaluate(tiny, items[:1], ["origin"], tmp_path / "s", **SETTINGS)
    assert json.loads((tmp_path / "s" / "run.json").read_text())["run_key"]["few_shot_draw"] == "shared"
    assert shared["generated"].notna().all()


def test_a_run_resumed_under_the_other_draw_is_refused_naming_it(tiny, tmp_path):
    items = load_dataset("sample-qa")[:1]
    evaluate(tiny, items, ["origin"], tmp_path, **SETTINGS)
    with pytest.raises(MinirunError, match="few_shot_draw: 'shared' -> 'per-question'") as refused:
        evaluate(tiny, items, ["origin"], tmp_path, **SETTINGS, few_shot_draw="per-question")
    assert "few-shot prompt changed" not in str(refused.value)  # the setting that changed it, said alone


def test_eval_cli_shows_each_question_its_own_head_and_refuses_bad_draws(tiny, tmp_path):
    base = ["eval", "--model", str(tiny.path), "--data", "sample-qa", "-m", "origin", "--few-shot-k", "2",
            "--no-chat", "--output", str(tmp_path / "run"), "--show-prompts", "2"]
    shown = CliRunner().invoke(app, [*base, "--few-shot-draw", "per-question"])
    assert shown.exit_code == 0, shown.output
    prompts = [block.split(" · ", 1)[1] for block in shown.stdout.split("--- prompt ")[1:]]
    items = load_dataset("sample-qa")[:2]
    heads = [p[:p.index(f"Q: {item.question}")] for p, item in zip(prompts, items)]
    assert heads[0] != heads[1] and all(h.count("\nA: ") == 2 for h in heads)
    choice = tmp_path / "tqa.jsonl"
    choice.write_text(json.dumps({"question": "Can pigs fly?", "mc1_targets": {"choices": ["No.", "Yes."],
                                                                             "labels": [1, 0]}}) + "\n")
    for args, message in ((["--few-shot-draw", "each"], "unknown few-shot draw 'each' in --few-shot-draw"),
                          (["--few-shot-draw", "per-question", "--few-shot-k", "0"], "--few-shot-k 0 (few_shot_k = 0) "
                                                                                     "asks for none"),
                          (["--few-shot-draw", "per-question", "--model", str(tmp_path / "none"), "--data",
                            str(choice), "--benchmark", "truthfulqa_mc1", "--few-shot-k", "6"],
                           "truthfulqa_mc1's prompts take the first 6 examples")):  # before the model is looked for
        refused = CliRunner().invoke(app, [*base, *args])
        assert refused.exit_code == 1 and message in " ".join(refused.output.split()), refused.output
        assert "Traceback" not in refused.output


def test_report_says_when_a_harness_format_run_drew_one_head_for_all():
    rows = pd.DataFrame({"method": ["origin"] * 2, "task": ["qa"] * 2, "tokens": [3, 3]})
    key = {"prompt_format": "harness gsm8k", "chat": False, "max_new_tokens": 256, "few_shot_k": 5,
           "few_shot_draw": "shared"}
    notes = harness_notes(key, rows)
    assert notes == ["its questions were all asked under one draw of 5 few-shot examples, where lm-evaluation-harness "
                     "draws each question its own: --few-shot-draw per-question for its figure"]
    for quiet in ({"few_shot_draw": "per-question"}, {"few_shot_k": 0}, {"few_shot_k": None, "few_shot_draw": None}):
        assert harness_notes({**key, **quiet}, rows) == []  # drawn as the harness draws, none drawn, or not recorded


def test_a_sweep_dataset_draws_per_question_in_cells_of_their_own():
    """A sweep dataset's `few_shot_draw`: "per-question" cells are other cells (their done.json is not a shared
    draw's), and a dataset table that leaves the draw shared keeps the key it had before the setting existed."""
    import dataclasses

    from minirun.eval import sweep as sweep_module
    from minirun.eval.sweep_spec import parse_sweep

    base = {"models": [{"path": "owner/model"}], "methods": [{"name": "origin"}]}
    spec = parse_sweep({**base, "datasets": [{"name": "sample-qa", "label": "a"},
                                             {"name": "sample-qa", "label": "b", "few_shot_draw": "per-question"}]})
    data = sweep_module.Data(load_dataset("sample-qa")[:2], None, None)
    shared, drawn = (sweep_module.cell_key(cell, spec, data) for cell in sweep_module.cells(spec, "out"))
    assert shared != drawn
    real = dataclasses.asdict  # a dataset table written before `few_shot_draw` existed
    before = lambda obj: {k: v for k, v in real(obj).items() if k != "few_shot_draw"}  # noqa: E731
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dataclasses, "asdict", before)
        assert sweep_module.cell_key(sweep_module.cells(spec, "out")[0], spec, data) == shared
    for table, message in (({"few_shot_draw": "each"}, "few_shot_draw: unknown few-shot draw 'each'"),
                           ({"few_shot_draw": "per-question", "few_shot_k": 0}, "few_shot_k = 0. asks for none"),
                           ({"name": "mmlu", "few_shot_draw": "per-question"}, "mmlu's prompts take the first 5")):
        with pytest.raises(MinirunError, match=message):
            parse_sweep({**base, "datasets": [{"name": "sample-qa", **table}]})


def test_a_changed_draw_or_count_is_named_and_a_run_that_recorded_neither_says_its_prompt_changed():
    from minirun.eval.results import OPAQUE, key_differences

    old = {"run_key": {"few_shot": "a", "few_shot_k": 1, "few_shot_draw": "shared"}, "item_ids": ["q"]}
    assert key_differences(old, {"few_shot": "b", "few_shot_k": 3, "few_shot_draw": "shared"}, ["q"]) == [
        "few_shot_k: 1 -> 3"]
    before = {"run_key": {"few_shot": "a"}, "item_ids": ["q"]}  # a run of a minirun before these were recorded
    assert key_differences(before, {"few_shot": "b", "few_shot_k": 3, "few_shot_draw": "shared"}, ["q"]) == [
        OPAQUE["few_shot"]]
    assert key_differences(before, {"few_shot": "a", "few_shot_k": 1, "few_shot_draw": "shared"}, ["q"]) == []


def test_runs_of_one_setting_compared_are_not_told_apart_by_keys_one_of_them_does_not_record(tiny, tmp_path):
    """A run made before few_shot_k and few_shot_draw were recorded, beside one made after with the same settings:
    no warning that their settings differ; settings that do differ are still named."""
    import shutil

    items = load_dataset("sample-qa")[:2]
    evaluate(tiny, items, ["origin"], tmp_path / "new", **SETTINGS)
    old = shutil.copytree(tmp_path / "new", tmp_path / "old")
    info = json.loads((old / "run.json").read_text())
    for name in ("few_shot_k", "few_shot_draw"):
        del info["run_key"][name]
    (old / "run.json").write_text(json.dumps(info))
    shown = CliRunner().invoke(app, ["report", str(old), str(tmp_path / "new")], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert "differ in" not in shown.output
    evaluate(tiny, items, ["origin"], tmp_path / "three", **{**SETTINGS, "few_shot_k": 3})
    shown = CliRunner().invoke(app, ["report", str(tmp_path / "new"), str(tmp_path / "three")], env={"COLUMNS": "250"})
    assert "differ in few_shot, few_shot_k (run.json run_key)" in " ".join(shown.output.split())


def test_a_per_question_run_resumed_over_other_items_says_only_that_the_items_differ(tiny, tmp_path):
    items = load_dataset("sample-qa")[:3]
    evaluate(tiny, items[:2], ["origin"], tmp_path, **SETTINGS, few_shot_draw="per-question")
    with pytest.raises(MinirunError, match="holds results of a different run") as refused:  # not a run grown
        evaluate(tiny, items[1:], ["origin"], tmp_path, **SETTINGS, few_shot_draw="per-question")
    assert "the dataset's items differ" in str(refused.value) and "few-shot" not in str(refused.value)
