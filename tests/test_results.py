"""Resumable result store: crash-safe journal, resume, run-key checks, shard merge."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from minirun.errors import MinirunError
from minirun.eval.results import (COLUMNS, ResultStore, integer_columns, key_differences, merge, read_results,
                                  run_kernels)

KEY = {"model": "tiny", "dataset": "sample-qa", "k": 5}
IDS = [f"q{i}" for i in range(6)]
METHODS = ["single", "ensemble"]


def _row(method: str, item_id: str) -> dict:
    i = int(item_id[1:])
    return {"id": item_id, "method": method, "prompts": [f"p{i}", f"p{i}b"], "generated": f"ans {i}\n",
            "answer": f"ans {i}", "exact": i % 2 == 0, "correct": i % 3 == 0, "tokens": 3 + i, "seconds": 0.5,
            "relation": None}


def _all_rows():
    return [_row(m, i) for i in IDS for m in METHODS]  # interleaved, not table order


def _run(out, rows, rank=0):
    with ResultStore(out, KEY, rank=rank, item_ids=IDS) as store:
        for row in rows:
            if row["id"] not in store.done(row["method"]):
                store.add(row)
        return store.finalize()


@pytest.fixture
def reference(tmp_path):
    return _run(tmp_path / "ref", _all_rows())


def test_table_order_and_files(tmp_path, reference):
    assert list(reference.columns) == [*COLUMNS, "relation"]
    assert list(zip(reference["method"], reference["id"])) == [(m, i) for m in sorted(METHODS) for i in IDS]
    out = tmp_path / "ref"
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet").astype({"prompts": object}),
                                  reference.astype({"prompts": object}), check_dtype=False)
    mirror = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert mirror == reference.to_dict("records")
    assert json.loads((out / "run.json").read_text())["run_key"] == KEY
    assert not list(out.glob(".*tmp"))


def test_resume_after_kill_is_identical(tmp_path, reference):
    out = tmp_path / "run"
    rows = _all_rows()
    with ResultStore(out, KEY, item_ids=IDS) as store:
        for row in rows[:5]:
            store.add(row)
    with (out / "results.rank0.jsonl").open("a") as f:
        f.write(json.dumps(rows[5])[:25])  # a kill -9 mid-write
    with ResultStore(out, KEY, item_ids=IDS) as store:
        assert sum(len(store.done(m)) for m in METHODS) == 5
        assert store.done("single") == {r["id"] for r in rows[:5] if r["method"] == "single"}
    resumed = _run(out, rows)
    pd.testing.assert_frame_equal(resumed, reference)
    lines = (out / "results.rank0.jsonl").read_text().splitlines()
    assert len(lines) == len(rows) and all(json.loads(line) for line in lines)  # partial line cut, no duplicates


def test_adding_a_done_row_is_ignored(tmp_path, reference):
    out = tmp_path / "run"
    _run(out, _all_rows())
    again = _run(out, _all_rows())  # re-adding every row changes nothing
    pd.testing.assert_frame_equal(again, reference)
    assert len((out / "results.rank0.jsonl").read_text().splitlines()) == len(_all_rows())


def test_corrupt_middle_line(tmp_path):
    out = tmp_path / "run"
    _run(out, _all_rows()[:2])
    journal = out / "results.rank0.jsonl"
    journal.write_text("{broken\n" + journal.read_text())
    with pytest.raises(MinirunError, match=r"results\.rank0\.jsonl:1: corrupt"):
        ResultStore(out, KEY, item_ids=IDS)
    good = journal.read_text().split("\n", 1)[1]
    for line in ('{"id": "q0"}', "[1, 2]"):  # JSON, but not a row: no method, or not an object
        journal.write_text(good + line + "\n")
        with pytest.raises(MinirunError, match=r"results\.rank0\.jsonl:3: corrupt"):
            read_results(out)


def test_a_journal_row_no_run_writes_is_refused_not_scored(tmp_path, reference):
    """An edited journal, or lines copied from another run: a row for an item the run does not list would be counted
    in every figure, and a second, disagreeing row for one method and item would be dropped unseen."""
    out = tmp_path / "ref"
    journal = out / "results.rank0.jsonl"
    clean = journal.read_text()
    journal.write_text(clean + json.dumps(_row("single", "q0")) + "\n")  # a repeat that agrees: kept once
    pd.testing.assert_frame_equal(read_results(out), reference)
    lines = len(clean.splitlines())
    journal.write_text(clean + json.dumps({**_row("single", "q0"), "correct": False, "seconds": 9.0}) + "\n")
    with pytest.raises(MinirunError, match=rf"rank0\.jsonl:{lines + 1}: a second row for single on item 'q0' that "
                                           r"disagrees with the first \(correct: True then False\): delete the line"):
        read_results(out)
    journal.write_text(clean + json.dumps({**_row("single", "q0"), "id": "q99"}) + "\n")
    with pytest.raises(MinirunError, match=rf"rank0\.jsonl:{lines + 1}: a row for item 'q99', which is not one of the "
                                           r"run's 6 items \(run.json item_ids\): delete that line"):
        read_results(out)
    with pytest.raises(MinirunError, match="a row for item 'q99'"):  # a resume says so before it runs, not after
        ResultStore(out, KEY, item_ids=IDS)


def test_different_run_key_is_refused(tmp_path):
    out = tmp_path / "run"
    _run(out, _all_rows()[:1])
    with pytest.raises(MinirunError, match=r"model: 'tiny' -> 'big'.*new output directory"):
        ResultStore(out, {**KEY, "model": "big"}, item_ids=IDS)
    with pytest.raises(MinirunError, match=r"it is a run of 6 items and this run asks 3 of them \(a smaller "
                                           r"--max-samples / max_samples, or items taken out of the file; a larger run "
                                           r"begun is that run now\)\); use a new output directory, or the original "
                                           r"arguments to resume"):
        ResultStore(out, KEY, item_ids=IDS[:3])
    with pytest.raises(MinirunError) as e:  # fewer items hash otherwise too: not an "edited" item
        ResultStore(out, {**KEY, "items": "other"}, item_ids=IDS[:3])
    assert "edited" not in str(e.value) and "smaller --max-samples" in str(e.value)
    with pytest.raises(MinirunError, match=r"the dataset's items differ \(another file, --max-samples or "
                                           r"--sample-seed, or items of the file replaced\)"):
        ResultStore(out, KEY, item_ids=[*IDS[:5], "q9"])


def test_a_run_grows_over_more_items_keeping_its_rows(tmp_path, reference):
    """A pilot of 3 items resumed over 6 (a larger --max-samples, a file with items appended) keeps its rows where
    its items, asked as now, hash as recorded (`grown`), and records the larger run; without `grown`, or where an
    item the run holds is asked otherwise now, or the few-shot heads of its items changed, it is refused, saying
    which."""
    out, first = tmp_path / "run", IDS[:3]
    held, new = {"items": "first 3", "few_shot": "a"}, {**KEY, "items": "all 6", "few_shot": "b"}
    with ResultStore(out, {**KEY, **held}, item_ids=first) as store:
        for row in _all_rows():
            if row["id"] in first:
                store.add(row)
    seen = []

    def grown(recorded: list[str]) -> dict:
        seen.append(recorded)
        return held

    with pytest.raises(MinirunError, match=r"the dataset's items differ"):  # no way to check the 3 held
        ResultStore(out, new, item_ids=IDS)
    with pytest.raises(MinirunError, match=r"the items' content changed \(a question, prompt, passage, gold answer or "
                                           r"option was edited\)"):
        ResultStore(out, new, item_ids=IDS, grown=lambda ids: {**held, "items": "edited"})
    with pytest.raises(MinirunError, match=r"the few-shot prompt of the items it holds changed \(another few-shot file "
                                           r"or edited examples, or MMLU's per-subject heads, .*; or the items added "
                                           r"changed their draw"):
        ResultStore(out, new, item_ids=IDS, grown=lambda ids: {**held, "few_shot": "c"})
    # an entry the held items would not make (None) is dropped: an added item's alone does not refuse the run
    ResultStore(out, {**new, "origin_question": "as formatted"}, item_ids=IDS,
                grown=lambda ids: {**held, "origin_question": None}, record=False).close()
    with pytest.raises(MinirunError, match=r"its origin rows asked the questions with the whitespace"):
        ResultStore(out, {**new, "origin_question": "as formatted"}, item_ids=IDS,
                    grown=lambda ids: {**held, "origin_question": "as formatted"})
    assert json.loads((out / "run.json").read_text())["item_ids"] == first  # a check (record=False) writes nothing
    with pytest.raises(MinirunError, match=r"k: 5 -> 4"):  # any other setting changed is refused as ever
        ResultStore(out, {**new, "k": 4}, item_ids=IDS, grown=grown)
    seen.clear()
    with ResultStore(out, new, item_ids=IDS, grown=grown) as store:
        assert store.done("single") == set(first)
        for row in _all_rows():
            if row["id"] not in store.done(row["method"]):
                store.add(row)
        table = store.finalize()
    assert seen == [first]
    pd.testing.assert_frame_equal(table, reference)
    record = json.loads((out / "run.json").read_text())
    assert record["item_ids"] == IDS and record["run_key"]["items"] == "all 6"
    with ResultStore(out, new, item_ids=IDS, grown=grown) as store:  # the grown run resumes as any, unasked
        assert store.done("ensemble") == set(IDS) and seen == [first]


def test_rows_without_run_json_are_refused(tmp_path):
    """Every store writes run.json before its first row; rows without one were made by something else (or run.json
    was deleted), and any settings would be taken for theirs."""
    out = tmp_path / "run"
    _run(out, _all_rows()[:3])
    (out / "run.json").unlink()
    with pytest.raises(MinirunError, match="holds result rows but no run.json"):
        ResultStore(out, {**KEY, "model": "big"}, item_ids=IDS)
    assert not (out / "run.json").exists()


def test_read_results_tells_how_many_items_the_run_lists(tmp_path):
    out = tmp_path / "run"
    _run(out, _all_rows()[:3])
    assert read_results(out).attrs["items"] == len(IDS)


def test_new_key_allowed_when_nothing_stored(tmp_path):
    out = tmp_path / "run"
    ResultStore(out, KEY, item_ids=IDS).close()
    ResultStore(out, {**KEY, "model": "big"}, item_ids=IDS).close()
    assert json.loads((out / "run.json").read_text())["run_key"]["model"] == "big"


def test_missing_column(tmp_path):
    with ResultStore(tmp_path, KEY) as store, pytest.raises(ValueError, match="seconds"):
        store.add({k: v for k, v in _row("single", "q1").items() if k != "seconds"})


def test_merge_of_shards_equals_single_process(tmp_path, reference):
    out = tmp_path / "shards"
    rows = _all_rows()
    stores = [ResultStore(out, KEY, rank=r, item_ids=IDS) for r in (0, 1)]
    for row in rows:
        stores[int(row["id"][1:]) % 2].add(row)  # rank r owns items i % 2 == r
    assert stores[0].done("single") == {"q0", "q2", "q4"}
    for store in stores:
        store.close()
    assert sorted(p.name for p in out.glob("results.rank*.jsonl")) == ["results.rank0.jsonl", "results.rank1.jsonl"]
    pd.testing.assert_frame_equal(merge(out), reference)
    with ResultStore(out, KEY, rank=0, item_ids=IDS) as store:  # a restarted rank sees every shard
        assert store.done("single") == set(IDS)


def test_read_results_without_item_order(tmp_path):
    out = tmp_path / "run"
    with ResultStore(out, KEY) as store:
        for i in ["q2", "q10", "q1"]:
            store.add(_row("single", i))
    assert list(read_results(out)["id"]) == ["q1", "q10", "q2"]
    assert read_results(tmp_path / "empty").empty


def test_a_directory_with_results_files_of_no_run_is_refused_untouched(tmp_path):
    (tmp_path / "results.jsonl").write_text("my own dataset\n")
    with pytest.raises(MinirunError, match="holds results files no minirun run wrote"):
        ResultStore(tmp_path, {"model": "m"})
    assert (tmp_path / "results.jsonl").read_text() == "my own dataset\n"
    (tmp_path / "results.jsonl").unlink()
    for record in ('{"settings": 1}', '{"run_key": {"dataset": 5}}'):  # valid JSON, not a run record (a dataset
        (tmp_path / "run.json").write_text(record)  # of 5 was a traceback, in `report` too)
        with pytest.raises(MinirunError, match="run.json is not a run record minirun wrote"):
            ResultStore(tmp_path, {"model": "m"})


def test_temps_a_killed_writer_left_are_removed_by_the_next_write(tmp_path):
    """SIGKILL mid-write left `.results.parquet.<pid>.tmp` (a whole table's size) in the run folder for good; a live
    process's temp, or one written lately (a writer on another machine), is kept."""
    import os
    import time

    from minirun.paths import STALE_TEMP_SECONDS, write_atomic

    old = time.time() - STALE_TEMP_SECONDS - 5
    dead, recent, alive, other = (tmp_path / f".results.parquet.{pid}.tmp" for pid in (2**31 - 5, 2**31 - 7,
                                                                                       os.getppid(), "x"))
    for temp in (dead, recent, alive, other):
        temp.write_text("half a table")
    for temp in (dead, alive, other):
        os.utime(temp, (old, old))
    staged, foreign = tmp_path / f".results.parquet.{2**31 - 9}.tmp", tmp_path / f".notes.{2**31 - 9}.tmp"
    for folder, inside in ((staged, "results.parquet"), (foreign, "draft.txt")):  # a killed writer's staging folder,
        folder.mkdir()  # and another program's folder of that look, which holds other files
        (folder / inside).write_text("half")
        os.utime(folder, (old, old))
    write_atomic(tmp_path / "results.parquet", lambda tmp: tmp.write_text("table"))
    assert not dead.exists() and recent.exists() and alive.exists() and other.exists()
    assert not staged.exists() and (foreign / "draft.txt").exists()


def test_write_atomic_keeps_the_old_file_when_a_write_fails(tmp_path):
    from minirun.paths import write_atomic

    target = tmp_path / "deep" / "run.json"
    write_atomic(target, lambda tmp: tmp.write_text("old"))

    def torn(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, torn)
    assert target.read_text() == "old"
    write_atomic(target, lambda tmp: tmp.write_text("new"))
    assert target.read_text() == "new" and [p.name for p in target.parent.iterdir()] == ["run.json"]


def test_write_atomic_follows_links_writes_into_pipes_and_keeps_modes(tmp_path):
    """`--csv`/`--latex` through `write_atomic` renamed a temp over whatever the path was: a link (into a synced paper
    folder) became a file and its target kept the old table, a pipe or a device (/dev/stdout) became a regular file,
    a private file's mode became the umask's."""
    import os
    import stat

    from minirun.paths import write_atomic

    target, link = tmp_path / "real.tex", tmp_path / "link.tex"
    target.write_text("old")
    link.symlink_to(target)
    write_atomic(link, lambda staged: staged.write_text("new"))
    assert link.is_symlink() and target.read_text() == "new"
    target.chmod(0o600)
    write_atomic(target, lambda staged: staged.write_text("newer"))
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    reader = os.open(pipe, os.O_RDONLY | os.O_NONBLOCK)  # a reader waiting, as a shell's `>(...)` is
    try:
        write_atomic(pipe, lambda staged: staged.write_text("through"))
        assert os.read(reader, 100) == b"through" and stat.S_ISFIFO(os.stat(pipe).st_mode)
    finally:
        os.close(reader)


@pytest.mark.parametrize("name", ["t.csv.zip", "t.csv.tar.gz", "t.csv.gz"])
def test_a_table_written_whole_is_compressed_as_its_name_says(tmp_path, name):
    """pandas reads the compression, and names an archive's member, from the file's name: the temp's name gave a zip
    member ".t.csv.zip.<pid>.tmp", a .tar.gz plain gzip that pandas could not read back."""
    import zipfile

    from minirun.cli.common import write_csv

    frame = pd.DataFrame({"method": ["avg"], "accuracy": [0.8]})
    write_csv(frame, tmp_path / name, index=False)
    assert pd.read_csv(tmp_path / name).equals(frame)
    if name.endswith(".zip"):
        assert zipfile.ZipFile(tmp_path / name).namelist() == ["t.csv"]


def test_integer_columns_with_gaps_stay_integers_and_others_are_left_alone():
    """pandas turned a fusion layer or a choice with gaps into 2.0 and 1.0; a sweep's concat did it again."""
    parts = [pd.DataFrame({"fusion_layer": [2, 2], "choice": [None, None], "seconds": [1.0, 2.0]}),
             pd.DataFrame({"fusion_layer": [None, None], "choice": [1, 3], "seconds": [3.0, 4.0]})]
    table = integer_columns(pd.concat(parts, ignore_index=True))
    assert table["fusion_layer"].tolist() == [2, 2, pd.NA, pd.NA] and str(table["fusion_layer"].dtype) == "Int64"
    assert table["choice"].tolist()[2:] == [1, 3] and str(table["choice"].dtype) == "Int64"
    assert table["seconds"].dtype == float  # not an integer column
    odd = integer_columns(pd.DataFrame({"choice": [1.5, None]}))  # not integers: kept as they are
    assert odd["choice"].dtype == float


def test_a_dataset_spelling_is_forgiven_only_where_its_items_are_the_same():
    """Another path to the same items resumes; another file asked at another prompt count names both changes (the
    items' hash differing because of the count is no proof the file is the same)."""
    old = {"run_key": {"dataset": "qa.jsonl", "items": "a", "num_prompts": 2}, "item_ids": ["1"]}
    assert key_differences(old, {"dataset": "./qa.jsonl", "items": "a", "num_prompts": 2}, ["1"]) == []
    assert key_differences(old, {"dataset": "other.jsonl", "items": "b", "num_prompts": 3}, ["1"]) == [
        "dataset: 'qa.jsonl' -> 'other.jsonl'", "num_prompts: 2 -> 3"]


def test_the_jsonl_mirror_is_standard_json(tmp_path):
    """results.jsonl is read by tools other than Python's: a float column's gaps (NaN in pandas) and non-finite
    numbers are written as null, numpy values as plain ones; the parquet keeps them as they are."""
    from minirun.eval.results import strict_json

    out = tmp_path / "run"
    with ResultStore(out, KEY, item_ids=IDS[:2]) as store:
        store.add({**_row("single", "q0"), "per_prompt_accuracy": 0.5, "choice_logprobs": [-1.0, float("-inf")]})
        store.add(_row("single", "q1"))  # no per_prompt_accuracy: NaN in the table
        table = store.finalize()
    assert math.isnan(table.loc[1, "per_prompt_accuracy"])

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    lines = [json.loads(line, parse_constant=refuse) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["per_prompt_accuracy"] for r in lines] == [0.5, None]
    assert lines[0]["choice_logprobs"] == [-1.0, None] and lines[1]["choice_logprobs"] is None
    assert strict_json({"a": np.float32(1.5), "b": np.array([np.nan, 2.0]), "c": (pd.NA, np.int64(3))}) == {
        "a": 1.5, "b": [None, 2.0], "c": [None, 3]}


def test_the_jsonl_mirror_refuses_what_json_cannot_hold():
    from minirun.eval.results import strict_json

    with pytest.raises(TypeError, match="cannot store set in a result row"):
        strict_json({"a": {1, 2}})


def test_a_runs_kernel_choices_are_recorded_per_rank_and_read_lowest_rank_first(tmp_path):
    """What `eval` pins on resuming: every rank's record, rank 0's where two differ; a damaged record is refused."""
    with ResultStore(tmp_path, {"model": "m"}, rank=1) as store:
        store.record_kernels({"dense_attention | n=1": "grouped", "dense_attention | n=2": "folded"})
        written = (tmp_path / "kernels.rank1.json").stat().st_mtime_ns
        store.record_kernels({"dense_attention | n=1": "grouped"})  # nothing new: not written again
        assert (tmp_path / "kernels.rank1.json").stat().st_mtime_ns == written
    with ResultStore(tmp_path, {"model": "m"}, rank=0) as store:
        store.record_kernels({"dense_attention | n=1": "sdpa"})
    assert run_kernels(tmp_path) == {"dense_attention | n=1": "sdpa", "dense_attention | n=2": "folded"}
    (tmp_path / "kernels.rank1.json").write_text('{"dense_attention | n=1": 3}')
    with pytest.raises(MinirunError, match=r"kernels.rank1.json is not the record of kernel choices minirun writes: "
                                           "delete it"):
        run_kernels(tmp_path)
    with pytest.raises(MinirunError, match="kernels.rank1.json is not the record"):
        ResultStore(tmp_path, {"model": "m"}, rank=1)  # its own record, read to add to it


def test_a_batch_cut_off_part_way_leaves_no_line_of_it(tmp_path, monkeypatch):
    """A full disk wrote part of a batch: its whole lines were kept and a resume redid the rest as a smaller batch
    (other rounding in bfloat16). The journal is cut back to the batch before, and the error goes on."""
    import errno

    from minirun.eval import results

    rows = [{c: None for c in COLUMNS} | {"id": f"q{i}", "method": "avg", "prompts": [], "tokens": 1,
                                               "seconds": 0.1}
            for i in range(4)]
    with ResultStore(tmp_path, {"model": "m"}) as store:
        store.add_batch(rows[:2])
        kept = (tmp_path / "results.rank0.jsonl").read_bytes()
        real = results.os.write
        monkeypatch.setattr(results.os, "write", lambda fd, data: real(fd, data[:len(data) * 3 // 4]) if len(data)
                            > 200 else (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
        with pytest.raises(OSError, match="No space left") as full:
            store.add_batch(rows[2:])
        assert full.value.filename == str(tmp_path / "results.rank0.jsonl")  # a write's error names no file itself
        monkeypatch.undo()
        assert (tmp_path / "results.rank0.jsonl").read_bytes() == kept
    with ResultStore(tmp_path, {"model": "m"}) as store:
        assert store.done("avg") == {"q0", "q1"}
