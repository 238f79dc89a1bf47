"""Datasets as lists of `Item`: bundled samples, WebQA, MyriadLAMA, MMLU, CommonsenseQA, or your own JSONL/JSON file."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from minirun.errors import MinirunError
from minirun.eval.data.choice import load_commonsense_qa, load_mmlu
from minirun.eval.data.items import (
    Item,
    LoadResult,
    ensemble_prompts,
    items_from_records,
    load_jsonl,
    parquet_columns,
    text_lines,
    write_jsonl,
)
from minirun.eval.data.myriadlama import load_myriadlama
from minirun.eval.data.webqa import QUESTION_KEYS, json_records, load_webqa

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLES = {"sample-qa": "qa", "sample-fill": "fill", "sample-choice": "choice"}
NAMES = (*SAMPLES, "webqa", "myriadlama", "mmlu", "commonsense_qa")
WEBQA_KEYS = (*QUESTION_KEYS, "targetValue")

__all__ = [
    "NAMES",
    "Item",
    "LoadResult",
    "ensemble_prompts",
    "load_commonsense_qa",
    "load_dataset",
    "load_fewshot",
    "load_jsonl",
    "load_mmlu",
    "load_myriadlama",
    "load_webqa",
    "text_lines",
    "write_jsonl",
]


def _records_head(path: Path) -> tuple[set[str], list | None]:
    """Every field some record has (a parquet file's columns), and every record when the file is one
    JSON document (an array, or one object) rather than JSON lines. All records, not the first: a plain
    file whose first record lacks its `id` would otherwise read as WebQA, which invents ids and drops
    tasks and relations without a word."""
    if path.suffix == ".parquet":
        return set(parquet_columns(path)), None
    first = next((line.strip() for line in text_lines(path) if line.strip()), "")
    try:
        head = json.loads(first)
    except json.JSONDecodeError:
        head = None
    if isinstance(head, dict) and json_records(head) == [head]:  # JSON lines: a bad one is its loader's to name
        return set().union(*(r for line in text_lines(path) if isinstance(r := _json_or_none(line), dict))), None
    try:
        records = json_records(json.loads("".join(text_lines(path))))
    except json.JSONDecodeError:  # not one JSON document: JSON lines, whose loader names a bad line
        return set(), None
    if records is None:
        return set(), None
    return set().union(*(r for r in records if isinstance(r, dict))), records


def _json_or_none(line: str) -> object:
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


def _no_json_records(path: Path) -> bool:
    """Whether the file has text but not one line of a JSON object: a prompt or notes file given as data, whose
    first line's decoding error (and a hint to skip bad records) would not say so."""
    lines = (line for line in text_lines(path) if line.strip())
    first = next(lines, None)
    return first is not None and not any(isinstance(_json_or_none(line), dict)
                                         for line in itertools.chain([first], lines))


def _kind(keys: set[str]) -> str:
    """Which loader records with these fields need: the plain item form first when it is whole (`id` +
    `paraphrases`: an extra field such as a `template` note does not make it another dataset's rows), then
    MyriadLAMA rows (`template`), CommonsenseQA (`choices` with `answerKey`), MMLU (`question`, `subject`,
    `choices`, `answer`), plain items short of a field (`task`/`relation`/`choices`, which WebQA's loader
    would drop or reject: the plain loader names what is missing), WebQA (its question/answer fields)."""
    if {"id", "paraphrases"} <= keys:
        return "plain"
    if "template" in keys:
        return "myriadlama"
    if {"choices", "answerKey"} <= keys:
        return "commonsense_qa"
    if {"question", "subject", "choices", "answer"} <= keys and "paraphrases" not in keys:
        return "mmlu"
    if keys & {"task", "relation", "choices"}:
        return "plain"
    if keys & {"question", *WEBQA_KEYS} or any(k.startswith("paraphrase") for k in keys):
        return "webqa"
    return "plain"


def _no_subset(name: str) -> MinirunError:
    return MinirunError(f"--subset picks an MMLU subject; {name!r} has no subsets: drop --subset")


def load_dataset(name_or_path: str | Path, split: str = "test", subset: str | None = None,
                 skip_bad: bool = False) -> list[Item]:
    """Items for a dataset name (see NAMES) or a local file, its format told by its fields: plain
    items (JSONL or a JSON array), or WebQA, MyriadLAMA, MMLU or CommonsenseQA rows (parquet, JSONL
    or JSON). `subset` picks an MMLU subject (default all of them); `skip_bad` skips
    and counts bad records of a plain item file (other loaders stop at the first)."""
    name = str(name_or_path)
    if name in NAMES and skip_bad:
        raise MinirunError(f"--skip-bad skips bad records of a plain item file; {name!r} is a named dataset: "
                           "drop --skip-bad")
    if name in NAMES and subset is not None and name != "mmlu":
        raise _no_subset(name)
    if name in SAMPLES:
        return load_jsonl(SAMPLE_DIR / f"{SAMPLES[name]}.jsonl")
    if name == "mmlu":
        return load_mmlu(subset, split="dev" if split == "train" else split)
    if name == "commonsense_qa":
        return load_commonsense_qa(split="train" if split == "train" else "validation")
    if name == "webqa":
        return load_webqa(split=split)
    if name == "myriadlama":
        return load_myriadlama(split=split)
    path = Path(name_or_path)
    if path.is_dir():
        raise MinirunError(f"dataset {name!r} is a directory: pass a .jsonl file in it, or one of {', '.join(NAMES)}")
    if not path.is_file():
        raise MinirunError(f"unknown dataset {name!r}: use one of {', '.join(NAMES)} or the path of an existing file")
    keys, records = _records_head(path)
    kind = _kind(keys)
    if subset is not None and kind != "mmlu":
        raise MinirunError(f"--subset picks an MMLU subject; {path} reads as {kind} data, which has no subsets: "
                           "drop --subset")
    if skip_bad and kind != "plain":
        raise MinirunError(f"--skip-bad skips bad records of a plain item file; {path} reads as {kind} data, whose "
                           "loader stops at the first bad record: fix that record and drop --skip-bad")
    if kind == "plain" and records is None and path.suffix != ".parquet" and _no_json_records(path):
        raise MinirunError(f"{path} holds no JSON record on any line: a dataset is JSON lines of items (see the "
                           "README's data format), a JSON array of them, or parquet rows")
    if kind == "plain" and path.suffix == ".parquet":
        raise MinirunError(f"{path}: a parquet file must hold MyriadLAMA, MMLU, CommonsenseQA or WebQA rows, and its "
                           f"columns ({', '.join(sorted(keys))}) match none; save plain items as JSONL instead")
    if kind == "myriadlama":
        return load_myriadlama(path=path, split=split)
    if kind == "mmlu":
        return load_mmlu(subset, split=split, path=path)
    if kind == "commonsense_qa":
        return load_commonsense_qa(split=split, path=path)
    if kind == "webqa":
        return load_webqa(path=path)
    return load_jsonl(path, skip_bad) if records is None else items_from_records(records, path, skip_bad)


def load_fewshot(name_or_path: str | Path, task: str | None = None, subset: str | None = None) -> list[Item]:
    """Worked examples disjoint from the test items: the train split of WebQA/MyriadLAMA/CommonsenseQA,
    MMLU's dev split (of `subset`'s subject, as lm-evaluation-harness does, or of all subjects),
    otherwise the bundled examples for `task`."""
    name = str(name_or_path)
    if name in ("webqa", "myriadlama", "commonsense_qa", "mmlu"):
        return load_dataset(name, split="train", subset=subset)
    if subset is not None:
        raise _no_subset(name)
    task = task or SAMPLES.get(name, "qa")
    if task not in ("qa", "fill", "choice"):
        raise MinirunError(f"unknown task {task!r} for few-shot examples; use 'qa', 'fill' or 'choice'")
    return load_jsonl(SAMPLE_DIR / f"fewshot_{task}.jsonl")
