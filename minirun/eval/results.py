"""Crash-safe, resumable result rows.

Each finished (item, method) row is appended to a per-rank JSONL journal and fsynced, so a
killed run loses at most the row being written; reopening the directory resumes from the
journals. `merge` turns all journals into one deduplicated, deterministically ordered table
(`results.parquet` + `results.jsonl`), identical whether one process or many wrote them.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
from pathlib import Path
from typing import IO, Callable

import pandas as pd

from minirun.errors import MinirunError, is_number, is_texts
from minirun.methods.names import OPTION_READERS
from minirun.paths import name_the_file, write_atomic

log = logging.getLogger(__name__)

COLUMNS = ("id", "method", "prompts", "generated", "answer", "exact", "correct", "tokens", "seconds")
_JOURNAL = re.compile(r"results\.rank(\d+)\.jsonl$")
_KERNELS = re.compile(r"kernels\.rank(\d+)\.json$")  # each rank's kernel choices (`ResultStore.record_kernels`)
# every file a run keeps (and a sweep: its index, done markers and combined table), which nothing else may write over
KEPT_FILES = re.compile(r"(run|sweep|done)\.json|results\.(jsonl|parquet|csv)|\.lock\.rank\d+|"
                        + "|".join(pattern.pattern.removesuffix("$") for pattern in (_JOURNAL, _KERNELS)))
# Run-key entries recorded since a version of minirun whose earlier runs made rows another way: a key that
# lacks one holds rows made that way (entries not listed here, missing, are simply not compared).
RECORDED_BEFORE = {"prompt_ids": "parts", "matcher": "v1", "prompt_format": "minirun", "answers": "first line",
                   "origin_question": "as given", "tokenizer": "as tokenizer.json is written",
                   "options_spaced": "minirun's"}
REBUILT = "as transformers 5 builds it"  # the run key's `tokenizer` where `Tokenizer.rebuilt`
EXPLAIN_ITEMS = {"num_prompts", "original"}  # settings that change which prompts the items' hash covers
# what the few-shot heads' hash differing means where a run grows: the heads of the items it holds, asked as now
GROWN_FEW_SHOT = ("the few-shot prompt of the items it holds changed (another few-shot file or edited examples, or "
                  "MMLU's per-subject heads, which minirun before them did not build; or the items added changed "
                  "their draw: a shared draw leaves out every question under test, and per-question draws are made "
                  "in the questions' order, which another --sample-seed changes)")
OPAQUE = {  # run-key entries that are hashes: what a change of each means
    "items": "the items' content changed (a question, prompt, passage, gold answer or option was edited)",
    "few_shot": "the few-shot prompt changed (another --few-shot-k, --few-shot-draw, few-shot file or edited examples, "
                "or MMLU's per-subject heads, which minirun before them did not build)",
    "prompt_ids": "its rows were made before prompts were tokenized whole (another minirun)",
    "answers": "its rows took a reasoning model's answers from its thinking's first line (a minirun before answers "
               "were taken after </think>)",
    "origin_question": "its origin rows asked the questions with the whitespace the benchmark's format strips (a "
                       "minirun before origin's question was written as the other prompts are)",
    "matcher": "its verdicts came from another answer matcher (another minirun or spaCy pipeline)",
    "options_spaced": "its options were scored stripped, after a prompt's trailing whitespace in place of the space, "
                      "where lm-evaluation-harness scores them as given, after its space, that whitespace before it "
                      "(HellaSwag's endings cleaned of a \"[step]\" mark start with a space; a question asked with "
                      "no cue may end in one): a minirun before the harness's spacing",
    "tokenizer": "its prompts were tokenized as tokenizer.json is written, where transformers 5 (and minirun since) "
                 "builds this Llama-class tokenizer's pipeline itself, so their ids differ (a minirun before that)",
    "weights_sha256": "the checkpoint at that path holds other weights, another tokenizer or another config than "
                      "when its rows were made: restore them to resume",
}


INTEGER_COLUMNS = ("choice", "gold_choice", "fusion_layer", "tokens")  # ints, or nothing where a row has none


def _number_or_none(value: object) -> bool:
    return value is None or is_number(value)


def _none(value: object) -> bool:
    """Nothing: null, or the NaN a table (pandas) writes for it."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _whole_or_none(value: object) -> bool:  # 2.0 too: a table's integer column with gaps holds floats
    return _none(value) or (is_number(value) and float(value).is_integer())


