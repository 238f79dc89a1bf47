"""WebQuestions (WebQA): from the Hugging Face Hub or a local JSON/JSONL/parquet copy, plain or paraphrased."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from minirun.errors import MinirunError
from minirun.eval.data.items import (
    Item,
    content_id,
    given_id,
    hf_frame,
    number_repeats,
    read_frame,
    text_lines,
    text_list,
)

HF_NAME = "stanfordnlp/web_questions"
QUESTION_KEYS = ("question", "qText", "utterance", "RawQuestion")
_DESCRIPTION = re.compile(r'\(description\s+(?:"((?:[^"\\]|\\.)*)"|([^()\s]+))\)')
_PARAPHRASE_KEY = re.compile(r"paraphrase(\d+)$")


def parse_target_value(target: str) -> list[str]:
    """Answers from the original release's `(list (description "A") (description B))` form."""
    return [(quoted.replace('\\"', '"') if quoted else bare) for quoted, bare in _DESCRIPTION.findall(target)]


def _paraphrases(record: dict) -> list[str]:
    """`paraphrases` as a list, or numbered `paraphrase0..N` keys (0 is the original question);
    a null one (a table's row with fewer paraphrases) is left out."""
    if "paraphrases" in record:
        return text_list(record["paraphrases"], "paraphrases")
    numbered = sorted((int(m.group(1)), k) for k in record if (m := _PARAPHRASE_KEY.match(k)))
    return [p for _, k in numbered for p in text_list(record[k], k)]


def _given(value: object) -> bool:
    """Whether a field holds something: not null, NaN (a table's empty cell) or a blank string."""
    return not (value is None or (isinstance(value, float) and math.isnan(value))
                or (isinstance(value, str) and not value.strip()))


def record_to_item(record: object) -> Item:
    """One WebQA record in any of its known forms; raises ValueError naming what is missing or bad."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {record!r}")
    key = next((k for k in QUESTION_KEYS if _given(record.get(k))), None)
    question = record[key] if key else None
    if key and not isinstance(question, str):
        raise ValueError(f"field {key!r} must be a string, got {question!r}")
    paraphrases = _paraphrases(record)
    if question is None and paraphrases:
        question = paraphrases[0]
    if not question:
        raise ValueError(f"no question field (expected one of {', '.join(QUESTION_KEYS)})")
    if "answers" in record:
        answers = text_list(record["answers"], "answers")
    elif "targetValue" in record:
        if not isinstance(record["targetValue"], str):
            raise ValueError(f"field 'targetValue' must be a (list (description ...)) string, got {record['targetValue']!r}")
        answers = parse_target_value(record["targetValue"])
    else:
        raise ValueError("no 'answers' or 'targetValue' field")
    if not answers:
        raise ValueError("no usable answers")
    item_id = given_id(record, "id", "uuid") or content_id("wq", question)
    return Item(id=item_id, question=question, paraphrases=paraphrases, answers=answers, task="qa")


def json_records(data: object) -> list | None:
    """The records of a JSON document: a list, one record, or the list inside a {"Questions": [...]}
    style wrapper (an object with no question field holding a list of objects); None if none."""
    if isinstance(data, list):
        return data
    if not isinstance(data, dict):
        return None
    if not set(data) & {*QUESTION_KEYS, "answers", "targetValue"}:
        inner = next((v for v in data.values() if isinstance(v, list) and v and isinstance(v[0], dict)), None)
        if inner is not None:
            return inner
    return [data]


def _read_records(path: Path) -> list:
    text = "".join(text_lines(path))
    if not text.strip():
        raise MinirunError(f"{path}: the file is empty; pass a WebQA JSON or JSONL file with questions and answers")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise MinirunError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix the line") from None
        return records
    records = json_records(data)
    if records is None:
        raise MinirunError(f"{path}: expected a JSON list of questions or JSON lines; convert the file to that form")
    return records


def load_webqa(split: str = "test", path: str | Path | None = None, revision: str | None = None) -> list[Item]:
    """WebQA items: from `path` when given (its split is whatever the file holds), else the Hub split.

    The train split supplies few-shot examples; test items are what gets evaluated.
    """
    if path is None:
        records = hf_frame(HF_NAME, split, revision=revision).to_dict("records")
        source = f"{HF_NAME}[{split}]"
    else:
        path = Path(path)
        if not path.is_file():
            raise MinirunError(f"{path}: no such WebQA file; pass an existing JSON/JSONL/parquet file or path=None for the Hub")
        records = read_frame(path, "WebQA").to_dict("records") if path.suffix == ".parquet" else _read_records(path)
        source = str(path)
    items: list[Item] = []
    for n, record in enumerate(records, 1):
        try:
            items.append(record_to_item(record))
        except ValueError as e:
            raise MinirunError(f"{source}: record {n}: {e}; fix or remove that record") from None
    if not items:
        raise MinirunError(f"{source}: no questions found; check the file or split name")
    return number_repeats(items)
