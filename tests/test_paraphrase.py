"""Paraphrase generation: filters, batching independence, caching, resume, CLI."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import shutil
import types

import pytest
import torch
from typer.testing import CliRunner

import minirun
from minirun.cli import app
from minirun.engine.generate import Completion
from minirun.eval import paraphrase
from minirun.eval.data import Item, load_dataset, load_jsonl, write_jsonl
from minirun.eval.paraphrase import (clean_rewrite, content_stems, keep, paraphrase_file, rewrite_batch, rewrite_prompt,
                                     rewrite_seed)
from minirun.eval.results import lock_exclusively

ITEM = Item("q1", "What is the capital of France?", [], ["Paris", "City of Light"])


def test_worked_examples_are_no_test_question():
    """A faithful rewrite of a test question would be dropped as a copy of the example it matches."""
    from minirun.eval.data import load_dataset
    from minirun.eval.paraphrase import PROMPTS
    from minirun.text import normalize

    for name in ("sample-qa", "sample-fill", "sample-choice"):
        items = load_dataset(name)
        examples = {normalize(q) for q, _ in PROMPTS[items[0].task][1]}
        assert not examples & {normalize(item.question) for item in items}, name


def test_filters():
    assert not keep("", ITEM, [])
    assert not keep("what is the Capital of France", ITEM, [])  # the question itself
    assert not keep("Is Paris the capital of France?", ITEM, [])  # gives the answer away
    assert keep("Which city is France's capital?", ITEM, [])
    assert not keep("Which city is France's capital", ITEM, ["Which city is France's capital?"])
    assert keep("Which city do Parisians call the capital?", ITEM, [])  # 'Parisians' is not 'Paris'
    assert not keep("Vienna lies on the banks of which river? The Danube!", ITEM, [])  # a worked example copied
    assert not keep("Who wrote The Old Man and the Sea", ITEM, [])
    assert not keep("What is the capital of France? Lyon", ITEM, [])  # the question plus a (wrong) answer
    assert clean_rewrite(' Rewrite: "Which city is it?"\nQuestion: more') == "Which city is it?"
    assert clean_rewrite("Sentence: Egypt's capital is") == "Egypt's capital is"


def test_an_answer_the_original_names_drops_only_rewrites_that_name_it_more():
    """LAMA-style facts often hold the answer in the subject: "New York City" is in "New York". Dropping every
    rewrite naming it left such items without rewrites, so every method answered them as origin."""
    nyc = Item("n1", "Which U.S. state is New York City in?", [], ["New York"])
    assert keep("New York City belongs to which US state?", nyc, [])
    assert not keep("Is New York City in the state of New York?", nyc, [])  # named once more: given away
    tower = Item("t1", "Tokyo Tower is located in", [], ["Tokyo"], task="fill")
    assert keep("The city where Tokyo Tower stands is", tower, [])
    assert not keep("Tokyo Tower, found in Tokyo, is in the city of", tower, [])


def test_rewrites_sharing_no_content_word_with_the_question_are_dropped():
    """SmolLM2 wrote "The answer to this question is:" as a rewrite: it asks nothing, yet it was kept and fused.
    Every hand-written paraphrase of the shipped samples (spelled-out numbers among them) still passes."""
    assert not keep("The answer to this question is:", ITEM, [])
    assert not keep("Could you please rephrase that?", ITEM, [])
    assert keep("Which city serves as the capitals of France?", ITEM, [])  # an inflection still shares the word
    sums = Item("m1", "What is 7 times 8?", [], ["56"])
    assert keep("How much is seven multiplied by eight?", sums, []) and not keep("What is it?", sums, [])
    for name in ("sample-qa", "sample-fill", "sample-choice"):
        for item in load_dataset(name):
            assert all(content_stems(item.question) & content_stems(p) for p in item.paraphrases), item.id


FILL = Item("f1", "The capital of Egypt is", [], ["Cairo"], task="fill")


def test_fill_filters():
    """A fill rewrite must be another prompt that stops where the answer goes, not a completion."""
    assert keep("Egypt's capital city is", FILL, [])
    assert keep("The city that serves as the capital of Egypt is called", FILL, [])
    assert not keep("The capital of Egypt is Egypt.", FILL, [])  # completed with a wrong answer
    assert not keep("The capital of Egypt is Alexandria", FILL, [])  # the original plus more, no full stop
    assert not keep("Egypt's capital is a large city.", FILL, [])  # a statement, nothing left to fill
    assert not keep("Which city is Egypt's capital?", FILL, [])  # a question, not a fill prompt
    assert not keep("Egypt's capital city is ___", FILL, [])  # a blank a completion would not fill
    assert not keep("The painter of the Mona Lisa was", FILL, [])  # a worked example copied
    assert keep("Which city is Egypt's capital?", dataclasses.replace(FILL, task="qa"), [])


def test_fill_items_get_a_fill_rewrite_prompt():
    fill = rewrite_prompt(FILL)
    assert paraphrase.FILL_INSTRUCTION in fill and fill.endswith("Sentence: The capital of Egypt is\nRewrite:")
    assert "Sentence: The Mona Lisa was painted by\nRewrite: The painter of the Mona Lisa was" in fill
    for item in (ITEM, load_dataset("sample-choice")[0]):  # a choice stem is asked as a question, "Q: ..."
        prompt = rewrite_prompt(item)
        assert paraphrase.INSTRUCTION in prompt and prompt.endswith(f"Question: {item.question}\nRewrite:")


def test_a_choice_stem_its_options_continue_is_rewritten_as_an_unfinished_sentence():
    """HellaSwag's contexts and OpenBookQA's stems stop where their options go on: reworded as questions they would
    no longer lead into them, so they are rewritten as a fill prompt is, and filtered alike."""
    stem = Item("h", "Home and Garden: How to grow basil. Then you", [], ["water it."], "choice", None,
                ["water it.", "fly."], 0)
    prompt = rewrite_prompt(stem)
    assert paraphrase.FILL_INSTRUCTION in prompt and prompt.endswith(f"Sentence: {stem.question}\nRewrite:")
    assert keep("Home and Garden: To grow basil, next you", stem, [])
    assert not keep("How do you grow basil at home?", stem, [])  # a question its options no longer continue


def test_a_yes_no_question_is_rewritten_as_a_question_without_the_mark_its_prompt_adds(tmp_path, monkeypatch):
    """BoolQ's questions end in a word (its prompt adds the "?"), yet its options answer them, not continue them: they
    are rewritten as questions, each kept rewrite without a question mark as its original, so the prompt asks "…?"
    of every one; only files of such items key the rule (other files resume as before)."""
    boolq = Item("b", "do iran and afghanistan speak the same language", [], ["yes"], "choice", None, ["no", "yes"], 1,
                 context="Persian is spoken in both.")
    prompt = rewrite_prompt(boolq)
    assert paraphrase.INSTRUCTION in prompt and prompt.endswith(f"Question: {boolq.question}\nRewrite:")
    rewrites = ["Do Iran and Afghanistan share a common language?",
                "Is the same language spoken in Iran and Afghanistan"]
    monkeypatch.setattr(paraphrase, "rewrite_batch", lambda llm, batch, *a: [rewrites])
    undated = type("Tokenizer", (), {"reads_clock": False, "rebuilt": False,
                                     "pinned_clock": lambda self, moment: contextlib.nullcontext()})
    llm = type("FakeLLM", (), {"path": tmp_path, "dtype": torch.float32, "device": torch.device("cpu"),
                               "tokenizer": undated(), "opens_reasoning": lambda self, chat, thinking: False})()
    (done,) = paraphrase_file(llm, [boolq], tmp_path / "b.jsonl", num=2)
    assert done.paraphrases == [boolq.question, "Do Iran and Afghanistan share a common language",
                                "Is the same language spoken in Iran and Afghanistan"]
    assert done.context == boolq.context and done.choices == ["no", "yes"]
    marked = dataclasses.replace(boolq, question=f"{boolq.question}?")  # an original with a mark keeps theirs
    assert paraphrase.kept_rewrites(rewrites[:1], marked) == rewrites[:1]
    settings = (llm, "custom", 2, 1.5, 0.9, 30, 0)
    assert paraphrase.settings_key(*settings) != paraphrase.settings_key(*settings, yes_no_questions=True)


def test_a_gap_item_has_the_words_before_its_gap_rewritten_and_the_rest_kept(tmp_path, monkeypatch):
    """Winogrande's sentences: the words before the gap are rewritten as an unfinished sentence (a fill prompt's rules:
    a rewrite completing it, or naming the right option more often, is dropped), then the gap and the words after it
    as the sentence has them, so every wording is scored by the same words; a gap opening its sentence leaves nothing
    to rewrite; only files of gap items key the rule, and the file reads back as gap items."""
    gap = Item("w", "The ball broke the window because _ was fragile.", [], ["the window"], "choice", None,
               ["the ball", "the window"], 1, blank="_")
    opening = Item("o", "_ broke the window, said the ball.", [], ["the ball"], "choice", None,
                   ["the ball", "the window"], 0, blank="_")
    asked = []
    rewrites = ["The window broke when the ball hit it since",
                "The window was broken by the ball because the window",  # names an option more often
                "The ball broke the window because it was fragile.",  # completes the sentence
                "As the ball smashed the window,",  # stops on no word
                "Since the ball hit _ hard, the window",  # a second gap
                "The window was broken because the ball"]  # an option written before the gap
    monkeypatch.setattr(paraphrase, "rewrite_batch", lambda llm, batch, *a: asked.extend(batch) or [rewrites])
    undated = type("Tokenizer", (), {"reads_clock": False, "rebuilt": False,
                                     "pinned_clock": lambda self, moment: contextlib.nullcontext()})
    llm = type("FakeLLM", (), {"path": tmp_path, "dtype": torch.float32, "device": torch.device("cpu"),
                               "tokenizer": undated(), "opens_reasoning": lambda self, chat, thinking: False})()
    done, alone = paraphrase_file(llm, [gap, opening], tmp_path / "g.jsonl", num=6)
    (part,) = asked
    assert (part.question, part.task, part.blank, part.answers) == (
        "The ball broke the window because", "fill", None, ["the ball", "the window"])
    assert paraphrase.FILL_INSTRUCTION in rewrite_prompt(part)
    assert done.paraphrases == [gap.question, "The window broke when the ball hit it since _ was fragile."]
    assert done.blank == "_" and alone.paraphrases == [opening.question]
    assert load_dataset(tmp_path / "g.jsonl") == [done, alone]
    settings = (llm, "custom", 2, 1.5, 0.9, 30, 0)
    assert paraphrase.settings_key(*settings) != paraphrase.settings_key(*settings, gaps=True)
    comma = Item("c", "Since Joe had more money than Bob, _ paid for dinner.", [], ["Joe"], "choice", None,
                 ["Joe", "Bob"], 0, blank="_")  # the punctuation before the gap is kept, the rewrite ends in a word
    assert paraphrase.rewritten_part(comma).question == "Since Joe had more money than Bob"
    assert paraphrase.gap_kept(comma, "Because Joe had more cash than Bob")  # as the original, it ends in an option
    assert paraphrase.with_gap(comma, "Because Joe had more cash than Bob") == \
        "Because Joe had more cash than Bob, _ paid for dinner."
    assert not paraphrase.gap_kept(comma, "Joe was richer than Bob, so")  # "so, _" would not read
    title = Item("m", "The letter was addressed to Mr. _ and not his wife.", [], ["Smith"], "choice", None,
                 ["Smith", "Jones"], 0, blank="_")
    assert paraphrase.gap_kept(title, "The letter was meant for Mr")
    assert not paraphrase.gap_kept(title, "The letter was meant for")  # "for. _"
    chase = Item("k", "The cat chased the mouse until _ got tired.", [], ["the cat"], "choice", None,
                 ["the cat", "the mouse"], 0, blank="_")
    assert not paraphrase.gap_kept(chase, "The chase of the mouse went on until the cat's")  # an option's possessive


def test_fill_rewrites_that_complete_the_prompt_are_not_written(tmp_path, monkeypatch):
    fills = load_dataset("sample-fill")[2:3]  # The capital of Egypt is
    assert fills[0].question == FILL.question
    rewrites = ["The capital of Egypt is Egypt.", "The capital of Egypt is Abu Dhabi", "Egypt's capital city is"]
    monkeypatch.setattr(paraphrase, "rewrite_batch", lambda llm, batch, *a: [rewrites])
    undated = type("Tokenizer", (), {"reads_clock": False, "rebuilt": False,
                                     "pinned_clock": lambda self, moment: contextlib.nullcontext()})
    llm = type("FakeLLM", (), {"path": tmp_path, "dtype": torch.float32, "device": torch.device("cpu"),
                               "tokenizer": undated(), "opens_reasoning": lambda self, chat, thinking: False})()
    done = paraphrase_file(llm, fills, tmp_path / "f.jsonl", num=3)
    assert done[0].paraphrases == ["The capital of Egypt is", "Egypt's capital city is"]


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


WORD_PROBLEM = Item("m1", "Tom has 3 boxes of 12 pencils and gives away nine of them. How many pencils are left?", [],
                    ["27"], "math")


def test_word_problems_are_reworded_whole_and_keep_every_number():
    """A word problem's rewrite (its own prompt, worked examples that keep their numbers) is dropped where its numbers
    are not the original's — one changed, dropped or added is another problem, whose gold is no longer the item's —
    numbers in words read as digits, and ratios ("half", "twice") kept as stated; the sample problems' own wordings
    all pass."""
    prompt = rewrite_prompt(WORD_PROBLEM)
    assert paraphrase.MATH_INSTRUCTION in prompt and prompt.endswith(f"Problem: {WORD_PROBLEM.question}\nRewrite:")
    assert keep("After giving 9 pencils away from his three boxes holding 12 each, how many pencils does Tom have?",
                WORD_PROBLEM, [])
    for changed in ("Tom has 3 boxes of 10 pencils and gives away 9. How many pencils are left?",  # 12 -> 10
                    "Tom has boxes of 12 pencils and gives away 9. How many pencils remain?",  # 3 dropped
                    "Tom has 3 boxes of 12 pencils, gives away 9 and keeps 27. How many pencils are left?"):  # added
        assert not keep(changed, WORD_PROBLEM, [])
    assert paraphrase.quantities("It costs $1,200 for three and 0.50 more") == {"1200", "3", "0.5"}
    assert paraphrase.quantities("sixteen, twenty-five, two hundred, a dozen, one of them, half, twice") == {
        "16", "25", "200", "12", "1/2", "x2"}
    flips = Item("f", "Jen did sixteen flips. Tyler did half as many. How many flips did Tyler do?", [], ["8"], "math")
    assert keep("Tyler did half as many flips as Jen, who did 16. How many flips did Tyler do?", flips, [])
    for changed in ("Jen did seventeen flips. Tyler did half as many. How many flips did Tyler do?",  # 16 -> 17
                    "Jen did sixteen flips. Tyler did twice as many. How many flips did Tyler do?"):  # 1/2 -> x2
        assert not keep(changed, flips, [])
    for item in load_dataset("sample-math"):
        assert all(keep(p, item, []) for p in item.paraphrases), item.id
        assert not {paraphrase.normalize(q) for q, _ in paraphrase.MATH_DEMOS} & {paraphrase.normalize(item.question)}


def test_word_problems_get_room_to_be_reworded_and_their_own_key(tmp_path, monkeypatch):
    """A rewrite of a word problem gets 256 new tokens unless told otherwise (30 cut it off: a cut-off rewrite is
    none), and its file's key holds the maths prompt; other files' keys stay as they were before it existed."""
    asked = []
    monkeypatch.setattr(paraphrase, "rewrite_batch", lambda llm, batch, num, t, p, tokens, seed: asked.append(tokens)
                        or [[""] * num for _ in batch])
    fake = type("FakeLLM", (), {"path": tmp_path, "dtype": torch.float32, "device": torch.device("cpu"),
                                "tokenizer": types.SimpleNamespace(rebuilt=False, reads_clock=False,
                                                                   pinned_clock=lambda day: contextlib.nullcontext()),
                                "opens_reasoning": lambda self, chat, thinking: False})()
    paraphrase_file(fake, [WORD_PROBLEM], tmp_path / "m.jsonl", num=2)
    paraphrase_file(fake, [ITEM], tmp_path / "q.jsonl", num=2)
    assert asked == [256, 30]
    keys = {paraphrase.settings_key(fake, "sample-math", 2, 1.5, 0.9, 256, 0, worked=worked) for worked in (0, 1)}
    assert len(keys) == 2


def test_a_rewrite_prompt_past_the_context_is_refused_and_leaves_no_file(checkpoint_dirs, tmp_path):
    """The refusal names the fixes that can work: fewer new tokens only where the prompt alone fits, and the part of
    the prompt that takes its tokens (a long question's own text, not the worked examples)."""
    from checkpoints import write_checkpoint

    short = minirun.load(checkpoint_dirs["llama3"])
    with pytest.raises(minirun.MinirunError, match="needs .* tokens \\(most of them the instruction and worked "
                                                   "examples\\) \\+ 6 new ones, beyond the model's context of 512: "
                                                   "rewrite with a model of a longer context, or shorten or drop "
                                                   "that item$"):
        paraphrase_file(short, items()[:1], tmp_path / "p.jsonl", max_new_tokens=6)
    wider = minirun.load(write_checkpoint("llama3", tmp_path / "wider", max_position_embeddings=1024))
    with pytest.raises(minirun.MinirunError, match="\\+ 600 new ones, beyond the model's context of 1024: rewrite "
                                                   "with a model of a longer context, or lower --max-new-tokens, or "
                                                   "shorten or drop that item$"):
        paraphrase_file(wider, items()[:1], tmp_path / "w.jsonl", max_new_tokens=600)
    long = Item("long", " ".join(["word"] * 2000) + "?", [], ["x"])
    with pytest.raises(minirun.MinirunError, match="item 'long' needs .* tokens \\(most of them the item's own "
                                                   "text\\)"):
        paraphrase_file(wider, [long], tmp_path / "l.jsonl", max_new_tokens=6)
    assert not (tmp_path / "p.jsonl").exists()  # an empty file read as a finished run of no item
    (tmp_path / "kept.jsonl").write_text("")  # a file that was there stays, empty or not
    with pytest.raises(minirun.MinirunError, match="context of 512"):
        paraphrase_file(short, items()[:1], tmp_path / "kept.jsonl", max_new_tokens=6)
    long_question = " ".join(["word"] * 600)  # generate --rewrites: its budget is no option, its item no dataset's
    with pytest.raises(minirun.MinirunError, match=r"^the question's rewrite prompt needs .* longer context, or give "
                                                   r"--paraphrase$"):
        paraphrase.rewrite_question(short, long_question, 2)
    assert (tmp_path / "kept.jsonl").exists()


def test_a_file_another_process_removed_while_this_one_opened_it_is_not_written(llm, tmp_path, monkeypatch):
    """A first run that fails removes the empty file it made: a second one that opened it meanwhile would
    write into a file no path names any more, and lose every row."""
    monkeypatch.setattr(paraphrase, "lock_exclusively", lambda f, out: out.unlink())  # the lock, won after removal
    with pytest.raises(minirun.MinirunError, match="another minirun process was writing .*: run this again"):
        paraphrase_file(llm, items()[:1], tmp_path / "p.jsonl", max_new_tokens=6)


def items() -> list[Item]:
    return load_dataset("sample-qa")[:3]


@pytest.fixture
def sampled(monkeypatch) -> list[Completion]:
    """What every rewrite_batch call samples, row by row: the test model's rewrites are mostly cut off,
    so come back empty, and comparing the kept ones alone would compare nothing."""
    rows: list[Completion] = []
    real = paraphrase.decode_loop
    monkeypatch.setattr(paraphrase, "decode_loop", lambda *a, **k: rows.extend(done := real(*a, **k)) or done)
    return rows


def test_rewrite_seeds_are_stable_and_differ_by_item_and_rewrite():
    assert rewrite_seed(0, "q1", 0) == 77154574669170626  # the same in every process, unlike hash()
    assert len({rewrite_seed(0, "q1", 0), rewrite_seed(0, "q2", 0), rewrite_seed(0, "q1", 1),
                rewrite_seed(1, "q1", 0)}) == 4


def test_different_items_get_different_rewrites(llm, tmp_path, sampled):
    """Two items asking the same question are sampled apart (seed + i gave every item the same draws),
    and an item draws the same whichever items share its file."""
    twins = [dataclasses.replace(items()[0], id=name) for name in ("a", "b")]
    paraphrase_file(llm, twins, tmp_path / "twins.jsonl", num=3, max_new_tokens=8)
    first, second = [c.token_ids for c in sampled[:3]], [c.token_ids for c in sampled[3:]]
    assert all(x != y for x, y in zip(first, second))
    paraphrase_file(llm, twins[1:], tmp_path / "b.jsonl", num=3, max_new_tokens=8)
    assert [c.token_ids for c in sampled[6:]] == second


def test_a_cut_off_rewrite_is_dropped(llm, sampled):
    """A rewrite still going at max_new_tokens is unfinished, whatever its text (a fill prompt's rewrite
    cut mid-sentence would even pass as a fill prompt)."""
    out = rewrite_batch(llm, items()[:2], 4, 1.5, 0.9, 6, 0)
    assert any(c.finish_reason == "length" and clean_rewrite(c.text) for c in sampled)
    assert [r for rs in out for r in rs] == ["" if c.finish_reason == "length" else clean_rewrite(c.text)
                                             for c in sampled]


def test_rewrites_do_not_depend_on_batching_and_keep_original_first(llm, tmp_path, sampled):
    a = paraphrase_file(llm, items(), tmp_path / "a.jsonl", num=3, max_new_tokens=8, batch_size=1)
    one_at_a_time = [c.token_ids for c in sampled]
    b = paraphrase_file(llm, items(), tmp_path / "b.jsonl", num=3, max_new_tokens=8, batch_size=3)
    assert a == b and [c.token_ids for c in sampled[len(one_at_a_time):]] == one_at_a_time
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
    lines = out.read_text().splitlines(keepends=True)
    out.write_text(lines[0] + "\n" + lines[2])  # a row deleted in an editor, to redo it, leaving its line blank
    assert paraphrase_file(llm, items(), out, num=2, max_new_tokens=6) == first and calls == [1, 1]


def test_a_torn_line_after_windows_line_ends_costs_only_itself(llm, tmp_path):
    out = tmp_path / "p.jsonl"
    first = paraphrase_file(llm, items(), out, num=2, max_new_tokens=6)
    rows = out.read_text().splitlines()
    out.write_bytes(("\r\n".join(rows[:2]) + "\r\n" + rows[2][:-15]).encode())  # edited on Windows, then a kill
    assert paraphrase_file(llm, items(), out, num=2, max_new_tokens=6) == first
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [x.id for x in first]


def test_a_first_row_torn_by_a_kill_is_redone_and_a_half_typed_item_of_ones_own_is_kept(llm, tmp_path):
    """A file holding only a torn line: a kill in the first row (cut anywhere, even before its question) is redone;
    a user's own half-typed item beginning as rows do was cut away and overwritten, and is refused untouched."""
    out = tmp_path / "p.jsonl"
    first = paraphrase_file(llm, items()[:1], out, num=2, max_new_tokens=6)
    row = out.read_bytes()
    for cut in (5, 30, len(row) - 20):
        out.write_bytes(row[:cut])
        assert paraphrase_file(llm, items()[:1], out, num=2, max_new_tokens=6) == first and out.read_bytes() == row
    draft = b'{"id": "mine", "question": "My own draft item, half typed'
    out.write_bytes(draft)
    with pytest.raises(minirun.MinirunError, match="is not a paraphrase file minirun wrote: choose another output"):
        paraphrase_file(llm, items()[:1], out, num=2, max_new_tokens=6)
    assert out.read_bytes() == draft


def test_other_settings_refused(llm, tmp_path):
    """A resume under other settings names each one that changed, from the settings every row records."""
    out = tmp_path / "p.jsonl"
    paraphrase_file(llm, items()[:1], out, num=2, max_new_tokens=6, dataset="sample-qa")
    with pytest.raises(minirun.MinirunError, match=r"p\.jsonl:1 was written with other settings \(num: 2 -> 3; "
                                                   r"temperature: 1\.5 -> 1\.0\): use another output file"):
        paraphrase_file(llm, items()[:1], out, num=3, temperature=1.0, max_new_tokens=6, dataset="sample-qa")
    with pytest.raises(minirun.MinirunError, match=r"other settings \(dataset: 'sample-qa' -> 'sample-fill'\)"):
        paraphrase_file(llm, load_dataset("sample-fill")[:1], out, num=2, max_new_tokens=6, dataset="sample-fill")


def test_rewrites_of_a_llama_class_tokenizer_before_its_rebuilt_pipeline_are_not_resumed(tmp_path):
    """A Llama 2-style checkpoint's prompts got other ids before minirun encoded them as transformers 5 does: its
    rewrites' key and settings record that, so a file an older minirun wrote is refused, naming the change."""
    from checkpoints import write_checkpoint

    llama2 = minirun.load(write_checkpoint("llama_bias", tmp_path / "llama2", sentencepiece=True,
                                           max_position_embeddings=1024))  # the rewrite prompt's ~620 tokens
    out = tmp_path / "p.jsonl"
    paraphrase_file(llama2, items()[:1], out, num=2, max_new_tokens=4, dataset="sample-qa")
    row = json.loads(out.read_text())
    assert row["paraphrase_setup"].pop("tokenizer") == "as transformers 5 builds it"
    out.write_text(json.dumps({**row, "paraphrase_settings": "0123456789abcdef"}) + "\n")  # as an older minirun
    with pytest.raises(minirun.MinirunError, match=r"other settings \(tokenizer: 'as tokenizer.json is written' -> "
                                                   r"'as transformers 5 builds it'\)"):
        paraphrase_file(llama2, items()[:1], out, num=2, max_new_tokens=4, dataset="sample-qa")


def test_the_key_holds_the_dtype_and_device_kind_the_rewrites_came_from(tmp_path):
    """bfloat16 rewrites (eval's default on a CPU with bfloat16 arithmetic, and on GPU) are other rewrites."""
    def fake(dtype: torch.dtype, device: str):
        return type("FakeLLM", (), {"path": tmp_path, "dtype": dtype, "device": torch.device(device),
                                    "tokenizer": types.SimpleNamespace(rebuilt=False)})()

    keys = {paraphrase.settings_key(fake(dtype, device), "sample-qa", 2, 1.5, 0.9, 6, 0)
            for dtype in (torch.float32, torch.bfloat16) for device in ("cpu", "cuda")}
    assert len(keys) == 4


def test_a_dataset_file_is_keyed_by_where_it_is_not_how_it_is_spelt(llm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "qa.jsonl").write_text("")
    spellings = ["qa.jsonl", "./qa.jsonl", str(tmp_path / "qa.jsonl")]
    keys = {paraphrase.settings_key(llm, name, 2, 1.5, 0.9, 6, 0) for name in spellings}
    assert len(keys) == 1 and paraphrase.settings_key(llm, "sample-qa", 2, 1.5, 0.9, 6, 0) not in keys


def test_a_file_an_older_minirun_wrote_is_refused(llm, tmp_path):
    """Its rewrites were sampled with seed + i and other prompts and filters: resuming it would mix the two."""
    out = tmp_path / "p.jsonl"
    paraphrase_file(llm, items()[:1], out, num=2, max_new_tokens=6, dataset="sample-qa")
    old = [str(llm.path.resolve()), "sample-qa", 2, 1.5, 0.9, 6, 0, paraphrase.INSTRUCTION, paraphrase.DEMOS]
    old_key = hashlib.sha256(json.dumps(old).encode()).hexdigest()[:16]
    row = {**json.loads(out.read_text()), "paraphrase_settings": old_key}
    out.write_text(json.dumps(row) + "\n")  # as the older minirun keyed these settings
    with pytest.raises(minirun.MinirunError, match="by an older minirun: use another output file"):
        paraphrase_file(llm, items()[:2], out, num=2, max_new_tokens=6, dataset="sample-qa")


@pytest.mark.parametrize("cut", [b'{"i', b'{"id": "sq-1", "question": "Wer schrieb \xc3', b'{"id": "sq-1"'])
def test_a_row_cut_inside_a_character_or_its_first_bytes_costs_only_itself(llm, tmp_path, cut):
    """Rows keep non-ASCII text as it is, so a kill can cut one inside a character or before its id."""
    out = tmp_path / "p.jsonl"
    first = paraphrase_file(llm, items()[:2], out, num=2, max_new_tokens=6)
    whole = out.read_bytes()
    out.write_bytes(whole + cut)
    assert paraphrase_file(llm, items()[:2], out, num=2, max_new_tokens=6) == first
    assert out.read_bytes() == whole


def test_a_whole_last_row_without_its_newline_is_redone(llm, tmp_path):
    out = tmp_path / "p.jsonl"
    first = paraphrase_file(llm, items()[:2], out, num=2, max_new_tokens=6)
    out.write_bytes(out.read_bytes()[:-1])  # killed between the row and its newline
    assert paraphrase_file(llm, items()[:2], out, num=2, max_new_tokens=6) == first
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [x.id for x in first]


def test_an_edited_option_or_relation_is_refused(llm, tmp_path):
    """Choices and relation are copied into the file: a finished row kept after their edit would be scored with
    the old options."""
    out = tmp_path / "c.jsonl"
    source = load_dataset("sample-choice")[:1]
    paraphrase_file(llm, source, out, num=2, max_new_tokens=6)
    fixed = dataclasses.replace(source[0], choices=[*source[0].choices[:-1], "(fixed)"])
    for edited in (fixed, dataclasses.replace(source[0], relation="other subject")):
        with pytest.raises(minirun.MinirunError, match="as it read before an edit"):
            paraphrase_file(llm, [edited], out, num=2, max_new_tokens=6)
    rated = dataclasses.replace(source[0], popularity=142.0)  # no rewrite reads it: a file written before resumes
    assert paraphrase_file(llm, [rated], out, num=2, max_new_tokens=6)[0].popularity == 142.0  # as read now


def test_a_greedy_temperature_with_several_rewrites_is_refused(llm, tmp_path):
    with pytest.raises(minirun.MinirunError, match="temperature 0 makes all 3 rewrites of a question the same"):
        paraphrase_file(llm, items()[:1], tmp_path / "p.jsonl", num=3, temperature=0)
    assert not (tmp_path / "p.jsonl").exists()


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
                                     b'{"id": "x"}\n', b"\xff\xfe\n", b'{"id": "x", "note": "keep me"}',
                                     b'{"id": "1", "question": "Q?", "paraphrases": [], "answers": ["A"]}\n', b"\n"])