def _list_or_none(each: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: _none(value) or (isinstance(value, list) and all(map(each, value)))


def _text_or_none(value: object) -> bool:
    return _none(value) or isinstance(value, str)


def _flag_or_none(value: object) -> bool:  # 1.0 and 0 too, as a table of verdicts averaged as numbers holds them
    return _none(value) or value in (True, False)


# what a row's columns hold (a hand-edited or damaged line can be JSON and still not a row: one that parquet, the
# report or a resume would fail on, or read as something else, long after the line was written)
COLUMN_TYPES = {"id": lambda v: isinstance(v, str), "method": lambda v: isinstance(v, str), "prompts": is_texts,
                "generated": _text_or_none, "answer": _text_or_none, "relation": _text_or_none, "task": _text_or_none,
                **{c: _flag_or_none for c in ("exact", "correct", "correct_lemma", "correct_bidirectional",
                                              "correct_harness", "correct_flexible", "original")},
                "tokens": lambda v: _whole_or_none(v) and (_none(v) or v >= 0), "seconds": _number_or_none,
                "machine": _text_or_none, "popularity": _number_or_none, "per_prompt_accuracy": _number_or_none,
                "answers": _list_or_none(_text_or_none), "per_prompt_correct": _list_or_none(_flag_or_none),
                "confidences": _list_or_none(_number_or_none), "fusion_layer": _whole_or_none,
                "choice": _whole_or_none, "gold_choice": _whole_or_none, "choices": _list_or_none(_text_or_none),
                "choice_scores": _list_or_none(_number_or_none), "choice_logprobs": _list_or_none(_number_or_none),
                "choice_tokens": _list_or_none(_whole_or_none), "choice_chars": _list_or_none(_whole_or_none),
                "per_prompt_logprobs": _list_or_none(_list_or_none(_number_or_none)),
                "true_options": _list_or_none(_whole_or_none)}


def integer_columns(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with INTEGER_COLUMNS as pandas' nullable integers: an int column with gaps becomes floats in pandas,
    and a paper's table read "fusion layer 2.0" or "choice 1.0" wherever another method or task left it empty."""
    for column in INTEGER_COLUMNS:
        if column in df.columns and df[column].dtype.kind in "fO":
            present = df[column].dropna()
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) and float(v).is_integer() for v in present):
                df[column] = df[column].astype("Int64")
    return df


def _json_default(value: object) -> object:
    """numpy scalars/arrays (from torch or pandas) as plain JSON values, pandas' missing integer as null."""
    if value is pd.NA:
        return None
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a result row")


