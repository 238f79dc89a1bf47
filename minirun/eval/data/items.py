"""The `Item` every loader produces, and the plain JSONL form items are saved in."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from minirun.errors import MinirunError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TASKS = ("qa", "fill", "choice")


def _wording_key(text: str) -> str:
    """What two wordings must share to count as one prompt: the text up to case and spacing."""
    return " ".join(text.split()).casefold()


def ensemble_prompts(question: str, paraphrases: list[str], original: bool = True) -> list[str]:
    """The prompts an ensemble runs over: the question first, then each paraphrase not already
    there (compared up to case and spacing, so data that repeats the question as paraphrase 0
    gives the same prompts as data that does not); blank ones dropped. `original=False` leaves
    the question out (paraphrases only), which may leave nothing."""
    unique: dict[str, str] = {}
    for text in [question, *paraphrases]:
        if key := _wording_key(text):
            unique.setdefault(key, text)
    prompts = list(unique.values())
    return prompts if original else prompts[1:]


@dataclass
class Item:
    """One fact asked in several wordings.

    `question` is the original wording and `paraphrases` other wordings of it, which may or may
    not repeat the question (as paraphrase 0); `prompts` is what an ensemble runs over either way.
    `task` "fill" marks prompts that stop where the answer goes ("The capital of France is");
    "choice" items carry `choices` and the index `answer` of the right one (`answers` is its text).
    """

    id: str
    question: str
    paraphrases: list[str]
    answers: list[str]
    task: str = "qa"
    relation: str | None = None
    choices: list[str] | None = None
    answer: int | None = None

    @property
    def prompts(self) -> list[str]:
        """The question, then its distinct paraphrases (see `ensemble_prompts`)."""
        return ensemble_prompts(self.question, self.paraphrases)


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
    task = record.get("task", "choice" if "choices" in record else "qa")
    if task not in TASKS:
        raise ValueError(f"field 'task' must be one of {TASKS}, got {task!r}")
    needed = ("id", "question", "paraphrases", *(("choices", "answer") if task == "choice" else ("answers",)))
    missing = [k for k in needed if k not in record]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    question = record["question"]
    if not isinstance(question, str) or not question.strip():
        raise ValueError("field 'question' must be a non-empty string")
    choices, answer = (_choice_fields(record) if task == "choice" else (None, None))
    answers = [choices[answer]] if choices else _str_list(record["answers"], "answers")
    if not any(a.strip() for a in answers):
        raise ValueError("field 'answers' needs at least one non-empty answer")
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
        choices=choices,
        answer=answer,
    )


def _choice_fields(record: dict) -> tuple[list[str], int]:
    """`choices` (at least 2 distinct non-empty strings) and `answer` as an index into them
    (given as the index or as the right option's text)."""
    choices = _str_list(record["choices"], "choices")
    if len(choices) < 2 or any(not c.strip() for c in choices) or len(set(choices)) < len(choices):
        raise ValueError("field 'choices' needs at least 2 distinct non-empty options")
    answer = record["answer"]
    if isinstance(answer, str) and answer in choices:
        return choices, choices.index(answer)
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        return choices, answer
    raise ValueError(f"field 'answer' must be an index 0..{len(choices) - 1} or one of the choices, got {answer!r}")


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file the user gave, read as they are needed, or a one-line error."""
    try:
        with path.open(encoding="utf-8") as f:
            yield from f
    except UnicodeDecodeError:
        raise MinirunError(f"{path} is not UTF-8 text: save the file as UTF-8") from None


def load_jsonl(path: str | Path, skip_bad: bool = False) -> LoadResult:
    """Read the plain JSONL form; a bad line is an error (or skipped and counted with skip_bad)."""
    path = Path(path)
    if not path.is_file():
        raise MinirunError(f"{path}: no such dataset file; pass an existing JSONL path or a dataset name")
    items: list[Item] = []
    seen: set[str] = set()
    skipped = 0
    for lineno, line in enumerate(text_lines(path), 1):
        if not line.strip():
            continue
        try:
            item = item_from_dict(json.loads(line))
            if item.id in seen:
                raise ValueError(f"duplicate id {item.id!r}")
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            if not skip_bad:
                raise MinirunError(f"{path}:{lineno}: {e}; fix the line, or skip bad lines "
                                   "(`minirun eval --skip-bad`, `load_jsonl(..., skip_bad=True)`)") from None
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


def hf_frame(name: str, split: str, config: str | None = None) -> pd.DataFrame:
    """A Hugging Face Hub dataset split as a DataFrame, importing `datasets` only when needed."""
    try:
        import datasets
    except ImportError:
        raise MinirunError(
            f"loading {name} from the Hugging Face Hub needs the `datasets` package: "
            "run `pip install datasets`, or give the path of a local copy instead of the name (`--data FILE`)"
        ) from None
    return datasets.load_dataset(name, *([config] if config else []), split=split).to_pandas()


def as_list(value: object) -> list:
    """Lists from JSON, numpy arrays from parquet/pandas, or a lone scalar, as a plain list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    if hasattr(value, "tolist"):
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else [value]