def test_a_file_minirun_did_not_write_is_refused_untouched(llm, tmp_path, content):
    out = tmp_path / "notes.jsonl"
    out.write_bytes(content)
    with pytest.raises(minirun.MinirunError, match="is not a paraphrase file minirun wrote"):
        paraphrase_file(llm, items()[:1], out, num=2, max_new_tokens=6)
    assert out.read_bytes() == content


def test_cli(long_context, tmp_path):
    out = tmp_path / "p.jsonl"
    result = CliRunner().invoke(app, ["paraphrase", "sample-qa", str(out), "--num", "2", "--max-samples", "2",
                                      "--max-new-tokens", "6", "--model", str(long_context), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "paraphrasing" not in result.output and "wrote" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["paraphrases"][0] == rows[0]["question"]
    args = ["paraphrase", "sample-qa", str(out), "--num", "2", "--max-new-tokens", "6", "--model", str(long_context)]
    again = CliRunner().invoke(app, [*args, "--max-samples", "2", "--no-progress"])
    assert again.exit_code == 0 and "already holds all 2 items: nothing to do" in again.stderr
    more = CliRunner().invoke(app, [*args, "--max-samples", "3"])  # with the bar: it counts the resumed two
    assert more.exit_code == 0 and "wrote" in more.stderr and "3 items (2 of them already there)" in more.stderr
    bare = [row["id"] for row in map(json.loads, out.read_text().splitlines()) if len(row["paraphrases"]) < 2]
    said = f"warning: {len(bare)} of 3 items (first {bare[0]!r}) kept no rewrite" if bare else "kept no rewrite"
    assert (said in " ".join(more.stderr.split())) == bool(bare), more.stderr
    plain = tmp_path / "plain.jsonl"
    plain.write_text(out.read_text().splitlines()[0] + "\nnot json\n")
    skipped = CliRunner().invoke(app, ["paraphrase", str(plain), str(tmp_path / "s.jsonl"), "--num", "2",
                                       "--max-new-tokens", "6", "--model", str(long_context), "--skip-bad"])
    assert skipped.exit_code == 0 and len((tmp_path / "s.jsonl").read_text().splitlines()) == 1, skipped.output
    greedy = CliRunner().invoke(app, ["paraphrase", "sample-qa", str(tmp_path / "g.jsonl"), "--temperature", "0",
                                      "--model", "no/such-model-loaded"])  # refused before the (unloadable) model
    assert greedy.exit_code == 1 and "temperature 0 makes all 5 rewrites" in greedy.stderr
    wrong = CliRunner().invoke(app, ["paraphrase", "sample-qa", str(tmp_path / "q.jsonl"), "--model", str(long_context),
                                     "--device", "gpu0", "--no-progress"])
    assert wrong.exit_code == 1 and "unknown device 'gpu0'" in wrong.stderr
    (tmp_path / "file").write_text("")
    for bad, message in [(tmp_path, "is a directory"), (tmp_path / "file" / "p.jsonl", "is a file, not a folder")]:
        refused = CliRunner().invoke(app, ["paraphrase", "sample-qa", str(bad), "--model", "no/such-model-loaded"])
        assert refused.exit_code == 1 and message in refused.stderr  # before the (here unloadable) model


def test_a_pilot_of_a_mixed_file_grows_whatever_kinds_its_first_items_hold(long_context, tmp_path):
    """The file's key (and default rewrite length) followed the kinds of the items asked: a pilot of a file's first
    item, a plain question, was keyed without the word problem and yes/no question after it, so growing it was
    refused as written "with other settings" though none changed."""
    yes_no = Item("y1", "is the sky blue", [], ["yes"], "choice", None, ["no", "yes"], 1)
    data = tmp_path / "mixed.jsonl"
    write_jsonl([ITEM, WORD_PROBLEM, yes_no], data)
    out, args = tmp_path / "p.jsonl", ["--num", "2", "--max-new-tokens", "6", "--model", str(long_context),
                                       "--no-progress"]
    pilot = CliRunner().invoke(app, ["paraphrase", str(data), str(out), *args, "--max-samples", "1"])
    assert pilot.exit_code == 0 and "wrote" in pilot.stderr, pilot.output
    grown = CliRunner().invoke(app, ["paraphrase", str(data), str(out), *args])
    assert grown.exit_code == 0 and "3 items (1 of them already there)" in grown.stderr, grown.output
    again = CliRunner().invoke(app, ["paraphrase", str(data), str(out), *args, "--max-samples", "1"])
    assert again.exit_code == 0 and "nothing to do" in again.stderr, again.output


def test_choice_items_keep_their_options(llm, tmp_path):
    """Only the question stem is rewritten; options and answer come back unchanged."""
    source = load_dataset("sample-choice")[:2]
    out = paraphrase_file(llm, source, tmp_path / "c.jsonl", num=2, max_new_tokens=6)
    reread = load_jsonl(tmp_path / "c.jsonl")
    for new, old, again in zip(out, source, reread, strict=True):
        assert (new.choices, new.answer, new.task) == (old.choices, old.answer, "choice") == (again.choices,
                                                                                               again.answer, again.task)
        assert new.paraphrases[0] == old.question


def test_a_dated_template_rewrites_every_item_at_the_files_first_day(long_context, tmp_path, monkeypatch):
    """With a chat template that writes the date, a file resumed the next day asks its later items in the first
    day's words (rows record it); another day asked for is another file's settings, refused."""
    from checkpoints import Clock, with_dated_template

    Clock.install(monkeypatch, 6)
    monkeypatch.setattr(paraphrase, "date", Clock)
    llm = minirun.load(with_dated_template(long_context, tmp_path / "ckpt"))
    rendered = []
    render = llm.tokenizer.apply_chat_template
    monkeypatch.setattr(llm.tokenizer, "apply_chat_template",
                        lambda *a, **k: rendered.append(render(*a, **k)) or rendered[-1])
    out = tmp_path / "p.jsonl"
    paraphrase_file(llm, items()[:1], out, num=2, max_new_tokens=6)
    monkeypatch.setattr(Clock, "day", 7)
    paraphrase_file(llm, items()[:2], out, num=2, max_new_tokens=6)
    asked = [text for text in rendered if "Rewrite" in text]  # the rewrite prompts, not the template probed
    assert len(asked) == 2 and all("Today Date: 06 Dec 2026" in text for text in rendered)
    assert [json.loads(line)["template_date"] for line in out.read_text().splitlines()] == ["2026-12-06"] * 2
    with pytest.raises(minirun.MinirunError, match=r"other settings \(template_date: '2026-12-06' -> '2026-12-07'\)"):
        paraphrase_file(llm, items()[:3], out, num=2, max_new_tokens=6, template_date="2026-12-07")
    result = CliRunner().invoke(app, ["paraphrase", "sample-qa", str(tmp_path / "q.jsonl"), "--template-date", "x"])
    assert result.exit_code == 1 and "template date 'x' is not a day as YYYY-MM-DD" in result.output


def test_a_template_that_opens_thinking_rewrites_past_it(long_context, tmp_path, sampled, caplog):
    """A DeepSeek-R1 distillation thinks before any rewrite, whatever the switch says: a new line of its thinking is
    no rewrite, so a rewrite whose thinking never ended within max_new_tokens is none (it was the thinking's first
    line, which the filters could keep)."""
    ckpt = shutil.copytree(long_context, tmp_path / "ckpt")
    template = ckpt / "chat_template.jinja"
    template.write_text(template.read_text().replace("assistant\\n", "assistant\\n<think>\\n"))
    out = rewrite_batch(minirun.load(ckpt), items(), 4, 1.5, 0.9, 12, 0)
    assert all(r == "" for rs in out for r in rs) and all(c.finish_reason != "stop" for c in sampled)
    with caplog.at_level("WARNING", logger="minirun"):  # said before it runs, not left to a count of 0 kept
        paraphrase_file(minirun.load(ckpt), items()[:1], tmp_path / "p.jsonl", num=2, max_new_tokens=12)
    assert "ckpt's template opens its thinking, and 12 new tokens seldom see it end" in caplog.text
    caplog.clear()
    paraphrase_file(minirun.load(long_context), items()[:1], tmp_path / "q.jsonl", num=2, max_new_tokens=12)
    assert "thinking" not in caplog.text


def test_a_hub_dataset_is_rewritten_at_one_commit_and_a_run_on_the_file_cites_it(long_context, tmp_path, monkeypatch):
    """`minirun paraphrase mmlu` reads the test split at the commit main is at, and every row records it
    (`data_source`); a resume after main moved reads that commit again, not a second upload; `eval` on the file
    cites it as the run's data source, and asked as MMLU reads MMLU's examples from that upload too."""
    import sys
    import types

    import huggingface_hub
    import pandas as pd

    from minirun.eval.results import recorded_source

    frame = pd.DataFrame({"question": ["What is 2+2?", "Which city is the capital of Peru?"],
                          "subject": ["math", "geo"], "answer": [1, 0],
                          "choices": [["3", "4", "5", "6"], ["Lima", "Quito", "Bogota", "La Paz"]]})
    calls, main = [], ["d" * 40]

    def load_hub_dataset(name, *config, split, **pinned):
        calls.append((split, pinned.get("revision")))
        rows = frame if split == "test" else frame.assign(question=["What is 3+3?", "Which city is Chile's capital?"])
        return types.SimpleNamespace(to_pandas=lambda: rows.copy())

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_hub_dataset))
    monkeypatch.setattr(huggingface_hub, "dataset_info", lambda repo, revision=None: types.SimpleNamespace(sha=main[0]))
    out = tmp_path / "mmlu-para.jsonl"
    args = ["paraphrase", "mmlu", str(out), "--num", "2", "--max-new-tokens", "4", "--model", str(long_context),
            "--no-progress"]
    first = CliRunner().invoke(app, [*args, "--max-samples", "1"])
    assert first.exit_code == 0, first.output
    main[0] = "e" * 40  # main moved on: the file's second item is still read from the first upload
    more = CliRunner().invoke(app, [*args, "--max-samples", "2"])
    assert more.exit_code == 0, more.output
    assert calls == [("test", "d" * 40), ("test", "d" * 40)]
    cited = {"hub": "cais/mmlu", "revision": "main", "commit": "d" * 40}
    assert [json.loads(line)["data_source"] for line in out.read_text().splitlines()] == [cited, cited]
    assert load_jsonl(out).source == cited

    calls.clear()
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["eval", "--data", str(out), "--benchmark", "mmlu", "--model", str(long_context),
                                      "-m", "origin", "--few-shot-k", "1", "--max-new-tokens", "2", "--no-progress",
                                      "--output", str(run)])
    assert result.exit_code == 0, result.output
    assert calls == [("dev", "d" * 40)]  # the benchmark's examples: from the items' upload, not main's now
    assert recorded_source(run, "data_source") == cited and recorded_source(run, "few_shot_source") == cited


def test_a_file_cites_the_source_every_item_records_and_none_where_they_differ(tmp_path):
    source = {"hub": "cais/mmlu", "revision": "main", "commit": "d" * 40}
    rows = [{**dataclasses.asdict(item), "data_source": source} for item in items()]
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert load_jsonl(path).source == source and load_dataset(str(path)).source == source
    for changed in ({**source, "commit": "e" * 40}, None):
        path.write_text("".join(json.dumps({**row, "data_source": changed if i else source}) + "\n"
                                for i, row in enumerate(rows)))
        assert load_jsonl(path).source is None