def _canonical(value: object) -> object:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def key_differences(old: dict | None, run_key: dict, item_ids: list[str],
                    grown: Callable[[list[str]], dict | None] | None = None) -> list[str]:
    """What differs between a run.json's record (`old`, None where there is none) and a run of `run_key` over
    `item_ids`, one phrase each: its settings (a key only one side holds is no difference, so `run_key` may hold a
    part of a run's entries), its items' content, and which items. A resume is refused where any differs.
    `grown(recorded ids)` gives the run key's data entries (`loop.DataKey.grown`) of a directory's items as this run
    asks them, where they are all among `item_ids` (None: an entry they lack): the run grows, keeping their rows,
    where those are the recorded ones and every other setting is the same."""
    if old is None:
        return []
    old_key = {**RECORDED_BEFORE, **old["run_key"]}
    recorded = old.get("item_ids")
    kept = grown(recorded) if grown is not None and recorded and item_ids and recorded != item_ids else None
    if kept is not None:  # the recorded items' entries, as this run asks them, stand for this run's
        run_key = {k: v for k, v in {**run_key, **kept}.items() if v is not None}
    changed = {k for k in old_key.keys() & run_key.keys() if old_key[k] != run_key[k]}
    same_items = "items" in old_key.keys() & run_key.keys() and "items" not in changed
    if changed & EXPLAIN_ITEMS:  # the items' prompts changed because of these: say only them
        changed.discard("items")
    if changed & {"few_shot_k", "few_shot_draw"}:  # and the few-shot heads because of these
        changed.discard("few_shot")
    if changed & {"thinking", "chat"}:  # a reasoning model's answers are taken after its thinking because of these
        changed.discard("answers")
    if "scored" in old_key.keys() & run_key.keys() and "scored" not in changed:  # multiple choice alone: no token
        changed.discard("max_new_tokens")  # is generated, so no row depends on how many may be
    other_items = recorded != item_ids and kept is None
    if other_items:  # then the items' hash differs too, and saying "edited" would mislead
        changed.discard("items")
        if run_key.get("few_shot_draw") == "per-question":  # and the heads', one per item
            changed.discard("few_shot")
    elif same_items:
        changed.discard("dataset")  # the same items under another spelling of their file's path
    if "weights_sha256" in old_key.keys() & run_key.keys() and "weights_sha256" not in changed:
        changed.discard("model")  # the same weights and tokenizer at another path: the same model
    elif "model" in changed:
        changed.discard("weights_sha256")  # another model: its path says so, not "the weights at that path changed"
    phrases = {**OPAQUE, **({"few_shot": GROWN_FEW_SHOT} if kept is not None else {})}
    diffs = [phrases.get(k, f"{k}: {old_key[k]!r} -> {run_key[k]!r}") for k in sorted(changed)]
    if other_items and recorded and item_ids and set(item_ids) < set(recorded):
        diffs.append(f"it is a run of {len(recorded)} items and this run asks {len(item_ids)} of them (a smaller "
                     "--max-samples / max_samples, or items taken out of the file; a larger run begun is that run "
                     "now)")
    elif other_items:
        diffs.append("the dataset's items differ" + (" (another file, --max-samples or --sample-seed, or items of "
                                                     "the file replaced)" if recorded else ""))
    return diffs


def recorded_differences(output_dir: str | Path, run_key: dict, item_ids: list[str],
                         grown: Callable[[list[str]], dict | None] | None = None) -> list[str]:
    """`key_differences` against the run.json a directory holds."""
    return key_differences(_run_info(Path(output_dir)), run_key, item_ids, grown)


def option_differences(method: str, recorded: dict, keyed: dict) -> list[str]:
    """The options of `method` its rows were made with (`recorded`) that `keyed` changes, one phrase each (an option
    only one side holds is no difference; None keys a method's default)."""
    shown = lambda v: "the default" if v is None else repr(v)  # noqa: E731
    return [f"{method}'s {k}: {shown(recorded[k])} -> {shown(v)}" for k, v in keyed.items()
            if k in recorded and recorded[k] != v]


class OtherRun(MinirunError):
    """A directory holds rows another run's settings made: `differences` says which, one phrase each."""

    def __init__(self, output_dir: Path, differences: list[str]) -> None:
        self.differences = differences
        # rows an older minirun or another matcher made cannot be resumed by any arguments
        only_new = any(d in (OPAQUE["prompt_ids"], OPAQUE["matcher"], OPAQUE["weights_sha256"]) for d in differences)
        super().__init__(f"{output_dir} holds results of a different run ({'; '.join(differences)}); use a new "
                         f"output directory{'' if only_new else ', or the original arguments to resume'}")


def lock_exclusively(f: IO, what: Path) -> None:
    """Hold an exclusive lock on open file `f` until it is closed, or refuse at once: two processes
    appending to one journal would both redo the work, and a run with other settings would slip
    past the check that compares them (both saw no rows yet). The lock dies with its process."""
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise MinirunError(f"another minirun process is writing {what}: wait for it to finish, or stop it, or "
                           "write elsewhere") from None
    except OSError as e:  # a file system without locks (some NFS mounts): run, unguarded, rather than not at all
        log.warning("cannot lock %s (%s): a second process writing there would not be stopped", what, e.strerror)


