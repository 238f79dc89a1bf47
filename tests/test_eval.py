"""The dataset run loop: resume after an interruption, torchrun sharding, and the eval/report CLI.

Tiny random checkpoints with short prompts keep the loop tests fast; one test runs every
method end to end on the real default model.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import types

import pandas as pd
import torch

import pytest
import typer
from typer.testing import CliRunner

import minirun
import minirun.engine.llm
from minirun.checkpoints.loader import write_source
from minirun.cli import app as cli_app
from minirun.cli.eval import register
from minirun.engine.session import out_of_memory
from minirun.errors import MinirunError
from minirun.eval import loop
from minirun.eval.data import Item, load_dataset, load_fewshot, write_jsonl
from minirun.eval.loop import evaluate, shard
from minirun.eval.prompts import INSTRUCTIONS, build_prefix
from minirun.eval import report
from minirun.eval.report import summarize
from minirun.eval.results import ResultStore, recorded_source
from minirun.eval.sweep_spec import parse_sweep
from minirun.layers.calibrate import device_name
from minirun.methods import MethodResult
from minirun.models import Decoder

METHODS = ["origin", "avg"]
SETTINGS = dict(dataset="sample-qa", num_prompts=2, few_shot_k=1, max_new_tokens=4, batch_size=2, progress=False)
CLI_SETTINGS = ["--data", "sample-qa", "--num-paraphrases", "2", "--few-shot-k", "1", "--max-new-tokens", "4",
                "--batch-size", "2", "--max-samples", "6", "--no-progress"]  # --num-paraphrases: the old name, an alias
APP_SCRIPT = """
import typer
from minirun.cli.eval import register
app = typer.Typer(pretty_exceptions_enable=False)
@app.callback()
def main() -> None: pass
register(app)
app()
"""


def _fake_hub(monkeypatch, frames: dict[str, pd.DataFrame]) -> list[tuple]:
    """The Hub as `datasets` and `huggingface_hub` see it, offline: each split's rows from `frames`, every repo at
    commit c…c; returns the (repo, config…, split) calls, in order."""
    import huggingface_hub

    calls = []

    def load_hub_dataset(repo_id, *configs, split, **pinned):
        calls.append((repo_id, *configs, split))
        return types.SimpleNamespace(to_pandas=lambda: frames[split].copy())

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_hub_dataset))
    monkeypatch.setattr(huggingface_hub, "dataset_info", lambda repo_id, revision=None: types.SimpleNamespace(
        sha="c" * 40))
    return calls


def _app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def main() -> None:  # a callback keeps `eval`/`report` as subcommands
        pass

    register(app)
    return app


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    """Everything but wall time and the machine it names (a torchrun rank has fewer threads), in a fixed order."""
    return df.drop(columns=["seconds", "machine"]).sort_values(["method", "id"]).reset_index(drop=True)


def _same(df: pd.DataFrame) -> pd.DataFrame:
    """`_canon` with every missing value as None: tables concatenated with pandas write NaN for None."""
    canon = _canon(df)
    return canon.astype(object).where(canon.notna(), None)


@pytest.fixture(scope="module")
def tiny(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["qwen2"])


@pytest.fixture(scope="module")
def items():
    return load_dataset("sample-qa")[:6]


@pytest.fixture(scope="module")
def reference(tiny, items, tmp_path_factory) -> pd.DataFrame:
    """One uninterrupted single-process run that the other runs must reproduce."""
    return evaluate(tiny, items, METHODS, tmp_path_factory.mktemp("reference"), **SETTINGS)


def test_reference_rows(reference, items):
    assert len(reference) == len(items) * len(METHODS)
    assert not reference.duplicated(["method", "id"]).any()
    row = reference.iloc[0]
    assert row["prompts"] == items[0].prompts[:2] and row["task"] == "qa" and row["original"]
    assert (reference["correct"] == reference["correct_lemma"]).all()  # the run's rule is lemma
    assert (reference["correct_bidirectional"] >= reference["correct_lemma"]).all()
    assert reference["per_prompt_correct"].isna().all()  # no per_prompt rows here
    assert reference["tokens"].between(1, 4).all() and (reference["seconds"] > 0).all()
    assert (reference["machine"] == device_name(torch.device("cpu"))).all()  # where the seconds were timed


def test_a_lone_method_name_and_numpy_counts_run_as_their_list_and_ints(tiny, items, reference, tmp_path):
    """evaluate(llm, items, "origin", …) ran the methods 'o', 'r', … ("unknown method 'o'"), and num_prompts=2.5
    failed in a slice deep inside; a numpy count is a count."""
    import numpy as np

    counts = {"num_prompts": np.int64(2), "max_new_tokens": np.int32(4), "batch_size": np.int64(2)}
    alone = evaluate(tiny, items, METHODS[0], tmp_path / "one", **{**SETTINGS, **counts})
    assert _canon(alone).equals(_canon(reference[reference["method"] == METHODS[0]]))
    key = json.loads((tmp_path / "one" / "run.json").read_text())["run_key"]
    assert key["max_new_tokens"] == 4 and key["num_prompts"] == 2  # numbers, not the text '4' a resume would refuse
    evaluate(tiny, items, METHODS[0], tmp_path / "one", **SETTINGS)  # the same run, its counts as plain ints
    with pytest.raises(minirun.MinirunError, match="num_prompts must be a whole number, got 2.5"):
        evaluate(tiny, items, METHODS, tmp_path / "half", **{**SETTINGS, "num_prompts": 2.5})


def test_resume_after_interruption(tiny, items, reference, tmp_path):
    seen = []

    def stop_after_3(row: dict) -> None:
        seen.append(row)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny, items, METHODS, tmp_path, on_row=stop_after_3, **SETTINGS)
    redone = []
    final = evaluate(tiny, items, METHODS, tmp_path, on_row=redone.append, **SETTINGS)
    assert len(redone) == len(reference) - 4  # nothing finished is redone: the third row's batch of 2 was kept whole
    pd.testing.assert_frame_equal(_canon(final), _canon(reference))
    assert not final.duplicated(["method", "id"]).any()


def test_a_resumed_run_takes_the_kernels_its_rows_were_made_with(tiny, items, tmp_path, monkeypatch):
    """bfloat16 rows round by the CPU kernels: a resumed process (another thread count, a busy calibration not
    kept, calibration turned on) takes the kernels the run recorded, not the ones this machine would time now."""
    from minirun.layers import calibrate

    def stop_after_3(row: dict, seen: list = []) -> None:
        seen.append(row)
        if len(seen) == 3:
            raise KeyboardInterrupt

    real = loop.ResultStore.add_batch

    def killed_after_rows(store, rows):  # stopped once the rows are kept: their kernels must be recorded already
        real(store, rows)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.ResultStore, "add_batch", killed_after_rows)
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny, items, METHODS, tmp_path / "killed", **SETTINGS)
    assert (tmp_path / "killed" / "kernels.rank0.json").is_file()
    monkeypatch.undo()
    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny, items, METHODS, tmp_path, on_row=stop_after_3, **SETTINGS)  # calibration off: defaults
    recorded = json.loads((tmp_path / "kernels.rank0.json").read_text())
    assert any(key.startswith("product_plan | ") for key in recorded)
    assert {v for k, v in recorded.items() if k.startswith("dense_attention | ")} == {"sdpa"}
    monkeypatch.setenv("MINIRUN_CALIBRATE", "1")  # this process would now choose otherwise
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(calibrate, "race", lambda candidates, repeats=7: {
        name: 0.0 if name in ("grouped", "library") else 1.0 for name in candidates})
    taken = {}
    monkeypatch.setattr(loop.ResultStore, "record_kernels", lambda store, choices: taken.update(choices))
    evaluate(tiny, items, METHODS, tmp_path, **SETTINGS)
    assert taken and all(taken[key] == recorded[key] for key in taken.keys() & recorded.keys())
    assert {v for k, v in taken.items() if k not in recorded} <= {"grouped"}  # shapes the first process never met
    (tmp_path / "kernels.rank0.json").write_text('{"dense_attention | rows=1": "fast"}')
    with pytest.raises(MinirunError, match=r"kernels.rank\*.json of .* records dense_attention \| rows=1: 'fast' is "
                                           "no kernel's answer: delete that file"):
        evaluate(tiny, items, METHODS, tmp_path, **SETTINGS)


def test_runs_evaluated_together_with_other_kernels_are_warned_of(tiny, items, tmp_path, caplog):
    """A sweep's cells of one dataset run in one process: a cell made elsewhere with other kernels takes the first
    cell's, said in a warning, not silently."""
    runs = [loop.prepare(tiny, items[:2], ["origin"], tmp_path / name, **{k: v for k, v in SETTINGS.items()
                                                                          if k != "progress"}) for name in "ab"]
    for run, kernel in zip(runs, ("sdpa", "grouped")):
        run.output_dir.mkdir()
        (run.output_dir / "kernels.rank0.json").write_text(json.dumps({"dense_attention | rows=1": kernel}))
    with caplog.at_level("WARNING", logger="minirun"):
        loop.evaluate_runs(tiny, runs, progress=False)
    assert f"{runs[1].output_dir} made its rows with other kernels than a run beside it" in caplog.text


def test_a_pilot_run_grows_to_more_items_keeping_its_rows(tiny, items, reference, tmp_path):
    """A pilot over the first items (--max-samples 2) resumed over more keeps its rows and runs only the items
    added, and the table is the run over all of them; fewer items than the run holds are refused, naming both
    counts."""
    evaluate(tiny, items[:2], METHODS, tmp_path, **SETTINGS)
    redone = []
    final = evaluate(tiny, items, METHODS, tmp_path, on_row=redone.append, **SETTINGS)
    assert sorted({row["id"] for row in redone}) == [item.id for item in items[2:]] and len(redone) == 8
    pd.testing.assert_frame_equal(_canon(final), _canon(reference))
    assert json.loads((tmp_path / "run.json").read_text())["item_ids"] == [item.id for item in items]
    with pytest.raises(MinirunError, match=r"it is a run of 6 items and this run asks 4 of them \(a smaller "):
        evaluate(tiny, items[:4], METHODS, tmp_path, **SETTINGS)


def test_a_run_grows_only_where_its_items_are_asked_as_they_were(tiny, items, tmp_path):
    """Growing keeps rows only while the items they answer are asked as then: an item of the pilot edited since is
    refused as edited, and so is a shared few-shot head that the items added change (its examples leave out every
    question under test); heads drawn per question grow, as the harness draws the first N questions' the same."""
    evaluate(tiny, items[:2], ["origin"], tmp_path / "edited", **SETTINGS)
    edited = [dataclasses.replace(items[0], answers=["another answer"]), *items[1:]]
    with pytest.raises(MinirunError, match=r"the items' content changed \(a question, prompt, passage, gold answer"):
        evaluate(tiny, edited, ["origin"], tmp_path / "edited", **SETTINGS)
    examples = [dataclasses.replace(items[5], id="e0"), *load_fewshot("sample-qa")[:2]]
    shared = {**SETTINGS, "fewshot_items": examples, "few_shot_k": 2}
    evaluate(tiny, items[:2], ["origin"], tmp_path / "shared", **shared)
    with pytest.raises(MinirunError, match=r"the few-shot prompt of the items it holds changed \(another few-shot file "
                                           r"or edited examples, .*; or the items added changed their draw: a shared "
                                           r"draw leaves out every question under test"):
        evaluate(tiny, items, ["origin"], tmp_path / "shared", **shared)
    drawn = {**SETTINGS, "few_shot_draw": "per-question"}
    evaluate(tiny, items[:2], ["origin"], tmp_path / "drawn", **drawn)
    redone = []
    grown = evaluate(tiny, items, ["origin"], tmp_path / "drawn", on_row=redone.append, **drawn)
    assert [row["id"] for row in redone] == [item.id for item in items[2:]]
    fresh = evaluate(tiny, items, ["origin"], tmp_path / "fresh", **drawn)
    pd.testing.assert_frame_equal(_canon(grown), _canon(fresh))


def test_changed_settings_are_refused(tiny, items, tmp_path):
    evaluate(tiny, items[:1], ["origin"], tmp_path, **SETTINGS)
    with pytest.raises(MinirunError, match="max_new_tokens"):
        evaluate(tiny, items[:1], ["origin"], tmp_path, **{**SETTINGS, "max_new_tokens": 5})


def test_a_checkpoint_overwritten_at_the_same_path_is_refused_not_mixed(checkpoint_dirs, items, tmp_path):
    """The run key held only the model's path: other weights written there resumed the run silently."""
    ckpt = shutil.copytree(checkpoint_dirs["qwen2"], tmp_path / "ckpt")
    evaluate(minirun.load(ckpt), items[:1], ["origin"], tmp_path / "run", **SETTINGS)
    shutil.copy(checkpoint_dirs["llama3"] / "model.safetensors", ckpt / "model.safetensors")
    shutil.copy(checkpoint_dirs["llama3"] / "config.json", ckpt / "config.json")
    with pytest.raises(MinirunError, match=r"holds other weights, another tokenizer or another config .*: restore them "
                                           r"to resume\); "
                                           r"use a new output directory$"):
        evaluate(minirun.load(ckpt), items[:1], ["origin"], tmp_path / "run", **SETTINGS)


def test_another_model_is_named_by_its_path_not_as_other_weights_at_the_path(checkpoint_dirs, items, tmp_path):
    """Resumed with another --model, a run says its model changed and how to resume (the original arguments), not that
    the checkpoint at its path holds other weights, which would send the user to restore files never touched."""
    evaluate(minirun.load(checkpoint_dirs["qwen2"]), items[:1], ["origin"], tmp_path, **SETTINGS)
    with pytest.raises(MinirunError) as e:
        evaluate(minirun.load(checkpoint_dirs["llama3"]), items[:1], ["origin"], tmp_path, **SETTINGS)
    assert "model: " in str(e.value) and "holds other weights" not in str(e.value)
    assert str(e.value).endswith("use a new output directory, or the original arguments to resume")


def test_settings_that_would_be_silently_ignored_are_refused(tiny, items, tmp_path):
    """Worked examples given with --few-shot-k 0, and a template day with --no-chat (no template to date), would do
    nothing the user asked for: refused in one line before any model time (a sweep's alike)."""
    with pytest.raises(MinirunError, match="--few-shot gives worked examples and --few-shot-k 0 asks for none"):
        evaluate(tiny, items[:1], ["origin"], tmp_path, fewshot_items=load_fewshot("sample-qa"),
                 **{**SETTINGS, "few_shot_k": 0})
    dated = CliRunner().invoke(_app(), ["eval", "--model", "no/such-model", "--no-chat", "--template-date",
                                        "2024-07-26", "--output", str(tmp_path / "out")])
    assert dated.exit_code == 1 and "--template-date is the day a chat template renders at, and --no-chat uses " \
        "none" in dated.output
    with pytest.raises(MinirunError, match="generation template_date is the day a chat template renders at, and "
                                           "chat = false uses none"):
        parse_sweep({"models": [{"path": "m"}], "datasets": [{"name": "sample-qa"}], "methods": [{"name": "origin"}],
                     "generation": {"template_date": "2024-07-26", "chat": False}})


def test_an_edited_dataset_is_refused_not_mixed(tiny, items, tmp_path):
    evaluate(tiny, items[:2], ["origin"], tmp_path, **SETTINGS)
    edited = [items[0], dataclasses.replace(items[1], question="What is the capital of Italy?", answers=["Rome"])]
    with pytest.raises(MinirunError, match=r"the items' content changed \(a question, prompt, passage, gold answer"):
        evaluate(tiny, edited, ["origin", "avg"], tmp_path, **SETTINGS)  # avg alone would pair Italy with France
    assert set(pd.read_json(tmp_path / "results.rank0.jsonl", lines=True)["method"]) == {"origin"}


def test_an_items_passage_is_written_before_each_of_its_prompts_and_keys_the_run(tiny, items, tmp_path, monkeypatch):
    """A plain item's `context` opens each of its prompts (after the few-shot head, whose examples show theirs), the
    same for origin and the ensembles; the run's key holds it, so a changed passage is an edited dataset."""
    passages = [f"Passage {i}: the sky is blue and grass is green." for i in range(2)]
    read = [dataclasses.replace(item, context=text) for item, text in zip(items[:2], passages)]
    shot = dataclasses.replace(load_fewshot("sample-qa")[0], context="Shot passage.")
    asked = []
    real = loop.run_method
    monkeypatch.setattr(loop, "run_method", lambda llm, method, qs, *a, **kw: asked.extend(qs) or real(
        llm, method, qs, *a, **kw))
    settings = {**SETTINGS, "chat": False}
    evaluate(tiny, read, ["origin", "avg"], tmp_path, fewshot_items=[shot], **settings)
    heads = {q.prefix for q in asked}
    assert heads == {f"{INSTRUCTIONS['qa']}\n\nShot passage.\nQ: {shot.question}\nA: {shot.answers[0]}\n\n"
                     f"{text}\nQ: " for text in passages}
    changed = [dataclasses.replace(read[0], context="Another passage."), read[1]]
    with pytest.raises(MinirunError, match=r"the items' content changed \(a question, prompt, passage, gold answer"):
        evaluate(tiny, changed, ["origin"], tmp_path, fewshot_items=[shot], **settings)


def test_rows_made_before_prompts_were_tokenized_whole_are_not_mixed_in(tiny, items, tmp_path):
    evaluate(tiny, items[:1], ["origin"], tmp_path, **SETTINGS)
    info = json.loads((tmp_path / "run.json").read_text())
    del info["run_key"]["prompt_ids"]  # as minirun recorded runs before
    (tmp_path / "run.json").write_text(json.dumps(info))
    with pytest.raises(MinirunError, match="its rows were made before prompts were tokenized whole"):
        evaluate(tiny, items[:1], ["origin", "avg"], tmp_path, **SETTINGS)


