"""Loaders: plain JSONL, WebQA forms, MyriadLAMA grouping/sampling/splitting, dispatch, samples."""
from __future__ import annotations

import dataclasses
import json
import re
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

import minirun.eval.data
from minirun.errors import MinirunError
from minirun.eval.data import (
    Item,
    asked_items,
    benchmark_source,
    dataset_source,
    hub_dataset,
    item_record,
    load_commonsense_qa,
    load_dataset,
    load_fewshot,
    load_jsonl,
    load_mmlu,
    load_myriadlama,
    load_webqa,
    write_jsonl,
)
from minirun.eval.data.items import content_id, ensemble_prompts, item_from_dict
from minirun.eval.data.myriadlama import template_prompt
from minirun.eval.data.webqa import parse_target_value
from minirun.text import normalize


def _write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _record(i, **extra):
    return json.dumps({"id": f"q{i}", "question": f"Question {i}?", "paraphrases": [], "answers": ["x"], **extra})


# --- plain JSONL -------------------------------------------------------------------------

def test_jsonl_roundtrip(tmp_path):
    items = [Item("a", "Capital of France?", ["Capital of France?", "France's capital?"], ["Paris"]),
             Item("b", "The capital of Spain is", [], ["Madrid"], task="fill", relation="capital")]
    write_jsonl(items, tmp_path / "out" / "items.jsonl")
    loaded = load_jsonl(tmp_path / "out" / "items.jsonl")
    assert list(loaded) == items and loaded.skipped == 0
    assert loaded[1].prompts == ["The capital of Spain is"]  # no paraphrases: the question alone


@pytest.mark.parametrize("bad", ['{"id": "q9", "question": "Q?"', '{"id": "q9", "question": "Q?", "answers": ["x"]}',
                                 _record(9, task="essay"), _record(1)])
def test_jsonl_bad_line_names_file_and_line(tmp_path, bad):
    path = _write_lines(tmp_path / "d.jsonl", [_record(1), bad, _record(3)])
    with pytest.raises(MinirunError, match=r"d\.jsonl:2: "):
        load_jsonl(path)


def test_prompts_are_the_question_then_distinct_paraphrases(tmp_path):
    """Both file shapes, the question repeated as paraphrase 0 (up to case and spacing) or not,
    give the same prompts: the question first, then each paraphrase once, blanks dropped."""
    question, paras = "What is the capital of France?", ["Which city is France's capital?", "Name France's capital."]
    repeated = {"id": "a", "question": question, "answers": ["Paris"],
                "paraphrases": [" what is  the capital of FRANCE? ", *paras, paras[0].upper(), " "]}
    plain = {**repeated, "id": "b", "paraphrases": paras}
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps(repeated), json.dumps(plain)])
    a, b = load_jsonl(path)
    assert a.prompts == b.prompts == [question, *paras]
    assert ensemble_prompts(question, a.paraphrases, original=False) == paras
    assert ensemble_prompts(question, [question], original=False) == []


def test_jsonl_skip_bad_counts(tmp_path):
    path = _write_lines(tmp_path / "d.jsonl", [_record(1), "not json", '{"id": "z"}', "", _record(2)])
    loaded = load_jsonl(path, skip_bad=True)
    assert [it.id for it in loaded] == ["q1", "q2"] and loaded.skipped == 2


def test_a_text_file_given_as_data_is_named_so(tmp_path):
    """A prefix file passed to paraphrase got line 1's JSON error and a hint to skip bad records."""
    (tmp_path / "prefix.txt").write_text("Answer briefly.\n\nQ: What is 2+2?\nA: 4\n")
    with pytest.raises(MinirunError, match="prefix.txt holds no JSON record on any line: a dataset is JSON lines"):
        load_dataset(tmp_path / "prefix.txt")
    (tmp_path / "one_bad.jsonl").write_text('oops\n{"id": "a", "question": "Q?", "answers": ["x"]}\n')
    with pytest.raises(MinirunError, match="one_bad.jsonl:1: .*--skip-bad"):  # a bad line among records: named
        load_dataset(tmp_path / "one_bad.jsonl")


def test_a_broken_json_array_is_named_with_its_flaw(tmp_path):
    """A JSON array with a flaw was called a file with no JSON record on any line, which points away from the fix."""
    (tmp_path / "arr.json").write_text(f"[{_record(1)},\n {{\"id\": \"q2\"\n")
    with pytest.raises(MinirunError, match=r"arr.json opens a JSON array but is not valid JSON \(.* at line 3, col"):
        load_dataset(tmp_path / "arr.json")
    (tmp_path / "ok.json").write_text(f"[{_record(1)}]")
    assert [it.id for it in load_dataset(tmp_path / "ok.json")] == ["q1"]


def test_jsonl_empty_and_missing(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(MinirunError, match="no usable items"):
        load_jsonl(tmp_path / "empty.jsonl")
    with pytest.raises(MinirunError, match="no such dataset file"):
        load_jsonl(tmp_path / "nope.jsonl")


def test_a_plain_file_is_told_by_all_its_records_not_its_first(tmp_path):
    """A first record short of its id read the whole file as WebQA: ids made up, tasks and relations dropped,
    later records unchecked. The plain loader names the record instead."""
    first = json.dumps({"question": "Capital of France?", "paraphrases": [], "answers": ["Paris"]})
    path = _write_lines(tmp_path / "d.jsonl", [first, _record(2, task="fill", relation="P36")])
    with pytest.raises(MinirunError, match=r"d\.jsonl:1: missing field\(s\) id"):
        load_dataset(path)
    assert [item.id for item in load_dataset(path, skip_bad=True)] == ["q2"]
    (tmp_path / "d.json").write_text(json.dumps([json.loads(first), json.loads(_record(2, task="fill"))]))
    with pytest.raises(MinirunError, match=r"d\.json: item 1: missing field\(s\) id"):
        load_dataset(tmp_path / "d.json")


@pytest.mark.parametrize("extra", [{"template": "[X] is the capital of [Y]."}, {"answerKey": "B"}])
def test_a_plain_item_with_another_datasets_field_is_still_a_plain_item(tmp_path, extra):
    path = _write_lines(tmp_path / "d.jsonl", [_record(1, task="fill", **extra), _record(2)])
    assert [(item.id, item.task) for item in load_dataset(path)] == [("q1", "fill"), ("q2", "qa")]


@pytest.mark.parametrize("field, value", [("id", None), ("id", ""), ("id", ["a"]), ("id", True),
                                          ("answers", ["", "Madrid"]), ("answers", ["Madrid", " "])])
def test_blank_answers_and_ids_that_are_not_names_are_refused(tmp_path, field, value):
    """A blank first answer became an empty worked example ("A: "), and null or list ids were made strings."""
    path = _write_lines(tmp_path / "d.jsonl", [json.dumps({**json.loads(_record(1)), field: value})])
    with pytest.raises(MinirunError, match=rf"d\.jsonl:1: field '{field}'"):
        load_jsonl(path)
    assert load_jsonl(_write_lines(tmp_path / "n.jsonl", [json.dumps({**json.loads(_record(1)), "id": 7})]))[0].id == "7"


def test_a_byte_order_mark_is_not_part_of_the_first_record(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + (_record(1) + "\n" + _record(2) + "\n").encode())
    assert [item.id for item in load_dataset(path)] == ["q1", "q2"]


def test_a_few_shot_files_errors_name_its_own_fix(tmp_path):
    with pytest.raises(MinirunError, match=r"no such few-shot file; pass an existing JSONL path$"):
        load_jsonl(tmp_path / "nope.jsonl", examples=True)
    path = _write_lines(tmp_path / "shots.jsonl", [_record(1), "not json"])
    with pytest.raises(MinirunError, match=r"shots\.jsonl:2: .*fix that record \(a few-shot file's bad records are not "
                                           r"skipped\)$"):
        load_jsonl(path, skip_bad=True, examples=True)


# --- WebQA -------------------------------------------------------------------------------

def test_parse_target_value():
    target = '(list (description "Jamaican English") (description "Say \\"hi\\"") (description 1982))'
    assert parse_target_value(target) == ["Jamaican English", 'Say "hi"', "1982"]


def test_webqa_json_forms(tmp_path):
    original = [{"utterance": "what does jamaican people speak?", "url": "u",
                 "targetValue": '(list (description "Jamaican English") (description "Jamaican Creole English Language"))'},
                {"qText": "who is obama?", "answers": ["Barack Obama", ""]}]
    (tmp_path / "wq.json").write_text(json.dumps(original))
    items = load_webqa(path=tmp_path / "wq.json")
    assert items[0].answers == ["Jamaican English", "Jamaican Creole English Language"]
    assert items[1].question == "who is obama?" and items[1].answers == ["Barack Obama"]
    assert items[0].id.startswith("wq-") and items[0].paraphrases == [] and items[0].task == "qa"


def test_webqa_paraphrased_jsonl_and_duplicate_ids(tmp_path):
    rows = [{"question": "where is x?", "answers": ["A"], "paraphrase0": "where is x?",
             "paraphrase2": "x is located where?", "paraphrase1": "in which place is x?"},
            {"question": "where is x?", "answers": ["A"]}]
    path = _write_lines(tmp_path / "wq.jsonl", [json.dumps(r) for r in rows])
    first, second = load_webqa(path=path)
    assert first.paraphrases == ["where is x?", "in which place is x?", "x is located where?"]
    assert first.prompts == first.paraphrases and second.prompts == ["where is x?"]  # paraphrase0 is the question
    assert second.id == first.id + "-2"


def test_numbering_repeated_ids_makes_no_repeat_of_its_own(tmp_path):
    """Ids q, q, q-2: the second q was numbered q-2, the third item's own id, and the run then refused the data for
    a repeat the loader made; an id of 0 is an id (a test of truth read it as none, and took the question's hash)."""
    rows = [{"id": i, "question": f"where is {n}?", "answers": ["A"]} for n, i in enumerate(["q", "q", "q-2", "q"])]
    rows.append({"id": 0, "question": "where is y?", "answers": ["B"]})
    path = _write_lines(tmp_path / "wq.jsonl", [json.dumps(r) for r in rows])
    assert [item.id for item in load_webqa(path=path)] == ["q", "q-3", "q-2", "q-4", "0"]


def test_webqa_bad_record(tmp_path):
    (tmp_path / "wq.json").write_text(json.dumps([{"question": "q?"}]))
    with pytest.raises(MinirunError, match="record 1: no 'answers'"):
        load_webqa(path=tmp_path / "wq.json")


def test_webqa_values_are_checked_or_converted(tmp_path):
    """Numbers as answers become their string form, null paraphrases are left out, and a question
    or targetValue that is not text is a one-line error naming the record and field."""
    rows = [{"question": "when did apollo 11 land?", "answers": [1969, "July 1969", None],
             "paraphrase0": "when did apollo 11 land?", "paraphrase1": None, "paraphrase2": "apollo 11 landed when?"}]
    (tmp_path / "wq.json").write_text(json.dumps(rows))
    (item,) = load_webqa(path=tmp_path / "wq.json")
    assert item.answers == ["1969", "July 1969"]
    assert item.paraphrases == ["when did apollo 11 land?", "apollo 11 landed when?"]
    for record, message in [({"question": 1984, "answers": ["x"]}, "field 'question' must be a string, got 1984"),
                            ({"question": "q?", "targetValue": 7}, "field 'targetValue' must be"),
                            ({"question": "q?", "answers": [{"a": 1}]}, "field 'answers' holds")]:
        (tmp_path / "bad.json").write_text(json.dumps([record]))
        with pytest.raises(MinirunError, match=rf"bad\.json: record 1: {message}"):
            load_dataset(tmp_path / "bad.json")


def test_webqa_hub_without_datasets_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MinirunError, match="pip install datasets"):
        load_webqa()