def drop_torn_line(path: Path) -> None:
    """Cut a last line a killed write left without its newline, in place and by bytes: rewriting the file
    would lose every finished line to a kill in between, and text offsets miss CRLF line ends."""
    if path.is_file() and (data := path.read_bytes()) and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)


def journal_paths(output_dir: Path) -> list[Path]:
    """Every rank's journal in the directory, in rank order."""
    found = [(int(m.group(1)), p) for p in output_dir.glob("results.rank*.jsonl") if (m := _JOURNAL.match(p.name))]
    return [p for _, p in sorted(found)]


def _read_journal(path: Path) -> list[dict]:
    """Complete lines only: a last line without its newline is a write cut short by a crash. A line
    that is not a whole row (not UTF-8 or JSON, or short of a column `ResultStore.add` requires) is
    named by its number, as rerunning redoes it once it is deleted."""
    rows = []
    for lineno, line in enumerate(path.read_bytes().split(b"\n")[:-1], 1):
        try:
            row = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            row = None
        missing = [c for c in COLUMNS if c not in row] if isinstance(row, dict) else []
        wrong = [c for c, ok in COLUMN_TYPES.items() if not ok(row.get(c))] if isinstance(row, dict) and not missing else []
        if not isinstance(row, dict) or missing or wrong:
            lacks = f" (no {', '.join(missing)})" if missing else f" ({', '.join(wrong)} of the wrong type)" if wrong \
                else ""
            raise MinirunError(f"{path}:{lineno}: corrupt result line{lacks}; delete that line and rerun to redo it")
        rows.append(row)
    return rows


def _run_info(output_dir: Path) -> dict | None:
    path = output_dir / "run.json"
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        info = None
    if not isinstance(info, dict) or not isinstance(info.get("run_key"), dict) or \
            not is_texts(info.get("item_ids") or []) or not isinstance(info.get("methods") or {}, dict) or \
            not all(_text_or_none(info["run_key"].get(name)) for name in ("dataset", "model")):
        raise MinirunError(f"{path} is not a run record minirun wrote: restore it, or start a new output directory")
    return info


def recorded_run_key(output_dir: str | Path) -> dict:
    """The run key a directory's run.json records ({} where none is): settings a resumed run keeps, not remakes."""
    info = _run_info(Path(output_dir))
    return {} if info is None else info["run_key"]


def recorded_item_ids(output_dir: str | Path) -> list[str]:
    """The items a directory's run.json lists, in order ([] where none is)."""
    info = _run_info(Path(output_dir))
    return [] if info is None else list(info.get("item_ids") or [])


def recorded_methods(output_dir: str | Path) -> dict[str, dict]:
    """Each method's own settings as a directory's run.json records them ({} where none is)."""
    info = _run_info(Path(output_dir))
    return {} if info is None else dict(info.get("methods") or {})


# what run.json cites: the checkpoint's origin, a Hub dataset's, and that of the Hub examples a file's items are
# asked with (`--benchmark mmlu`)
SOURCES = ("model_source", "data_source", "few_shot_source")


def recorded_source(output_dir: str | Path, kind: str = "model_source") -> dict | None:
    """Where the run's checkpoint (`model_source`: hub repo and commit, or GGUF) or Hub dataset (`data_source`: repo,
    revision, commit) came from, as its run.json records it, if at all."""
    info = _run_info(Path(output_dir))
    source = None if info is None else info.get(kind)
    return source if isinstance(source, dict) else None


def recorded_sources(output_dir: str | Path) -> dict[str, dict]:
    """Every source (`SOURCES`) a directory's run.json records: what a table of its rows cites."""
    return {kind: source for kind in SOURCES if (source := recorded_source(output_dir, kind)) is not None}


VERDICT = ("answer", "correct", "choice")  # what a row says of its item: two copies that differ here cannot both stand