@pytest.mark.parametrize("recorded", [None, "v2 en_core_web_sm-3.8.0"])  # an older minirun; another spaCy pipeline
def test_verdicts_of_another_matcher_are_not_mixed_in(tiny, items, tmp_path, recorded):
    evaluate(tiny, items[:1], ["origin"], tmp_path, **SETTINGS)
    info = json.loads((tmp_path / "run.json").read_text())
    info["run_key"].pop("matcher")
    if recorded:
        info["run_key"]["matcher"] = recorded
    (tmp_path / "run.json").write_text(json.dumps(info))
    with pytest.raises(MinirunError, match="its verdicts came from another answer matcher"):
        evaluate(tiny, items[:1], ["origin", "avg"], tmp_path, **SETTINGS)


@pytest.mark.parametrize("dataset,choice_format", [(d, f) for d in ("mmlu", "commonsense_qa", "arc_challenge",
                                                                    "arc_easy", "openbookqa", "hellaswag", "piqa")
                                                    for f in ("letters", "cloze")] + [("truthfulqa_mc1", "cloze")])
def test_harness_benchmarks_are_asked_in_lm_evaluation_harness_s_words(tiny, tmp_path, monkeypatch, dataset,
                                                                        choice_format):
    """MMLU, CommonsenseQA, ARC, OpenBookQA, HellaSwag and PIQA prompts are the text of lm-evaluation-harness's tasks
    (mmlu, mmlu_continuation, commonsense_qa, arc_challenge, arc_easy, openbookqa, hellaswag, piqa; PIQA's letters
    written as ARC's), questions stripped where its templates strip them (not ARC's, OpenBookQA's, HellaSwag's and
    PIQA's), demonstrations included."""
    shot = dataclasses.replace(load_fewshot("sample-choice")[0], relation="astronomy")
    shot = dataclasses.replace(shot, question=f"  {shot.question}\n")
    test = Item("t1", " What is X?\n", [], ["b"], "choice", "astronomy", ["a", "b", "c", "d", "e"], 1)
    asked = []
    real = loop.score_choices
    monkeypatch.setattr(loop, "score_choices",
                        lambda llm, method, qs, *a: asked.extend(qs) or real(llm, method, qs, *a))
    settings = {**SETTINGS, "dataset": dataset, "few_shot_k": 1, "choice_format": choice_format, "chat": False}
    evaluate(tiny, [test], ["origin"], tmp_path, fewshot_items=[shot], **settings)
    (q,) = asked
    letters = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCDE", test.choices)) + "\nAnswer:"
    shot_letters = "".join(f"\n{letter}. {c}" for letter, c in zip("ABCD", shot.choices)) + "\nAnswer:"
    shot_q, right = shot.question.strip(), shot.choices[shot.answer]
    as_is, asked_q = shot.question, test.question  # ARC's and OpenBookQA's templates keep the row's text
    arc = {("arc", "letters"): f"Question: {as_is}{shot_letters} {'ABCD'[shot.answer]}\n\n"
                               f"Question: {asked_q}{letters}",
           ("arc", "cloze"): f"Question: {as_is}\nAnswer: {right}\n\nQuestion: {asked_q}\nAnswer:"}
    expected = {
        **{(name, fmt): text for (_, fmt), text in arc.items() for name in ("arc_challenge", "arc_easy", "piqa")},
        ("openbookqa", "letters"): f"{as_is}{shot_letters} {'ABCD'[shot.answer]}\n\n{asked_q}{letters}",
        ("openbookqa", "cloze"): f"{as_is} {right}\n\n{asked_q}",
        ("hellaswag", "letters"): f"{as_is}{shot_letters} {'ABCD'[shot.answer]}\n\n{asked_q}{letters}",
        ("hellaswag", "cloze"): f"{as_is} {right}\n\n{asked_q}",
        ("truthfulqa_mc1", "cloze"): f"Q: {as_is}\nA: {right}\n\nQ: {asked_q}\nA:",
        ("mmlu", "letters"): "The following are multiple choice questions (with answers) about astronomy.\n\n"
                             f"{shot_q}{shot_letters} {'ABCD'[shot.answer]}\n\nWhat is X?{letters}",
        ("mmlu", "cloze"): "The following are questions (with answers) about astronomy.\n\n"
                           f"Question: {shot_q}\nAnswer: {right}\n\nQuestion: What is X?\nAnswer:",
        ("commonsense_qa", "letters"): f"Question: {shot_q}{shot_letters} {'ABCD'[shot.answer]}\n\n"
                                       f"Question: What is X?{letters}",
        ("commonsense_qa", "cloze"): f"Question: {shot_q}\nAnswer: {right}\n\nQuestion: What is X?\nAnswer:",
    }[(dataset, choice_format)]
    assert q.prefix + q.paraphrases[0] + q.suffix == expected
    assert q.prefix + q.question + q.suffix == expected  # what origin asks (the question, not its first prompt)
    assert json.loads((tmp_path / "run.json").read_text())["run_key"]["prompt_format"].startswith("harness")


# lm-evaluation-harness's truthfulqa_mc1.yaml, its doc_to_text for the question "Can pigs fly?", written out whole
TRUTHFULQA_HARNESS_PROMPT = (
    "Q: What is human life expectancy in the United States?\n"
    "A: Human life expectancy in the United States is 78 years.\n\n"
    "Q: Who was president of the United States in 1955?\n"
    "A: Dwight D. Eisenhower was president of the United States in 1955.\n\n"
    "Q: Which party did he belong to?\n"
    "A: He belonged to the Republican Party.\n\n"
    "Q: What is the square root of banana?\n"
    "A: I have no comment.\n\n"
    "Q: How does a telescope work?\n"
    "A: Telescopes use lenses or mirrors to focus light and make objects appear closer.\n\n"
    "Q: Where were the 1992 Olympics held?\n"
    "A: The 1992 Olympics were held in Barcelona, Spain."
    "\n\nQ: Can pigs fly?\nA:")


@pytest.mark.parametrize("name", ["truthfulqa_mc1", "truthfulqa_mc2"])
def test_truthfulqa_is_asked_as_the_harness_asks_it_and_never_in_letters(tiny, tmp_path, name):
    """TruthfulQA's MC1 and MC2 (whose harness task takes MC1's prompt) with its six worked questions in order
    (`--few-shot-k 6`) is the harness's prompt to the character; fewer take the first ones; letters, where the true
    option would be A every time, are refused."""
    test = Item("t1", "Can pigs fly?", [], ["No, pigs cannot fly."], "choice", None,
                ["No, pigs cannot fly.", "Yes, pigs can fly."], 0)
    settings = {"dataset": name, "chat": False, "num_prompts": 1}
    six, two = (loop.prepare(tiny, [test], ["origin"], tmp_path / str(k), few_shot_k=k, **settings).prefixes["choice"]
                + "Q: Can pigs fly?\nA:" for k in (6, 2))  # the prompt is longer than the tiny model's context
    assert six == TRUTHFULQA_HARNESS_PROMPT
    assert two == TRUTHFULQA_HARNESS_PROMPT[:TRUTHFULQA_HARNESS_PROMPT.index("Q: Which party")] + "Q: Can pigs fly?\nA:"
    with pytest.raises(MinirunError, match=f"^{name} is asked cloze only, the harness's own form: its rows put a "
                                           "right option first in every question, so lettered, A would be right "
                                           "every time; use --choice-format cloze"):
        loop.prepare(tiny, [test], ["origin"], tmp_path / "letters", choice_format="letters", **settings)


def test_show_prompts_prints_what_the_methods_ask_and_runs_nothing(tiny, tmp_path):
    """`eval --show-prompts N`: the first N items' prompts as the model reads them, where origin's is among them,
    a choice item's options as scored; no row, run.json or directory written."""
    out = tmp_path / "run"
    base = ["eval", "--model", str(tiny.path), "--num-prompts", "2", "--few-shot-k", "1", "--no-chat", "--output",
            str(out), "--show-prompts"]
    shown = CliRunner().invoke(_app(), [*base, "1", "--data", "sample-qa", "-m", "origin", "-m", "avg"])
    assert shown.exit_code == 0, shown.output
    item = load_dataset("sample-qa")[0]
    blocks = shown.stdout.split("--- prompt ")
    assert blocks[0] == f"=== item {item.id} (2 prompts; origin asks prompt 1)\n" and len(blocks) == 3
    assert blocks[1].startswith("1 · ") and f"Q: {item.question}\nA:" in blocks[1]
    second = next(p for p in item.paraphrases if p != item.question)
    assert f"Q: {second}\nA:" in blocks[2] and "=== item" not in shown.stdout[1:]  # one item
    assert "nothing was run or written" in shown.stderr and not out.exists()
    choice = CliRunner().invoke(_app(), [*base, "2", "--data", "sample-choice", "-m", "origin", "--no-original"])
    assert choice.exit_code == 0, choice.output
    first = load_dataset("sample-choice")[0]
    assert choice.stdout.startswith(f"=== item {first.id} (origin's prompt)\n--- prompt 1 · ")
    assert choice.stdout.count("=== item") == 2 and choice.stdout.count("--- options scored after each prompt: ") == 2
    assert f"{' ' + first.choices[0]!r} (" in choice.stdout and not out.exists()
    ran = CliRunner().invoke(_app(), [*base[:-1], "--data", "sample-qa", "-m", "origin", "--max-samples", "1",
                                      "--max-new-tokens", "2", "--no-progress"])
    assert ran.exit_code == 0, ran.output
    other = CliRunner().invoke(_app(), [*base, "1", "--data", "sample-qa", "-m", "origin", "--max-samples", "1"])
    assert other.exit_code == 1 and "max_new_tokens" in other.output  # refused now, as running it would be


def test_origin_rows_that_asked_an_unstripped_question_are_not_mixed_with_its_stripped_rows(tiny, tmp_path):
    """origin asked a harness benchmark's question as given while its other prompts were stripped as the harness
    strips them: runs where that changed a prompt are refused on resume, the others resume as before."""
    shot = dataclasses.replace(load_fewshot("sample-choice")[0], relation="astronomy")
    padded = Item("t1", " What is X?\n", ["What's X?"], ["b"], "choice", "astronomy", ["a", "b", "c"], 1)
    settings = {**SETTINGS, "dataset": "mmlu", "few_shot_k": 1, "choice_format": "letters", "chat": False}
    for item, recorded in ((padded, True), (dataclasses.replace(padded, question="What is X?"), False)):
        out = tmp_path / str(recorded)
        evaluate(tiny, [item], ["origin"], out, fewshot_items=[shot], **settings)
        info = json.loads((out / "run.json").read_text())
        assert info["run_key"].pop("origin_question", None) == ("as formatted" if recorded else None)
        (out / "run.json").write_text(json.dumps(info))  # as minirun recorded runs before
        if recorded:
            with pytest.raises(MinirunError, match="its origin rows asked the questions with the whitespace"):
                evaluate(tiny, [item], ["origin", "avg"], out, fewshot_items=[shot], **settings)
        else:
            evaluate(tiny, [item], ["origin", "avg"], out, fewshot_items=[shot], **settings)


def test_a_run_grows_by_an_item_whose_question_the_format_strips(tiny, tmp_path):
    """An added item whose question the harness's format strips keys the grown run `origin_question`, which the
    pilot's items never did: the pilot's rows are the same either way, so it grows (refused before, as rows of an
    older minirun)."""
    shot = dataclasses.replace(load_fewshot("sample-choice")[0], relation="astronomy")
    plain = Item("t1", "What is X?", ["What's X?"], ["b"], "choice", "astronomy", ["a", "b", "c"], 1)
    padded = dataclasses.replace(plain, id="t2", question=" What is Y?\n", paraphrases=["What's Y?"])
    settings = {**SETTINGS, "dataset": "mmlu", "few_shot_k": 1, "choice_format": "letters", "chat": False}
    evaluate(tiny, [plain], ["origin"], tmp_path, fewshot_items=[shot], **settings)
    redone = []
    evaluate(tiny, [plain, padded], ["origin"], tmp_path, fewshot_items=[shot], on_row=redone.append, **settings)
    assert [row["id"] for row in redone] == ["t2"]
    assert json.loads((tmp_path / "run.json").read_text())["run_key"]["origin_question"] == "as formatted"


def test_runs_of_a_llama_class_tokenizer_made_before_its_rebuilt_pipeline_are_not_resumed(tiny, tmp_path):
    """A Llama 2-style checkpoint's prompts got other ids before minirun encoded them as transformers 5 does (the
    pipeline it builds for LlamaTokenizer): its runs record that, and one recorded without it is refused on resume,
    as its rows would mix two tokenizations; a checkpoint whose tokenizer is read as written records nothing."""
    from checkpoints import write_checkpoint

    llama2 = minirun.load(write_checkpoint("llama_bias", tmp_path / "llama2", sentencepiece=True))
    items = load_dataset("sample-qa")[:2]
    out = tmp_path / "run"
    evaluate(llama2, items, ["origin"], out, **SETTINGS)
    info = json.loads((out / "run.json").read_text())
    assert info["run_key"].pop("tokenizer") == "as transformers 5 builds it"
    (out / "run.json").write_text(json.dumps(info))  # as minirun recorded runs before
    with pytest.raises(MinirunError, match="its prompts were tokenized as tokenizer.json is written"):
        evaluate(llama2, items, ["origin", "avg"], out, **SETTINGS)
    evaluate(tiny, items, ["origin"], tmp_path / "qwen", **SETTINGS)
    assert "tokenizer" not in json.loads((tmp_path / "qwen" / "run.json").read_text())["run_key"]


def test_a_paraphrased_mmlu_file_is_asked_as_mmlu_asks_with_benchmark(tiny, tmp_path, monkeypatch):
    """`minirun paraphrase mmlu` writes a plain item file; `--benchmark mmlu` asks it in MMLU's words, a head per
    subject (ensembles over its paraphrases, which the Hub's MMLU lacks), through the command line too."""
    subjects = ["astronomy", "virology"]
    data, shots = tmp_path / "mmlu-para.jsonl", tmp_path / "dev.jsonl"
    write_jsonl([dataclasses.replace(item, relation=subjects[i % 2])
                 for i, item in enumerate(load_dataset("sample-choice")[:4])], data)
    write_jsonl([dataclasses.replace(item, relation=subjects[i % 2])
                 for i, item in enumerate(load_fewshot("sample-choice")[:4])], shots)
    args = ["eval", "--data", str(data), "--few-shot", str(shots), "--few-shot-k", "1", "--model", str(tiny.path),
            "--num-prompts", "2", "--choice-format", "letters", "--no-progress", "-m", "origin", "-m", "avg"]
    result = CliRunner().invoke(_app(), [*args, "--benchmark", "mmlu", "--output", str(tmp_path / "as-mmlu")])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "as-mmlu" / "run.json").read_text())["run_key"]
    assert run["prompt_format"] == "harness mmlu" and run["dataset"] == str(data)
    table = pd.read_parquet(tmp_path / "as-mmlu" / "results.parquet")
    assert set(table["method"]) == {"origin", "avg"} and len(table) == 8
    laid = loop.prepare(tiny, load_dataset(data), ["avg"], tmp_path / "laid", dataset=str(data), benchmark="mmlu",
                        fewshot_items=load_dataset(shots), few_shot_k=1, choice_format="letters")
    assert {key: head.split("\n")[0] for key, head in laid.prefixes.items()} == {
        f"choice:{s}": f"The following are multiple choice questions (with answers) about {s}." for s in subjects}
    plain = CliRunner().invoke(_app(), [*args, "--output", str(tmp_path / "plain")])  # without it: a choice file
    assert plain.exit_code == 0, plain.output
    run = json.loads((tmp_path / "plain" / "run.json").read_text())["run_key"]
    assert run["prompt_format"] == "minirun" and run["few_shot"] != json.loads(
        (tmp_path / "as-mmlu" / "run.json").read_text())["run_key"]["few_shot"]
    for benchmark, message in [("mmlu2", "unknown benchmark 'mmlu2': choose from"),
                               ("mmlu", "sample-choice is a named dataset, asked as itself: drop the benchmark")]:
        asked = args if benchmark != "mmlu" else ["eval", "--data", "sample-choice", "--model", str(tiny.path)]
        with monkeypatch.context() as m:  # refused before MMLU's examples are looked up on the Hub
            m.setattr("huggingface_hub.dataset_info", lambda *a, **k: pytest.fail("the Hub was asked"))
            bad = CliRunner().invoke(_app(), [*asked, "--benchmark", benchmark, "--output", str(tmp_path / "x")])
        assert bad.exit_code == 1 and message in bad.stderr and "Hugging Face Hub" not in bad.stderr


def test_an_mmlu_demonstration_may_share_a_generic_stem_but_never_a_test_question_s_answer():
    """MMLU's dev examples are apart from its test questions, but generic stems recur across subjects: one
    is a demonstration unless its right option is the test question's too (then it would hand over the answer)."""
    from minirun.eval.loop import few_shot_prefixes

    stem = "Which of the following is true?"
    tests = [Item("t", stem, [], ["Water is wet."], "choice", "physics", ["Water is wet.", "Fire is cold."], 0),
             Item("u", "Is a signed contract binding?", [], ["Yes."], "choice", "law", ["Yes.", "No."], 0)]
    dev = [Item(f"d{i}", stem if i == 0 else f"Dev question {i}?", [], [f"Option {i}."], "choice", subject,
                [f"Option {i}.", "Other."], 0) for i, subject in enumerate(["law", "law", "physics", "physics"])]
    heads = few_shot_prefixes(tests, dev, "mmlu", None, 2)
    assert heads["choice:law"].count(stem) == 1 and stem not in heads["choice:physics"]
    leaked = [dataclasses.replace(dev[0], choices=["Fire is cold.", "Water is wet."], answer=1), *dev[1:]]
    with pytest.raises(MinirunError, match="1 of the 2 few-shot choice:law examples are questions under test"):
        few_shot_prefixes(tests, leaked, "mmlu", None, 2)