def _fake_datasets(monkeypatch, frames):
    calls = []

    def load_dataset(name, *config, split, **pinned):
        calls.append((name, *config, split, *pinned.values()))  # the revision, where one is asked for
        return types.SimpleNamespace(to_pandas=lambda: frames[name].copy())

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


@pytest.mark.parametrize("error, subset, said", [
    (ConnectionError("Couldn't reach 'cais/mmlu' on the Hub (LocalEntryNotFoundError)"), None,
     "cannot load cais/mmlu[all/test] from the Hugging Face Hub (Couldn't reach 'cais/mmlu' on the Hub"),
    (ValueError("BuilderConfig 'Astronomy' not found. Available: ['abstract_algebra', 'all', ...]\nmore"), "Astronomy",
     "(BuilderConfig 'Astronomy' not found. Available: ['abstract_algebra', 'all', ...]): check the network "
     "(HF_TOKEN, HF_ENDPOINT), or the subset 'Astronomy' (--subset, spelt as the Hub does)"),
])
def test_a_hub_dataset_that_cannot_load_is_one_line_naming_it(monkeypatch, error, subset, said):
    """Offline, a misspelt subject: one line naming the dataset and the fix, not a traceback or an OSError's
    "check the path"."""
    def failing(name, *config, split):
        raise error

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=failing))
    with pytest.raises(MinirunError) as e:
        load_dataset("mmlu", subset=subset)
    assert said in str(e.value) and "\n" not in str(e.value) and str(e.value).endswith("(`--data FILE`)")


def test_an_arc_set_that_cannot_load_names_its_config_not_a_subset(monkeypatch):
    """ARC's set is minirun's choice of config, not the user's `--subset`: the error does not blame one."""
    def failing(name, *config, split):
        raise ConnectionError("Couldn't reach 'allenai/ai2_arc' on the Hub")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=failing))
    with pytest.raises(MinirunError, match=r"^cannot load allenai/ai2_arc\[ARC-Challenge/test\] from the Hugging Face "
                                           r"Hub \(Couldn't reach 'allenai/ai2_arc' on the Hub\): check the network "
                                           r"\(HF_TOKEN, HF_ENDPOINT\); or give"):
        load_dataset("arc_challenge")


def test_webqa_hub_split(monkeypatch):
    frame = pd.DataFrame({"url": ["u"], "question": ["what is x?"], "answers": [["A", "B"]]})
    calls = _fake_datasets(monkeypatch, {"stanfordnlp/web_questions": frame})
    (item,) = load_webqa(split="train")
    assert calls == [("stanfordnlp/web_questions", "train")] and item.answers == ["A", "B"]


# --- MyriadLAMA ----------------------------------------------------------------------------

def _lama_rows(n_facts=6):
    rows = []
    for f in range(n_facts):
        for t, (template, manual) in enumerate([("[X] is the capital of [Y] .", True), ("The capital of [X] is [Y].", True),
                                                ("[Y] has [X] as its capital.", True)]
                                               + [(f"Auto template {k} for [X]: [Y]", False) for k in range(8)]):
            rows.append({"uuid": f"u{f}", "rel_uri": "P36", "sub_ent": f"Sub{f}" if t % 2 else f"Subj{f}",
                         "template": template, "is_manual": manual,
                         "obj_ents": [f"Obj{f}"], "obj_aliases": [f"Obj{f}", f"O{f}"]})
    return pd.DataFrame(rows)


def test_template_prompt():
    assert template_prompt("The capital of [X] is [Y] .", "France") == "The capital of France is"
    assert template_prompt("[Y] is where [X] was born", "Ann") is None  # subject after the slot
    assert template_prompt("[X] is nice", "Ann") is None


def test_myriadlama_grouping_and_sampling(tmp_path):
    _lama_rows().to_parquet(tmp_path / "ml.parquet")
    items = load_myriadlama(tmp_path / "ml.parquet", n_test=4, n_auto=3, seed=1)
    assert len(items) == 4
    for item in items:
        f = item.id[1:]
        assert item.task == "fill" and item.relation == "P36" and item.answers == [f"Obj{f}", f"O{f}"]
        assert item.paraphrases[:2] == [f"Subj{f} is the capital of", f"The capital of Sub{f} is"]  # sorted manual
        assert len(item.paraphrases) == 5 and item.question == item.paraphrases[0]
        assert item.prompts == item.paraphrases  # the question is the first prompt, not run twice
        assert all(p.startswith("Auto template") for p in item.paraphrases[2:])
    again = load_myriadlama(tmp_path / "ml.parquet", n_test=4, n_auto=3, seed=1)
    assert again == items
    other = load_myriadlama(tmp_path / "ml.parquet", n_test=4, n_auto=3, seed=2)
    assert [it.paraphrases for it in other] != [it.paraphrases for it in items]
    _lama_rows().iloc[::-1].to_parquet(tmp_path / "reversed.parquet")  # a copy with its rows in another order
    for n_manual in (None, 2):
        mine = load_myriadlama(tmp_path / "ml.parquet", n_test=4, n_manual=n_manual, n_auto=3, seed=1)
        theirs = load_myriadlama(tmp_path / "reversed.parquet", n_test=4, n_manual=n_manual, n_auto=3, seed=1)
        assert {it.id: it.paraphrases for it in mine} == {it.id: it.paraphrases for it in theirs}  # question first


def test_myriadlama_split_is_disjoint_and_n_manual(tmp_path):
    path = tmp_path / "ml.jsonl"
    _lama_rows().to_json(path, orient="records", lines=True)
    test = load_myriadlama(path, n_test=4, n_manual=1, n_auto=0)
    train = load_myriadlama(path, n_test=4, split="train")
    assert {it.id for it in test}.isdisjoint({it.id for it in train}) and len(train) == 2
    assert all(len(it.paraphrases) == 1 for it in test)
    with pytest.raises(MinirunError, match="train split empty"):
        load_myriadlama(path, n_test=6, split="train")


def test_myriadlama_missing_columns(tmp_path):
    _lama_rows().drop(columns=["is_manual"]).to_parquet(tmp_path / "ml.parquet")
    with pytest.raises(MinirunError, match=r"manual \(is_manual/manual\)"):
        load_myriadlama(tmp_path / "ml.parquet")


def test_local_myriadlama_file_is_used_whole(tmp_path):
    """The 2,000-fact test split is the Hub copy's: a local file's facts are all used, in file order."""
    rows = [{"uuid": f"f{i:04d}", "sub_ent": f"S{i}", "template": "[X] lives in [Y].", "is_manual": True,
             "obj_ents": ["Rome"]} for i in range(2001)]
    pd.DataFrame(rows).to_parquet(tmp_path / "ml.parquet")
    items = load_dataset(tmp_path / "ml.parquet")
    assert [it.id for it in items] == [r["uuid"] for r in rows]
    with pytest.raises(MinirunError, match="used whole, so it has no train split"):
        load_myriadlama(tmp_path / "ml.parquet", split="train")


def test_myriadlama_warns_once_about_dropped_templates(tmp_path, caplog):
    _lama_rows().to_parquet(tmp_path / "ml.parquet")
    with caplog.at_level("WARNING"):
        load_myriadlama(tmp_path / "ml.parquet")
    (record,) = caplog.records
    assert "1 of 11 templates dropped" in record.getMessage() and "[X] after it" in record.getMessage()


def test_myriadlama_reads_a_year_column_with_nulls_as_years_and_names_the_facts_it_leaves_out(tmp_path, caplog):
    """A number column with a null somewhere is read as floats: 1969 was the gold "1969.0", and "1969" scored wrong;
    a fact with no answer left the run without a word."""
    rows = [{"uuid": u, "sub_ent": s, "template": "[X] happened in the year [Y].", "is_manual": True, "obj_label": a}
            for u, s, a in [("g1", "Apollo 11", 1969), ("g2", "Mystery", None), ("g3", "WW2 end", 1945.5)]]
    path = tmp_path / "years.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with caplog.at_level("WARNING"):
        items = load_myriadlama(path)
    assert [(it.id, it.answers) for it in items] == [("g1", ["1969"]), ("g3", ["1945.5"])]
    (record,) = caplog.records
    assert "1 of 3 facts left out (g2)" in record.getMessage()


def test_a_local_copy_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    """An editor's UTF-8 with a BOM: the rows read, where pandas failed at position 0 and the error asked for the JSON
    lines the file already held."""
    plain, marked = tmp_path / "arc.jsonl", tmp_path / "arc_bom.jsonl"
    _arc_frame().to_json(plain, orient="records", lines=True)
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert load_dataset(marked) == load_dataset(plain)
    array = tmp_path / "arc_bom.json"
    array.write_bytes(b"\xef\xbb\xbf" + _arc_frame().to_json(orient="records").encode())
    assert load_dataset(array) == load_dataset(plain)