def _check_row(row: dict, first: dict | None, order: dict[str, int], where: str) -> None:
    """Refuse a journal row no run writes (an edited journal, or one copied from another run), rather than score
    it: one for an item the run's run.json does not list (where it lists them), or a second row for a method and
    item that disagrees with the first (`VERDICT`); a repeat that agrees is kept once."""
    if order and row["id"] not in order:
        raise MinirunError(f"{where}: a row for item {row['id']!r}, which is not one of the run's {len(order)} items "
                           "(run.json item_ids): delete that line, or report the run it came from")
    if first is not None and (differ := [c for c in VERDICT if first.get(c) != row.get(c)]):
        raise MinirunError(f"{where}: a second row for {row['method']} on item {row['id']!r} that disagrees with the "
                           f"first ({differ[0]}: {first.get(differ[0])!r} then {row.get(differ[0])!r}): delete the "
                           "line that is wrong")


def journal_rows(output_dir: Path, order: dict[str, int]) -> dict[tuple[str, str], dict]:
    """Every rank's journalled rows by (method, id), each checked (`_check_row`) against the items of `order` (the
    run's, by position; none: not checked) and the rows before it; the first copy of a repeat kept."""
    rows: dict[tuple[str, str], dict] = {}
    for path in journal_paths(output_dir):
        for lineno, row in enumerate(_read_journal(path), 1):
            _check_row(row, rows.get((row["method"], row["id"])), order, f"{path}:{lineno}")
            rows.setdefault((row["method"], row["id"]), row)
    return rows


def read_results(output_dir: str | Path) -> pd.DataFrame:
    """All journalled rows as one table: first copy of each (method, id) kept, rows sorted by
    method, then by the run's item order (by id for items it did not list). `attrs["items"]` is how
    many items run.json lists, `attrs["methods"]` the methods it was asked for, `attrs["dataset"]` its data's
    name, and `attrs["match"]` the rule ("lemma" or "bidirectional") run.json records its verdicts under, where
    it records one: the only rule its per-prompt verdicts exist under; `attrs["thinking_budget"]` a reasoning run's
    max_new_tokens."""
    output_dir = Path(output_dir)
    info = _run_info(output_dir) or {}
    order = {item_id: i for i, item_id in enumerate(info.get("item_ids") or [])}
    rows = journal_rows(output_dir, order)
    ordered = sorted(
        rows.values(),
        key=lambda r: (str(r["method"]), r["id"] not in order, order.get(r["id"], 0), str(r["id"])),
    )
    df = pd.DataFrame(ordered) if ordered else pd.DataFrame(columns=list(COLUMNS))
    extras = [c for c in df.columns if c not in COLUMNS]
    df = integer_columns(df[[*COLUMNS, *extras]].copy())
    if info.get("item_ids"):
        df.attrs["items"] = len(info["item_ids"])  # what the run set out to answer: `report.unfinished` counts it
    if info.get("methods"):
        df.attrs["methods"] = sorted(info["methods"])  # every method asked, a killed one with no row yet included
    if "bidirectional" in info.get("run_key", {}):
        df.attrs["match"] = "bidirectional" if info["run_key"]["bidirectional"] else "lemma"
    if "dataset" in info.get("run_key", {}):
        df.attrs["dataset"] = Path(info["run_key"]["dataset"]).name  # a named dataset, or the file's name
    key = info.get("run_key", {})
    if key.get("answers") == "after thinking" and key.get("thinks", True):  # what `report.cut_thinking` counts against
        df.attrs["thinking_budget"] = key.get("max_new_tokens")
    return df


def merge(output_dir: str | Path) -> pd.DataFrame:
    """Combine every rank's journal into `results.parquet` and its `results.jsonl` mirror."""
    output_dir = Path(output_dir)
    df = read_results(output_dir)
    write_atomic(output_dir / "results.parquet", lambda tmp: df.to_parquet(tmp, index=False))
    records = [strict_json(r) for r in df.to_dict("records")]
    write_atomic(output_dir / "results.jsonl", lambda tmp: tmp.write_text(
        "".join(json.dumps(r, ensure_ascii=False, allow_nan=False) + "\n" for r in records), encoding="utf-8"))
    return df


