"""Multiple-choice benchmarks as `Item`s with `choices` and `answer`: MMLU and CommonsenseQA,
from the Hugging Face Hub or a local copy of their rows (parquet or JSON lines)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from minirun.errors import MinirunError
from minirun.eval.data.items import Item, as_list, hf_frame

MMLU = "cais/mmlu"
COMMONSENSE_QA = "tau/commonsense_qa"


def _frame(name: str, split: str, config: str | None, path: str | Path | None) -> tuple[pd.DataFrame, str]:
    if path is None:
        return hf_frame(name, split, config), f"{name}[{config + '/' if config else ''}{split}]"
    path = Path(path)
    if not path.is_file():
        raise MinirunError(f"{path}: no such {name} file; pass an existing .parquet/.jsonl copy or path=None for the Hub")
    frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_json(path, lines=True)
    return frame, str(path)


def _items(records: list[dict], source: str, convert) -> list[Item]:
    items = []
    for n, record in enumerate(records, 1):
        try:
            items.append(convert(n, record))
        except (KeyError, ValueError, TypeError) as e:
            raise MinirunError(f"{source}: record {n}: bad or missing field {e}; fix or remove that record") from None
    if not items:
        raise MinirunError(f"{source}: no questions found; check the file, subset or split name")
    return items


def load_mmlu(subset: str | None = None, split: str = "test", path: str | Path | None = None) -> list[Item]:
    """MMLU questions (`subset`: one subject, default all); the dev split holds the few-shot examples."""
    frame, source = _frame(MMLU, split, subset or "all", path)

    def convert(n: int, r: dict) -> Item:
        choices = [str(c) for c in as_list(r["choices"])]
        answer = int(r["answer"])
        if not 0 <= answer < len(choices):
            raise ValueError("'answer'")
        subject = r.get("subject") or subset or "all"
        return Item(f"mmlu-{subject}-{split}-{n}", str(r["question"]), [], [choices[answer]], "choice", subject,
                    choices, answer)

    return _items(frame.to_dict("records"), source, convert)


def load_commonsense_qa(split: str = "validation", path: str | Path | None = None) -> list[Item]:
    """CommonsenseQA questions; the Hub's test split has no answers, so evaluation uses validation."""
    frame, source = _frame(COMMONSENSE_QA, split, None, path)

    def convert(n: int, r: dict) -> Item:
        options = r["choices"]
        labels, texts = [str(x) for x in as_list(options["label"])], [str(x) for x in as_list(options["text"])]
        answer = labels.index(str(r["answerKey"]))
        return Item(str(r.get("id") or f"csqa-{split}-{n}"), str(r["question"]), [], [texts[answer]], "choice",
                    r.get("question_concept"), texts, answer)

    return _items(frame.to_dict("records"), source, convert)