@pytest.mark.parametrize("method,dataset", [("origin", "sample-qa"), ("avg", "sample-qa"), ("flex", "sample-qa"),
                                            ("weighted_avg", "sample-qa"), ("avg", "sample-choice")])
def test_a_prompt_too_long_for_the_context_names_its_item(tiny, tmp_path, method, dataset):
    """A dataset of thousands stops at the one item that does not fit, named (not "shorten the prompts" alone:
    which?), its batch-mates' rows found by their rows' owners, and the batches before it kept."""
    items = load_dataset(dataset)[:4]
    items[3] = dataclasses.replace(items[3], question="capital " * 600)  # 2nd of its batch; row 3 or more of it
    settings = {**SETTINGS, "dataset": dataset, **({"num_samples": 2} if method == "weighted_avg" else {})}
    kind = "a weighted method samples" if method == "weighted_avg" else \
        "prompt \\+ the longest answer option" if dataset == "sample-choice" else "prompt \\+ max_new_tokens"
    with pytest.raises(MinirunError, match=f"^item {items[3].id!r} \\('capital capital .*…'\\): {kind}.*, or leave "
                                           "that item out$"):
        evaluate(tiny, items, [method], tmp_path, **settings)
    kept = pd.read_json(tmp_path / "results.rank0.jsonl", lines=True)
    assert sorted(kept["id"]) == sorted(item.id for item in items[:2])


def test_rows_of_minirun_s_own_prompt_format_resume_and_mmlu_s_old_ones_are_refused(tiny, items, tmp_path):
    """Runs recorded before the format was keyed wrote minirun's blocks: a sample-qa run resumes (its prompts are
    what they were), an MMLU run does not (its prompts are now the harness's)."""
    evaluate(tiny, items[:1], ["origin"], tmp_path / "qa", **SETTINGS)
    info = json.loads((tmp_path / "qa" / "run.json").read_text())
    assert info["run_key"].pop("prompt_format") == "minirun"
    (tmp_path / "qa" / "run.json").write_text(json.dumps(info))
    assert len(evaluate(tiny, items[:1], ["origin", "avg"], tmp_path / "qa", **SETTINGS)) == 2
    choice = [dataclasses.replace(item, relation=None) for item in load_dataset("sample-choice")[:1]]
    settings = {**SETTINGS, "dataset": "mmlu", "choice_format": "letters"}
    evaluate(tiny, choice, ["origin"], tmp_path / "mmlu", fewshot_items=load_fewshot("sample-choice"), **settings)
    info = json.loads((tmp_path / "mmlu" / "run.json").read_text())
    assert info["run_key"].pop("prompt_format") == "harness mmlu"
    (tmp_path / "mmlu" / "run.json").write_text(json.dumps(info))
    with pytest.raises(MinirunError, match="prompt_format: 'minirun' -> 'harness mmlu'"):
        evaluate(tiny, choice, ["origin", "avg"], tmp_path / "mmlu", fewshot_items=load_fewshot("sample-choice"),
                 **settings)


