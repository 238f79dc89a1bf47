"""WebQuestions (WebQA): from the Hugging Face Hub or a local JSON/JSONL/parquet copy, plain or paraphrased."""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

from minirun.errors import MinirunError
from minirun.eval.data.items import Item, as_list, hf_frame, read_frame, text_lines, text_value

HF_NAME = "stanfordnlp/web_questions"
QUESTION_KEYS = ("question", "qText", "utterance", "RawQuestion")
_DESCRIPTION = re.compile(r'\(description\s+(?:"((?:[^"\\]|\\.)*)"|([^()\s]+))\)')
_PARAPHRASE_KEY = re.compile(r"paraphrase(\d+)$")


def parse_target_value(target: str) -> list[str]:
    """Answers from the original release's `(list (description "A") (description B))` form."""
    return [(quoted.replace('\\"', '"') if quoted else bare) for quoted, bare in _DESCRIPTION.findall(target)]


def _question_id(question: str) -> str:
    """A content id, so the same question gets the same id from the Hub and from a local copy."""
    return "wq-" + hashlib.sha1(question.strip().lower().encode("utf-8")).hexdigest()[:10]


def _texts(values: object, field: str) -> list[str]:
    """A field's strings (numbers as their string form), nulls and blanks left out."""
    texts = (text_value(v, field) for v in as_list(values))
    return [t for t in texts if t is not None and t.strip()]


def _paraphrases(record: dict) -> list[str]:
    """`paraphrases` as a list, or numbered `paraphrase0..N` keys (0 is the original question);
    a null one (a table's row with fewer paraphrases) is left out."""
    if "paraphrases" in record:
        return _texts(record["paraphrases"], "paraphrases")
    numbered = sorted((int(m.group(1)), k) for k in record if (m := _PARAPHRASE_KEY.match(k)))
    return [p for _, k in numbered for p in _texts(record[k], k)]


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
        answers = _texts(record["answers"], "answers")
    elif "targetValue" in record:
        if not isinstance(record["targetValue"], str):
            raise ValueError(f"field 'targetValue' must be a (list (description ...)) string, got {record['targetValue']!r}")
        answers = parse_target_value(record["targetValue"])
    else:
        raise ValueError("no 'answers' or 'targetValue' field")
    if not answers:
        raise ValueError("no usable answers")
    item_id = record.get("id") or record.get("uuid") or _question_id(question)
    return Item(id=str(item_id), question=question, paraphrases=paraphrases, answers=answers, task="qa")


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
    seen: dict[str, int] = {}
    for n, record in enumerate(records, 1):
        try:
            item = record_to_item(record)
        except ValueError as e:
            raise MinirunError(f"{source}: record {n}: {e}; fix or remove that record") from None
        seen[item.id] = seen.get(item.id, 0) + 1
        if seen[item.id] > 1:  # repeated questions still need distinct ids for resuming
            item.id = f"{item.id}-{seen[item.id]}"
        items.append(item)
    if not items:
        raise MinirunError(f"{source}: no questions found; check the file or split name")
    return items