def strict_json(value: object) -> object:
    """`value` as standard JSON holds it: numpy values as plain ones, a missing or non-finite number as null (pandas
    writes a float column's gaps as NaN, which Python reads but JSON parsers elsewhere refuse; the parquet keeps the
    numbers as they are)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if value is pd.NA:
        return None
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return strict_json(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a result row")


def run_kernels(output_dir: Path, files: list[Path] | None = None) -> dict[str, object]:
    """The kernel choices a run's processes recorded ({choice key: value}, every rank's file, the lowest rank's
    where two differ): what the run's rows were made with on a CPU, for a later process to pin. A file that is not
    such a record is refused in one line: pinned, a damaged choice would fail deep in a kernel."""
    if files is None:
        found = [(int(m.group(1)), p) for p in output_dir.glob("kernels.rank*.json") if (m := _KERNELS.match(p.name))]
        files = [p for _, p in sorted(found)]
    choices: dict[str, object] = {}
    for path in files:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if not isinstance(record, dict) or not all(isinstance(v, (str, list)) for v in record.values()):
            raise MinirunError(f"{path} is not the record of kernel choices minirun writes: delete it (the run's "
                               "next process records its own)")
        choices = {**record, **choices}
    return choices


class ResultStore:
    """Appends result rows for one rank of a run and remembers what is already done.

    `run_key` holds everything that changes every method's rows (model, dataset, generation
    arguments) and `method_keys` what changes one method's only (flex's positions, hidden_avg's
    layer); reopening a directory with a different key, another key for a method that has rows, or
    a different list of `item_ids`, is refused rather than silently mixing two runs, except a run that grows: one
    over more items, every recorded one among them and asked as before (`grown`, see `key_differences`), keeps their
    rows and records the larger run. A method without rows may come with any settings. `item_ids` also fixes the
    row order of the table. `record=False` checks only: run.json is left as it is (a sweep checks every run before
    any runs, and a run that grows is recorded as the larger run once it starts).
    """

    def __init__(self, output_dir: str | Path, run_key: dict, rank: int = 0, item_ids: list[str] | None = None,
                 method_keys: dict[str, dict] | None = None, sources: dict[str, dict | None] | None = None,
                 grown: Callable[[list[str]], dict | None] | None = None, record: bool = True) -> None:
        self._grown, self._record = grown, record
        self.output_dir = Path(output_dir)
        if (self.output_dir / "sweep.json").is_file():  # its combined table would be overwritten by this run's
            raise MinirunError(f"{self.output_dir} holds a `minirun sweep`: give this run another output directory")
        ours = (self.output_dir / "run.json").is_file() or journal_paths(self.output_dir)
        if not ours and any((self.output_dir / name).exists() for name in ("results.parquet", "results.jsonl")):
            raise MinirunError(f"{self.output_dir} holds results files no minirun run wrote (no run.json): give this "
                               "run another output directory")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._lock = (self.output_dir / f".lock.rank{rank}").open("a")  # held until `close`
        lock_exclusively(self._lock, self.output_dir if rank == 0 else self.output_dir / f"rank {rank}")
        self.journal = self.output_dir / f"results.rank{rank}.jsonl"
        try:
            drop_torn_line(self.journal)  # our own journal's: the next row starts clean
            recorded = (_run_info(self.output_dir) or {}).get("item_ids") or []
            rows = list(journal_rows(self.output_dir, {item_id: i for i, item_id in enumerate(recorded)}).values())
            self._check_run(_canonical({"run_key": run_key, "item_ids": item_ids}), _canonical(method_keys or {}),
                            {row["method"] for row in rows}, _canonical(sources or {}))
            self._kernels_file = self.output_dir / f"kernels.rank{rank}.json"
            self._recorded = run_kernels(self.output_dir, [self._kernels_file]) if self._kernels_file.is_file() else {}
        except BaseException:
            self._lock.close()
            raise
        self._done: dict[str, set[str]] = {}
        for row in rows:
            self._done.setdefault(row["method"], set()).add(row["id"])
        self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)  # as open() does: umask

    def _check_run(self, info: dict, methods: dict[str, dict], answered: set[str], sources: dict) -> None:
        """Refuse rows of another run. A setting only one side records (one a newer minirun added, or
        one that moved from the run's key to its methods') is not held against resuming. `sources` (`SOURCES`: where
        the checkpoint and a Hub dataset came from) are no settings: the weights' and items' hashes in the key tell
        models and data apart, and a re-pull at another commit of the same files resumes; run.json keeps the first
        of each recorded."""
        old = _run_info(self.output_dir)
        if answered and old is None:  # every store writes run.json before its first row: these came otherwise
            raise MinirunError(f"{self.output_dir} holds result rows but no run.json saying which settings made them: "
                               "give this run another output directory (or restore that run.json)")
        old_key = (old or {}).get("run_key", {})
        diffs = key_differences(old, info["run_key"], info["item_ids"], self._grown)
        recorded = dict((old or {}).get("methods") or {  # a run recorded before methods had keys: its run key
            m: {k: v for k, v in old_key.items() if m in OPTION_READERS.get(k, ())} for m in answered})
        diffs += [d for m in sorted(answered & methods.keys() & recorded.keys())
                  for d in option_differences(m, recorded[m], methods[m])]
        if answered and old is not None and diffs:
            raise OtherRun(self.output_dir, diffs)
        record = {**info, "methods": {**recorded, **methods}}
        for kind in SOURCES:
            if source := (old or {}).get(kind) or sources.get(kind):
                record[kind] = source
        if old != record and self._record:
            write_atomic(self.output_dir / "run.json",
                          lambda tmp: tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8"))

    def done(self, method: str) -> set[str]:
        """Ids already finished for `method` by any rank; skip these when resuming."""
        return set(self._done.get(method, ()))

    def add(self, row: dict) -> None:
        """Persist one finished row (fsynced before returning). A row already stored is ignored."""
        self.add_batch([row])

    def add_batch(self, rows: list[dict]) -> None:
        """Persist a batch's finished rows in one write, fsynced before returning; rows already stored are ignored.

        One write, not one per row: an interrupt between rows kept part of a batch, and its rest was redone as a
        smaller batch, whose float results differ in the last bits (bfloat16: up to ~1e-2) from the batch a
        fresh run makes. A write that fails or is interrupted part way (a full disk) is cut off again, so the
        journal never holds part of a batch in whole lines."""
        for row in rows:
            if missing := [c for c in COLUMNS if c not in row]:
                raise ValueError(f"result row lacks column(s) {', '.join(missing)}")
        new = [row for row in rows if row["id"] not in self._done.get(row["method"], ())]
        if not new:
            return
        data = memoryview("".join(json.dumps(row, ensure_ascii=False, default=_json_default) + "\n"
                                  for row in new).encode("utf-8"))
        start = os.fstat(self._fd).st_size
        try:
            while data:
                data = data[os.write(self._fd, data):]
            os.fsync(self._fd)
        except BaseException as e:
            with contextlib.suppress(OSError):  # the write's own error is the one to tell
                os.ftruncate(self._fd, start)
            name_the_file(e, self.journal)
            raise
        for row in new:
            self._done.setdefault(row["method"], set()).add(row["id"])

    def record_kernels(self, choices: dict[str, object]) -> None:
        """Add the kernel choices this process has taken (`layers.calibrate.chosen`) to this rank's record, once they
        made rows: a later process of the run pins them (`run_kernels`), so its rows round as these did."""
        merged = {**self._recorded, **choices}
        if merged != self._recorded:
            write_atomic(self._kernels_file, lambda tmp: tmp.write_text(json.dumps(merged, indent=1, sort_keys=True)
                                                                        + "\n", encoding="utf-8"))
            self._recorded = merged

    def finalize(self) -> pd.DataFrame:
        """Write the merged table of all ranks' rows (call once every rank has finished)."""
        return merge(self.output_dir)

    def close(self) -> None:
        if self._fd >= 0:  # closed once, however often asked
            os.close(self._fd)
            self._fd = -1
        self._lock.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
