"""Open-domain factual QA as `Item`s whose `answers` are every answer a row accepts: TriviaQA (its questions without
evidence), Natural Questions (NQ-open) and PopQA, from the Hugging Face Hub or a local copy of their rows."""
from __future__ import annotations

import json
import math
from pathlib import Path

from minirun.eval.data.items import (Item, content_id, hub_rows, number_repeats, popularity_value, question_field,
                                     rows_to_items, text_list)

TRIVIAQA = "mandarjoshi/trivia_qa"
TRIVIAQA_CONFIG = "rc.nocontext"  # the questions alone ("rc" adds the evidence documents, gigabytes of them)
NQ_OPEN = "google-research-datasets/nq_open"
POPQA = "akariasai/PopQA"


def load_triviaqa(split: str = "validation", path: str | Path | None = None, revision: str | None = None) -> list[Item]:
    """TriviaQA's questions with every alias of their answer (`answer.aliases`, what lm-evaluation-harness's
    `triviaqa` accepts; the first is a few-shot example's answer, as there). The Hub's test split has no answers, so
    evaluation uses validation; train holds the few-shot examples."""
    frame, source = hub_rows(TRIVIAQA, split, TRIVIAQA_CONFIG, path, revision)

    def convert(n: int, r: dict) -> Item:
        answer = r["answer"]
        if not isinstance(answer, dict):
            raise ValueError(f"field 'answer' must be an object with an 'aliases' list, got {answer!r}")
        answers = text_list(answer.get("aliases"), "answer.aliases") or text_list(answer.get("value"), "answer.value")
        if not answers or answers == ["<unk>"]:  # the Hub's test rows: no aliases, the value "<unk>"
            raise ValueError("field 'answer' holds no answer (the Hub's test split has none: use validation)")
        question, row_id = question_field(r), r.get("question_id")  # a copy missing some rows' id holds NaN there
        return Item(row_id if isinstance(row_id, str) and row_id.strip() else content_id("triviaqa", question),
                    question, [], answers, "qa")

    return number_repeats(rows_to_items(frame.to_dict("records"), source, convert))


def load_nq_open(split: str = "validation", path: str | Path | None = None, revision: str | None = None) -> list[Item]:
    """NQ-open's questions (Natural Questions asked without the page, lower case, no question mark) with every
    accepted short answer; evaluation uses validation, its test split, and train holds the few-shot examples. Its
    rows carry no id: each is named by its question's text (`content_id`), the same from the Hub and a copy."""
    frame, source = hub_rows(NQ_OPEN, split, None, path, revision)

    def convert(n: int, r: dict) -> Item:
        answers = text_list(r["answer"], "answer")
        if not answers:
            raise ValueError(f"field 'answer' must list at least one answer, got {r['answer']!r}")
        question = question_field(r)
        return Item(content_id("nq", question), question, [], answers, "qa")

    return number_repeats(rows_to_items(frame.to_dict("records"), source, convert))


def load_popqa(split: str = "test", path: str | Path | None = None, revision: str | None = None) -> list[Item]:
    """PopQA's questions about long-tail Wikidata facts with their possible answers (a JSON list in each row), each
    item's relation its property (`prop`: occupation, capital of, …) and its popularity the subject's (`s_pop`,
    monthly Wikipedia page views), so `report` scores them per relation and per popularity bin. Its only split is
    test; it has no few-shot examples of its own."""
    frame, source = hub_rows(POPQA, split, None, path, revision)

    def convert(n: int, r: dict) -> Item:
        possible = r["possible_answers"]
        if isinstance(possible, str):
            try:
                possible = json.loads(possible)
            except json.JSONDecodeError:
                raise ValueError(f"field 'possible_answers' must be a JSON list of answers, got {possible!r}") from None
        answers = text_list(possible, "possible_answers")
        if not answers:
            raise ValueError(f"field 'possible_answers' must list at least one answer, got {r['possible_answers']!r}")
        relation, row_id, views = r.get("prop"), r.get("id"), r.get("s_pop")
        if isinstance(row_id, float):  # a copy missing some rows' id holds the others' as floats (24.0), NaN where none
            row_id = None if math.isnan(row_id) else int(row_id)
        missing = views is None or (isinstance(views, float) and math.isnan(views)) or (  # a copy's gap
            isinstance(views, str) and not views.strip())
        return Item(f"popqa-{row_id if row_id is not None else f'{split}-{n}'}", question_field(r), [], answers, "qa",
                    relation if isinstance(relation, str) and relation.strip() else None,
                    popularity=None if missing else popularity_value(views, "s_pop"))

    return rows_to_items(frame.to_dict("records"), source, convert)
