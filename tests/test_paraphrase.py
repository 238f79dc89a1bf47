"""Paraphrase generation: filters, batching independence, caching, resume, CLI."""
from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
from typer.testing import CliRunner

import minirun
from minirun.cli import app
from minirun.eval import paraphrase
from minirun.eval.data import Item, load_dataset, load_jsonl
from minirun.eval.paraphrase import clean_rewrite, keep, paraphrase_file
from minirun.eval.results import lock_exclusively

ITEM = Item("q1", "What is the capital of France?", [], ["Paris", "City of Light"])


def test_filters():
    assert not keep("", ITEM, [])
    assert not keep("what is the Capital of France", ITEM, [])  # the question itself
    assert not keep("Is Paris the capital of France?", ITEM, [])  # gives the answer away
    assert keep("Which city is France's capital?", ITEM, [])
    assert not keep("Which city is France's capital", ITEM, ["Which city is France's capital?"])
    assert keep("Which city do Parisians call the capital?", ITEM, [])  # 'Parisians' is not 'Paris'
    assert not keep("Which city serves as Japan's capital? It's Japan!", ITEM, [])  # a worked example copied
    assert not keep("Who painted the Mona Lisa", ITEM, [])
    assert clean_rewrite(' Rewrite: "Which city is it?"\nQuestion: more') == "Which city is it?"


@pytest.fixture(scope="module")
def long_context(checkpoint_dirs, tmp_path_factory):
    """The llama3 test checkpoint declaring a 1,024-token context: the rewrite prompt is ~520 of the test
    tokenizer's tokens, past the 512 the test checkpoints declare."""
    path = tmp_path_factory.mktemp("paraphrase") / "llama3"
    shutil.copytree(checkpoint_dirs["llama3"], path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 1024}))
    return path


@pytest.fixture(scope="module")
def llm(long_context):
    return minirun.load(long_context)


def test_a_rewrite_prompt_past_the_context_is_refused(checkpoint_dirs, tmp_path):
    with pytest.raises(minirun.MinirunError, match="needs .* tokens, beyond the model's context of 512"):
        paraphrase_file(minirun.load(checkpoint_dirs["llama3"]), items()[:1], tmp_path / "p.jsonl", max_new_tokens=6)


def items() -> list[Item]:
    return load_dataset("sample-qa")[:3]


def test_rewrites_do_not_depend_on_batching_and_keep_original_first(llm, tmp_path):
    a = paraphrase_file(llm, items(), tmp_path / "a.jsonl", num=3, max_new_tokens=8, batch_size=1)
    b = paraphrase_file(llm, items(), tmp_path / "b.jsonl", num=3, max_new_tokens=8, batch_size=3)
    assert a == b
    assert all(x.paraphrases[0] == x.question and len(x.paraphrases) <= 4 for x in a)
    assert [x.id for x in load_jsonl(tmp_path / "a.jsonl")] == [x.id for x in items()]
    assert paraphrase_file(llm, items(), str(tmp_path / "a.jsonl"), num=3, max_new_tokens=8) == a  # a str path too


def test_rerun_does_nothing_new_and_a_torn_line_is_redone(llm, tmp_path, monkeypatch):
    out = tmp_path / "p.jsonl"
    first = paraphrase_file(llm, items(), out, num=2, max_new_tokens=6)
    calls = []
    real = paraphrase.rewrite_batch
    monkeypatch.setattr(paraphrase, "rewrite_batch", lambda llm, batch, *a: calls.append(len(batch)) or real(llm, batch, *a))
    assert paraphrase_file(llm, items(), out, num=2, max_new_tokens=6) == first and calls == []
    text = out.read_text()
    out.write_text(text[: len(text) - 20])  # a kill -9 in the middle of the last line
    assert paraphrase_file(llm, items(), out, num=2, max_new_tokens=6) == first and calls == [1]
    assert len(out.read_text().splitlines()) == 3


def test_a_torn_line_after_windows_line_ends_costs_only_itself(llm, tmp_path):
    out = tmp_path / "p.jsonl"
    first = paraphrase_file(llm, items(), out, num=2, max_new_tokens=6)
    rows = out.read_text().splitlines()
    out.write_bytes(("\r\n".join(rows[:2]) + "\r\n" + rows[2][:-15]).encode())  # edited on Windows, then a kill
    assert paraphrase_file(llm, items(), out, num=2, max_new_tokens=6) == first
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [x.id for x in first]


def test_other_settings_refused(llm, tmp_path):
    out = tmp_path / "p.jsonl"
    paraphrase_file(llm, items()[:1], out, num=2, max_new_tokens=6, dataset="sample-qa")
    with pytest.raises(minirun.MinirunError, match="other paraphrase settings"):
        paraphrase_file(llm, items()[:1], out, num=3, max_new_tokens=6, dataset="sample-qa")
    with pytest.raises(minirun.MinirunError, match="another dataset"):  # one file, one dataset's rewrites
        paraphrase_file(llm, load_dataset("sample-fill")[:1], out, num=2, max_new_tokens=6, dataset="sample-fill")


def test_an_edited_item_is_refused_and_a_second_writer_too(llm, tmp_path):
    out = tmp_path / "p.jsonl"
    paraphrase_file(llm, items()[:2], out, num=2, max_new_tokens=6)
    before = out.read_bytes()
    edited = [items()[0], dataclasses.replace(items()[1], question="What is the capital of Italy?")]
    with pytest.raises(minirun.MinirunError, match=r"rewrites of item .* as it read before an edit"):
        paraphrase_file(llm, edited, out, num=2, max_new_tokens=6)
    with out.open("a") as other:  # another process appending to the file
        lock_exclusively(other, out)
        with pytest.raises(minirun.MinirunError, match="another minirun process is writing"):
            paraphrase_file(llm, items()[:3], out, num=2, max_new_tokens=6)
    assert out.read_bytes() == before


@pytest.mark.parametrize("content", [b"my notes line 1\nmy important line 2", b"garbage\n", b"[1, 2]\n",
                                     b'{"id": "x"}\n', b"\xff\xfe\n"])
def test_a_file_minirun_did_not_write_is_refused_untouched(llm, tmp_path, content):
    out = tmp_path / "notes.jsonl"
    out.write_bytes(content)
    with pytest.raises(minirun.MinirunError, match="is not a paraphrase file minirun wrote"):
        paraphrase_file(llm, items()[:1], out, num=2, max_new_tokens=6)
    assert out.read_bytes() == content


def test_cli(long_context, tmp_path):
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(app, ["paraphrase", "sample-qa", str(out), "--num", "2", "--max-samples", "2",
                                      "--max-new-tokens", "6", "--model", str(long_context)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["paraphrases"][0] == rows[0]["question"]


def test_choice_items_keep_their_options(llm, tmp_path):
    """Only the question stem is rewritten; options and answer come back unchanged."""
    source = load_dataset("sample-choice")[:2]
    out = paraphrase_file(llm, source, tmp_path / "c.jsonl", num=2, max_new_tokens=6)
    reread = load_jsonl(tmp_path / "c.jsonl")
    for new, old, again in zip(out, source, reread):
        assert (new.choices, new.answer, new.task) == (old.choices, old.answer, "choice") == (again.choices,
                                                                                               again.answer, again.task)
        assert new.paraphrases[0] == old.question
