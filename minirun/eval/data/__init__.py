"""Datasets as lists of `Item`: bundled samples, WebQA, MyriadLAMA, MMLU, CommonsenseQA, or your own JSONL file."""
from __future__ import annotations

import json
from pathlib import Path

from minirun.errors import MinirunError
from minirun.eval.data.choice import load_commonsense_qa, load_mmlu
from minirun.eval.data.items import Item, LoadResult, ensemble_prompts, load_jsonl, text_lines, write_jsonl
from minirun.eval.data.myriadlama import load_myriadlama
from minirun.eval.data.webqa import QUESTION_KEYS, load_webqa

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


def _sniff(path: Path) -> str:
    """Which loader a local file needs, judged from its first line."""
    if path.suffix == ".parquet":
        return "myriadlama"
    first = next((line.strip() for line in text_lines(path) if line.strip()), "")
    try:
        record = json.loads(first)
    except json.JSONDecodeError:  # a multi-line JSON document, or a bad line the JSONL loader reports
        return "webqa" if first.startswith(("[", "{")) else "jsonl"
    keys = set(record) if isinstance(record, dict) else set()
    if "template" in keys:
        return "myriadlama"
    if {"id", "paraphrases"} <= keys or keys & {"task", "relation"}:
        return "jsonl"
    if keys & {"question", *WEBQA_KEYS} or any(k.startswith("paraphrase") for k in keys) or isinstance(record, list):
        return "webqa"
    return "jsonl"


def load_dataset(name_or_path: str | Path, split: str = "test", subset: str | None = None) -> list[Item]:
    """Items for a dataset name (see NAMES) or a local file (plain JSONL, WebQA JSON/JSONL, MyriadLAMA rows).
    `subset` picks an MMLU subject (default all of them)."""
    name = str(name_or_path)
    if subset is not None and name != "mmlu":
        raise MinirunError(f"--subset picks an MMLU subject; {name!r} has no subsets: drop --subset")
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
    if not path.is_file():
        raise MinirunError(f"unknown dataset {name!r}: use one of {', '.join(NAMES)} or the path of an existing file")
    kind = _sniff(path)
    if kind == "myriadlama":
        return load_myriadlama(path=path, split=split)
    if kind == "webqa":
        return load_webqa(path=path)
    return load_jsonl(path)


def load_fewshot(name_or_path: str | Path, task: str = "qa") -> list[Item]:
    """Worked examples disjoint from the test items: the train split of WebQA/MyriadLAMA/CommonsenseQA,
    MMLU's dev split (all subjects), otherwise the bundled examples for `task`."""
    name = str(name_or_path)
    if name in ("webqa", "myriadlama", "commonsense_qa", "mmlu"):
        return load_dataset(name, split="train")
    task = SAMPLES.get(name, task)
    if task not in ("qa", "fill", "choice"):
        raise MinirunError(f"unknown task {task!r} for few-shot examples; use 'qa', 'fill' or 'choice'")
    return load_jsonl(SAMPLE_DIR / f"fewshot_{task}.jsonl")
