"""WebQuestions (WebQA): from the Hugging Face Hub or a local JSON/JSONL copy, plain or paraphrased."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from minirun.errors import MinirunError
from minirun.eval.data.items import Item, as_list, hf_frame, text_lines

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


def _paraphrases(record: dict) -> list[str]:
    """`paraphrases` as a list, or numbered `paraphrase0..N` keys (0 is the original question)."""
    if "paraphrases" in record:
        return [str(p) for p in as_list(record["paraphrases"])]
    numbered = sorted((int(m.group(1)), k) for k in record if (m := _PARAPHRASE_KEY.match(k)))
    return [str(record[k]) for _, k in numbered]


def record_to_item(record: dict) -> Item:
    """One WebQA record in any of its known forms; raises ValueError naming what is missing."""
    question = next((record[k] for k in QUESTION_KEYS if record.get(k)), None)
    paraphrases = _paraphrases(record)
    if question is None and paraphrases:
        question = paraphrases[0]
    if not question:
        raise ValueError(f"no question field (expected one of {', '.join(QUESTION_KEYS)})")
    if "answers" in record:
        answers = [a for a in as_list(record["answers"]) if isinstance(a, str) and a.strip()]
    elif "targetValue" in record:
        answers = parse_target_value(record["targetValue"])
    else:
        raise ValueError("no 'answers' or 'targetValue' field")
    if not answers:
        raise ValueError("no usable answers")
    item_id = record.get("id") or record.get("uuid") or _question_id(question)
    return Item(id=str(item_id), question=question, paraphrases=paraphrases, answers=answers, task="qa")


def _read_records(path: Path) -> list[dict]:
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
    if isinstance(data, dict):  # one JSONL record, or a {"Questions": [...]} style wrapper
        is_record = bool(set(data) & {*QUESTION_KEYS, "answers", "targetValue"})
        data = [data] if is_record else next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        raise MinirunError(f"{path}: expected a JSON list of questions or JSON lines; convert the file to that form")
    return data


def load_webqa(split: str = "test", path: str | Path | None = None) -> list[Item]:
    """WebQA items: from `path` when given (its split is whatever the file holds), else the Hub split.

    The train split supplies few-shot examples; test items are what gets evaluated.
    """
    if path is None:
        records = hf_frame(HF_NAME, split).to_dict("records")
        source = f"{HF_NAME}[{split}]"
    else:
        path = Path(path)
        if not path.is_file():
            raise MinirunError(f"{path}: no such WebQA file; pass an existing JSON/JSONL file or path=None for the Hub")
        records = _read_records(path)
        source = str(path)
    items: list[Item] = []
    seen: dict[str, int] = {}
    for n, record in enumerate(records, 1):
        try:
            item = record_to_item(record if isinstance(record, dict) else {})
        except ValueError as e:
            raise MinirunError(f"{source}: record {n}: {e}; fix or remove that record") from None
        seen[item.id] = seen.get(item.id, 0) + 1
        if seen[item.id] > 1:  # repeated questions still need distinct ids for resuming
            item.id = f"{item.id}-{seen[item.id]}"
        items.append(item)
    if not items:
        raise MinirunError(f"{source}: no questions found; check the file or split name")
    return items
