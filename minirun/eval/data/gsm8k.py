"""GSM8K's grade-school word problems as "math" `Item`s: each question's final answer (the number after its
solution's "####") to judge by, and the worked solution itself, which a few-shot example shows."""
from __future__ import annotations

from pathlib import Path

from minirun.eval.data.items import Item, content_id, hub_rows, number_repeats, question_field, rows_to_items
from minirun.text import number_value

GSM8K = "openai/gsm8k"
GSM8K_CONFIG = "main"  # the solutions as written ("socratic" interleaves sub-questions)
FINAL_MARK = "####"


def load_gsm8k(split: str = "test", path: str | Path | None = None, revision: str | None = None) -> list[Item]:
    """GSM8K's problems (test: 1,319; train: 7,473, the few-shot examples) with their solutions, calculator notes
    ("<<48/2=24>>") kept as lm-evaluation-harness's examples show them. Its rows carry no id: each is named by its
    question's text (`content_id`), the same from the Hub and a copy."""
    frame, source = hub_rows(GSM8K, split, GSM8K_CONFIG, path, revision)

    def convert(n: int, r: dict) -> Item:
        solution = r["answer"]
        if not isinstance(solution, str) or FINAL_MARK not in solution:
            raise ValueError(f"field 'answer' must be a worked solution ending \"{FINAL_MARK} <number>\", got "
                             f"{solution!r}")
        final = solution.rsplit(FINAL_MARK, 1)[1].strip()
        if number_value(final) is None:
            raise ValueError(f"field 'answer' must end \"{FINAL_MARK} <number>\", got {FINAL_MARK} {final!r}")
        question = question_field(r)
        return Item(content_id("gsm8k", question), question, [], [final], "math", solution=solution)

    return number_repeats(rows_to_items(frame.to_dict("records"), source, convert))
