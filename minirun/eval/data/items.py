"""The `Item` every loader produces, and the plain JSONL form items are saved in."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from minirun.errors import MinirunError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TASKS = ("qa", "fill")


@dataclass
class Item:
    """One fact asked in several wordings.

    `paraphrases` are the wordings the ensemble runs over; when non-empty the first one
    is the original question. An empty list means `question` is the only wording.
    `task` "fill" marks prompts that stop where the answer goes ("The capital of France is").
    """

    id: str
    question: str
    paraphrases: list[str]
    answers: list[str]
    task: str = "qa"
    relation: str | None = None

    @property
    def prompts(self) -> list[str]:
        """The wordings to run: the paraphrases, or the question alone when there are none."""
        return self.paraphrases or [self.question]


class LoadResult(list):
    """A list of items that also says how many bad lines were skipped, so callers can report it."""

    def __init__(self, items: list[Item], skipped: int = 0) -> None:
        super().__init__(items)
        self.skipped = skipped


def _str_list(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"field '{name}' must be a list of strings")
    return value


def item_from_dict(record: object) -> Item:
    """Validate one plain-form record; raises ValueError naming the bad field."""
    if not isinstance(record, dict):
        raise ValueError("expected a JSON object")
    missing = [k for k in ("id", "question", "paraphrases", "answers") if k not in record]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("field 'question' must be a non-empty string")
    answers = _str_list(record["answers"], "answers")
    if not any(a.strip() for a in answers):
        raise ValueError("field 'answers' needs at least one non-empty answer")
    task = record.get("task", "qa")
    if task not in TASKS:
        raise ValueError(f"field 'task' must be one of {TASKS}, got {task!r}")
    relation = record.get("relation")
    if relation is not None and not isinstance(relation, str):
        raise ValueError("field 'relation' must be a string or null")
    return Item(
        id=str(record["id"]),
        question=question,
        paraphrases=_str_list(record["paraphrases"], "paraphrases"),
        answers=answers,
        task=task,
        relation=relation,
    )


def load_jsonl(path: str | Path, skip_bad: bool = False) -> LoadResult:
    """Read the plain JSONL form; a bad line is an error (or skipped and counted with skip_bad)."""
    path = Path(path)
    if not path.is_file():
        raise MinirunError(f"{path}: no such dataset file; pass an existing JSONL path or a dataset name")
    items: list[Item] = []
    seen: set[str] = set()
    skipped = 0
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = item_from_dict(json.loads(line))
                if item.id in seen:
                    raise ValueError(f"duplicate id {item.id!r}")
            except ValueError as e:  # json.JSONDecodeError is a ValueError
                if not skip_bad:
                    raise MinirunError(f"{path}:{lineno}: {e}; fix the line or load with skip_bad=True") from None
                skipped += 1
                continue
            seen.add(item.id)
            items.append(item)
    if not items:
        raise MinirunError(f"{path}: no usable items (empty file or every line bad); check the file's contents")
    if skipped:
        log.warning("%s: skipped %d bad line(s)", path, skipped)
    return LoadResult(items, skipped)


def write_jsonl(items: list[Item], path: str | Path) -> None:
    """Write items in the plain form `load_jsonl` reads back unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")


def hf_frame(name: str, split: str) -> pd.DataFrame:
    """A Hugging Face Hub dataset split as a DataFrame, importing `datasets` only when needed."""
    try:
        import datasets
    except ImportError:
        raise MinirunError(
            f"loading {name} from the Hugging Face Hub needs the `datasets` package: "
            "run `pip install datasets`, or pass a local copy with path=..."
        ) from None
    return datasets.load_dataset(name, split=split).to_pandas()


def as_list(value: object) -> list:
    """Lists from JSON, numpy arrays from parquet/pandas, or a lone scalar, as a plain list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    if hasattr(value, "tolist"):
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else [value]