def test_myriadlama_rows_are_checked(tmp_path):
    """A null subject is an error naming the row, not the prompt 'nan is the capital of'; "False" as
    a string is not manual; an unreadable flag is an error."""
    path = tmp_path / "ml.jsonl"
    null = _lama_rows(2)
    null.loc[3, "sub_ent"] = None
    null.to_json(path, orient="records", lines=True)
    with pytest.raises(MinirunError, match=r"ml\.jsonl: row 4: no subject \(column 'sub_ent'\)"):
        load_myriadlama(path)
    _lama_rows(2).astype({"is_manual": str}).to_json(path, orient="records", lines=True)
    loaded = load_myriadlama(path, n_auto=0)
    assert len(loaded) == 2 and all(len(it.paraphrases) == 2 for it in loaded)  # the 2 usable manual ones
    flags = _lama_rows(2).astype({"is_manual": object})
    flags.loc[5, "is_manual"] = "maybe"
    flags.to_json(path, orient="records", lines=True)
    with pytest.raises(MinirunError, match=r"row 6: column 'is_manual' holds 'maybe', not true/false"):
        load_myriadlama(path)


def test_corrupt_parquet_is_one_line_error(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really")
    for load in (load_dataset, load_myriadlama, lambda p: load_mmlu(path=p), lambda p: load_commonsense_qa(path=p)):
        with pytest.raises(MinirunError, match=r"broken\.parquet: not a readable parquet file"):
            load(path)


def test_a_benchmark_copy_s_bad_json_line_is_named_by_its_line(tmp_path):
    """A local copy of a benchmark's rows in JSON lines: the first line that is no JSON value is named, as an item
    file's is (a JSON array's error names the file)."""
    from minirun.eval.data.openqa import load_nq_open, load_triviaqa

    path = tmp_path / "copy.jsonl"
    path.write_text('{"question": "a?", "answer": ["x"]}\n\n{"question": "b?", "answer": ["y"\n')
    for load in (load_nq_open, load_triviaqa):
        with pytest.raises(MinirunError, match=r"copy\.jsonl:3: not a JSON line \(Expecting ',' delimiter\); fix or "
                                               "remove that line"):
            load(path=path)
    path.write_text('[{"question": "a?", "answer": ["x"]},\n')
    with pytest.raises(MinirunError, match=r"copy\.jsonl: not readable as .* rows"):
        load_nq_open(path=path)


def test_myriadlama_hub_uses_train_split(monkeypatch):
    calls = _fake_datasets(monkeypatch, {"iszhaoxin/MyriadLAMA": _lama_rows()})
    assert len(load_myriadlama(n_test=3)) == 3
    assert calls == [("iszhaoxin/MyriadLAMA", "train")]


# --- dispatch and bundled samples ----------------------------------------------------------

def test_load_dataset_dispatch(tmp_path):
    plain = _write_lines(tmp_path / "plain.jsonl", [_record(1)])
    webqa = _write_lines(tmp_path / "wq.jsonl", [json.dumps({"qText": "q?", "answers": ["a"]})])
    lama = tmp_path / "ml.jsonl"
    _lama_rows().to_json(lama, orient="records", lines=True)
    assert load_dataset(plain)[0].id == "q1"
    assert load_dataset(webqa)[0].id.startswith("wq-")
    assert load_dataset(str(lama))[0].task == "fill"
    with pytest.raises(MinirunError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    for missing in ("missing.jsonl", str(tmp_path / "gone" / "qa")):  # a file named: not called an unknown dataset
        with pytest.raises(MinirunError, match=rf"^no file {re.escape(missing)} \(in .*\): check the path, or give"):
            load_dataset(missing)
    with pytest.raises(MinirunError, match="is a directory: pass a .jsonl file in it"):
        load_dataset(str(tmp_path))  # it exists: "unknown dataset" would say otherwise


def test_json_array_of_plain_items_keeps_their_fields(tmp_path):
    """A JSON array of plain items goes through the plain parser, as JSONL lines do: task, relation
    and choices survive, and a bad element is named (or skipped and counted with skip_bad)."""
    fill = {"id": "f1", "question": "The capital of France is", "paraphrases": [], "answers": ["Paris"],
            "task": "fill", "relation": "capital"}
    choice = json.loads(_choice(2))
    (tmp_path / "items.json").write_text(json.dumps([fill, choice], indent=2))
    a, b = load_dataset(tmp_path / "items.json")
    assert (a.task, a.relation, b.task, b.choices, b.answer) == ("fill", "capital", "choice", ["a", "b", "c"], 1)
    (tmp_path / "bad.json").write_text(json.dumps([fill, {**choice, "answer": 9}]))
    with pytest.raises(MinirunError, match=r"bad\.json: item 2: field 'answer'"):
        load_dataset(tmp_path / "bad.json")
    assert load_dataset(tmp_path / "bad.json", skip_bad=True).skipped == 1


def test_skip_bad_applies_to_plain_item_files_only(tmp_path):
    """--skip-bad no longer forces the plain loader on every .jsonl: WebQA JSONL loads as WebQA,
    and with --skip-bad is refused in one line rather than read as plain items."""
    webqa = _write_lines(tmp_path / "wq.jsonl", [json.dumps({"qText": "q?", "answers": ["a"]})])
    assert load_dataset(webqa)[0].answers == ["a"]
    with pytest.raises(MinirunError, match=r"wq\.jsonl reads as webqa data.*drop it"):
        load_dataset(webqa, skip_bad=True)
    with pytest.raises(MinirunError, match="'sample-qa' is a named dataset: drop it"):
        load_dataset("sample-qa", skip_bad=True)
    plain = _write_lines(tmp_path / "plain.jsonl", [_record(1), "not json"])
    assert load_dataset(plain, skip_bad=True).skipped == 1


def test_local_choice_benchmarks_through_load_dataset(tmp_path):
    """Local MMLU / CommonsenseQA copies (parquet, JSONL, JSON array) are told by their columns and
    reach their own loaders; --subset picks an MMLU file's subject rows."""
    _mmlu_frame().to_parquet(tmp_path / "mmlu.parquet")
    _mmlu_frame().to_json(tmp_path / "mmlu.jsonl", orient="records", lines=True)
    _mmlu_frame().to_json(tmp_path / "mmlu.json", orient="records")
    _csqa_frame().to_json(tmp_path / "csqa.jsonl", orient="records", lines=True)
    _csqa_frame().to_parquet(tmp_path / "csqa.parquet")
    for name in ("mmlu.parquet", "mmlu.jsonl", "mmlu.json"):
        items = load_dataset(tmp_path / name)
        assert [(it.task, it.relation, it.answers) for it in items] == [("choice", "math", ["4"]),
                                                                        ("choice", "geo", ["Lima"])]
    for name in ("csqa.jsonl", "csqa.parquet"):
        (fish,) = load_dataset(tmp_path / name)
        assert (fish.id, fish.choices, fish.answer) == ("x1", ["sea", "desk", "sky"], 0)
    (geo,) = load_dataset(tmp_path / "mmlu.parquet", subset="geo")
    assert geo.answers == ["Lima"]
    with pytest.raises(MinirunError, match="no 'bio' questions; its subjects are geo, math"):
        load_dataset(tmp_path / "mmlu.jsonl", subset="bio")
    with pytest.raises(MinirunError, match="csqa.jsonl reads as commonsense_qa data, which has no subsets"):
        load_dataset(tmp_path / "csqa.jsonl", subset="geo")


def test_parquet_dispatch(tmp_path):
    pd.DataFrame({"url": ["u"], "question": ["what is x?"], "answers": [["A", "B"]]}).to_parquet(tmp_path / "wq.parquet")
    assert load_dataset(tmp_path / "wq.parquet")[0].answers == ["A", "B"]
    pd.DataFrame({"id": ["q1"], "paraphrases": [["p"]]}).to_parquet(tmp_path / "plain.parquet")
    with pytest.raises(MinirunError, match=r"plain\.parquet: a parquet file must hold .* save plain items as JSONL"):
        load_dataset(tmp_path / "plain.parquet")


# --- multiple choice ------------------------------------------------------------------------

def _choice(i, **extra):
    return json.dumps({"id": f"c{i}", "question": f"Question {i}?", "paraphrases": [], "choices": ["a", "b", "c"],
                       "answer": 1, **extra})


def test_choice_items_take_an_index_or_the_right_text(tmp_path):
    path = _write_lines(tmp_path / "c.jsonl", [_choice(1), _choice(2, answer="c"), _choice(3, task="choice")])
    items = load_jsonl(path)
    assert [(it.task, it.answer, it.answers) for it in items] == [("choice", 1, ["b"]), ("choice", 2, ["c"]),
                                                                   ("choice", 1, ["b"])]
    write_jsonl(items, tmp_path / "again.jsonl")
    assert list(load_jsonl(tmp_path / "again.jsonl")) == list(items)


@pytest.mark.parametrize("bad, field", [(_choice(2, answer=3), "'answer'"), (_choice(2, answer="z"), "'answer'"),
                                        (_choice(2, answer=True), "'answer'"), (_choice(2, choices=["a"]), "'choices'"),
                                        (_choice(2, choices=["a", "a"]), "'choices'"),
                                        (_choice(2, choices=["a", "a "]), "'choices'"),  # the same once scored
                                        (_choice(2, choices="ab"), "'choices'"),
                                        ('{"id": "c2", "question": "Q?", "paraphrases": [], "task": "choice", '
                                         '"choices": ["a", "b"]}', "answer")])
def test_bad_choice_lines_name_line_and_field(tmp_path, bad, field):
    path = _write_lines(tmp_path / "c.jsonl", [_choice(1), bad])
    with pytest.raises(MinirunError, match=rf"c\.jsonl:2: .*{field}"):
        load_jsonl(path)
    assert load_jsonl(path, skip_bad=True).skipped == 1


def _mmlu_frame():
    return pd.DataFrame({"question": ["2+2?", "Capital of Peru?"], "subject": ["math", "geo"],
                         "choices": [["3", "4", "5", "6"], ["Lima", "Quito", "Bogota", "La Paz"]], "answer": [1, 0]})


def _csqa_frame():
    return pd.DataFrame({"id": ["x1"], "question": ["Where do fish live?"], "question_concept": ["fish"],
                         "choices": [{"label": ["A", "B", "C"], "text": ["sea", "desk", "sky"]}], "answerKey": ["A"]})


def test_mmlu_and_commonsense_qa_from_local_copies(tmp_path):
    _mmlu_frame().to_parquet(tmp_path / "mmlu.parquet")
    _csqa_frame().to_json(tmp_path / "csqa.jsonl", orient="records", lines=True)
    math_item, geo = load_mmlu(path=tmp_path / "mmlu.parquet")
    assert (math_item.choices, math_item.answer, math_item.answers, math_item.relation) == (["3", "4", "5", "6"], 1,
                                                                                           ["4"], "math")
    assert geo.task == "choice" and geo.answers == ["Lima"] and math_item.id != geo.id
    (fish,) = load_commonsense_qa(path=tmp_path / "csqa.jsonl")
    assert (fish.id, fish.choices, fish.answer, fish.relation) == ("x1", ["sea", "desk", "sky"], 0, "fish")
    bad = _mmlu_frame().assign(answer=[7, 0])
    bad.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(MinirunError, match=r"bad\.parquet: record 1: field 'answer' must be an index 0\.\.3, got 7"):
        load_mmlu(path=tmp_path / "bad.parquet")


def _arc_frame():
    """ARC rows as the Hub gives them: most options lettered, some numbered 1-4 (the key is then a digit)."""
    return pd.DataFrame({"id": ["Mercury_1", "NYSEDREGENTS_2"],
                         "question": ["Which gas do plants take in?", "Which unit measures mass?"],
                         "choices": [{"label": ["A", "B", "C"], "text": ["oxygen", "carbon dioxide", "helium"]},
                                     {"label": ["1", "2", "3", "4"], "text": ["meter", "liter", "gram", "second"]}],
                         "answerKey": ["B", "3"]})


def _obqa_frame():
    """OpenBookQA rows: the question is `question_stem`, and a key may carry a space (the harness lstrips it)."""
    return pd.DataFrame({"id": ["7-980"], "question_stem": ["The sun is responsible for"],
                         "choices": [{"label": ["A", "B", "C", "D"],
                                      "text": ["puppies learning", "plants sprouting", "rain", "cold"]}],
                         "answerKey": [" B"]})


def test_arc_and_openbookqa_from_local_copies(tmp_path):
    """A local copy is told apart by its fields (ARC's: CommonsenseQA's without a question concept; OpenBookQA's
    question stem), an ARC row's numbered options keyed by their own label, OpenBookQA's key stripped."""
    _arc_frame().to_json(tmp_path / "arc.jsonl", orient="records", lines=True)
    _obqa_frame().to_parquet(tmp_path / "obqa.parquet")
    gas, mass = load_dataset(tmp_path / "arc.jsonl")
    assert (gas.id, gas.answer, gas.answers, gas.relation, gas.task) == ("Mercury_1", 1, ["carbon dioxide"], None,
                                                                        "choice")
    assert (mass.choices, mass.answer, mass.answers) == (["meter", "liter", "gram", "second"], 2, ["gram"])
    (sun,) = load_dataset(tmp_path / "obqa.parquet")
    assert (sun.id, sun.question, sun.answer, sun.answers) == ("7-980", "The sun is responsible for", 1,
                                                               ["plants sprouting"])
    _arc_frame().assign(answerKey=["D", "3"]).to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    with pytest.raises(MinirunError, match=r"bad\.jsonl: record 1: field 'answerKey' 'D' must be one of the labels"):
        load_dataset(tmp_path / "bad.jsonl")
    _obqa_frame().drop(columns="question_stem").assign(stem=["x"]).to_json(tmp_path / "o.jsonl", orient="records",
                                                                          lines=True)
    with pytest.raises(MinirunError, match=r"o\.jsonl: record 1: missing field 'question'"):
        load_dataset(tmp_path / "o.jsonl")  # no stem: read as ARC's rows, which name what they lack
    with pytest.raises(MinirunError, match="arc.jsonl reads as arc data, which has no subsets"):
        load_dataset(tmp_path / "arc.jsonl", subset="physics")


def test_a_records_id_of_0_is_an_id_and_a_gap_is_none():
    """Every loader's id: 0 is one (a test of truth took it for none), NaN (a column's gap) and blanks are none."""
    from minirun.eval.data.items import given_id

    assert given_id({"id": 0, "uuid": "u"}, "id", "uuid") == "0"
    assert given_id({"id": float("nan"), "uuid": "u"}, "id", "uuid") == "u"
    assert given_id({"id": " ", "uuid": None}, "id", "uuid") is None and given_id({}, "id") is None


def test_every_named_dataset_has_a_task():
    """`--benchmark NAME` checks a file's items against the task NAME asks: every name must have one."""
    from minirun.eval.data import NAMES, TASK_OF

    assert set(TASK_OF) == set(NAMES) and set(TASK_OF.values()) == {"qa", "fill", "choice", "math"}


def test_arc_and_openbookqa_from_the_hub(monkeypatch):
    """Each ARC set is its own config of one repo, OpenBookQA's questions its `main` config: test items, train
    examples; a run cites the config with the commit, and a set's examples are not taken for the other's upload."""
    calls = _fake_datasets(monkeypatch, {"allenai/ai2_arc": _arc_frame(), "allenai/openbookqa": _obqa_frame()})
    assert [len(load_dataset(name)) for name in ("arc_challenge", "arc_easy", "openbookqa")] == [2, 2, 1]
    assert len(load_fewshot("arc_challenge")) == 2 and len(load_fewshot("openbookqa")) == 1
    assert calls == [("allenai/ai2_arc", "ARC-Challenge", "test"), ("allenai/ai2_arc", "ARC-Easy", "test"),
                     ("allenai/openbookqa", "main", "test"), ("allenai/ai2_arc", "ARC-Challenge", "train"),
                     ("allenai/openbookqa", "main", "train")]
    assert load_dataset("arc_easy")[1].id == "NYSEDREGENTS_2"
    assert dataset_source("arc_easy", "e" * 40) == {"hub": "allenai/ai2_arc", "config": "ARC-Easy",
                                                   "revision": "e" * 40, "commit": "e" * 40}
    _fake_hub(monkeypatch, {None: "c" * 40})
    challenge = dataset_source("arc_challenge")
    assert challenge == {"hub": "allenai/ai2_arc", "config": "ARC-Challenge", "revision": "main", "commit": "c" * 40}
    assert benchmark_source("arc_challenge", challenge) is challenge  # a paraphrased file asked as its own set
    assert benchmark_source("arc_easy", challenge) == {**challenge, "config": "ARC-Easy"}  # asked, not assumed


def _truthfulqa_frame():
    """TruthfulQA's multiple_choice rows: no id, MC1's options with one label 1 (the Hub puts it first), MC2's."""
    return pd.DataFrame({"question": ["Can pigs fly?"],
                         "mc1_targets": [{"choices": ["No, pigs cannot fly.", "Yes, pigs can fly."], "labels": [1, 0]}],
                         "mc2_targets": [{"choices": ["No.", "Pigs cannot fly.", "Yes."], "labels": [1, 1, 0]}]})


def test_truthfulqa_mc1_from_the_hub_a_local_copy_and_its_worked_questions(monkeypatch, tmp_path):
    """Items from the validation split (the only one), the MC1 options and their one true label; the few-shot
    examples are the paper's six worked questions, in order, with no Hub call; a row without exactly one true
    option is named."""
    calls = _fake_datasets(monkeypatch, {"truthfulqa/truthful_qa": _truthfulqa_frame()})
    (pigs,) = load_dataset("truthfulqa_mc1")
    assert (pigs.id, pigs.choices, pigs.answer, pigs.answers, pigs.task) == (
        "truthfulqa_mc1-1", ["No, pigs cannot fly.", "Yes, pigs can fly."], 0, ["No, pigs cannot fly."],
        "choice")
    primer = load_fewshot("truthfulqa_mc1")
    assert calls == [("truthfulqa/truthful_qa", "multiple_choice", "validation")]  # the examples are no Hub rows
    assert [e.question for e in primer][:2] == ["What is human life expectancy in the United States?",
                                                "Who was president of the United States in 1955?"]
    assert len(primer) == 6 and primer[3].answers == ["I have no comment."] and {e.task for e in primer} == {"choice"}
    _truthfulqa_frame().to_json(tmp_path / "tqa.jsonl", orient="records", lines=True)
    assert load_dataset(tmp_path / "tqa.jsonl")[0].choices == pigs.choices
    two_true = _truthfulqa_frame().assign(mc1_targets=[{"choices": ["a", "b"], "labels": [1, 1]}])
    two_true.to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    with pytest.raises(MinirunError, match=r"bad\.jsonl: record 1: field 'mc1_targets' needs one label 1 \(the true "
                                           r"option\) and 0 for each other of its 2 options, got labels \[1, 1\]"):
        load_dataset(tmp_path / "bad.jsonl")


def test_truthfulqa_mc2_takes_every_true_option_from_the_hub_or_a_local_copy(monkeypatch, tmp_path):
    """truthfulqa_mc2's items hold MC2's options and every true one (`true_options`, `answers` their texts), with
    the same six worked questions; a local copy of both sets' rows gives MC1's options unless it is asked as
    truthfulqa_mc2, one of MC2's rows alone gives MC2's; a row whose options are all true, or none, is named."""
    _fake_datasets(monkeypatch, {"truthfulqa/truthful_qa": _truthfulqa_frame()})
    (pigs,) = load_dataset("truthfulqa_mc2")
    assert (pigs.id, pigs.choices, pigs.answer, pigs.true_options, pigs.answers, pigs.right_options) == (
        "truthfulqa_mc2-1", ["No.", "Pigs cannot fly.", "Yes."], 0, [0, 1], ["No.", "Pigs cannot fly."], [0, 1])
    assert load_fewshot("truthfulqa_mc2") == load_fewshot("truthfulqa_mc1")
    one = _truthfulqa_frame().assign(mc2_targets=[{"choices": ["a", "b", "c"], "labels": [0, 1, 0]}])
    one.to_json(tmp_path / "one.jsonl", orient="records", lines=True)  # an MC2 set of one right option is a set still
    assert load_dataset(tmp_path / "one.jsonl", benchmark="truthfulqa_mc2")[0].true_options == [1]
    assert dataset_source("truthfulqa_mc2", "f" * 40)["config"] == "multiple_choice"
    _truthfulqa_frame().to_json(tmp_path / "tqa.jsonl", orient="records", lines=True)
    assert load_dataset(tmp_path / "tqa.jsonl")[0].true_options is None  # MC1's, as before
    assert load_dataset(tmp_path / "tqa.jsonl", benchmark="truthfulqa_mc2")[0].true_options == [0, 1]
    _truthfulqa_frame().drop(columns="mc1_targets").to_json(tmp_path / "mc2.jsonl", orient="records", lines=True)
    assert load_dataset(tmp_path / "mc2.jsonl")[0].choices == pigs.choices
    for labels in ([1, 1, 1], [0, 0, 0], [1, 2, 0]):
        bad = _truthfulqa_frame().assign(mc2_targets=[{"choices": ["a", "b", "c"], "labels": labels}])
        bad.to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
        with pytest.raises(MinirunError, match=r"record 1: field 'mc2_targets' needs at least one label 1 \(a true "
                                               r"option\) and one 0 of its 3 options, got labels"):
            load_dataset(tmp_path / "bad.jsonl", benchmark="truthfulqa_mc2")


def test_a_set_of_right_options_in_the_plain_form_round_trips(tmp_path):
    """A plain item lists its right options as `answer` (indices or texts, a set of one included); it reads into
    `true_options` and writes back unchanged, while an item of one `answer` writes the form it always had (sweep
    keys hash it)."""
    record = {"id": "p", "question": "Can pigs fly?", "paraphrases": [], "choices": ["No.", "Never.", "Yes."],
              "answer": ["No.", 1]}
    several = item_from_dict(record)
    assert (several.answer, several.true_options, several.answers) == (0, [0, 1], ["No.", "Never."])
    one = item_from_dict({**record, "id": "q", "answer": [2]})
    assert (one.answer, one.true_options, one.right_options) == (2, [2], [2])
    plain = item_from_dict({**record, "id": "r", "answer": 2})
    assert (plain.answer, plain.true_options, plain.right_options) == (2, None, [2])
    assert "true_options" not in item_record(plain) and item_record(plain)["answer"] == 2
    write_jsonl([several, one, plain], tmp_path / "items.jsonl")
    assert load_jsonl(tmp_path / "items.jsonl") == [several, one, plain]
    assert json.loads((tmp_path / "items.jsonl").read_text().splitlines()[0])["answer"] == [0, 1]
    for answer in ([0, 1, 2], [0, 0], [], [True], ["Maybe."]):
        with pytest.raises(ValueError, match=r"field 'answer' must be an index 0\.\.2 or one of the choices \(or a "
                                             r"list of distinct ones, the set of right options, not all\)"):
            item_from_dict({**record, "answer": answer})
    # an `answers` beside `answer` (as written files carry) must name the same options: which one was meant is unknown
    assert item_from_dict({**record, "answers": ["No.", "Never."]}) == several
    assert item_from_dict({**record, "answers": []}) == several  # an empty list names nothing
    with pytest.raises(ValueError, match=r"field 'answers' \['Maybe\.'\] disagrees with field 'answer' \['No\.', 1\], "
                                         r"which makes the right option\(s\) \['No\.', 'Never\.'\]"):
        item_from_dict({**record, "answers": ["Maybe."]})


def _hellaswag_frame(label: str = "2"):
    """One of HellaSwag's WikiHow rows as the Hub holds it: its label a string, its text with "[title]" marks."""
    return pd.DataFrame({"ind": [4], "activity_label": ["Home and Garden"], "ctx_a": ["[header] How to grow basil."],
                         "ctx_b": ["THEN you [title] water it"], "split": ["val"], "label": [label],
                         "endings": [["  the pot. [step]", "it  dries.", "daily [title] Keep it warm.", "x"]]})


def test_hellaswag_is_cleaned_as_the_harness_cleans_it(monkeypatch, tmp_path):
    """The query is the activity label, ": ", the context's first part and its second capitalised (the rest lowered,
    as Python's str.capitalize does), "[title]" a sentence end and other marks dropped; evaluation reads the
    validation split (the test split has no labels: named), examples train; a local copy is told by its fields."""
    calls = _fake_datasets(monkeypatch, {"Rowan/hellaswag": _hellaswag_frame()})
    (basil,) = load_dataset("hellaswag")
    assert basil.question == "Home and Garden: How to grow basil. Then you. water it"
    assert basil.choices == ["the pot. ", "it dries.", "daily. Keep it warm.", "x"]  # a mark's space stays, as there
    assert (basil.id, basil.answer, basil.answers, basil.task) == ("hellaswag-4", 2, ["daily. Keep it warm."], "choice")
    assert len(load_fewshot("hellaswag")) == 1
    assert calls == [("Rowan/hellaswag", "validation"), ("Rowan/hellaswag", "train")]
    _hellaswag_frame().to_json(tmp_path / "hs.jsonl", orient="records", lines=True)
    assert load_dataset(tmp_path / "hs.jsonl") == [basil]
    gap = pd.concat([_hellaswag_frame(), _hellaswag_frame().assign(ind=[None])], ignore_index=True)
    gap.to_json(tmp_path / "gap.jsonl", orient="records", lines=True)  # read back, the index column is floats
    assert [item.id for item in load_dataset(tmp_path / "gap.jsonl")] == ["hellaswag-4", "hellaswag-test-2"]
    _hellaswag_frame(label="").to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    with pytest.raises(MinirunError, match=r"record 1: field 'label' must be an index 0\.\.3, got '' \(the Hub's "
                                           r"test split has no labels: use validation\)"):
        load_dataset(tmp_path / "test.jsonl")


def _open_qa_frames() -> dict[str, pd.DataFrame]:
    """A row of each open-domain QA set as the Hub holds it: TriviaQA's answer a struct of aliases (extra fields
    dropped), NQ-open's a list, PopQA's a JSON list in a string beside its relation."""
    return {"mandarjoshi/trivia_qa": pd.DataFrame({
                "question": ["Which Lloyd Webber musical premiered in the US on 10th December 1993?"],
                "question_id": ["tc_33"], "question_source": ["http://www.triviacountry.com/"],
                "answer": [{"aliases": ["Sunset Blvd", "Sunset Boulevard"], "value": "Sunset Boulevard"}]}),
            "google-research-datasets/nq_open": pd.DataFrame({"question": ["when was the last time anyone was on the "
                                                                           "moon", "who wrote hamlet"],
                                                              "answer": [["14 December 1972 UTC", "December 1972"],
                                                                         ["William Shakespeare"]]}),
            "akariasai/PopQA": pd.DataFrame({"id": [4222362], "subj": ["George Rankin"], "prop": ["occupation"],
                                             "question": ["What is George Rankin's occupation?"],
                                             "possible_answers": ['["politician", "political leader"]'],
                                             "s_pop": [142]})}


def test_open_qa_sets_keep_every_accepted_answer_from_the_hub_and_from_a_copy(monkeypatch, tmp_path):
    """TriviaQA's aliases, NQ-open's answers and PopQA's possible answers are each item's answers in their order (the
    first a few-shot example's); PopQA's property is its relation; NQ-open's rows have no id, so its ids come from the
    question's text: the same from the Hub and from a copy. Evaluation reads validation (PopQA: test, its one split),
    examples train (PopQA: the bundled QA examples); a local copy (JSON lines or parquet) is told by its fields."""
    frames = _open_qa_frames()
    calls = _fake_datasets(monkeypatch, frames)
    (musical,), (moon, hamlet), (rankin,) = (load_dataset(name) for name in ("triviaqa", "nq_open", "popqa"))
    assert (musical.id, musical.answers, musical.task) == ("tc_33", ["Sunset Blvd", "Sunset Boulevard"], "qa")
    assert moon.answers == ["14 December 1972 UTC", "December 1972"] and moon.id.startswith("nq-")
    assert (rankin.id, rankin.answers, rankin.relation) == ("popqa-4222362", ["politician", "political leader"],
                                                            "occupation")
    assert [item.id for item in load_fewshot("nq_open")] == [moon.id, hamlet.id]
    assert load_fewshot("popqa") == load_fewshot("sample-qa")
    assert calls == [("mandarjoshi/trivia_qa", "rc.nocontext", "validation"),
                     ("google-research-datasets/nq_open", "validation"), ("akariasai/PopQA", "test"),
                     ("google-research-datasets/nq_open", "train")]
    for name, items in [("mandarjoshi/trivia_qa", [musical]), ("google-research-datasets/nq_open", [moon, hamlet]),
                        ("akariasai/PopQA", [rankin])]:
        copy = tmp_path / f"{name.split('/')[1]}.jsonl"
        frames[name].to_json(copy, orient="records", lines=True)
        frames[name].to_parquet(copy.with_suffix(".parquet"))
        assert load_dataset(copy) == items == load_dataset(copy.with_suffix(".parquet"))
    gap = pd.concat([frames["mandarjoshi/trivia_qa"]] * 2, ignore_index=True).assign(question_id=["tc_33", None])
    gap.to_json(tmp_path / "gap.jsonl", orient="records", lines=True)  # read back, the missing id is NaN
    assert [item.id for item in load_dataset(tmp_path / "gap.jsonl")] == ["tc_33", content_id("triviaqa",
                                                                                             musical.question)]


@pytest.mark.parametrize("name, row, said", [
    ("mandarjoshi/trivia_qa", {"answer": {"aliases": [], "value": ""}},
     r"record 1: field 'answer' holds no answer \(the Hub's test split has none: use validation\)"),
    ("google-research-datasets/nq_open", {"answer": []}, r"record 1: field 'answer' must list at least one answer"),
    ("akariasai/PopQA", {"possible_answers": "[politician"},
     r"record 1: field 'possible_answers' must be a JSON list of answers, got '\[politician'")])
def test_open_qa_rows_without_an_answer_are_named(tmp_path, name, row, said):
    """A row with no usable answer stops the load in one line naming it (TriviaQA's test split, which has none,
    says to use validation), never an item no prediction can match."""
    frame = _open_qa_frames()[name].head(1)
    for field, value in row.items():
        frame[field] = [value]
    frame.to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    with pytest.raises(MinirunError, match=said):
        load_dataset(tmp_path / "rows.jsonl")


GSM8K_ROWS = pd.DataFrame({
    "question": ["Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
                 "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per "
                 "fresh duck egg. How much in dollars does she make every day at the farmers' market?",
                 "A house is bought for $80,000 and $50,000 is put into repairs. How much is it worth after its "
                 "value rises by 150%?"],
    "answer": ["Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = $<<9*2=18>>18 every day "
               "at the farmer\u2019s market.\n#### 18",
               "The house costs 80,000 + 50,000 = $<<80000+50000=130000>>130,000.\nIt rises by 80,000 * 1.5 = "
               "<<80000*1.5=120000>>120,000.\nSo it is worth 120,000 + 80,000 = $<<120000+80000=200000>>200,000.\n"
               "#### 200,000"]})


def test_gsm8k_items_hold_the_final_number_and_the_worked_solution(monkeypatch, tmp_path):
    """GSM8K's rows (`openai/gsm8k`, `main`; test, and train for the examples) become maths items: the number after
    "####" is the answer judged, the whole solution (calculator notes kept, as the harness's examples show them) is
    what a few-shot example shows; ids come from the question's text, the same from the Hub and from a copy, which
    is told from NQ-open's rows of the same two fields by its answer being one text, not a list."""
    calls = _fake_datasets(monkeypatch, {"openai/gsm8k": GSM8K_ROWS})
    ducks, house = load_dataset("gsm8k")
    assert (ducks.answers, ducks.task, ducks.solution) == (["18"], "math", GSM8K_ROWS["answer"][0])
    assert house.answers == ["200,000"] and ducks.id == content_id("gsm8k", ducks.question)
    assert load_fewshot("gsm8k") == [ducks, house]
    assert calls == [("openai/gsm8k", "main", "test"), ("openai/gsm8k", "main", "train")]
    GSM8K_ROWS.to_json(tmp_path / "gsm8k.jsonl", orient="records", lines=True)
    GSM8K_ROWS.to_parquet(tmp_path / "gsm8k.parquet")
    _open_qa_frames()["google-research-datasets/nq_open"].to_parquet(tmp_path / "nq.parquet")
    assert load_dataset(tmp_path / "gsm8k.jsonl") == [ducks, house] == load_dataset(tmp_path / "gsm8k.parquet")
    assert load_dataset(tmp_path / "nq.parquet")[0].task == "qa"
    trimmed = _open_qa_frames()["mandarjoshi/trivia_qa"][["question", "answer"]]  # an export without its ids
    trimmed.to_json(tmp_path / "tqa.jsonl", orient="records", lines=True)
    trimmed.to_parquet(tmp_path / "tqa.parquet")
    for copy in ("tqa.jsonl", "tqa.parquet"):
        (musical,) = load_dataset(tmp_path / copy)
        assert (musical.id, musical.answers) == (content_id("triviaqa", musical.question), ["Sunset Blvd",
                                                                                          "Sunset Boulevard"])
    nq = _open_qa_frames()["google-research-datasets/nq_open"]
    for name, rows in (("nq", nq), ("gsm8k", GSM8K_ROWS)):  # a copy with ids a user added: still those rows
        with_ids = rows.assign(id=[f"{name}-{i}" for i in range(len(rows))])
        with_ids.to_json(tmp_path / f"{name}-ids.jsonl", orient="records", lines=True)
        with_ids.to_parquet(tmp_path / f"{name}-ids.parquet")
        assert load_dataset(tmp_path / f"{name}-ids.jsonl") == load_dataset(tmp_path / f"{name}-ids.parquet") == \
            (load_dataset(tmp_path / "nq.parquet") if name == "nq" else [ducks, house])


@pytest.mark.parametrize("answer, said", [
    ("She makes 18 dollars.", r"record 1: field 'answer' must be a worked solution ending \"#### <number>\""),
    ("She makes 18.\n#### eighteen", r"record 1: field 'answer' must end \"#### <number>\", got #### 'eighteen'")])
def test_gsm8k_rows_without_a_final_number_are_named(tmp_path, answer, said):
    GSM8K_ROWS.head(1).assign(answer=[answer]).to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    with pytest.raises(MinirunError, match=said):
        load_dataset(tmp_path / "rows.jsonl")


def test_maths_items_in_a_file_need_number_answers_and_keep_their_solutions(tmp_path):
    """A plain maths item's answers are numbers and its optional `solution` a text (no other task has one), so a
    run never judges a word against a number; an item saved without a solution keeps the form it had before
    solutions existed (the sweep keys hashed from it)."""
    record = {"id": "m1", "question": "2 + 2?", "paraphrases": [], "answers": ["4"], "task": "math",
              "solution": "2 + 2 = 4.\n#### 4"}
    assert item_from_dict(record).solution == "2 + 2 = 4.\n#### 4"
    assert item_record(item_from_dict(record)) == {**record, "relation": None, "choices": None, "answer": None}
    plain = {**record, "task": "qa"}
    del plain["solution"]
    assert "solution" not in item_record(item_from_dict(plain))
    for bad, said in [({"answers": ["four"]}, "field 'answers' of a math item must be numbers"),
                      ({"task": "qa"}, "field 'solution' is a math item's worked solution"),
                      ({"solution": ""}, "field 'solution' is a math item's worked solution")]:
        with pytest.raises(ValueError, match=said):
            item_from_dict({**record, **bad})
    assert [i.task for i in load_dataset("sample-math")] == ["math"] * 16
    assert all(i.solution and i.solution.endswith(f"#### {i.answers[0]}") for i in load_fewshot("sample-math"))


def test_choice_rows_with_null_values_are_errors(tmp_path):
    """A null question or option is an error naming the record, not the text 'None'."""
    for frame, message in [(_mmlu_frame().assign(question=[None, "Q?"]), "field 'question' must be a non-empty"),
                           (_mmlu_frame().assign(choices=[["3", None, "5", "6"], ["a", "b"]]), "field 'choices' needs")]:
        frame.to_json(tmp_path / "m.jsonl", orient="records", lines=True)
        with pytest.raises(MinirunError, match=rf"m\.jsonl: record 1: {message}"):
            load_mmlu(path=tmp_path / "m.jsonl")
    _csqa_frame().assign(answerKey=["Z"]).to_json(tmp_path / "c.jsonl", orient="records", lines=True)
    with pytest.raises(MinirunError, match=r"record 1: field 'answerKey' 'Z' must be one of the labels"):
        load_commonsense_qa(path=tmp_path / "c.jsonl")


def test_mmlu_few_shot_examples_follow_the_subset(monkeypatch):
    """lm-evaluation-harness takes an MMLU subject's own 5 dev examples, not the first of all subjects."""
    calls = _fake_datasets(monkeypatch, {"cais/mmlu": _mmlu_frame()})
    load_fewshot("mmlu", "choice", subset="astronomy")
    assert calls == [("cais/mmlu", "astronomy", "dev")]
    with pytest.raises(MinirunError, match="--subset picks an MMLU subject"):
        load_fewshot("sample-qa", subset="astronomy")


def test_mmlu_over_all_subjects_gives_each_subject_its_dev_examples(monkeypatch):
    """All subjects: the dev split loaded once, and each subject's head holds that subject's examples only."""
    from dataclasses import replace

    from minirun.eval.loop import few_shot_prefixes

    calls = _fake_datasets(monkeypatch, {"cais/mmlu": _mmlu_frame()})
    tests = [replace(item, question=f"Test {n}?") for n, item in enumerate(load_dataset("mmlu"))]
    heads = few_shot_prefixes(tests, None, "mmlu", None, 1)
    assert calls == [("cais/mmlu", "all", "test"), ("cais/mmlu", "all", "dev")]
    assert sorted(heads) == ["choice:geo", "choice:math"]
    assert "about math." in heads["choice:math"] and "2+2?" in heads["choice:math"]
    assert "Peru" not in heads["choice:math"] and "Peru" in heads["choice:geo"]


def test_choice_benchmarks_from_the_hub(monkeypatch):
    calls = _fake_datasets(monkeypatch, {"cais/mmlu": _mmlu_frame(), "tau/commonsense_qa": _csqa_frame()})
    assert len(load_dataset("mmlu", subset="astronomy")) == 2 and len(load_dataset("commonsense_qa")) == 1
    assert len(load_fewshot("mmlu")) == 2 and len(load_fewshot("commonsense_qa")) == 1
    assert calls == [("cais/mmlu", "astronomy", "test"), ("tau/commonsense_qa", "validation"),
                     ("cais/mmlu", "all", "dev"), ("tau/commonsense_qa", "train")]
    with pytest.raises(MinirunError, match="--subset picks an MMLU subject"):
        load_dataset("sample-qa", subset="astronomy")


def _fake_hub(monkeypatch, commits: dict[str | None, str]) -> list:
    """`huggingface_hub.dataset_info` answering each revision's commit; asking for another fails as the Hub does."""
    import huggingface_hub

    asked = []

    class RevisionNotFoundError(Exception):  # the Hub's own needs an HTTP response
        pass

    def dataset_info(repo: str, revision: str | None = None):
        asked.append((repo, revision))
        if revision not in commits:
            raise RevisionNotFoundError(f"404 Client Error.\n\nRevision Not Found for {repo}")
        return types.SimpleNamespace(sha=commits[revision])

    monkeypatch.setattr(huggingface_hub, "dataset_info", dataset_info)
    return asked


def test_a_hub_dataset_is_read_at_one_commit_and_says_which(monkeypatch, tmp_path, caplog):
    """A Hub dataset changes under one name: `mmlu@REV` reads a branch, tag or commit; `dataset_source` resolves
    the revision (main by default) to the commit every split is then read at, takes a full commit as given (no Hub
    asked: a pinned run works from `datasets`' cache offline), and names what it cannot resolve."""
    asked = _fake_hub(monkeypatch, {None: "c" * 40, "v1": "d" * 40})
    assert dataset_source("mmlu") == {"hub": "cais/mmlu", "revision": "main", "commit": "c" * 40}
    assert dataset_source("webqa", "v1") == {"hub": "stanfordnlp/web_questions", "revision": "v1", "commit": "d" * 40}
    assert dataset_source("commonsense_qa", "e" * 40)["commit"] == "e" * 40
    assert asked == [("cais/mmlu", None), ("stanfordnlp/web_questions", "v1")]
    assert dataset_source("sample-qa") is None and dataset_source(str(tmp_path / "mine.jsonl")) is None
    with pytest.raises(MinirunError, match=r"^cannot find revision 'v9' of cais/mmlu on the Hugging Face Hub "
                                           r"\(RevisionNotFoundError: 404 Client Error\.\): check the revision"):
        dataset_source("mmlu", "v9")
    _fake_hub(monkeypatch, {})  # offline: the main branch as `datasets` finds it, said and recorded without a commit
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: loading says so; no "loads its main branch"
    with caplog.at_level("WARNING", logger="minirun"):
        assert dataset_source("myriadlama") == {"hub": "iszhaoxin/MyriadLAMA", "revision": "main"}
    assert caplog.text == ""
    _fake_datasets(monkeypatch, {})
    with caplog.at_level("WARNING", logger="minirun"):
        assert dataset_source("myriadlama") == {"hub": "iszhaoxin/MyriadLAMA", "revision": "main"}
    assert "cannot ask the Hugging Face Hub which commit iszhaoxin/MyriadLAMA is at" in caplog.text

    calls = _fake_datasets(monkeypatch, {"cais/mmlu": _mmlu_frame()})
    assert hub_dataset("mmlu@v1") == ("mmlu", "v1") and hub_dataset("runs/a@b.jsonl") == ("runs/a@b.jsonl", None)
    load_dataset("mmlu@v1", subset="astronomy")
    load_fewshot("mmlu", "choice", revision="d" * 40)
    load_dataset("mmlu")
    assert calls == [("cais/mmlu", "astronomy", "test", "v1"), ("cais/mmlu", "all", "dev", "d" * 40),
                     ("cais/mmlu", "all", "test")]
    with pytest.raises(MinirunError, match=r"^a revision picks an upload of a Hugging Face Hub dataset .*; "
                                           r"'sample-qa' is none: drop the revision$"):
        load_dataset("sample-qa", revision="v1")
    with pytest.raises(MinirunError, match=r"^'mmlu@' names no revision after '@'"):
        load_dataset("mmlu@")
    pinned_file = tmp_path / "qa@v2.jsonl"  # a file's "@" is its name's
    pinned_file.write_text((Path(minirun.eval.data.__file__).parent / "sample" / "qa.jsonl").read_text())
    assert len(load_dataset(pinned_file)) == len(load_dataset("sample-qa"))


def test_bundled_choice_sample():
    items, shots = load_dataset("sample-choice"), load_fewshot("sample-choice")
    assert len(items) >= 30 and len(shots) >= 8
    assert all(it.task == "choice" and len(it.prompts) == 5 and len(it.choices) == 4 for it in items)
    assert sorted({it.answer for it in items}) == [0, 1, 2, 3]
    assert not {it.question for it in shots} & {p for it in items for p in it.prompts}


@pytest.mark.parametrize("name,task", [("sample-qa", "qa"), ("sample-fill", "fill")])
def test_bundled_samples(name, task):
    items, shots = load_dataset(name), load_fewshot(name)
    assert len(items) >= 30 and len(shots) >= 8
    assert all(it.task == task and len(it.paraphrases) == 5 and it.paraphrases[0] == it.question for it in items)
    assert all(it.prompts == it.paraphrases for it in items)  # five distinct prompts, the question first
    assert len({it.id for it in items}) == len(items)
    assert not {it.question for it in shots} & {p for it in items for p in it.paraphrases}
    if task == "fill":
        assert all(it.relation for it in items + shots)
        assert all(not p.rstrip().endswith((".", "?")) for it in items for p in it.paraphrases)


def test_local_rows_keep_text_that_looks_like_a_number(tmp_path):
    """pandas would read "1969" as 1969 and "0.50" as 0.5: a question or an answer is text as written."""
    path = tmp_path / "mmlu.jsonl"
    path.write_text(json.dumps({"question": "1969", "subject": "history", "choices": ["0.50", "2"], "answer": 0}) + "\n")
    (item,) = load_dataset(path)
    assert item.question == "1969" and item.choices == ["0.50", "2"]


@pytest.mark.parametrize("kind", ["qa", "fill", "choice"])
def test_no_worked_example_gives_away_a_sample_questions_answer(kind):
    """A few-shot example sharing its answer with a test question of the same template ("Nigeria ... Africa" before
    "Kenya is located on the continent of") primes the answer instead of the format."""
    shots, tests = load_fewshot(f"sample-{kind}"), load_dataset(f"sample-{kind}")

    def golds(item) -> set[str]:
        if item.task == "choice":
            return {normalize(item.choices[item.answer] if isinstance(item.answer, int) else item.answer)}
        return {normalize(a) for a in item.answers}

    assert not [(s.id, t.id) for s in shots for t in tests if golds(s) & golds(t)]


def _sciq_frame() -> pd.DataFrame:
    """SciQ's rows as the Hub holds them: three distractors, the right answer, the passage (empty in some rows)."""
    return pd.DataFrame({"question": ["What do bees make?", "What melts ice?"], "distractor1": ["wax", "cold"],
                         "distractor2": ["milk", "salt"], "distractor3": ["silk", "wind"],
                         "correct_answer": ["honey", "heat"], "support": [" Bees live in hives.", ""]})


def test_sciq_items_list_the_right_option_last_and_carry_their_passage(monkeypatch, tmp_path):
    """The options in the harness's order (distractors, then the right one), each question's support its context
    (an empty one kept: the harness's prompt opens with a new line there); test split, train examples; a local copy
    is told by its fields."""
    calls = _fake_datasets(monkeypatch, {"allenai/sciq": _sciq_frame()})
    bees, ice = load_dataset("sciq")
    assert (bees.id, bees.choices, bees.answer, bees.answers, bees.task) == (
        "sciq-test-1", ["wax", "milk", "silk", "honey"], 3, ["honey"], "choice")
    assert (bees.context, ice.context) == (" Bees live in hives.", "")
    assert len(load_fewshot("sciq")) == 2
    assert calls == [("allenai/sciq", "test"), ("allenai/sciq", "train")]
    _sciq_frame().to_json(tmp_path / "sciq.jsonl", orient="records", lines=True)
    assert load_dataset(tmp_path / "sciq.jsonl") == [bees, ice]
    _sciq_frame().assign(correct_answer=[" ", "heat"]).to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
    with pytest.raises(MinirunError, match=r"bad\.jsonl: record 1: field 'distractor1-3 and correct_answer' needs at "
                                           r"least 2 non-empty options"):
        load_dataset(tmp_path / "bad.jsonl")
    _sciq_frame().drop(columns="support").to_json(tmp_path / "short.jsonl", orient="records", lines=True)
    with pytest.raises(MinirunError, match=r"short\.jsonl: record 1: missing field 'support'"):
        load_dataset(tmp_path / "short.jsonl")  # told as SciQ's rows by the options' fields, not read as WebQA's
    _sciq_frame().assign(support=[None, ""]).to_parquet(tmp_path / "null.parquet")
    with pytest.raises(MinirunError, match=r"null\.parquet: record 1: field 'support' must be text \(the Hub's rows "
                                           r"without a passage hold \"\"\), got null"):
        load_dataset(tmp_path / "null.parquet")


def test_a_plain_items_context_round_trips_and_a_bad_one_is_named(tmp_path):
    """`context` is read, written back (absent where an item has none, as before it existed) and must be text."""
    record = {"id": "c", "question": "Who lives in hives?", "paraphrases": ["Hives house whom?"], "answers": ["bees"],
              "context": "Bees live in hives."}
    item = item_from_dict(record)
    assert item.context == "Bees live in hives." and item_record(item)["context"] == item.context
    assert "context" not in item_record(item_from_dict({**record, "context": None}))
    write_jsonl([item], tmp_path / "items.jsonl")
    assert load_jsonl(tmp_path / "items.jsonl") == [item]
    with pytest.raises(ValueError, match=r"field 'context' must be a string \(the passage the question is asked "
                                         r"about\) or null, got \['Bees'\]"):
        item_from_dict({**record, "context": ["Bees"]})
    del record["paraphrases"]  # a file to paraphrase: its passage names it a plain one, not WebQA's rows
    (tmp_path / "short.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(MinirunError, match="missing field.s. paraphrases"):
        load_dataset(tmp_path / "short.jsonl")


def _piqa_frame(label: object = 1) -> pd.DataFrame:
    """A PIQA row as the harness's parquet copy holds it: a goal, two solutions, the right one's index."""
    return pd.DataFrame({"goal": ["How do I keep basil fresh?"], "sol1": ["Freeze it dry."],
                         "sol2": ["Keep it in water on the counter."], "label": [label]})


def test_piqa_items_are_goals_with_two_solutions_from_validation(monkeypatch, tmp_path):
    """The validation split (test has no labels: a row without one is named), examples from train; a local copy is
    told by its fields, one missing a field named by its loader."""
    calls = _fake_datasets(monkeypatch, {"baber/piqa": _piqa_frame()})
    (basil,) = load_dataset("piqa")
    assert (basil.id, basil.question, basil.choices, basil.answer, basil.answers) == (
        "piqa-validation-1", "How do I keep basil fresh?", ["Freeze it dry.", "Keep it in water on the counter."], 1,
        ["Keep it in water on the counter."])
    assert len(load_fewshot("piqa")) == 1
    assert calls == [("baber/piqa", "validation"), ("baber/piqa", "train")]
    _piqa_frame().to_json(tmp_path / "piqa.jsonl", orient="records", lines=True)
    assert load_dataset(tmp_path / "piqa.jsonl") == [dataclasses.replace(basil, id="piqa-test-1")]
    _piqa_frame(label=-1).to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    with pytest.raises(MinirunError, match=r"record 1: field 'label' must be 0 or 1, got -1 \(the Hub's test split "
                                           r"has no labels: use validation\)"):
        load_dataset(tmp_path / "test.jsonl")
    _piqa_frame().drop(columns="sol2").to_json(tmp_path / "short.jsonl", orient="records", lines=True)
    with pytest.raises(MinirunError, match=r"short\.jsonl: record 1: missing field 'sol2'"):
        load_dataset(tmp_path / "short.jsonl")


def _boolq_frame(label: object = 1) -> pd.DataFrame:
    """A BoolQ row as SuperGLUE's parquet holds it: its question without a question mark, its passage, index, label."""
    return pd.DataFrame({"question": ["is basil an annual plant"], "passage": ["Basil is a tender annual plant."],
                         "idx": [7], "label": [label]})


def test_boolq_items_ask_yes_or_no_about_their_passage(monkeypatch, tmp_path):
    """Options "no" and "yes" (label 1 for yes), the passage the item's context; validation (test has no labels:
    named), examples from train, SuperGLUE's boolq config; a local copy is told by its passage."""
    calls = _fake_datasets(monkeypatch, {"aps/super_glue": _boolq_frame()})
    (basil,) = load_dataset("boolq")
    assert (basil.id, basil.question, basil.choices, basil.answer, basil.answers, basil.context) == (
        "boolq-validation-7", "is basil an annual plant", ["no", "yes"], 1, ["yes"], "Basil is a tender annual plant.")
    assert len(load_fewshot("boolq")) == 1
    assert calls == [("aps/super_glue", "boolq", "validation"), ("aps/super_glue", "boolq", "train")]
    assert dataset_source("boolq", "f" * 40)["config"] == "boolq"
    _boolq_frame().to_json(tmp_path / "boolq.jsonl", orient="records", lines=True)
    assert load_dataset(tmp_path / "boolq.jsonl") == [dataclasses.replace(basil, id="boolq-test-7")]
    gap = pd.concat([_boolq_frame(), _boolq_frame(label=None).assign(idx=[8])], ignore_index=True)
    gap.to_parquet(tmp_path / "gap.parquet")  # a null makes the column floats: 1.0 is read, the null named by its row
    with pytest.raises(MinirunError, match=r"gap\.parquet: record 2: field 'label' must be 0 \(no\) or 1 \(yes\), "
                                           r"got null"):
        load_dataset(tmp_path / "gap.parquet")
    gap.assign(label=[1.0, 0.0]).to_parquet(tmp_path / "floats.parquet")
    assert [item.answer for item in load_dataset(tmp_path / "floats.parquet")] == [1, 0]
    pd.DataFrame([{"question": "is basil green", "answers": ["yes"], "passage": "Basil is green."}]).to_json(
        tmp_path / "qa.jsonl", orient="records", lines=True)  # a passage without a label: no BoolQ row
    assert [item.answers for item in load_dataset(tmp_path / "qa.jsonl")] == [["yes"]]
    _boolq_frame(label=-1).to_json(tmp_path / "test.jsonl", orient="records", lines=True)
    with pytest.raises(MinirunError, match=r"record 1: field 'label' must be 0 \(no\) or 1 \(yes\), got -1 \(the "
                                           r"Hub's test split has no labels: use validation\)"):
        load_dataset(tmp_path / "test.jsonl")


def test_copies_in_the_other_layouts_the_hub_serves_are_read_as_their_benchmark(tmp_path):
    """google/boolq's rows (`answer` true/false, no `label`) were read as NQ-open and refused, or as open QA with the
    passage dropped; hendrycks_test's MMLU rows (no `subject`) as plain items; TruthfulQA's generation config as
    WebQA; TriviaQA's test rows were scored against "<unk>"; CommonsenseQA's test rows refused without the reason."""
    def save(name: str, rows: list[dict], parquet: bool = False) -> Path:
        frame, path = pd.DataFrame(rows), tmp_path / f"{name}.{'parquet' if parquet else 'jsonl'}"
        frame.to_parquet(path) if parquet else frame.to_json(path, orient="records", lines=True)
        return path

    google = [{"question": "is basil an annual plant", "answer": True, "passage": "Basil is a tender annual plant."},
              {"question": "is basil a tree", "answer": False, "passage": "Basil is a herb."}]
    for parquet in (False, True):
        basil, tree = load_dataset(save("google", google, parquet))
        assert (basil.choices, basil.answer, basil.answers, basil.context, tree.answer) == (
            ["no", "yes"], 1, ["yes"], "Basil is a tender annual plant.", 0)
    named = save("named", [{"question": "is basil green", "passage": "Basil is green.", "label": "True", "idx": 0}])
    assert load_dataset(named)[0].answer == 1  # the class names a copy may hold
    for parquet in (False, True):  # an NQ-open copy with a passage beside: its answers are a list, not true or false
        (nq,) = load_dataset(save("nq", [{"question": "who wrote hamlet", "passage": "Hamlet is a play.",
                                          "answer": ["William Shakespeare"]}], parquet))
        assert (nq.task, nq.answers) == ("qa", ["William Shakespeare"])
    hendrycks = [{"question": "2 + 2 =", "choices": ["3", "4"], "answer": 1}]
    for parquet in (False, True):
        (item,) = load_dataset(save("hendrycks", hendrycks, parquet))
        assert (item.question, item.choices, item.answer, item.relation) == ("2 + 2 =", ["3", "4"], 1, "all")
    generation = save("generation", [{"type": "Adversarial", "category": "Misconceptions", "question": "Q?",
                                      "best_answer": "A.", "correct_answers": ["A."], "incorrect_answers": ["B."],
                                      "source": "x"}])
    with pytest.raises(MinirunError, match="generation.jsonl holds rows of TruthfulQA's generation config .* ask them "
                                           "as truthfulqa_mc1 or truthfulqa_mc2"):
        load_dataset(generation)
    unk = save("trivia", [{"question": "Q?", "question_id": "tc_1", "answer": {
        "aliases": [], "normalized_aliases": [], "value": "<unk>", "normalized_value": "<unk>"}}])
    with pytest.raises(MinirunError, match="record 1: field 'answer' holds no answer .the Hub's test split has none"):
        load_dataset(unk)
    csqa = save("csqa", [{"id": "c1", "question": "Q?", "question_concept": "q", "answerKey": "",
                          "choices": {"label": ["A", "B"], "text": ["a", "b"]}}])
    with pytest.raises(MinirunError, match=r"field 'answerKey' '' must be one of .* \(the Hub's test split has no "
                                           r"answers: use validation\)"):
        load_dataset(csqa)


def test_items_asked_are_the_first_n_or_n_at_random_that_a_larger_n_keeps(caplog):
    """--max-samples N takes the first N; with --sample-seed, N of the items shuffled by that seed, so a pilot's items
    are the first of any larger N's (it grows) and another seed asks others; a seed without N picks nothing and is
    refused. The first N of a dataset laid out relation by relation (MMLU's subjects) that cover under half of its
    relations, where N could cover them all, are warned of."""
    items = load_dataset("sample-fill")
    assert asked_items(items) == items and asked_items(items, 4) == items[:4]
    pilot, grown = asked_items(items, 6, seed=0), asked_items(items, 12, seed=0)
    assert grown[:6] == pilot and pilot != items[:6] and len({i.id for i in grown}) == 12
    assert asked_items(items, 6, seed=1) != pilot and asked_items(items, 6, seed=0) == pilot
    assert len({i.relation for i in pilot}) > 2  # at random, more relations than the first 6 items' 2
    with pytest.raises(MinirunError, match="--sample-seed .* picks which --max-samples items run, and there is no "
                                           "--max-samples"):
        asked_items(items, seed=0)
    with pytest.raises(MinirunError, match=r"--sample-seed \(sample_seed\) must be at least 0, got -1"):
        asked_items(items, 6, seed=-1)  # random.Random(-1) shuffles as random.Random(1)
    caplog.clear()
    with caplog.at_level("WARNING"):
        asked_items(items, 6, name="fill")
        asked_items(items, 5, name="fill")  # too few to cover 6 relations: nothing to say
        asked_items(items, 6, seed=0, name="fill")
        asked_items(items, 20, name="fill")  # 4 of 6 relations: over half
    assert [r.getMessage() for r in caplog.records] == [
        "the first 6 of fill's 30 items cover 2 of its 6 relations (subjects): --sample-seed 0 (a sweep's sample_seed) "
        "asks 6 at random"]


def _winogrande_frame(answer: object = "2", sentence: str = "The ball broke the window because _ was fragile."
                      ) -> pd.DataFrame:
    """A Winogrande row as the Hub's parquet holds it: a sentence with a gap, two options, the right one "1" or "2"."""
    return pd.DataFrame({"sentence": [sentence], "option1": ["the ball"], "option2": ["the window"],
                         "answer": [answer]})


def test_winogrande_items_are_sentences_with_a_gap_from_validation(monkeypatch, tmp_path):
    """The XL configuration's validation split (test has no answers: named), examples from train; each item marks its
    gap ("_"); a local copy is told by its option fields; a sentence without one gap, or ending at it, is named."""
    calls = _fake_datasets(monkeypatch, {"allenai/winogrande": _winogrande_frame()})
    (window,) = load_dataset("winogrande")
    assert (window.id, window.question, window.choices, window.answer, window.answers, window.blank) == (
        "winogrande-validation-1", "The ball broke the window because _ was fragile.", ["the ball", "the window"], 1,
        ["the window"], "_")
    assert len(load_fewshot("winogrande")) == 1
    assert calls == [("allenai/winogrande", "winogrande_xl", "validation"),
                     ("allenai/winogrande", "winogrande_xl", "train")]
    assert dataset_source("winogrande", "f" * 40)["config"] == "winogrande_xl"
    _winogrande_frame().to_json(tmp_path / "wino.jsonl", orient="records", lines=True)
    assert load_dataset(tmp_path / "wino.jsonl") == [dataclasses.replace(window, id="winogrande-test-1")]
    for answer, sentence, problem in [
            ("", "The ball broke the window because _ was fragile.",
             r"field 'answer' must be \"1\" or \"2\" \(the option filling the gap\), got '' \(the Hub's test split has "
             r"no answers: use validation\)"),
            ("1", "The ball broke the window.", r"must hold the blank '_' once, got 0"),
            ("1", "The ball broke _ because _ was fragile.", r"must hold the blank '_' once, got 2"),
            ("1", "The ball broke the window, said _", r"must go on after its blank '_'")]:
        _winogrande_frame(answer, sentence).to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
        with pytest.raises(MinirunError, match=rf"bad\.jsonl: record 1: .*{problem}"):
            load_dataset(tmp_path / "bad.jsonl")


def test_a_gap_item_keeps_its_gap_in_every_wording_and_its_record(tmp_path):
    """`blank` on a choice item: found once in the question and each paraphrase, which go on after it as the question
    does; saved only where set, so other items' records (and the keys hashed from them) are as before."""
    record = {"id": "g1", "question": "Anna thanked Maria because _ had helped.", "choices": ["Anna", "Maria"],
              "answer": 1, "blank": "_",
              "paraphrases": ["Anna was grateful to Maria since _ had helped.",
                              "Maria got Anna's thanks as _ had helped."]}
    item = item_from_dict(record)
    assert item.blank == "_" and item_record(item)["blank"] == "_"
    write_jsonl([item], tmp_path / "items.jsonl")
    assert load_jsonl(tmp_path / "items.jsonl") == [item]
    plain = {k: v for k, v in record.items() if k != "blank"}
    assert "blank" not in item_record(item_from_dict(plain))
    for change, problem in [({"blank": ""}, "field 'blank' marks the gap"),
                            ({"task": "qa", "answers": ["Maria"]}, "field 'blank' marks the gap .* on a qa item"),
                            ({"paraphrases": ["Anna thanked Maria."]}, "must hold the blank '_' once, got 0"),
                            ({"paraphrases": ["Anna thanked Maria because _ had been kind."]},
                             "paraphrase 0 .* must go on after the blank as the question does"),
                            ({"question": "Anna thanked _ "}, "must go on after its blank")]:
        with pytest.raises(ValueError, match=problem):
            item_from_dict({**record, **change})