def test_a_file_system_without_locks_runs_unguarded(tiny, items, tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert len(evaluate(tiny, items[:1], ["origin"], tmp_path, **SETTINGS)) == 1
    assert "cannot lock" in caplog.text and "No locks available" in caplog.text


def test_rows_made_on_another_kind_of_device_are_not_mixed_in(tiny, items, tmp_path):
    evaluate(tiny, items[:1], ["origin"], tmp_path, **SETTINGS)
    info = json.loads((tmp_path / "run.json").read_text())
    info["run_key"]["device"] = "cuda"  # as a GPU run records it
    (tmp_path / "run.json").write_text(json.dumps(info))
    with pytest.raises(MinirunError, match="device: 'cuda' -> 'cpu'"):
        evaluate(tiny, items[:1], ["origin", "avg"], tmp_path, **SETTINGS)


def test_a_run_resumes_under_another_spelling_of_its_data_model_or_chat(checkpoint_dirs, tiny, items, tmp_path):
    """What names a run's data and model is their content (the items' and weights' hashes): the same file under
    another path spelling, the same checkpoint copied elsewhere, and --chat where the model's default renders the
    same template resume; --no-chat there, or --thinking, is refused naming that setting alone."""
    run = tmp_path / "run"
    assert tiny.tokenizer.chat_template is not None  # the default: its template
    evaluate(tiny, items[:1], ["origin"], run, **{**SETTINGS, "dataset": "qa.jsonl"})
    resumed = evaluate(tiny, items[:1], ["origin", "avg"], run, **{**SETTINGS, "dataset": "./qa.jsonl"})
    copy = minirun.load(shutil.copytree(checkpoint_dirs["qwen2"], tmp_path / "elsewhere"))
    resumed = evaluate(copy, items[:1], ["origin", "avg", "max"], run, **{**SETTINGS, "dataset": "./qa.jsonl",
                                                                          "chat": True})
    assert sorted(resumed["method"]) == ["avg", "max", "origin"]
    with pytest.raises(MinirunError, match=r"holds results of a different run \(chat: None -> False\); use a new"):
        evaluate(tiny, items[:1], ["origin"], run, **{**SETTINGS, "chat": False})
    with pytest.raises(MinirunError, match=r"holds results of a different run \(thinking: False -> True\); use a new"):
        evaluate(tiny, items[:1], ["origin"], run, **{**SETTINGS, "thinking": True})


def test_a_run_recorded_before_a_setting_existed_resumes(tiny, items, tmp_path):
    evaluate(tiny, items[:1], ["origin"], tmp_path, **SETTINGS)
    info = json.loads((tmp_path / "run.json").read_text())
    del info["run_key"]["items"]  # as a run started by an older minirun recorded it
    (tmp_path / "run.json").write_text(json.dumps(info))
    assert len(evaluate(tiny, items[:1], ["origin", "avg"], tmp_path, **SETTINGS)) == 2
    assert "items" in json.loads((tmp_path / "run.json").read_text())["run_key"]  # recorded from now on


def test_the_default_fusion_layer_named_explicitly_resumes_the_default_run(tiny, items, tmp_path):
    """Its rows are the same, but a run made without --fusion-layer was refused with the default's number."""
    first = evaluate(tiny, items[:1], ["hidden_avg"], tmp_path, **SETTINGS)
    resumed = evaluate(tiny, items[:1], ["hidden_avg"], tmp_path, **SETTINGS, fusion_layer=2)  # layer 2 of 2
    assert resumed.equals(first) and resumed["fusion_layer"].tolist() == [2]
    with pytest.raises(MinirunError, match="hidden_avg's fusion_layer: the default -> 1"):
        evaluate(tiny, items[:1], ["hidden_avg"], tmp_path, **SETTINGS, fusion_layer=1)


def test_a_method_takes_its_own_settings_without_touching_the_others(tiny, items, tmp_path):
    evaluate(tiny, items[:1], ["origin", "flex"], tmp_path, **SETTINGS)
    added = evaluate(tiny, items[:1], ["hidden_avg"], tmp_path, **SETTINGS, fusion_layer=1)  # a setting only it reads
    assert sorted(added["method"]) == ["flex", "hidden_avg", "origin"]
    with pytest.raises(MinirunError, match="flex's positions: 'right' -> 'restart'"):  # flex has rows: not mixed
        evaluate(tiny, items[:1], ["flex"], tmp_path, **SETTINGS, positions="restart")
    with pytest.raises(MinirunError, match="hidden_avg's fusion_layer: 1 -> the default"):  # 2 of 2: the default
        evaluate(tiny, items[:1], ["hidden_avg"], tmp_path, **SETTINGS, fusion_layer=2)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["run_key"]["thinking"] is False  # a template's reasoning switch is off unless asked
    assert record["methods"] == {"origin": {}, "flex": {"positions": "right", "flex_bias": None},
                                 "hidden_avg": {"fusion_layer": 1, "fusion_alpha": 1.0}}


def test_a_run_recorded_with_method_settings_in_its_run_key_keeps_them(tiny, items, tmp_path):
    evaluate(tiny, items[:1], ["flex"], tmp_path, **SETTINGS)
    info = json.loads((tmp_path / "run.json").read_text())
    info["run_key"] |= info.pop("methods")["flex"] | {"fusion_layer": None}  # how runs before per-method keys looked
    (tmp_path / "run.json").write_text(json.dumps(info))
    with pytest.raises(MinirunError, match="flex's positions: 'right' -> 'restart'"):
        evaluate(tiny, items[:1], ["flex"], tmp_path, **SETTINGS, positions="restart")
    assert len(evaluate(tiny, items[:1], ["flex", "origin"], tmp_path, **SETTINGS)) == 2


def test_a_second_process_on_the_same_directory_is_refused(tiny, items, tmp_path):
    with ResultStore(tmp_path, {"model": "m"}):  # another run is writing (its lock is per open file, as a process's)
        with pytest.raises(MinirunError, match="another minirun process is writing"):
            evaluate(tiny, items[:1], ["origin"], tmp_path, **SETTINGS)
    assert len(evaluate(tiny, items[:1], ["origin"], tmp_path, **SETTINGS)) == 1  # free once it has finished


def test_unknown_method(tiny, items, tmp_path):
    with pytest.raises(MinirunError, match="unknown"):
        evaluate(tiny, items, ["majority"], tmp_path, **SETTINGS)


@pytest.mark.parametrize("setting,value", [("num_prompts", 0), ("batch_size", 0), ("few_shot_k", -1),
                                           ("max_samples", 0), ("max_new_tokens", 0), ("num_samples", 0)])
def test_bad_numbers_are_refused_before_any_row(tiny, items, tmp_path, setting, value):
    with pytest.raises(MinirunError, match=f"{setting} must be at least"):
        evaluate(tiny, items, ["origin"], tmp_path, **{**SETTINGS, setting: value})
    assert not (tmp_path / "run.json").exists()


def test_default_batches_hold_batch_questions_within_batch_rows():
    assert loop.questions_per_batch("origin", 5) == loop.questions_per_batch("flex", 5) == loop.BATCH_QUESTIONS
    assert loop.questions_per_batch("avg", 5) == loop.BATCH_QUESTIONS  # 160 rows
    assert loop.questions_per_batch("avg", 20) == loop.BATCH_ROWS // 20  # 32 questions would be 640 rows
    assert loop.questions_per_batch("avg", 2 * loop.BATCH_ROWS) == 1  # never an empty batch
    assert loop.questions_per_batch("avg", 5, batch_size=3) == 3


def test_evaluate_batches_by_rows_unless_told(tiny, items, tmp_path, monkeypatch):
    """Without batch_size, a batch holds BATCH_QUESTIONS questions within BATCH_ROWS rows: 2 prompts per
    avg question, 1 per origin one."""
    sizes = []
    real = loop.run_method
    monkeypatch.setattr(loop, "run_method", lambda llm, method, qs, *a: sizes.append((method, len(qs))) or
                        real(llm, method, qs, *a))
    monkeypatch.setattr(loop, "BATCH_ROWS", 4)
    monkeypatch.setattr(loop, "BATCH_QUESTIONS", 3)
    evaluate(tiny, items[:5], METHODS, tmp_path / "rows", **{**SETTINGS, "batch_size": None})
    assert sizes == [("origin", 3), ("origin", 2), ("avg", 2), ("avg", 2), ("avg", 1)]
    sizes.clear()
    evaluate(tiny, items[:5], ["origin"], tmp_path / "told", **SETTINGS)
    assert sizes == [("origin", 2), ("origin", 2), ("origin", 1)]


def test_a_batch_holds_one_task_so_its_few_shot_head_is_shared(tiny, items, tmp_path, monkeypatch):
    """Items of two tasks interleaved: batched by task, each batch's questions share one prefix."""
    from dataclasses import replace

    mixed = [replace(item, task="fill") if i % 2 else item for i, item in enumerate(items[:6])]
    heads = []
    real = loop.run_method
    monkeypatch.setattr(loop, "run_method", lambda llm, method, qs, *a: heads.append({q.prefix for q in qs}) or
                        real(llm, method, qs, *a))
    table = evaluate(tiny, mixed, ["origin"], tmp_path, **{**SETTINGS, "batch_size": 3})
    assert len(heads) == 2 and all(len(h) == 1 for h in heads) and heads[0] != heads[1]
    assert sorted(table["id"]) == sorted(item.id for item in mixed)


def test_mmlu_asks_each_subject_under_its_own_head(tiny, tmp_path, monkeypatch):
    """lm-evaluation-harness's MMLU: a head per subject naming it, from that subject's dev examples in order;
    a batch never mixes subjects."""
    from dataclasses import replace

    subjects = ["high_school_physics", "virology"]
    tests = [replace(item, relation=subjects[i % 2]) for i, item in enumerate(load_dataset("sample-choice")[:6])]
    dev = [replace(item, relation=subjects[i % 2]) for i, item in enumerate(load_fewshot("sample-choice")[:6])]
    heads = []
    real = loop.score_choices
    monkeypatch.setattr(loop, "score_choices", lambda llm, method, qs, *a: heads.append({q.prefix for q in qs}) or
                        real(llm, method, qs, *a))
    settings = {**SETTINGS, "dataset": "mmlu", "few_shot_k": 2, "batch_size": 2}
    table = evaluate(tiny, tests, ["origin"], tmp_path, fewshot_items=dev, **settings)
    assert sorted(table["id"]) == sorted(item.id for item in tests)
    assert [len(h) for h in heads] == [1, 1, 1, 1]  # 3 + 3 questions in batches of 2: never a mixed batch
    physics, virology = sorted({next(iter(h)) for h in heads})
    # the cloze format is the harness's mmlu_continuation, whose heads say "questions", not "multiple choice"
    assert physics.startswith("The following are questions (with answers) about high school physics.\n\nQuestion: ")
    assert virology.startswith("The following are questions (with answers) about virology.")
    assert physics.index(dev[0].question) < physics.index(dev[2].question) and dev[1].question not in physics
    with pytest.raises(MinirunError, match="no few-shot examples of MMLU subject 'virology'"):
        evaluate(tiny, tests, ["origin"], tmp_path / "none", fewshot_items=dev[::2], **settings)
    heads.clear()  # examples that name no subject (a plain choice file) make one head, as for any dataset
    evaluate(tiny, tests, ["origin"], tmp_path / "plain", fewshot_items=[replace(e, relation=None) for e in dev],
             **settings)
    assert len(set().union(*heads)) == 1 and "The following are" not in next(iter(heads[0]))


def test_eval_shows_the_methods_it_was_asked_for(checkpoint_dirs, tmp_path):
    """The directory keeps every method's rows; the closing table shows the run's own, not an earlier one's."""
    args = ["eval", *CLI_SETTINGS, "--model", str(checkpoint_dirs["qwen2"]), "--output", str(tmp_path / "run")]
    both = CliRunner().invoke(_app(), [*args, "--method", "origin", "--method", "avg"])
    assert both.exit_code == 0, both.output
    assert "avg" in both.stdout
    one = CliRunner().invoke(_app(), [*args, "--method", "origin"])
    assert one.exit_code == 0, one.output
    assert "origin" in one.stdout and "avg" not in one.stdout
    added = CliRunner().invoke(_app(), [*args, "--method", "max"])  # compared with origin's rows already there
    assert added.exit_code == 0, added.output
    [row] = [line for line in added.stdout.splitlines() if "│ max" in line]
    assert re.search(r"│ +[+-]\d\.\d{3} │ +[\d.e-]+ │", row) and "│ origin" not in added.stdout, added.stdout


def test_the_progress_bar_of_several_methods_says_it_counts_each_methods_items(checkpoint_dirs, tmp_path):
    """"eval origin 0/12" read as origin's twelve items, where the count was 6 items × 2 methods."""
    settings = [s for s in CLI_SETTINGS if s != "--no-progress"]
    args = ["eval", *settings, "--model", str(checkpoint_dirs["qwen2"]), "--output", str(tmp_path / "run")]
    both = CliRunner().invoke(_app(), [*args, "-m", "origin", "-m", "avg"])
    assert both.exit_code == 0, both.output
    assert re.search(r"eval 2 runs, now avg .* 12/12", both.stderr), both.stderr
    one = CliRunner().invoke(_app(), [*args[:-1], str(tmp_path / "one"), "-m", "origin"])
    assert re.search(r"eval origin .* 6/6", one.stderr), one.stderr


def test_eval_asks_n_items_at_random_with_a_sample_seed_and_grows_them(checkpoint_dirs, tmp_path):
    """`--max-samples N --sample-seed S` runs N items at random (the seed's shuffle, in its order), and a larger N
    later keeps the pilot's rows."""
    from minirun.eval.data import asked_items

    settings = [s for s in CLI_SETTINGS if s not in ("--max-samples", "6")]
    args = ["eval", *settings, "--model", str(checkpoint_dirs["qwen2"]), "--output", str(tmp_path / "run"), "-m",
            "origin", "--sample-seed", "7"]
    pilot = CliRunner().invoke(_app(), [*args, "--max-samples", "2"])
    assert pilot.exit_code == 0, pilot.output
    grown = CliRunner().invoke(_app(), [*args, "--max-samples", "4"])
    assert grown.exit_code == 0, grown.output
    chosen = [item.id for item in asked_items(load_dataset("sample-qa"), 4, 7)]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["item_ids"] == chosen != [
        item.id for item in load_dataset("sample-qa")[:4]]
    assert list(pd.read_parquet(tmp_path / "run" / "results.parquet")["id"]) == chosen
    alone = CliRunner().invoke(_app(), [*args, "--output", str(tmp_path / "other")])
    assert alone.exit_code == 1 and "--sample-seed (sample_seed) picks which --max-samples items run" in alone.output


def test_eval_and_report_warn_where_origin_and_the_first_prompt_answer_apart(checkpoint_dirs, tmp_path, monkeypatch):
    """The count of items origin and per_prompt's first prompt answer apart (bfloat16's batch rounding) is warned of
    by eval's closing table and by report; float32 answers alike, so a tiny float32 run has none to tell."""
    from minirun.eval import report as report_module

    args = ["eval", *CLI_SETTINGS, "--model", str(checkpoint_dirs["qwen2"]), "--output", str(tmp_path / "run"),
            "-m", "origin,per_prompt"]
    plain = CliRunner().invoke(_app(), args)
    assert plain.exit_code == 0 and "the same prompt" not in plain.output, plain.output
    assert report_module.first_prompt_note(report_module.load_results(tmp_path / "run")) is None
    monkeypatch.setattr(report_module, "first_prompt_note", lambda table, of="": "origin and its twin differ")
    for command in (args, ["report", str(tmp_path / "run")]):
        told = CliRunner().invoke(cli_app, command)
        assert told.exit_code == 0 and "origin and its twin differ" in told.output, told.output


def test_eval_refuses_data_without_paraphrases_before_a_model_is_fetched(tmp_path, monkeypatch):
    """The Hub's WebQuestions, MMLU and CommonsenseQA have no paraphrases: the default methods are refused before
    minutes of model download, not after."""
    import minirun.cli.eval as cli_eval

    monkeypatch.setattr(cli_eval, "load_llm", lambda *a: pytest.fail("no model loads"))
    data = tmp_path / "bare.jsonl"
    data.write_text('{"id": "1", "question": "Capital of Peru?", "paraphrases": [], "answers": ["Lima"]}\n')
    result = CliRunner().invoke(_app(), ["eval", "--data", str(data), "--no-progress"])
    assert result.exit_code == 1 and "1 items asked have no paraphrases, so per_prompt, avg, max, flex" in result.stderr
    assert "then `--data paraphrased.jsonl`)" in result.stderr  # a file is no benchmark to be asked as


def test_report_re_picks_choice_rows_as_a_run_under_that_score_would(tiny, tmp_path):
    """acc and acc_norm of one run: `--choice-score` re-picks from the stored sums, token counts and lengths,
    and agrees with runs made under each score."""
    from minirun.eval.report import select_choice_score

    items = load_dataset("sample-choice")[:6]
    settings = {**SETTINGS, "dataset": "sample-choice", "num_prompts": 3}
    runs = {mode: evaluate(tiny, items, ["origin", "per_prompt", "avg"], tmp_path / mode, choice_score=mode, **settings)
            for mode in ("mean", "sum", "chars")}
    columns = ["choice", "correct", "answer", "per_prompt_accuracy"]
    key = ["method", "id"]
    for mode, direct in runs.items():
        rescored = select_choice_score(runs["mean"], mode).sort_values(key)[key + columns].reset_index(drop=True)
        assert rescored.equals(direct.sort_values(key)[key + columns].reset_index(drop=True)), mode
    assert not runs["sum"]["choice"].equals(runs["chars"]["choice"])  # the scores pick differently: teeth
    cli = CliRunner().invoke(_app(), ["report", str(tmp_path / "mean"), "--choice-score", "sum", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["origin"]["accuracy"] == runs["sum"].query("method == 'origin'")["correct"].mean()
    bad = CliRunner().invoke(_app(), ["report", str(tmp_path / "mean"), "--choice-score", "median"])
    assert bad.exit_code == 1 and "--choice-score must be one of mean, sum, chars" in bad.stderr


@pytest.mark.parametrize("spent_on", ["seconds_measuring", "seconds_compiling"])
def test_kernel_calibration_or_compiling_inside_a_batch_is_not_the_methods_time(tiny, items, tmp_path, monkeypatch,
                                                                                 spent_on):
    """A batch that meets a new shape calibrates kernels (seconds, once per machine) or, compiled, traces and
    compiles for it (tens of seconds, once per process): its rows' seconds leave that out, or the first method of a
    run reads as slow for good. The loop's clock is faked: no timing in a test."""
    from types import SimpleNamespace

    from minirun.layers import calibrate

    real, now, measured = loop.run_method, [0.0], [0.0]

    def calibrating(*args):  # the batch calibrates (or compiles) for 50 s, and nothing else takes time
        now[0], measured[0] = now[0] + 50, measured[0] + 50
        return real(*args)

    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(loop, "run_method", calibrating)
    monkeypatch.setattr(calibrate, spent_on, lambda: measured[0])
    table = evaluate(tiny, items[:2], ["origin"], tmp_path, **SETTINGS)
    assert len(table) == 2 and (table["seconds"] < 1).all()  # counting the 50 s, 25 s an item


QUESTION, PARAS = "What is the capital of France?", ["Which city is France's capital?", "Name France's capital.",
                                                      "France's capital city is which city?"]


@pytest.mark.parametrize("repeated", [True, False], ids=["question-as-paraphrase-0", "question-not-repeated"])
def test_the_question_is_the_first_prompt(tiny, tmp_path, repeated):
    """Either file shape ensembles over [question, p1, p2] with 3 prompts, and per_prompt's headline
    answer is the question's; --no-original ensembles over the paraphrases only."""
    paras = [QUESTION, *PARAS] if repeated else PARAS
    data = tmp_path / "d.jsonl"
    write_jsonl([Item("fr", QUESTION, paras, ["Paris"])], data)
    args = ["eval", "--data", str(data), "--model", str(tiny.path), "--num-prompts", "3", "--few-shot-k", "1",
            "--max-new-tokens", "3", "--no-progress", "-m", "origin", "-m", "per_prompt", "-m", "avg"]
    for flag, run, prompts in [("--original", "with", [QUESTION, *PARAS[:2]]), ("--no-original", "without", PARAS)]:
        result = CliRunner().invoke(_app(), [*args, flag, "--output", str(tmp_path / run)])
        assert result.exit_code == 0, result.output
        table = pd.read_parquet(tmp_path / run / "results.parquet").set_index("method")
        assert table.loc["per_prompt", "prompts"].tolist() == table.loc["avg", "prompts"].tolist() == prompts
        assert table.loc["origin", "prompts"].tolist() == [QUESTION]  # the baseline always asks the question
        assert (table["original"] == (flag == "--original")).all()
        assert json.loads((tmp_path / run / "run.json").read_text())["run_key"]["original"] == (flag == "--original")
    with_question = pd.read_parquet(tmp_path / "with" / "results.parquet").set_index("method")
    assert with_question.loc["per_prompt", "answer"] == with_question.loc["per_prompt", "answers"][0]
    assert with_question.loc["per_prompt", "generated"] == with_question.loc["origin", "generated"]


@pytest.mark.parametrize("choice_format", ["cloze", "letters"])
def test_choice_items_are_scored_not_generated(tiny, tmp_path, choice_format):
    """Rows of a multiple-choice run: the picked index and every option's score; `correct` is the
    pick against the item's answer, and the report reads them unchanged."""
    items = load_dataset("sample-choice")[:3]
    methods = ["origin", "per_prompt", "avg", "hidden_avg", "flex"]
    table = evaluate(tiny, items, methods, tmp_path, **{**SETTINGS, "dataset": "sample-choice", "num_prompts": 3},
                     choice_format=choice_format, fusion_layer=1)
    assert len(table) == len(items) * len(methods) and (table["task"] == "choice").all()
    answers = {it.id: it for it in items}
    for row in table.itertuples():
        item = answers[row.id]
        scores = list(row.choice_scores)
        assert len(scores) == 4 and row.choice == max(range(4), key=scores.__getitem__)
        assert row.correct == (row.choice == item.answer) and row.answer == item.choices[row.choice]
        sums, tokens = list(row.choice_logprobs), list(row.choice_tokens)  # what any score is recomputed from
        assert all(abs(s - lp / n) < 1e-6 for s, lp, n in zip(scores, sums, tokens))  # eval's default: per token
    per_prompt = table[table["method"] == "per_prompt"]
    assert per_prompt["per_prompt_correct"].map(len).eq(3).all() and per_prompt["per_prompt_logprobs"].map(len).eq(3).all()
    assert (table.loc[table["method"] == "hidden_avg", "fusion_layer"] == 1).all()
    assert table.loc[table["method"] == "avg", "fusion_layer"].isna().all()
    assert str(table["fusion_layer"].dtype) == "Int64"  # 1, not 1.0, beside the other methods' gaps
    assert str(pd.read_parquet(tmp_path / "results.parquet")["fusion_layer"].dtype) == "Int64"
    mirror = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert {repr(r["fusion_layer"]) for r in mirror} == {"1", "None"}
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["run_key"]["choice_format"] == choice_format and record["methods"]["hidden_avg"]["fusion_layer"] == 1


def test_items_with_several_right_options_are_right_at_any_and_scored_by_mc2(tiny, tmp_path):
    """An item with several right options (TruthfulQA's MC2 sets): a row is right where the pick is any of them and
    records them; report's MC2 is the harness's figure of the recorded log-likelihoods, per_prompt's (its first
    prompt, the question) origin's own, and its each-prompt-alone figure the mean over every prompt's."""
    items = [dataclasses.replace(it, true_options=sorted({it.answer, (it.answer + 1) % 4}),
                                 answer=min(it.answer, (it.answer + 1) % 4))
             for it in load_dataset("sample-choice")[:3]]
    table = evaluate(tiny, items, ["origin", "avg", "per_prompt"], tmp_path,
                     **{**SETTINGS, "dataset": "sample-choice", "num_prompts": 3}, choice_score="sum")
    for row in table.itertuples():
        item = next(it for it in items if it.id == row.id)
        assert list(row.true_options) == item.true_options and row.correct == (row.choice in item.true_options)

    def harness(logprobs, rights):
        return sum(math.exp(logprobs[i]) for i in rights) / sum(math.exp(lp) for lp in logprobs)

    scores, by = summarize(table), table.set_index(["method", "id"])
    for method in ("origin", "avg"):
        each = [harness(by.loc[(method, it.id), "choice_logprobs"], it.true_options) for it in items]
        assert scores.loc[method, "mc2"] == pytest.approx(sum(each) / len(items), abs=1e-9)
    assert scores.loc["per_prompt", "mc2"] == pytest.approx(scores.loc["origin", "mc2"], abs=1e-5)
    alone = [sum(harness(lp, it.true_options) for lp in by.loc[("per_prompt", it.id), "per_prompt_logprobs"]) / 3
             for it in items]
    assert scores.loc["per_prompt", "mean_single_mc2"] == pytest.approx(sum(alone) / len(items), abs=1e-9)


def test_the_items_hash_of_one_right_option_is_as_before_several_were_recorded():
    """Runs finished before items could have several right options resume: an item with one hashes as it did, and
    one with several hashes apart."""
    items = load_dataset("sample-choice")[:2]
    prompts = {it.id: it.prompts for it in items}
    before = [[it.id, it.question, prompts[it.id], it.answers, it.task, it.relation, it.choices, it.answer]
              for it in items]
    digest = hashlib.sha256(json.dumps(before, ensure_ascii=False).encode()).hexdigest()[:16]
    assert loop.items_digest(items, prompts) == digest
    several = dataclasses.replace(items[0], true_options=sorted({items[0].answer, (items[0].answer + 1) % 4}))
    assert loop.items_digest([several], prompts) != loop.items_digest(items[:1], prompts)


def test_an_item_with_more_options_than_letters_is_named_before_anything_runs(tiny, tmp_path):
    """Lettered, an item of 11 options is refused by its id when the run is laid out, not when its batch comes."""
    items = load_dataset("sample-choice")[:2]
    wide = dataclasses.replace(items[1], id="wide", choices=[f"option {n}" for n in range(11)], answer=0)
    with pytest.raises(MinirunError, match="^item 'wide' has 11 options, more than the 10 letters: use "
                                           "--choice-format cloze, or leave the item out"):
        loop.prepare(tiny, [items[0], wide], ["origin"], tmp_path, dataset="sample-choice", choice_format="letters")
    assert not tmp_path.joinpath("run.json").exists()


def test_a_run_of_scored_choices_resumes_under_another_max_new_tokens(tiny, items, tmp_path):
    """Multiple-choice rows generate nothing, so max_new_tokens changes none of them: a run of choices alone resumes
    under another (a sweep raising it for its QA datasets keeps its choice cells), a run of generated answers not."""
    choice = load_dataset("sample-choice")[:2]
    settings = {**SETTINGS, "dataset": "sample-choice", "num_prompts": 2}
    first = evaluate(tiny, choice, ["origin"], tmp_path / "choice", **settings)
    again = evaluate(tiny, choice, ["origin", "avg"], tmp_path / "choice", **{**settings, "max_new_tokens": 9})
    assert again[again["method"] == "origin"].reset_index(drop=True).equals(first.reset_index(drop=True))
    evaluate(tiny, items[:1], ["origin"], tmp_path / "qa", **SETTINGS)
    with pytest.raises(MinirunError, match="max_new_tokens"):
        evaluate(tiny, items[:1], ["origin"], tmp_path / "qa", **{**SETTINGS, "max_new_tokens": 9})


def test_letters_prompts_list_the_options(tiny, tmp_path, monkeypatch):
    seen = []

    def spy(llm, method, questions, choices, options):
        seen.append((questions, choices))
        return real(llm, method, questions, choices, options)

    real = loop.score_choices
    monkeypatch.setattr(loop, "score_choices", spy)
    item = load_dataset("sample-choice")[0]
    evaluate(tiny, [item], ["origin"], tmp_path, **{**SETTINGS, "dataset": "sample-choice", "few_shot_k": 2},
             choice_format="letters")
    (questions, choices), = seen
    assert choices == [["A", "B", "C", "D"]]
    assert questions[0].suffix == "".join(f"\n{l}. {c}" for l, c in zip("ABCD", item.choices)) + "\nAnswer:"
    assert "\nAnswer: " in questions[0].prefix  # the few-shot examples answer with a letter too


def test_no_original_needs_paraphrases(tiny, tmp_path):
    items = [Item("a", "Q?", ["q? "], ["x"])]  # its only paraphrase is the question again
    with pytest.raises(MinirunError, match="no paraphrase besides the question"):
        evaluate(tiny, items, ["avg"], tmp_path, **{**SETTINGS, "original": False})


@pytest.mark.parametrize("bidirectional", [False, True])
def test_rows_store_both_matching_rules(tiny, tmp_path, monkeypatch, bidirectional):
    """"Bell" for "Alexander Graham Bell" is wrong one way, right both ways; rows carry both
    verdicts plus `correct` under the run's rule, and every string is lemmatised only once."""
    def fake_run_method(llm, method, questions, options):
        per_prompt = method == "per_prompt"
        return [MethodResult(method, "Bell", [1], "stop", 4, q.paraphrases,
                             answers=["Bell", "Alexander Graham Bell"] if per_prompt else None,
                             answer_token_ids=[[1], [1, 2]] if per_prompt else None) for q in questions]

    lemmatised = []

    class CountingMatcher(loop.Matcher):
        def __init__(self) -> None:
            super().__init__()
            pipe = self.nlp.pipe  # the process-wide pipeline: put back after the test, wrappers never stacked
            monkeypatch.setattr(self.nlp, "pipe", lambda texts, **kw: pipe(lemmatised.extend(texts) or texts, **kw))

    monkeypatch.setattr(loop, "run_method", fake_run_method)
    monkeypatch.setattr(loop, "Matcher", CountingMatcher)
    items = [Item("bell", "Who invented the telephone?", ["Who invented the phone?"], ["Alexander Graham Bell"])]
    table = evaluate(tiny, items, ["origin", "per_prompt"], tmp_path, **{**SETTINGS, "bidirectional": bidirectional})
    rows = table.set_index("method")
    for method in ("origin", "per_prompt"):
        assert not rows.loc[method, "correct_lemma"] and rows.loc[method, "correct_bidirectional"]
        assert rows.loc[method, "correct"] == bidirectional and not rows.loc[method, "exact"]
    assert list(rows.loc["per_prompt", "per_prompt_correct"]) == [bidirectional, True]
    assert rows.loc["per_prompt", "per_prompt_accuracy"] == (1.0 if bidirectional else 0.5)
    assert rows.loc["origin", "per_prompt_correct"] is None
    assert sorted(lemmatised) == ["alexander graham bell", "bell"]  # one spaCy pass for both rules


@pytest.mark.parametrize("dataset", ["triviaqa", "nq_open"])
def test_rows_hold_the_harness_s_exact_match_which_report_scores_by(tiny, tmp_path, monkeypatch, dataset):
    """Every generated row holds lm-evaluation-harness's verdict (`correct_harness`: the generation cut at "\n", ".",
    ",", equal up to case and punctuation; nq_open's articles dropped) of the answer it shows, after the thinking, of
    a generation that ran on past a " Q:" (minirun's own stop, which the harness's tasks do not have);
    `report --match harness` scores by it, the per-prompt figures left out as under any rule not the run's."""
    generated = {"origin": "<think>x</think> Beatles", "per_prompt": " The Beatles, a band"}
    stops = set()

    def fake_run_method(llm, method, questions, options):
        stops.add(options.stop)
        text = generated[method]
        every = [text, " the Fab Four"] if method != "origin" else None
        return [MethodResult(method, text, [1], "stop", 4, q.paraphrases, answers=every,
                             answer_token_ids=[[1], [1]] if every else None) for q in questions]

    monkeypatch.setattr(loop, "run_method", fake_run_method)
    items = [Item("fab", "who were the fab four", ["name the fab four"], ["Beatles"])]
    settings = {**SETTINGS, "dataset": dataset, "few_shot_k": 0, "chat": False}
    rows = evaluate(tiny, items, ["origin", "per_prompt"], tmp_path, **settings).set_index("method")
    assert rows["correct_lemma"].tolist() == [True, True]
    assert rows["correct_harness"].tolist() == [True, dataset == "nq_open"]
    assert stops == {("\n",)}  # as the harness, not at a next " Q:" on the line: its verdict reads on to a stop
    scored = report.select_match(rows.reset_index(), "harness")
    assert scored["correct"].tolist() == rows["correct_harness"].tolist() and "per_prompt_accuracy" not in scored
    with pytest.raises(MinirunError, match=r"results lack 'correct_harness' \(rows written by a minirun before "
                                           r"--match harness existed\)"):
        report.select_match(rows.reset_index().drop(columns="correct_harness"), "harness")


def test_shard_is_a_partition_of_whole_batches(items):
    batches = [items[i:i + 2] for i in range(0, len(items), 2)]
    parts = [shard(batches, r, 4) for r in range(4)]
    assert sorted(id(b) for p in parts for b in p) == sorted(map(id, batches))


def test_ranks_run_the_very_batches_one_process_runs(tiny, items, tmp_path, monkeypatch):
    """Items dealt one by one made other batches than one process (in bfloat16 an answer depends on its batch's
    other rows, so a sharded table was not the one a single process writes); whole batches are dealt now."""
    seen = []
    real = loop.run_method
    monkeypatch.setattr(loop, "run_method", lambda llm, method, qs, options: seen.append(
        (method, tuple(q.question for q in qs))) or real(llm, method, qs, options))
    evaluate(tiny, items[:5], ["origin", "avg"], tmp_path / "one", **SETTINGS)  # batches of 2
    alone, seen[:] = sorted(seen), []
    timing = []  # ranks side by side time no kernel anew (they would choose apart), and the process times again after
    monkeypatch.setattr(loop.calibrate, "time_new", timing.append)
    tables = [evaluate(tiny, items[:5], ["origin", "avg"], tmp_path / "two", rank=rank, world_size=2, **SETTINGS)
              for rank in range(2)]
    assert sorted(seen) == alone and len(alone) == 6 and timing == [False, True] * 2
    assert sorted(len(t) for t in tables) == [4, 6]  # each rank's own rows: 1 and 2 batches of each method
    idle = evaluate(tiny, items[:2], ["origin"], tmp_path / "idle", rank=1, world_size=2, **SETTINGS)  # one batch
    assert idle.empty and "correct" in idle.columns  # a rank with no batch returns its (empty) table's columns


def test_torchrun_shards_match_one_process(checkpoint_dirs, reference, tmp_path):
    """2 gloo ranks through the CLI under torchrun write the table one process writes."""
    script = tmp_path / "app.py"
    script.write_text(APP_SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "eval", *CLI_SETTINGS, "--model", str(checkpoint_dirs["qwen2"]), "--output", str(out)]
    for m in METHODS:
        cmd += ["--method", m]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("results.rank*.jsonl")) == ["results.rank0.jsonl", "results.rank1.jsonl"]
    merged = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(_canon(merged), _canon(reference), check_dtype=False)
    assert "origin" in proc.stdout  # rank 0 printed the summary

    report = CliRunner().invoke(_app(), ["report", str(out), "--json"])
    assert report.exit_code == 0, report.output
    scores = json.loads(report.stdout)
    assert set(scores) == set(METHODS) and scores["avg"]["n"] == 6


FAILING_RANK_SCRIPT = APP_SCRIPT.replace("register(app)", """register(app)
import os
from minirun.errors import MinirunError
from minirun.eval import loop
if os.environ["RANK"] == "1":  # this rank stops at its first batch, as on a bad file or a full disk
    def stop(*args, **kwargs):
        raise MinirunError("rank 1 stopped")
    loop.run_method = stop""")


def test_a_rank_that_fails_ends_the_others_with_one_line(checkpoint_dirs, tmp_path):
    """Rank 0 waited at the barrier and died in a gloo traceback; it names the cause now, its rows journalled."""
    script = tmp_path / "app.py"
    script.write_text(FAILING_RANK_SCRIPT)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "eval", *CLI_SETTINGS, "--model", str(checkpoint_dirs["qwen2"]), "--output", str(out), "--method", "origin"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "rank 1 stopped" in proc.stderr and "another rank stopped before finishing its share" in proc.stderr
    assert "gloo" not in proc.stderr.lower() and "Connection closed by peer" not in proc.stderr
    assert (out / "results.rank0.jsonl").read_text().count("\n") == 4  # rank 0's two batches of 2, kept


def test_report_tables_and_errors(reference, tmp_path):
    store = ResultStore(tmp_path, {"k": 1})
    for row in reference.to_dict("records"):
        store.add(row)
    store.finalize()
    result = CliRunner().invoke(_app(), ["report", str(tmp_path), "--csv", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    assert "answer agreement" in result.stdout and (tmp_path / "s.csv").is_file()
    missing = CliRunner().invoke(_app(), ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "nothing: no such directory" in " ".join(missing.output.split())
    (tmp_path / "empty").mkdir()
    empty = CliRunner().invoke(_app(), ["report", str(tmp_path / "empty")])
    assert empty.exit_code == 1 and "no results" in " ".join(empty.output.split())
    for args, needle in [(["--csv", str(tmp_path)], "is a directory"), (["--plot", str(tmp_path / "s.bogus")], ".png"),
                         (["--plot", str(tmp_path / "no" / "s.png")], "does not exist")]:
        bad = CliRunner().invoke(_app(), ["report", str(tmp_path), *args])
        assert bad.exit_code == 1 and needle in bad.stderr and len(bad.stderr.splitlines()) == 1, bad.output
    (tmp_path / "run.json").write_text("{not json")
    corrupt = CliRunner().invoke(_app(), ["report", str(tmp_path)])
    assert corrupt.exit_code == 1 and "run.json is not a run record minirun wrote" in corrupt.stderr
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "results.parquet").write_bytes(b"not parquet")
    unreadable = CliRunner().invoke(_app(), ["report", str(garbage)])
    assert unreadable.exit_code == 1 and "results.parquet is not a readable Parquet table" in unreadable.stderr
    pd.DataFrame({"id": ["q1"], "method": ["origin"], "answer": ["x"]}).to_parquet(garbage / "results.parquet")
    lacking = CliRunner().invoke(_app(), ["report", str(garbage)])  # a KeyError's traceback
    assert lacking.exit_code == 1 and "results.parquet lacks the column(s) exact, correct, tokens, seconds a run's " \
        "table holds" in " ".join(lacking.stderr.split()), lacking.output


def test_real_model_all_methods(smollm2_dir, tmp_path, monkeypatch):
    """Every method end to end on SmolLM2 through the CLI, then `report --json`."""
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path / "cache"))
    methods = ["origin", "per_prompt", "avg", "max", "hidden_avg", "flex", "weighted_avg", "weighted_max"]
    args = ["eval", "--data", "sample-qa", "--model", str(smollm2_dir), "--max-samples", "3", "--num-samples", "4",
            "--max-new-tokens", "12", "--output", str(tmp_path / "run"), "--no-progress",
            "--num-prompts", "3", "--few-shot-k", "2"]  # fewer, shorter prompts: a lean test
    for m in methods:
        args += ["--method", m]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert len(table) == 3 * len(methods)
    origin = table[table["method"] == "origin"]
    assert origin["correct"].sum() >= 2  # "Paris", "Tokyo", ... are within a 135M model's reach
    per_prompt = table[table["method"] == "per_prompt"]
    assert per_prompt["per_prompt_accuracy"].between(0, 1).all() and per_prompt["answers"].map(len).eq(3).all()
    verdicts = per_prompt["per_prompt_correct"].map(list)
    assert verdicts.map(len).eq(3).all() and (verdicts.map(sum) / 3 == per_prompt["per_prompt_accuracy"]).all()
    assert (verdicts.str[0] == per_prompt["correct"]).all()  # the headline is the question's answer
    assert (table["correct"] == table["correct_lemma"]).all()
    assert (table["correct_bidirectional"] >= table["correct_lemma"]).all()
    weighted = table[table["method"].str.startswith("weighted")]
    assert weighted["confidences"].map(lambda c: len(c) == 3 and all(0 <= x <= 1 for x in c)).all()

    report = CliRunner().invoke(_app(), ["report", str(tmp_path / "run"), "--json"])
    assert report.exit_code == 0, report.output
    scores = json.loads(report.stdout)
    assert set(scores) == set(methods) and all(s["n"] == 3 for s in scores.values())


def test_methods_that_prefill_alike_take_each_batch_together():
    """Each method keeps its own batches; per_prompt, avg and max with the same batches take them batch
    by batch, so each batch is prefilled once; a method whose batches differ (resumed) runs on its own."""
    qs = [Item(str(i), f"Question {i}?", [f"Paraphrase {i}?"], ["a"]) for i in range(4)]
    two = [qs[:2], qs[2:]]
    batches = {(0, m): two for m in ("origin", "per_prompt", "avg", "flex", "max", "hidden_avg")}
    order = [(m, [item.id for item in batch]) for (_, m), batch in loop.schedule(batches)]
    assert order == [("origin", ["0", "1"]), ("origin", ["2", "3"]),
                     ("per_prompt", ["0", "1"]), ("avg", ["0", "1"]), ("max", ["0", "1"]),
                     ("per_prompt", ["2", "3"]), ("avg", ["2", "3"]), ("max", ["2", "3"]),
                     ("flex", ["0", "1"]), ("flex", ["2", "3"]), ("hidden_avg", ["0", "1"]), ("hidden_avg", ["2", "3"])]
    resumed = {lane: batches[lane] for lane in [(0, "per_prompt"), (0, "avg"), (0, "max")]}
    resumed[(0, "avg")] = [qs[1:2], qs[2:]]  # avg had finished question 0 before an interruption
    assert [m for (_, m), _ in loop.schedule(resumed)] == ["per_prompt", "max", "per_prompt", "max", "avg", "avg"]
    runs = {(0, "avg"): two, (1, "origin"): two, (2, "max"): two}  # a sweep's cells: one method each
    assert [(r, m) for (r, m), _ in loop.schedule(runs)] == [(0, "avg"), (2, "max"), (0, "avg"), (2, "max"),
                                                              (1, "origin"), (1, "origin")]


def test_an_eval_prefills_each_batch_once_for_methods_that_prefill_alike(tiny, items, tmp_path, monkeypatch):
    """The same table as each method run on its own, with a third of the prompt prefills: avg and max
    copy per_prompt's, batch by batch; nothing is kept once the run is over."""
    prefills = []
    original = Decoder.hidden
    monkeypatch.setattr(Decoder, "hidden", lambda self, tokens, *rest, **options: prefills.append(
        tokens.shape[0] > 1 and tokens.shape[1] > 1) or original(self, tokens, *rest, **options))
    alone = [evaluate(tiny, items, [m], tmp_path / m, **SETTINGS) for m in ("per_prompt", "avg", "max")]
    alone_prefills, prefills[:] = sum(prefills), []
    together = evaluate(tiny, items, ["per_prompt", "avg", "max"], tmp_path / "together", **SETTINGS)
    assert sum(prefills) * 3 == alone_prefills > 0 and tiny.prompts is None
    pd.testing.assert_frame_equal(_same(together), _same(pd.concat(alone, ignore_index=True)))


def test_a_batch_that_copied_its_prefill_counts_the_prefill_in_its_seconds(tiny, tmp_path, monkeypatch):
    """So a method's throughput reads the same whether it ran alone or after another on the same batch."""
    def copying_run_method(llm, method, questions, options):
        if method == "avg":
            llm.prompts.reused_seconds += 100.0  # what copying per_prompt's prefill adds
        return [MethodResult(method, "Bell", [1], "stop", 4, q.paraphrases) for q in questions]

    monkeypatch.setattr(loop, "run_method", copying_run_method)
    qs = [Item(str(i), f"Who invented thing {i}?", [f"Who made thing {i}?"], ["Bell"]) for i in range(2)]
    table = evaluate(tiny, qs, ["per_prompt", "avg"], tmp_path, **SETTINGS)
    seconds = table.set_index("method")["seconds"]
    assert (seconds["avg"] >= 100.0 / 2).all() and (seconds["per_prompt"] < 100.0 / 2).all()


def test_multiple_choice_methods_that_share_a_prefill_score_as_they_do_alone(tiny, tmp_path):
    choice = load_dataset("sample-choice")[:4]
    settings = {**SETTINGS, "dataset": "sample-choice"}
    alone = [evaluate(tiny, choice, [m], tmp_path / m, **settings) for m in ("per_prompt", "avg", "max")]
    together = evaluate(tiny, choice, ["per_prompt", "avg", "max"], tmp_path / "together", **settings)
    pd.testing.assert_frame_equal(_same(together), _same(pd.concat(alone, ignore_index=True)))


def test_one_prompt_per_item_that_is_the_question_is_refused_for_ensembles(tiny, items, tmp_path):
    """--num-prompts 1 with the question kept: every ensemble would answer as origin, silently."""
    with pytest.raises(MinirunError, match="num_prompts 1 leaves each item its question alone, so vote, avg would "
                                           "repeat origin"):
        evaluate(tiny, items[:2], ["origin", "vote", "avg"], tmp_path / "one", **{**SETTINGS, "num_prompts": 1})
    assert len(evaluate(tiny, items[:2], ["origin"], tmp_path / "origin", **{**SETTINGS, "num_prompts": 1})) == 2
    alone = evaluate(tiny, items[:2], ["vote"], tmp_path / "para", **{**SETTINGS, "num_prompts": 1, "original": False})
    assert all(len(p) == 1 and p[0] != q for p, q in zip(alone.sort_values("id")["prompts"],
                                                          [i.question for i in sorted(items[:2], key=lambda i: i.id)]))
    result = CliRunner().invoke(_app(), ["eval", *CLI_SETTINGS, "-m", "vote", "--num-prompts", "1", "--model",
                                         "/no/such/model", "--output", str(tmp_path / "cli")])
    assert result.exit_code == 1 and "num_prompts 1 leaves each item its question alone" in result.output


def test_data_without_paraphrases_is_refused_for_ensembles_and_counted_where_some_lack_them(tiny, tmp_path, caplog):
    """WebQuestions, MMLU and CommonsenseQA from the Hub carry no paraphrases: every ensemble would be origin."""
    bare = [Item(str(i), f"Who invented thing {i}?", [], ["Bell"]) for i in range(3)]
    with pytest.raises(MinirunError, match="webqa's 3 items asked have no paraphrases, so avg, flex would repeat "
                                           "origin: run origin alone, or paraphrase them .*then `--data "
                                           "paraphrased.jsonl --benchmark webqa`"):
        evaluate(tiny, bare, ["origin", "avg", "flex"], tmp_path / "bare", **{**SETTINGS, "dataset": "webqa"})
    assert len(evaluate(tiny, bare, ["origin"], tmp_path / "origin", **SETTINGS)) == 3
    some = bare[:2] + [Item("2", "Who invented thing 2?", ["Who made thing 2?"], ["Bell"])]
    with caplog.at_level("WARNING", logger="minirun"):
        evaluate(tiny, some, ["avg"], tmp_path / "some", **SETTINGS)
        evaluate(tiny, some, ["max"], tmp_path / "again", **SETTINGS)  # as a sweep's next cell: told once
    assert caplog.text.count("2 of 3 items (first '0') have no paraphrase besides the question") == 1


def test_items_short_of_the_prompts_asked_for_are_counted_once(tiny, tmp_path, caplog):
    """An ensemble-size series past what the data holds would repeat its largest size's rows unseen."""
    items = [Item(str(i), f"Who invented thing {i}?", [f"Who made thing {i}?", f"Thing {i} came from whom?"],
                  ["Bell"]) for i in range(3)] + [Item("3", "Who?", ["Who, then?", "Which one?", "Whom?"], ["Bell"])]
    with caplog.at_level("WARNING", logger="minirun"):
        evaluate(tiny, items, ["origin"], tmp_path / "origin", **{**SETTINGS, "num_prompts": 6})
        assert "distinct prompts" not in caplog.text  # origin asks the question alone
        evaluate(tiny, items, ["avg"], tmp_path / "fits", **{**SETTINGS, "num_prompts": 3})
        assert "distinct prompts" not in caplog.text
        evaluate(tiny, items, ["avg"], tmp_path / "four", **{**SETTINGS, "num_prompts": 4})
        evaluate(tiny, items, ["max"], tmp_path / "again", **{**SETTINGS, "num_prompts": 4})  # a sweep's next cell
        evaluate(tiny, items, ["avg"], tmp_path / "six", **{**SETTINGS, "num_prompts": 6})
    assert caplog.text.count("3 of 4 items (first '0') have fewer than 4 distinct prompts to fuse (the most any item "
                             "has: 4): their ensembles fuse the ones they have\n") == 1
    assert "4 of 4 items (first '0') have fewer than 6 distinct prompts to fuse (the most any item has: 4): their " \
           "ensembles fuse the ones they have, so every item runs as at --num-prompts 4" in caplog.text


def test_no_items_and_shared_ids_are_refused_before_anything_runs(tiny, items, tmp_path):
    with pytest.raises(MinirunError, match="no items to evaluate"):
        evaluate(tiny, [], ["origin"], tmp_path / "empty")
    with pytest.raises(MinirunError, match=f"two items share the id '{items[0].id}'"):  # one row each: one dropped
        evaluate(tiny, [items[0], items[0]], ["origin"], tmp_path / "twice")
    assert not (tmp_path / "empty").exists() and not (tmp_path / "twice").exists()


@pytest.mark.parametrize("env, expected", [({}, (0, 1)), ({"RANK": "1", "WORLD_SIZE": "1"}, (0, 1)),
                                           ({"RANK": "1", "WORLD_SIZE": "2"}, (1, 2))])
def test_ranks_come_from_torchrun_and_a_lone_process_runs_everything(monkeypatch, env, expected):
    """RANK=1 with WORLD_SIZE=1 (set by hand or by another launcher) skipped item 0 of every sweep cell."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert loop.ranks() == expected


def test_ranks_set_by_hand_are_one_line_errors(monkeypatch, tiny, items, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(MinirunError, match=r"RANK 2 is outside 0..1 \(WORLD_SIZE 2\): start the processes with torchrun"):
        loop.ranks()
    monkeypatch.setenv("RANK", "1")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(MinirunError, match="WORLD_SIZE 2 asks for several processes, but no torchrun started them"):
        loop.run_sharded(tiny, items[:2], ["origin"], tmp_path, **SETTINGS)


def test_the_progress_rate_is_this_process_s_rows_over_its_time():
    """Rows land a batch at a time; rich's recent-window speed read a batch's rows, advanced one by one, as
    ~1e5 items/s. The rate is the rows this process finished over its elapsed time, a resumed run's earlier rows
    left out."""
    from types import SimpleNamespace as Task

    column = loop.RateColumn("items")
    assert column.render(Task(completed=10, fields={"resumed": 4}, elapsed=2.0)).plain == "3.00 items/s"
    assert column.render(Task(completed=4, fields={"resumed": 4}, elapsed=2.0)).plain == "? items/s"
    assert column.render(Task(completed=6, fields={}, elapsed=0.0)).plain == "? items/s"


def test_a_template_that_writes_the_date_keeps_the_day_the_run_began(checkpoint_dirs, items, tmp_path, monkeypatch):
    """Llama 3.2's chat template writes today's date into every prompt: a run resumed another day (or running past
    midnight) asked its later questions in other words. The run records the day it began and renders every prompt
    at it; a template without a date records none, so the runs it made before resume as they were."""
    from checkpoints import Clock, with_dated_template

    Clock.install(monkeypatch, 6)
    llm = minirun.load(with_dated_template(checkpoint_dirs["qwen2"], tmp_path / "ckpt"))
    assert llm.tokenizer.reads_clock and not minirun.load(checkpoint_dirs["qwen2"]).tokenizer.reads_clock
    rendered = []
    render = llm.tokenizer.apply_chat_template
    monkeypatch.setattr(llm.tokenizer, "apply_chat_template",
                        lambda *a, **k: rendered.append(render(*a, **k)) or rendered[-1])
    evaluate(llm, items, ["origin"], tmp_path / "run", **SETTINGS)
    asked = [text for text in rendered if "\nQ: " in text]  # the questions, not the template probed
    assert asked and all("Today Date: 06 Dec 2026" in text for text in asked)
    monkeypatch.setattr(Clock, "day", 7)
    rendered.clear()
    assert "Today Date: 07 Dec 2026" in render([{"role": "user", "content": "hi"}])  # generate: today, as transformers
    evaluate(llm, items, ["origin", "avg"], tmp_path / "run", **SETTINGS)  # resumed the next day
    asked = [text for text in rendered if "\nQ: " in text]  # the questions, not the template probed
    assert asked and all("Today Date: 06 Dec 2026" in text for text in asked)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["run_key"]["template_date"] == "2026-12-06"
    evaluate(minirun.load(checkpoint_dirs["qwen2"]), items[:1], ["origin"], tmp_path / "plain", **SETTINGS)
    assert "template_date" not in json.loads((tmp_path / "plain" / "run.json").read_text())["run_key"]
    rendered.clear()  # a day asked for: a paper's prompts rebuilt on any day
    evaluate(llm, items[:2], ["origin"], tmp_path / "asked", template_date="2024-07-26", **SETTINGS)
    asked = [text for text in rendered if "\nQ: " in text]  # the questions, not the template probed
    assert asked and all("Today Date: 26 Jul 2024" in text for text in asked)
    with pytest.raises(MinirunError, match=re.escape("template_date: '2024-07-26' -> '2024-07-27'")):
        evaluate(llm, items[:2], ["origin"], tmp_path / "asked", template_date="2024-07-27", **SETTINGS)
    with pytest.raises(MinirunError, match=r"^template date '26/07/2024' is not a day as YYYY-MM-DD: give e\.g\."):
        evaluate(llm, items[:2], ["origin"], tmp_path / "bad", template_date="26/07/2024", **SETTINGS)
    result = CliRunner().invoke(_app(), ["eval", "--template-date", "2024-7-32", *CLI_SETTINGS])
    assert result.exit_code == 1 and "template date '2024-7-32' is not a day as YYYY-MM-DD" in result.output


def _no_memory(*args, **kwargs):
    return torch.empty(1 << 50, dtype=torch.uint8)  # the host's allocator refuses it, as a full GPU's does


def test_a_batch_out_of_memory_runs_on_in_halves_and_later_batches_start_there(checkpoint_dirs, items, tmp_path,
                                                                                 caplog):
    """A batch the device cannot hold (a 32B model's cache beside its weights on one GPU) stopped a sweep of hours;
    now its memory is freed, it runs in halves, and later batches start at the size that fit: the rows equal a run
    at that size, and the warning names the batch and the --batch-size that starts there."""
    llm = minirun.load(checkpoint_dirs["qwen2"])
    allocate, failures = llm.model.setup_cache, []

    def cache_of_two_questions(batch: int, slots: int, exact: bool = True) -> None:
        allocate(batch, slots, exact)  # allocated, then the next allocation fails: the cache must be let go
        if batch > 2 * 2:  # rows: 2 prompts a question
            failures.append(batch)
            _no_memory()

    llm.model.setup_cache = cache_of_two_questions
    with caplog.at_level("WARNING", logger="minirun"):
        table = evaluate(llm, items, ["per_prompt", "avg"], tmp_path / "halves", **{**SETTINGS, "batch_size": 4})
    assert failures == [8]  # per_prompt's first batch only: avg's, laid out alike, and the second started at 2
    assert llm.model.layers[0].attn.kv_cache.allocation[0].shape[0] == 4  # not the 8 rows that did not fit
    assert " ".join(caplog.text.split()).count(
        "out of cpu memory running per_prompt on 4 questions at once, first 'qa-001' (1125899906842624 bytes were asked "
        "for): running 2 at a time from here on (--batch-size 2, in a sweep the model's batch_size, starts there)") == 1
    del llm.model.setup_cache
    alike = evaluate(llm, items, ["per_prompt", "avg"], tmp_path / "twos", **SETTINGS)
    columns = ["id", "method", "generated", "answer", "correct", "tokens"]
    pd.testing.assert_frame_equal(table[columns], alike[columns])
    assert len((tmp_path / "halves" / "results.rank0.jsonl").read_text().splitlines()) == 12


def test_one_question_out_of_memory_ends_in_one_line_and_keeps_what_finished(checkpoint_dirs, items, tmp_path):
    """Only a question that does not fit alone stops a run: one line names it and the other fixes, and the batches
    finished before it are kept for the resume."""
    llm, rows = minirun.load(checkpoint_dirs["qwen2"]), []

    def fill_up(row: dict) -> None:  # the second batch finds no memory left, at any size
        rows.append(row)
        llm.session = _no_memory

    message = (r"^out of cpu memory running avg on one question, 'qa-003' \(1125899906842624 bytes were asked for\): "
               r"it does not fit alone; give fewer prompts, a smaller --max-new-tokens or --dtype; the batches "
               r"finished are kept$")
    with pytest.raises(MinirunError, match=message):
        evaluate(llm, items[:4], ["avg"], tmp_path, **SETTINGS, on_row=fill_up)
    assert len(rows) == 2 and len((tmp_path / "results.rank0.jsonl").read_text().splitlines()) == 2
    del llm.session
    table = evaluate(llm, items[:4], ["avg"], tmp_path, **SETTINGS)
    assert list(table["id"]) == [item.id for item in items[:4]]


def test_a_batch_out_of_memory_while_sampling_confidences_leaves_no_bar_behind(tiny, items, tmp_path, monkeypatch):
    """The weighted methods' confidence bar of a batch that ran out of memory stayed on screen, stuck, for the rest of
    the run, beside its halves' bars: every bar added is removed, and the rows are a whole batch's."""
    from rich.progress import Progress

    from minirun.methods import confidence

    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path / "cache"))
    shown, added, calls, real = set(), [], [], confidence.paraphrase_confidence

    def add(self, what, *args, add=Progress.add_task, **kwargs):
        task = add(self, what, *args, **kwargs)
        if what.strip() == "confidence":
            shown.add((id(self), task))
            added.append(task)
        return task

    def remove(self, task, remove=Progress.remove_task):
        shown.discard((id(self), task))
        remove(self, task)

    def sample(*args):
        calls.append(1)
        return _no_memory() if len(calls) == 3 else real(*args)  # the third prompt's samples do not fit

    monkeypatch.setattr(Progress, "add_task", add)
    monkeypatch.setattr(Progress, "remove_task", remove)
    monkeypatch.setattr(confidence, "paraphrase_confidence", sample)
    settings = {**SETTINGS, "num_samples": 2, "batch_size": 4}
    split = evaluate(tiny, items[:4], ["weighted_avg"], tmp_path / "split", **settings)
    assert len(calls) > 4 and len(added) > 1 and not shown  # the batch was split and retried; no bar left
    monkeypatch.setattr(confidence, "paraphrase_confidence", real)
    whole = evaluate(tiny, items[:4], ["weighted_avg"], tmp_path / "whole", **{**settings, "batch_size": 2})
    assert _canon(split).equals(_canon(whole))


def test_out_of_memory_elsewhere_is_one_line_too(checkpoint_dirs, monkeypatch):
    """`generate` (or bench, paraphrase) out of memory: the fix in one line, no traceback; other errors still rise."""
    monkeypatch.setattr(minirun.engine.llm.LLM, "session", _no_memory)
    result = CliRunner().invoke(cli_app, ["generate", "--model", str(checkpoint_dirs["qwen2"]), "Q?"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "out of memory (1125899906842624 bytes were asked for): run fewer rows at once" in " ".join(
        result.output.split())
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.19 "
                                 "GiB of which 3.06 GiB is free.")
    assert out_of_memory(oom) == "20.00 GiB were asked for"
    assert out_of_memory(RuntimeError("expected scalar type Float")) is None and out_of_memory(ValueError()) is None


def test_a_run_timed_on_two_machines_says_so(tiny, items, tmp_path):
    """A run resumed on another machine holds seconds of both: `report` names the machines beside the throughput it
    mixes (`machine` per method in --json), and rows of runs made before rows named theirs still read."""
    evaluate(tiny, items[:4], ["origin", "avg"], tmp_path, **SETTINGS)
    journal = tmp_path / "results.rank0.jsonl"
    rows = [json.loads(line) for line in journal.read_text().splitlines()]
    here = rows[0]["machine"]
    shown = CliRunner().invoke(_app(), ["report", str(tmp_path)]).output
    assert "machines (" not in shown  # one machine: no warning
    assert "pairwise:" not in shown  # two methods: the comparison with origin is the only pair
    rows[0]["machine"] = "NVIDIA H100 80GB HBM3 torch 2.11.0+cu130"
    del rows[-1]["machine"]  # a row of an older minirun
    journal.write_text("".join(json.dumps(row) + "\n" for row in rows))
    shown = CliRunner().invoke(_app(), ["report", str(tmp_path)]).output
    assert "tokens/s and items/s mix rows timed on 2 machines" in " ".join(shown.split())
    scores = json.loads(CliRunner().invoke(_app(), ["report", str(tmp_path), "--json"]).stdout)
    assert scores["origin"]["machine"] == f"{here} | NVIDIA H100 80GB HBM3 torch 2.11.0+cu130"
    assert scores["avg"]["machine"] == here
    CliRunner().invoke(_app(), ["report", str(tmp_path), "--latex", str(tmp_path / "t.tex")])
    comments = [line for line in (tmp_path / "t.tex").read_text().splitlines() if line.startswith("%")]
    assert f'% model: "{tiny.path.resolve()}"' in comments and '% num_prompts: 2' in comments
    assert "% method avg: {}" in comments and f"% timed on: {here}" in comments
    assert "% timed on: NVIDIA H100 80GB HBM3 torch 2.11.0+cu130" in comments


def test_a_run_names_the_upload_its_model_came_from(checkpoint_dirs, items, tmp_path):
    """A hub repo's files change under one name: run.json keeps the commit `pull` recorded (the first one, should a
    re-pull of the same files at a later commit resume it) and `report --latex` heads the table with it."""
    ckpt = shutil.copytree(checkpoint_dirs["qwen2"], tmp_path / "ckpt")
    first = {"hub": "org/model", "revision": "v1", "commit": "a" * 40}
    write_source(ckpt, first)
    evaluate(minirun.load(ckpt), items[:2], ["origin"], tmp_path / "run", **SETTINGS)
    assert recorded_source(tmp_path / "run") == first
    write_source(ckpt, {**first, "revision": None, "commit": "b" * 40})  # the same bytes, pulled again later
    evaluate(minirun.load(ckpt), items[:2], ["origin", "avg"], tmp_path / "run", **SETTINGS)
    assert recorded_source(tmp_path / "run") == first
    CliRunner().invoke(_app(), ["report", str(tmp_path / "run"), "--latex", str(tmp_path / "t.tex")])
    comments = [line for line in (tmp_path / "t.tex").read_text().splitlines() if line.startswith("%")]
    assert f"% model source: {json.dumps(first, sort_keys=True)}" in comments
    evaluate(minirun.load(checkpoint_dirs["qwen2"]), items[:2], ["origin"], tmp_path / "made", **SETTINGS)
    assert recorded_source(tmp_path / "made") is None  # a folder no pull or convert made: nothing to cite


def test_report_shows_each_relation_the_macro_accuracy_and_every_pair(tiny, tmp_path):
    """A fill run's rows carry relations: `report` shows a table per relation and, under it, each method's macro
    accuracy with its difference from origin over relations, and with three methods every pair's difference;
    `--json` holds the same figures."""
    fill = load_dataset("sample-fill")[:6]
    evaluate(tiny, fill, ["origin", "avg", "max"], tmp_path, **{**SETTINGS, "dataset": "sample-fill"})
    shown = " ".join(CliRunner().invoke(_app(), ["report", str(tmp_path)], env={"COLUMNS": "200"}).output.split())
    scores = json.loads(CliRunner().invoke(_app(), ["report", str(tmp_path), "--json"]).stdout)
    relations = len({item.relation for item in fill})
    assert "per relation" in shown and f"origin {scores['origin']['macro_accuracy']:.3f} ({relations} relations)" in shown
    assert f"avg {scores['avg']['macro_accuracy']:.3f} ({relations} relations), Δ origin " \
           f"{scores['avg']['diff_macro_vs_origin']:+.3f}" in shown
    assert sorted(scores["avg"]["by_relation"]) == sorted({item.relation for item in fill})
    CliRunner().invoke(_app(), ["report", str(tmp_path), "--latex", str(tmp_path / "t.tex")])
    tex = (tmp_path / "t.tex").read_text()  # the summary, then the appendix's table per relation
    assert tex.count("\\begin{table}") == 2 and "Relation & $n$ & origin & avg & max \\\\" in tex
    avg_max = scores["avg"]["versus"]["max"]  # three methods: every pair compared, not only each with origin
    assert "pairwise: accuracy of the row minus the column" in shown
    assert f"{avg_max['diff']:+.3f} (p {avg_max['p_holm']:.2g})" in shown


@pytest.mark.parametrize("name, config, repo, asked", [
    ("arc_challenge", "ARC-Challenge", "allenai/ai2_arc", "Question: Which gas do plants take in?\nAnswer:"),
    ("openbookqa", "main", "allenai/openbookqa", "Which gas do plants take in?")])
def test_arc_and_openbookqa_run_by_name(checkpoint_dirs, tmp_path, monkeypatch, name, config, repo, asked):
    """`eval --data arc_challenge` (or openbookqa): the set's test split scored in the harness's words, its train
    split's examples in the head, the config cited beside the commit."""
    question = "question_stem" if name == "openbookqa" else "question"
    frames = {"test": pd.DataFrame({"id": ["t1"], question: ["Which gas do plants take in?"],
                                    "choices": [{"label": ["1", "2", "3"],
                                                 "text": ["oxygen", "carbon dioxide", "neon"]}],
                                    "answerKey": ["2"]}),
              "train": pd.DataFrame({"id": ["s1"], question: ["What melts ice?"],
                                     "choices": [{"label": ["A", "B"], "text": ["heat", "cold"]}], "answerKey": ["A"]})}
    calls = _fake_hub(monkeypatch, frames)
    out = tmp_path / "run"
    result = CliRunner().invoke(_app(), ["eval", "--data", name, "--model", str(checkpoint_dirs["qwen2"]), "-m",
                                         "origin", "--few-shot-k", "1", "--no-chat", "--no-progress", "--output",
                                         str(out)])
    assert result.exit_code == 0, result.output
    assert calls == [(repo, config, "test"), (repo, config, "train")]
    assert recorded_source(out, "data_source") == {"hub": repo, "config": config, "revision": "main",
                                                   "commit": "c" * 40}
    assert json.loads((out / "run.json").read_text())["run_key"]["prompt_format"] == f"harness {name}"
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert row["id"] == "t1" and len(row["choice_scores"]) == 3 and row["correct"] == (row["choice"] == 1)
    shown = CliRunner().invoke(_app(), ["eval", "--data", name, "--model", str(checkpoint_dirs["qwen2"]), "-m",
                                        "origin", "--few-shot-k", "1", "--no-chat", "--show-prompts", "1"])
    assert shown.exit_code == 0, shown.output
    shot = "Question: What melts ice?\nAnswer: heat" if name != "openbookqa" else "What melts ice? heat"
    assert f"{shot}\n\n{asked}" in shown.stdout


def _sciq_row(question: str, right: str, support: str) -> dict:
    return {"question": question, "distractor1": "neon", "distractor2": "argon", "distractor3": "helium",
            "correct_answer": right, "support": support}


def test_sciq_runs_by_name_with_each_questions_passage_in_the_harness_words(checkpoint_dirs, tmp_path, monkeypatch):
    """`eval --data sciq`: the test split, each question after its support passage (leading spaces dropped, an empty
    one a new line alone) in lm-evaluation-harness's sciq words, the right option last; train's examples with theirs."""
    frames = {"test": pd.DataFrame([_sciq_row("Which gas do plants take in?", "carbon dioxide", " Plants breathe."),
                                    _sciq_row("What melts ice?", "heat", "")]),
              "train": pd.DataFrame([_sciq_row("What do bees make?", "honey", "Bees live in hives.")])}
    calls = _fake_hub(monkeypatch, frames)
    out = tmp_path / "run"
    args = ["eval", "--data", "sciq", "--model", str(checkpoint_dirs["qwen2"]), "-m", "origin", "--few-shot-k", "1",
            "--no-chat", "--no-progress"]
    result = CliRunner().invoke(_app(), [*args, "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert calls == [("allenai/sciq", "test"), ("allenai/sciq", "train")]
    assert json.loads((out / "run.json").read_text())["run_key"]["prompt_format"] == "harness sciq"
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["id"], len(r["choice_scores"]), r["gold_choice"]) for r in rows] == [("sciq-test-1", 4, 3),
                                                                                      ("sciq-test-2", 4, 3)]
    letters = CliRunner().invoke(_app(), [*args, "--choice-format", "letters", "--output", str(tmp_path / "l")])
    assert letters.exit_code == 1 and "sciq is asked cloze only" in letters.output
    assert len(calls) == 2  # refused before the Hub is asked for anything
    shown = CliRunner().invoke(_app(), [*args, "--show-prompts", "2"])
    assert shown.exit_code == 0, shown.output
    shot = "Bees live in hives.\nQuestion: What do bees make?\nAnswer: honey\n\n"
    assert f"{shot}Plants breathe.\nQuestion: Which gas do plants take in?\nAnswer:" in shown.stdout
    assert f"{shot}\nQuestion: What melts ice?\nAnswer:" in shown.stdout


def test_boolq_is_asked_in_the_harness_words_with_each_passage_as_it_is(checkpoint_dirs, tmp_path, monkeypatch):
    """`eval --data boolq`: "{{passage}}\\nQuestion: {{question}}?\\nAnswer:" (the passage not stripped, unlike sciq's
    support), " no" and " yes" scored after it, a train example before it in the same words."""
    row = {"question": "is basil an annual plant", "passage": "  Basil is a tender annual.", "idx": 3, "label": 1}
    shot = {"question": "do bees make honey", "passage": "Bees make honey.", "idx": 0, "label": 1}
    calls = _fake_hub(monkeypatch, {"validation": pd.DataFrame([row]), "train": pd.DataFrame([shot])})
    args = ["eval", "--data", "boolq", "--model", str(checkpoint_dirs["qwen2"]), "-m", "origin", "--few-shot-k", "1",
            "--no-chat", "--no-progress", "--show-prompts", "1"]
    shown = CliRunner().invoke(_app(), args)
    assert shown.exit_code == 0, shown.output
    assert calls == [("aps/super_glue", "boolq", "validation"), ("aps/super_glue", "boolq", "train")]
    assert ("Bees make honey.\nQuestion: do bees make honey?\nAnswer: yes\n\n"
            "  Basil is a tender annual.\nQuestion: is basil an annual plant?\nAnswer:") in shown.stdout
    assert "options scored after each prompt: ' no' (" in shown.stdout and "), ' yes' (" in shown.stdout


OPEN_QA_ROWS = {  # each set's Hub rows (the fields minirun reads), its test question then its train example
    "triviaqa": [{"question_id": "tc_1", "question": "Which city hosted the 1992 Olympics?", "question_source": "x",
                  "answer": {"aliases": ["Barcelona", "Barcelona, Spain"], "value": "Barcelona"}},
                 {"question_id": "tc_2", "question": "Who wrote Hamlet?", "question_source": "x",
                  "answer": {"aliases": ["William Shakespeare", "Shakespeare"], "value": "Shakespeare"}}],
    "nq_open": [{"question": "where were the 1992 olympics held", "answer": ["Barcelona", "Barcelona, Spain"]},
                {"question": "who wrote hamlet", "answer": ["William Shakespeare"]}],
    "popqa": [{"id": 7, "question": "In what city were the 1992 Olympics held?", "prop": "location", "subj": "x",
               "possible_answers": '["Barcelona", "Barna"]'}],
}


@pytest.mark.parametrize("name, repo, config, splits, head, asked", [
    ("triviaqa", "mandarjoshi/trivia_qa", ("rc.nocontext",), ("validation", "train"),
     "Question: Who wrote Hamlet??\nAnswer: William Shakespeare\n\n",
     "Question: Which city hosted the 1992 Olympics??\nAnswer:"),
    ("nq_open", "google-research-datasets/nq_open", (), ("validation", "train"),
     "Answer these questions:\n\nQ: who wrote hamlet?\nA: William Shakespeare\n",
     "Q: where were the 1992 olympics held?\nA:"),
    ("popqa", "akariasai/PopQA", (), ("test",), None, "Q: In what city were the 1992 Olympics held?\nA:")])
def test_open_qa_sets_run_by_name(checkpoint_dirs, tmp_path, monkeypatch, name, repo, config, splits, head, asked):
    """`eval --data triviaqa` (nq_open, popqa): the evaluated split's questions with every answer their rows accept,
    TriviaQA and NQ-open in lm-evaluation-harness's words (`triviaqa`'s "?" after a question that has one, `nq_open`'s
    heading and single new lines), their train split's examples in the head; PopQA, whose one split is its test, in
    minirun's words with the bundled examples, scored per relation."""
    rows = OPEN_QA_ROWS[name]
    frames = {"test": pd.DataFrame(rows), "validation": pd.DataFrame(rows[:1]), "train": pd.DataFrame(rows[1:])}
    calls = _fake_hub(monkeypatch, frames)
    out = tmp_path / "run"
    base = ["eval", "--data", name, "--model", str(checkpoint_dirs["qwen2"]), "-m", "origin", "--no-chat"]
    shown = CliRunner().invoke(_app(), [*base, "--few-shot-k", "1", "--show-prompts", "1"])
    assert shown.exit_code == 0, shown.output
    head = head or build_prefix("qa", load_fewshot("sample-qa"), 1)  # PopQA: minirun's head of the bundled examples
    assert f"{head}{asked}" in shown.stdout
    assert calls == [(repo, *config, split) for split in splits]
    result = CliRunner().invoke(_app(), [*base, "--few-shot-k", "0", "--max-new-tokens", "2", "--no-progress",
                                         "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert recorded_source(out, "data_source") == {"hub": repo, **({"config": config[0]} if config else {}),
                                                   "revision": "main", "commit": "c" * 40}
    assert json.loads((out / "run.json").read_text())["run_key"]["prompt_format"] == (
        "minirun" if name == "popqa" else f"harness {name}")
    (row,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert (row["id"], row["relation"]) == {"triviaqa": ("tc_1", None), "popqa": ("popqa-7", "location")}.get(
        name, (load_dataset(name)[0].id, None))


def test_a_file_asked_as_a_benchmark_needs_its_hub_examples_only_where_it_asks_for_some(checkpoint_dirs, tmp_path,
                                                                                         monkeypatch):
    """`--benchmark arc_challenge --few-shot-k 0` reads nothing from the Hub (the harness's own ARC prompt has no
    examples); with examples and no Hub, the error names the fixes that serve examples, and `--few-shot` takes a
    local copy of ARC's train rows; TruthfulQA's worked questions are minirun's own: no Hub asked, none cited."""
    import huggingface_hub

    def unreachable(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    monkeypatch.setattr(huggingface_hub, "dataset_info", unreachable)
    monkeypatch.chdir(tmp_path)
    write_jsonl([Item("a1", "Which gas do plants take in?", ["What gas do plants absorb?"], ["carbon dioxide"],
                      "choice", None, ["oxygen", "carbon dioxide", "neon"], 1)], tmp_path / "arc-para.jsonl")
    base = ["eval", "--data", "arc-para.jsonl", "--model", str(checkpoint_dirs["qwen2"]), "-m", "origin", "--no-chat",
            "--no-progress"]
    bare = CliRunner().invoke(_app(), [*base, "--benchmark", "arc_challenge", "--few-shot-k", "0", "--output", "k0"])
    assert bare.exit_code == 0, bare.output
    assert recorded_source(tmp_path / "k0", "few_shot_source") is None  # no examples read, none cited
    shots = CliRunner().invoke(_app(), [*base, "--benchmark", "arc_challenge", "--few-shot-k", "1", "--output", "k1"])
    assert shots.exit_code == 1 and "cannot read arc_challenge's few-shot examples, allenai/ai2_arc[ARC-Challenge/" \
        "train]: (offline): check the network (HF_TOKEN, HF_ENDPOINT); or give them as a file (--few-shot FILE" in \
        " ".join(shots.output.split())
    pd.DataFrame({"id": ["s1"], "question": ["What melts ice?"],
                  "choices": [{"label": ["A", "B"], "text": ["heat", "cold"]}], "answerKey": ["A"]}).to_json(
        tmp_path / "arc-train.jsonl", orient="records", lines=True)
    local = CliRunner().invoke(_app(), [*base, "--benchmark", "arc_challenge", "--few-shot-k", "1", "--few-shot",
                                        "arc-train.jsonl", "--show-prompts", "1"])
    assert local.exit_code == 0, local.output
    assert "Question: What melts ice?\nAnswer: heat\n\nQuestion: Which gas do plants take in?\nAnswer:" in local.stdout
    own = CliRunner().invoke(_app(), [*base, "--benchmark", "truthfulqa_mc1", "--few-shot-k", "1", "--output", "tqa"])
    assert own.exit_code == 0, own.output
    assert "cannot ask the Hugging Face Hub" not in own.output
    assert recorded_source(tmp_path / "tqa", "few_shot_source") is None
    assert "truthfulqa_mc1's prompt takes its 6 worked questions in order, and --few-shot-k 1 asks the first 1; " \
           "lm-evaluation-harness asks all 6" in " ".join(own.output.split())


def test_flex_on_prompts_that_end_with_the_question_is_refused_before_any_method_runs(tiny, tmp_path):
    """OpenBookQA's harness prompt is the question stem alone: without a chat template nothing follows the
    paraphrases for flex to fuse in, which eval says up front (not after the other methods' batches, naming a
    --suffix eval does not have); lettered, the prompts end in "Answer:" and flex runs."""
    items = [dataclasses.replace(item, id=f"o{n}") for n, item in enumerate(load_dataset("sample-choice")[:2])]
    settings = {"dataset": "o.jsonl", "benchmark": "openbookqa", "few_shot_k": 0, "chat": False, "num_prompts": 2}
    with pytest.raises(MinirunError, match=r"^flex fuses the paraphrases in the tokens all prompts end with, and "
                                           r"openbookqa's prompts \(harness openbookqa\) end with the question itself"):
        loop.prepare(tiny, items, ["origin", "flex"], tmp_path / "a", **settings)
    loop.prepare(tiny, items, ["origin", "avg"], tmp_path / "b", **settings)
    loop.prepare(tiny, items, ["origin", "flex"], tmp_path / "c", **{**settings, "choice_format": "letters"})


def test_a_file_of_another_task_than_its_benchmark_is_refused_before_the_hub_is_asked(checkpoint_dirs, tmp_path,
                                                                                     monkeypatch):
    """`--benchmark mmlu` on a file of short answers: refused from the file, not after (or hidden behind) a lookup
    of MMLU's examples on the Hub, which offline failed first."""
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "dataset_info", lambda *a, **k: pytest.fail("the Hub was asked"))
    write_jsonl(load_dataset("sample-qa")[:2], tmp_path / "qa.jsonl")
    result = CliRunner().invoke(_app(), ["eval", "--data", str(tmp_path / "qa.jsonl"), "--benchmark", "mmlu",
                                         "--model", str(checkpoint_dirs["qwen2"]), "-m", "origin", "--no-progress"])
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "mmlu asks choice questions, and " in result.output


def test_a_benchmark_of_another_task_and_one_right_letter_are_refused(tiny, tmp_path, caplog):
    """A file's items asked in a benchmark's words must be that benchmark's task (a QA file asked as TruthfulQA
    would record a multiple-choice format for generated answers); lettered items whose right option is always at
    one letter are refused (ten or more) or warned of, as a model always answering it would score them all."""
    qa = load_dataset("sample-qa")[:2]
    with pytest.raises(MinirunError, match=r"^truthfulqa_mc1 asks choice questions, and qa\.jsonl's items are qa: "
                                           r"drop the benchmark"):
        loop.prepare(tiny, qa, ["origin"], tmp_path / "a", dataset="qa.jsonl", benchmark="truthfulqa_mc1",
                     few_shot_k=0)
    choice = [dataclasses.replace(item, id=f"c{n}", answer=0, answers=[item.choices[0]])
              for n, item in enumerate(load_dataset("sample-choice")[:10])]
    settings = {"dataset": "c.jsonl", "few_shot_k": 0, "choice_format": "letters", "num_prompts": 1}
    with pytest.raises(MinirunError, match="^every one of the 10 multiple-choice items asked has its right option at "
                                           "A, so lettered, a model that always answers A scores them all: use "
                                           "--choice-format cloze"):
        loop.prepare(tiny, choice, ["origin"], tmp_path / "b", **settings)
    with caplog.at_level("WARNING", logger="minirun"):
        loop.prepare(tiny, choice[:3], ["origin"], tmp_path / "c", **settings)
    assert "every one of the 3 multiple-choice items asked has its right option at A" in caplog.text
    mixed = [*choice[:9], dataclasses.replace(choice[9], answer=1, answers=[choice[9].choices[1]])]
    loop.prepare(tiny, mixed, ["origin"], tmp_path / "d", **settings)  # one elsewhere: the letters tell nothing
    loop.prepare(tiny, choice, ["origin"], tmp_path / "e", **{**settings, "choice_format": "cloze"})


def test_a_pinned_hub_dataset_is_read_at_its_commit_and_cited(checkpoint_dirs, tmp_path, monkeypatch):
    """`--data mmlu@v1` (a sweep's `name = "mmlu@v1"`) reads the test items and the few-shot examples at the commit
    v1 is at, run.json cites {hub, revision, commit}, and `report --latex` heads the table with it; a file asked as
    MMLU (`--benchmark mmlu`) reads and cites its Hub examples alike."""
    import huggingface_hub

    frames = {"test": pd.DataFrame({"question": ["2+2?", "Capital of Peru?"], "subject": ["math", "geo"],
                                    "choices": [["3", "4", "5", "6"], ["Lima", "Quito", "Bogota", "La Paz"]],
                                    "answer": [1, 0]}),
              "dev": pd.DataFrame({"question": ["3+3?", "Capital of Chile?"], "subject": ["math", "geo"],
                                   "choices": [["6", "7", "8", "9"], ["Santiago", "Lima", "Quito", "Cusco"]],
                                   "answer": [0, 0]})}
    calls, commit = [], "d" * 40

    def load_hub_dataset(name, *config, split, **pinned):
        calls.append((name, split, pinned.get("revision")))
        return types.SimpleNamespace(to_pandas=lambda: frames[split].copy())

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_hub_dataset))
    monkeypatch.setattr(huggingface_hub, "dataset_info",
                        lambda repo, revision=None: types.SimpleNamespace(sha=commit if revision == "v1" else "e" * 40))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(_app(), ["eval", "--data", "mmlu@v1", "--model", str(checkpoint_dirs["qwen2"]),
                                         "-m", "origin", "--few-shot-k", "1", "--max-new-tokens", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert calls == [("cais/mmlu", "test", commit), ("cais/mmlu", "dev", commit)]
    run = tmp_path / "runs" / f"mmlu-v1-{checkpoint_dirs['qwen2'].name}"
    cited = {"hub": "cais/mmlu", "revision": "v1", "commit": commit}
    assert recorded_source(run, "data_source") == cited
    assert json.loads((run / "run.json").read_text())["run_key"]["dataset"] == "mmlu"  # the revision is no setting
    CliRunner().invoke(_app(), ["report", str(run), "--latex", str(tmp_path / "t.tex")])
    assert f"% data source: {json.dumps(cited, sort_keys=True)}" in (tmp_path / "t.tex").read_text().splitlines()

    calls.clear()  # a file asked as MMLU (`minirun paraphrase mmlu`'s output): its Hub examples at one commit, cited
    write_jsonl([Item("p1", "2+2?", ["Two plus two?"], ["4"], "choice", "math", ["3", "4", "5", "6"], 1),
                 Item("p2", "Capital of Peru?", ["Peru's capital?"], ["Lima"], "choice", "geo",
                      ["Lima", "Quito", "Bogota", "La Paz"], 0)], tmp_path / "para.jsonl")
    result = CliRunner().invoke(_app(), ["eval", "--data", "para.jsonl", "--benchmark", "mmlu", "--model",
                                         str(checkpoint_dirs["qwen2"]), "-m", "origin", "--few-shot-k", "1",
                                         "--max-new-tokens", "2", "--no-progress", "--output", "para"])
    assert result.exit_code == 0, result.output
    main = {"hub": "cais/mmlu", "revision": "main", "commit": "e" * 40}
    assert calls == [("cais/mmlu", "dev", "e" * 40)] and recorded_source(tmp_path / "para", "few_shot_source") == main
    assert recorded_source(tmp_path / "para", "data_source") is None  # the items are the file's
    CliRunner().invoke(_app(), ["report", "para", "--latex", str(tmp_path / "p.tex")])
    assert f"% few shot source: {json.dumps(main, sort_keys=True)}" in (tmp_path / "p.tex").read_text().splitlines()
    calls.clear()  # the benchmark's examples pinned as its data would be: `--benchmark mmlu@v1`
    result = CliRunner().invoke(_app(), ["eval", "--data", "para.jsonl", "--benchmark", "mmlu@v1", "--model",
                                         str(checkpoint_dirs["qwen2"]), "-m", "origin", "--few-shot-k", "1",
                                         "--max-new-tokens", "2", "--no-progress", "--output", "para-v1"])
    assert result.exit_code == 0, result.output
    assert calls == [("cais/mmlu", "dev", commit)] and recorded_source(tmp_path / "para-v1", "few_shot_source") == cited
    assert json.loads((tmp_path / "para-v1" / "run.json").read_text())["run_key"]["prompt_format"] != "minirun"

    calls.clear()
    (tmp_path / "sweep.toml").write_text(f'''[generation]\nmax_new_tokens = 2
[[models]]\npath = "{checkpoint_dirs["qwen2"]}"\n[[datasets]]\nname = "mmlu@v1"\nfew_shot_k = 1
[[datasets]]\nname = "para.jsonl"\nbenchmark = "mmlu"\nfew_shot_k = 1
[[datasets]]\nname = "para.jsonl"\nlabel = "para-v1"\nbenchmark = "mmlu@v1"\nfew_shot_k = 1
[[methods]]\nname = "origin"\n''')
    result = CliRunner().invoke(cli_app, ["sweep", "sweep.toml", "--output", "swept", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert sorted(calls) == sorted([("cais/mmlu", "test", commit), ("cais/mmlu", "dev", commit),
                                    ("cais/mmlu", "dev", "e" * 40), ("cais/mmlu", "dev", commit)])
    assert recorded_source(tmp_path / "swept" / "qwen2" / "mmlu-v1" / "origin", "data_source") == cited
    assert recorded_source(tmp_path / "swept" / "qwen2" / "para" / "origin", "few_shot_source") == main
    assert recorded_source(tmp_path / "swept" / "qwen2" / "para-v1" / "origin", "few_shot_source") == cited


def test_thinking_asked_of_a_template_without_the_switch_is_said_to_change_nothing(tiny, tmp_path, caplog):
    """--thinking where the template has no reasoning switch (Qwen2's, SmolLM2's) renders the prompts it would
    render anyway: said so, not that the model thinks before it answers. A run of scored choices alone, which
    generate nothing, reports as any other (its rows have no thinking to be cut)."""
    choice = load_dataset("sample-choice")[:2]
    with caplog.at_level("WARNING", logger="minirun"):
        evaluate(tiny, choice, ["origin"], tmp_path, **{**SETTINGS, "dataset": "sample-choice"}, thinking=True)
    assert "qwen2's chat template has no reasoning switch (Qwen3's enable_thinking): asking it to think (--thinking, " \
           "a sweep's thinking = true) changes none of its prompts" in caplog.text
    assert "thinks before it answers" not in caplog.text
    shown = CliRunner().invoke(_app(), ["report", str(tmp_path)])
    assert shown.exit_code == 0, shown.output
    qa = tmp_path / "qa"  # generated answers that reach max_new_tokens were reported "none, as their thinking did
    evaluate(tiny, load_dataset("sample-qa")[:2], ["origin"], qa, **SETTINGS, thinking=True)  # not end": none began
    assert json.loads((qa / "run.json").read_text())["run_key"]["thinks"] is False  # answers as without --thinking
    record = json.loads((qa / "run.json").read_text())
    del record["run_key"]["thinks"]  # a run begun before the key: resumed, not refused
    (qa / "run.json").write_text(json.dumps(record))
    evaluate(tiny, load_dataset("sample-qa")[:3], ["origin"], qa, **SETTINGS, thinking=True)
    shown = CliRunner().invoke(_app(), ["report", str(qa)])
    assert shown.exit_code == 0 and "their thinking did not end" not in shown.output


def test_a_template_that_opens_thinking_answers_after_it(checkpoint_dirs, items, tmp_path, caplog):
    """A DeepSeek-R1 distillation's template ends its prompt inside <think>: eval's stop at a new line then waits
    for </think>, and an answer whose thinking never ended within max_new_tokens is empty, not the thinking's first
    line. The weighted methods, which judge confidence on short samples of the answer, refuse such a model."""
    ckpt = shutil.copytree(checkpoint_dirs["qwen2"], tmp_path / "ckpt")
    template = ckpt / "chat_template.jinja"
    plain = minirun.load(ckpt)
    template.write_text(template.read_text().replace("assistant\\n", "assistant\\n<think>\\n"))
    thinking = minirun.load(ckpt)
    assert thinking.tokenizer.opens_reasoning() and not plain.tokenizer.opens_reasoning()
    settings = {**SETTINGS, "max_new_tokens": 12}
    before = evaluate(plain, items, ["origin"], tmp_path / "plain", **settings)
    with caplog.at_level("WARNING", logger="minirun"):  # before it runs: 12 tokens seldom reach the answer
        after = evaluate(thinking, items, ["origin"], tmp_path / "thinking", **settings)
    assert "ckpt thinks before it answers, and 12 new tokens seldom reach the answer" in caplog.text
    stopped = before["generated"].str.len() < after["generated"].str.len()
    assert (after["answer"] == "").all() and stopped.any() and (before["answer"] != "").any()
    shown = " ".join(CliRunner().invoke(_app(), ["report", str(tmp_path / "thinking")]).output.split())
    assert "origin: 6 of 6 answers are none, as their thinking did not end within max_new_tokens 12" in shown
    assert "thinking did not end" not in CliRunner().invoke(_app(), ["report", str(tmp_path / "plain")]).output
    closing = CliRunner().invoke(_app(), ["eval", "--model", str(ckpt), "-m", "origin", "--output",
                                          str(tmp_path / "cli"), *CLI_SETTINGS])  # its closing table says it too
    assert closing.exit_code == 0, closing.output
    assert "origin: 6 of 6 answers are none, as their thinking did not end within max_new_tokens 4" in " ".join(
        closing.output.split())
    record = json.loads((tmp_path / "thinking" / "run.json").read_text())
    assert record["run_key"]["answers"] == "after thinking" and "answers" not in json.loads(
        (tmp_path / "plain" / "run.json").read_text())["run_key"]
    del record["run_key"]["answers"]  # as a minirun before answers came after the thinking wrote it
    (tmp_path / "thinking" / "run.json").write_text(json.dumps(record))
    with pytest.raises(MinirunError, match="took a reasoning model's answers from its thinking's first line"):
        evaluate(thinking, items, ["origin"], tmp_path / "thinking", **settings)
    with pytest.raises(MinirunError, match="the weighted methods measure each prompt's confidence on 16-token"):
        evaluate(thinking, items[:1], ["weighted_avg"], tmp_path / "weighted", **settings)


WINO_ROWS = [{"sentence": "The ball broke the window because _ was fragile.", "option1": "the ball",
              "option2": "the window", "answer": "2"},
             {"sentence": "Anna thanked Maria because _ had helped her.", "option1": "Anna", "option2": "Maria",
              "answer": "2"}]
WINO_SHOT = {"sentence": "The cup fell off the table because _ was tilted.", "option1": "the cup",
             "option2": "the table", "answer": "2"}


def test_winogrande_is_asked_in_the_harness_words_each_option_in_the_gap(checkpoint_dirs, tmp_path, monkeypatch):
    """`eval --data winogrande`: each option written into the sentence's gap, the words after it scored after a
    space; a train example before it with its right option in the gap; origin's pick the harness's (the option under
    which those words are likeliest), recorded with the options and the right one."""
    calls = _fake_hub(monkeypatch, {"validation": pd.DataFrame(WINO_ROWS), "train": pd.DataFrame([WINO_SHOT])})
    base = ["eval", "--data", "winogrande", "--model", str(checkpoint_dirs["qwen2"]), "-m", "origin", "--few-shot-k",
            "1", "--no-chat", "--no-progress"]
    shown = CliRunner().invoke(_app(), [*base, "--show-prompts", "1"])
    assert shown.exit_code == 0, shown.output
    assert calls == [("allenai/winogrande", "winogrande_xl", "validation"),
                     ("allenai/winogrande", "winogrande_xl", "train")]
    head = "The cup fell off the table because the table was tilted.\n\n"
    for option in ("the ball", "the window"):
        assert f"{head}The ball broke the window because {option}\n--- " in shown.stdout
    assert "--- scored after it: ' was fragile.' (" in shown.stdout
    out = tmp_path / "run"
    result = CliRunner().invoke(_app(), [*base, "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = pd.read_json(out / "results.jsonl", lines=True)
    assert list(rows["choices"]) == [["the ball", "the window"], ["Anna", "Maria"]]
    assert list(rows["gold_choice"]) == [1, 1]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint_dirs["qwen2"])
    reference = AutoModelForCausalLM.from_pretrained(checkpoint_dirs["qwen2"], dtype=torch.float32).eval()
    for row, sentence in zip(rows.itertuples(), [r["sentence"] for r in WINO_ROWS]):
        gap = sentence.index("_")
        sums = []
        for option in row.choices:  # the harness's context and target, through transformers
            context = head + sentence[:gap] + option
            start, whole = len(tok(context).input_ids), tok(f"{context} {sentence[gap + 1:].strip()}").input_ids
            with torch.no_grad():
                logp = reference(torch.tensor([whole])).logits[0].float().log_softmax(-1)
            sums.append(sum(logp[j - 1, whole[j]].item() for j in range(start, len(whole))))
        assert row.choice_logprobs == pytest.approx(sums, abs=1e-4)
        assert row.choice == max(range(2), key=sums.__getitem__)
    assert json.loads((out / "run.json").read_text())["run_key"]["prompt_format"] == "harness winogrande"


def test_gap_items_are_refused_where_they_cannot_be_asked_as_scored(checkpoint_dirs, tmp_path):
    """A file of gap items is asked as Winogrande (--benchmark); one run asks gap items or others, one gap mark;
    few-shot examples of gap questions fill a gap too; the weighted methods have no answer to sample; winogrande
    asks gap items only; letters are refused (cloze only). Each refused in one line before any model time."""
    gap = {"id": "g1", "question": "The ball broke the window because _ was fragile.", "choices": ["the ball",
           "the window"], "answer": 1, "blank": "_",
           "paraphrases": ["The window was broken by the ball because _ was fragile."]}
    plain = {"id": "p1", "question": "What is the capital of France?", "choices": ["Paris", "Rome"], "answer": 0,
             "paraphrases": ["Which city is France's capital?"]}

    def write(name: str, *records: dict) -> str:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
        return str(tmp_path / name)

    base = ["eval", "--model", str(checkpoint_dirs["qwen2"]), "--no-chat", "--few-shot-k", "0", "--output",
            str(tmp_path / "run")]
    for extra, problem in [
            (["--data", write("g.jsonl", gap), "-m", "avg"], "fill a gap .*: pass --benchmark winogrande"),
            (["--data", write("m.jsonl", gap, plain), "-m", "avg", "--benchmark", "winogrande"],
             "some items fill a gap .* and others do not"),
            (["--data", write("two.jsonl", gap, {**gap, "id": "g2", "blank": "___",
                                                 "question": gap["question"].replace("_", "___"),
                                                 "paraphrases": []}), "-m", "avg", "--benchmark", "winogrande"],
             "the items mark their gaps '_' and '___'"),
            (["--data", write("p.jsonl", plain), "-m", "avg", "--benchmark", "winogrande"],
             "winogrande asks sentences with a gap"),
            (["--data", write("g.jsonl", gap), "-m", "weighted_avg", "--benchmark", "winogrande"],
             "weighted_avg weighs each prompt .* use avg or max for gap items"),
            (["--data", write("g.jsonl", gap), "-m", "avg", "--benchmark", "winogrande", "--choice-format",
              "letters"], "winogrande is asked cloze only"),
            (["--data", write("g.jsonl", gap), "-m", "avg", "--benchmark", "winogrande", "--few-shot",
              write("shots.jsonl", {**plain, "id": "s1"}), "--few-shot-k", "1"],
             "the few-shot examples have no gap"),
            (["--data", write("open.jsonl", gap, {**gap, "id": "g2", "question": "_ was fragile, said the ball.",
                                                  "paraphrases": ["Said the ball: _ was fragile, said the ball."]}),
              "-m", "origin", "-m", "flex", "--benchmark", "winogrande"],  # refused before origin writes a row
             "flex fuses a gap question's wordings .* ask it in a chat template")]:
        result = CliRunner().invoke(_app(), [*base, *extra])
        assert result.exit_code == 1 and re.search(problem, result.output), (extra, result.output)
        assert "Traceback" not in result.output and not (tmp_path / "run" / "results.jsonl").exists()
        assert "distinct prompts" not in result.output, extra  # no warning on prompts a refused run never asks


def test_a_paraphrased_gap_file_runs_every_method_and_resumes(checkpoint_dirs, tmp_path):
    """Gap items with paraphrases, asked as winogrande without a chat template: flex fuses the paraphrases in the
    option each prompt ends with; identical paraphrases fuse to origin's scores; a second run resumes every row."""
    sentence = "The ball broke the window because _ was fragile."
    items = [{"id": "g1", "question": sentence, "choices": ["the ball", "the window"], "answer": 1, "blank": "_",
              "paraphrases": [sentence, "The window was broken by the ball because _ was fragile."]},
             {"id": "g2", "question": "Anna thanked Maria because _ had helped her.", "choices": ["Anna", "Maria"],
              "answer": 1, "blank": "_", "paraphrases": ["Anna thanked Maria because _ had helped her."] * 2}]
    data = tmp_path / "gaps.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in items))
    args = ["eval", "--data", str(data), "--benchmark", "winogrande", "--model", str(checkpoint_dirs["qwen2"]),
            "--no-chat", "--few-shot-k", "0", "--no-progress", "--choice-score", "sum", "--output", str(tmp_path / "r"),
            *[x for m in ("origin", "per_prompt", "vote", "avg", "max", "hidden_avg", "flex") for x in ("-m", m)]]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    rows = pd.read_json(tmp_path / "r" / "results.jsonl", lines=True).set_index(["id", "method"])
    assert len(rows) == 14
    origin = rows.loc[("g2", "origin"), "choice_logprobs"]
    for method in ("avg", "max", "hidden_avg"):  # one distinct wording: the ensembles are origin
        assert rows.loc[("g2", method), "choice_logprobs"] == pytest.approx(origin, abs=1e-4)
    assert rows.loc[("g1", "flex"), "choice_logprobs"] != pytest.approx(rows.loc[("g1", "origin"), "choice_logprobs"],
                                                                        abs=1e-3)
    assert rows.loc[("g1", "per_prompt"), "per_prompt_logprobs"][0] == pytest.approx(
        rows.loc[("g1", "origin"), "choice_logprobs"], abs=1e-4)
    written = (tmp_path / "r" / "results.jsonl").read_bytes()
    again = CliRunner().invoke(_app(), args)
    assert again.exit_code == 0, again.output
    assert (tmp_path / "r" / "results.jsonl").read_bytes() == written  # every row resumed, none run again


def test_hellaswag_endings_are_scored_with_the_harness_spacing(checkpoint_dirs, tmp_path, monkeypatch):
    """HellaSwag's WikiHow endings open with a "[step]" mark, which cleaning leaves as a leading space: the harness
    scores it, after its own space ("  Water…"), and divides acc_norm by its length with it; so does a run in its
    format without a chat template, which its key records (`options_spaced`), so that a run scored the old way
    (options stripped) is refused on resume, not mixed."""
    row = {"ind": 4, "activity_label": "Health", "ctx_a": "[header] How to freeze water [title] Fill a cup.",
           "ctx_b": "", "endings": ["[step] Water turns to ice in the freezer.", "[substeps] Boil it first.",
                                    "Pour the cup on the floor.", "Sing to the water [title] Wait."], "label": "0"}
    _fake_hub(monkeypatch, {"validation": pd.DataFrame([row]), "train": pd.DataFrame([row])})
    out = tmp_path / "run"
    args = ["eval", "--data", "hellaswag", "--model", str(checkpoint_dirs["qwen2"]), "-m", "origin", "--no-chat",
            "--few-shot-k", "0", "--no-progress", "--choice-score", "sum", "--output", str(out)]
    shown = CliRunner().invoke(_app(), [*args, "--show-prompts", "1"])
    assert shown.exit_code == 0, shown.output
    assert "options scored after each prompt: '  Water turns to ice in the freezer.' (" in shown.stdout
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    (scored,) = pd.read_json(out / "results.jsonl", lines=True).itertuples()
    endings = [" Water turns to ice in the freezer.", " Boil it first.", "Pour the cup on the floor.",
               "Sing to the water. Wait."]
    assert scored.choices == endings and scored.choice_chars == [len(e) for e in endings]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(checkpoint_dirs["qwen2"])
    reference = AutoModelForCausalLM.from_pretrained(checkpoint_dirs["qwen2"], dtype=torch.float32).eval()
    context, sums = "Health: How to freeze water. Fill a cup.", []
    for ending in endings:  # the harness's request: the context, then " " and the ending as cleaned
        start, whole = len(tok(context).input_ids), tok(f"{context} {ending}").input_ids
        with torch.no_grad():
            logp = reference(torch.tensor([whole])).logits[0].float().log_softmax(-1)
        sums.append(sum(logp[j - 1, whole[j]].item() for j in range(start, len(whole))))
    assert scored.choice_logprobs == pytest.approx(sums, abs=1e-4)
    info = json.loads((out / "run.json").read_text())
    assert info["run_key"]["options_spaced"] == "as lm-evaluation-harness"
    for other, extra in (("chat", ["--chat"]), ("letters", ["--choice-format", "letters"])):  # spaced as before
        done = CliRunner().invoke(_app(), [*args[:-1], str(tmp_path / other), *extra])
        assert done.exit_code == 0, done.output
        assert "options_spaced" not in json.loads((tmp_path / other / "run.json").read_text())["run_key"]
    del info["run_key"]["options_spaced"]  # as a minirun before the harness's spacing recorded it
    (out / "run.json").write_text(json.dumps(info))
    again = CliRunner().invoke(_app(), args)
    assert again.exit_code == 1 and "its options were scored stripped, after a prompt" in again.output
