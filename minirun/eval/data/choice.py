"""Multiple-choice benchmarks as `Item`s with `choices` and `answer`: MMLU, CommonsenseQA, ARC, OpenBookQA, HellaSwag,
PIQA, SciQ, BoolQ, TruthfulQA and Winogrande, from the Hugging Face Hub or a local copy of their rows (parquet, JSON
lines or a JSON array)."""
from __future__ import annotations

import numbers
import re
from pathlib import Path

import pandas as pd

from minirun.errors import MinirunError
from minirun.eval.data.items import Item, as_list, given_id, hub_rows, question_field, rows_to_items, text_value
from minirun.text import blank_parts

MMLU = "cais/mmlu"
COMMONSENSE_QA = "tau/commonsense_qa"
ARC = "allenai/ai2_arc"
ARC_SETS = {"arc_challenge": "ARC-Challenge", "arc_easy": "ARC-Easy"}  # minirun's names: the Hub configs
OPENBOOKQA = "allenai/openbookqa"
OPENBOOKQA_CONFIG = "main"  # the questions alone ("additional" adds the fact each was written from)
HELLASWAG = "Rowan/hellaswag"
PIQA = "baber/piqa"  # the harness's copy of PIQA's rows as parquet (the original repo loads through a script)
SCIQ = "allenai/sciq"
SUPER_GLUE, BOOLQ_CONFIG = "aps/super_glue", "boolq"  # SuperGLUE's rows as parquet (`super_glue` loads by a script)
BOOLQ_OPTIONS = ["no", "yes"]  # the harness's choices, `label` 1 the second
SCIQ_OPTIONS = ("distractor1", "distractor2", "distractor3", "correct_answer")  # the harness's order: right one last
WINOGRANDE, WINOGRANDE_CONFIG = "allenai/winogrande", "winogrande_xl"  # the harness's set: the largest training one
WINOGRANDE_BLANK = "_"  # where each option goes in a Winogrande sentence
TRUTHFULQA = "truthfulqa/truthful_qa"
TRUTHFULQA_CONFIG = "multiple_choice"
TRUTHFULQA_SETS = {"truthfulqa_mc1": "mc1_targets", "truthfulqa_mc2": "mc2_targets"}  # each set's field of a row
# The six worked questions TruthfulQA's paper puts before every question, as lm-evaluation-harness's truthfulqa_mc1
# prompt holds them: the dataset's few-shot examples, in this order (it has no train split).
TRUTHFULQA_PRIMER = (
    ("What is human life expectancy in the United States?", "Human life expectancy in the United States is 78 years."),
    ("Who was president of the United States in 1955?",
     "Dwight D. Eisenhower was president of the United States in 1955."),
    ("Which party did he belong to?", "He belonged to the Republican Party."),
    ("What is the square root of banana?", "I have no comment."),
    ("How does a telescope work?", "Telescopes use lenses or mirrors to focus light and make objects appear closer."),
    ("Where were the 1992 Olympics held?", "The 1992 Olympics were held in Barcelona, Spain."),
)


def _options(values: object, field: str) -> list[str]:
    """Every option as text: a null or non-text one is an error, not the option 'None'."""
    options = [text_value(v, field) for v in as_list(values)]
    if len(options) < 2 or any(o is None or not o.strip() for o in options):
        raise ValueError(f"field {field!r} needs at least 2 non-empty options, got {options!r}")
    return options


def _subject_rows(frame: pd.DataFrame, subset: str, source: str) -> pd.DataFrame:
    """A local MMLU copy's rows of one subject (the Hub picks them by config instead)."""
    if "subject" not in frame.columns:
        raise MinirunError(f"{source}: no 'subject' column to pick {subset!r} from; drop --subset or add the column")
    rows = frame[frame["subject"] == subset]
    if rows.empty:
        subjects = sorted(map(str, frame["subject"].dropna().unique()))
        raise MinirunError(f"{source}: no {subset!r} questions; its subjects are {', '.join(subjects[:10])}"
                           f"{' …' if len(subjects) > 10 else ''}: pass one of them to --subset")
    return rows


def load_mmlu(subset: str | None = None, split: str = "test", path: str | Path | None = None,
              revision: str | None = None) -> list[Item]:
    """MMLU questions (`subset`: one subject, default all); the dev split holds the few-shot examples
    (5 per subject). A local copy's split is whatever the file holds; `subset` picks its rows. `revision`: the
    Hub's branch, tag or commit (default main)."""
    frame, source = hub_rows(MMLU, split, subset or "all", path, revision, subset not in (None, "all"))
    if path is not None and subset is not None:
        frame = _subject_rows(frame, subset, source)

    def convert(n: int, r: dict) -> Item:
        choices = _options(r["choices"], "choices")
        answer = r["answer"]
        whole = isinstance(answer, numbers.Real) and not isinstance(answer, bool) and float(answer).is_integer()
        if not whole or not 0 <= int(answer) < len(choices):
            raise ValueError(f"field 'answer' must be an index 0..{len(choices) - 1}, got {answer!r}")
        answer = int(answer)
        subject = r.get("subject") or subset or "all"
        return Item(f"mmlu-{subject}-{split}-{n}", question_field(r), [], [choices[answer]], "choice", subject,
                    choices, answer)

    return rows_to_items(frame.to_dict("records"), source, convert)


def _labelled(records: list[dict], source: str, prefix: str, question: str = "question",
              relation: str | None = None) -> list[Item]:
    """Items from rows whose `choices` are {label: [...], text: [...]} and whose `answerKey` is the right one's
    label (CommonsenseQA, ARC, OpenBookQA), the key stripped as the harness strips OpenBookQA's. ARC labels some
    rows' options 1-4 instead of A-D: the key is looked up among the row's own labels, never by letter."""

    def convert(n: int, r: dict) -> Item:
        options = r["choices"]
        if not isinstance(options, dict):
            raise ValueError(f"field 'choices' must be an object with 'label' and 'text' lists, got {options!r}")
        labels, texts = [str(x).strip() for x in as_list(options["label"])], _options(options["text"], "choices.text")
        key = str(r["answerKey"]).strip()
        if len(labels) != len(texts) or key not in labels:
            unlabelled = " (the Hub's test split has no answers: use validation)" if not key else ""
            raise ValueError(f"field 'answerKey' {r['answerKey']!r} must be one of the labels {labels} of the "
                             f"{len(texts)} options{unlabelled}")
        answer = labels.index(key)
        return Item(given_id(r, "id") or f"{prefix}-{n}", question_field(r, question), [], [texts[answer]], "choice",
                    r.get(relation) if relation else None, texts, answer)

    return rows_to_items(records, source, convert)


def load_commonsense_qa(split: str = "validation", path: str | Path | None = None,
                        revision: str | None = None) -> list[Item]:
    """CommonsenseQA questions; the Hub's test split has no answers, so evaluation uses validation. Each item's
    relation is its question concept."""
    frame, source = hub_rows(COMMONSENSE_QA, split, None, path, revision)
    return _labelled(frame.to_dict("records"), source, f"csqa-{split}", relation="question_concept")


def load_arc(name: str = "arc_challenge", split: str = "test", path: str | Path | None = None,
             revision: str | None = None) -> list[Item]:
    """ARC's Challenge or Easy questions (`name`: arc_challenge or arc_easy), 3 to 5 options each; the train split
    holds the few-shot examples, as lm-evaluation-harness draws them."""
    frame, source = hub_rows(ARC, split, ARC_SETS[name], path, revision)
    return _labelled(frame.to_dict("records"), source, f"{name}-{split}")


def load_openbookqa(split: str = "test", path: str | Path | None = None, revision: str | None = None) -> list[Item]:
    """OpenBookQA's questions: each row's `question_stem`, four options; few-shot examples from train."""
    frame, source = hub_rows(OPENBOOKQA, split, OPENBOOKQA_CONFIG, path, revision)
    return _labelled(frame.to_dict("records"), source, f"openbookqa-{split}", question="question_stem")


def hellaswag_text(text: str) -> str:
    """A HellaSwag context or ending as lm-evaluation-harness cleans it: WikiHow's "[title]" marks become a sentence
    end, any other bracketed mark goes, doubled spaces are made single."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def load_hellaswag(split: str = "validation", path: str | Path | None = None,
                   revision: str | None = None) -> list[Item]:
    """HellaSwag's contexts to complete, four endings each, asked as the harness asks them: the activity label, ": ",
    the context's first part and its second capitalised, each cleaned by `hellaswag_text`. The Hub's test split has
    no labels, so evaluation uses validation; train holds the few-shot examples."""
    frame, source = hub_rows(HELLASWAG, split, None, path, revision)

    def convert(n: int, r: dict) -> Item:
        for field in ("activity_label", "ctx_a", "ctx_b"):
            if not isinstance(r[field], str):
                raise ValueError(f"field {field!r} must be text, got {r[field]!r}")
        query = hellaswag_text(f"{r['activity_label']}: {r['ctx_a']} {r['ctx_b'].capitalize()}")
        endings = [hellaswag_text(e) for e in _options(r["endings"], "endings")]
        label = str(r["label"]).strip()
        if not label.isdigit() or not int(label) < len(endings):
            raise ValueError(f"field 'label' must be an index 0..{len(endings) - 1}, got {r['label']!r} (the Hub's "
                             "test split has no labels: use validation)")
        answer = int(label)
        ind = r.get("ind")  # a copy missing some rows' index holds the others' as floats (24.0), the missing as NaN
        ind = None if ind is None or pd.isna(ind) else int(ind) if isinstance(ind, numbers.Real) else ind
        return Item(f"hellaswag-{ind if ind is not None else f'{split}-{n}'}", query, [], [endings[answer]], "choice",
                    None, endings, answer)

    return rows_to_items(frame.to_dict("records"), source, convert)


def _binary_label(value: object, meaning: str) -> int:
    """A two-option row's `label`, 0 or 1: an integer, its text ("1"), or a whole float (1.0: a copy whose column held
    a null somewhere, which made every value a float); ValueError naming the field otherwise, a null included."""
    text = str(value).strip()
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and not pd.isna(value) and \
            float(value).is_integer():
        text = str(int(value))
    if text not in ("0", "1"):
        got = "null" if value is None or isinstance(value, float) and pd.isna(value) else repr(value)
        raise ValueError(f"field 'label' must be {meaning}, got {got} (the Hub's test split has no labels: use "
                         "validation)")
    return int(text)


def load_piqa(split: str = "validation", path: str | Path | None = None, revision: str | None = None) -> list[Item]:
    """PIQA's physical goals, two solutions each (`sol1`, `sol2`; `label` the right one's index). The test split has no
    labels, so evaluation uses validation, as lm-evaluation-harness does; train holds the few-shot examples."""
    frame, source = hub_rows(PIQA, split, None, path, revision)

    def convert(n: int, r: dict) -> Item:
        choices = _options([r["sol1"], r["sol2"]], "sol1 and sol2")
        answer = _binary_label(r["label"], "0 or 1")
        return Item(f"piqa-{split}-{n}", question_field(r, "goal"), [], [choices[answer]], "choice", None, choices,
                    answer)

    return rows_to_items(frame.to_dict("records"), source, convert)


def load_sciq(split: str = "test", path: str | Path | None = None, revision: str | None = None) -> list[Item]:
    """SciQ's science questions, each with the passage it was written from (`support`, the item's context: empty in
    some rows, which the harness's prompt then opens with a new line alone) and four options, the three distractors
    then the right answer, as lm-evaluation-harness orders them; train holds the few-shot examples."""
    frame, source = hub_rows(SCIQ, split, None, path, revision)

    def convert(n: int, r: dict) -> Item:
        choices = _options([r[field] for field in SCIQ_OPTIONS], "distractor1-3 and correct_answer")
        support = text_value(r["support"], "support")
        if support is None:
            raise ValueError("field 'support' must be text (the Hub's rows without a passage hold \"\"), got null")
        return Item(f"sciq-{split}-{n}", question_field(r), [], [choices[-1]], "choice", None, choices,
                    len(choices) - 1, context=support)

    return rows_to_items(frame.to_dict("records"), source, convert)


def load_boolq(split: str = "validation", path: str | Path | None = None, revision: str | None = None) -> list[Item]:
    """BoolQ's yes/no questions, each about its passage (the item's context), options "no" and "yes" as the harness
    words them, `label` 1 for yes (a copy of google/boolq's rows: `answer`, true for yes). The test split has no
    labels, so evaluation uses validation; train holds the few-shot examples."""
    frame, source = hub_rows(SUPER_GLUE, split, BOOLQ_CONFIG, path, revision)

    def convert(n: int, r: dict) -> Item:
        passage = text_value(r["passage"], "passage")
        if not passage or not passage.strip():
            raise ValueError(f"field 'passage' must be non-empty text, got {r['passage']!r}")
        if "label" in r:  # a bool, or the class names a copy wrote, read as BoolQ's ClassLabel ids
            value = r["label"]
            if isinstance(value, str) and value.strip() in ("False", "True"):
                value = value.strip() == "True"
            label = _binary_label(int(value) if isinstance(value, bool) else value, "0 (no) or 1 (yes)")
        elif isinstance(r["answer"], bool):  # google/boolq's rows: true for yes
            label = int(r["answer"])
        else:
            raise ValueError(f"field 'answer' must be true or false, got {r['answer']!r}")
        idx = r.get("idx")
        ident = f"{split}-{int(idx)}" if isinstance(idx, numbers.Real) and not pd.isna(idx) else f"{split}-{n}"
        return Item(f"boolq-{ident}", question_field(r), [], [BOOLQ_OPTIONS[label]], "choice", None,
                    list(BOOLQ_OPTIONS), label, context=passage)

    return rows_to_items(frame.to_dict("records"), source, convert)


def load_truthfulqa(name: str = "truthfulqa_mc1", split: str = "validation", path: str | Path | None = None,
                    revision: str | None = None) -> list[Item]:
    """TruthfulQA's questions with their MC1 options (`truthfulqa_mc1`: one true, the first in the Hub's rows) or
    their MC2 options (`truthfulqa_mc2`: one or more true, listed first, their set in `true_options`, so that MC2 is
    reported for an item of one as well), from its only split,
    validation; "train" is the paper's six worked questions (`TRUTHFULQA_PRIMER`), the few-shot examples of both."""
    if name not in TRUTHFULQA_SETS:
        raise ValueError(f"TruthfulQA's option sets are {', '.join(TRUTHFULQA_SETS)}, not {name!r}")
    if split == "train" and path is None:
        return [Item(f"truthfulqa-primer-{n}", question, [], [answer], "choice", None, [answer], 0)
                for n, (question, answer) in enumerate(TRUTHFULQA_PRIMER, 1)]
    frame, source = hub_rows(TRUTHFULQA, split, TRUTHFULQA_CONFIG, path, revision)
    field, as_set = TRUTHFULQA_SETS[name], name == "truthfulqa_mc2"

    def convert(n: int, r: dict) -> Item:
        targets = r[field]
        if not isinstance(targets, dict):
            raise ValueError(f"field {field!r} must be an object with 'choices' and 'labels' lists, got {targets!r}")
        choices, labels = _options(targets["choices"], f"{field}.choices"), as_list(targets["labels"])
        right = [i for i, label in enumerate(labels) if label == 1]
        if len(labels) != len(choices) or any(label not in (0, 1) for label in labels) or not right \
                or len(right) == len(labels) or len(right) > 1 and not as_set:
            need = "at least one label 1 (a true option) and one 0" if as_set else \
                "one label 1 (the true option) and 0 for each other"
            raise ValueError(f"field {field!r} needs {need} of its {len(choices)} options, got labels {labels!r}")
        # one split: a local copy's ids are the Hub's whatever split it is read as
        return Item(given_id(r, "id") or f"{name}-{n}", question_field(r), [], [choices[i] for i in right], "choice",
                    None, choices, right[0], right if as_set else None)

    return rows_to_items(frame.to_dict("records"), source, convert)


def load_winogrande(split: str = "validation", path: str | Path | None = None,
                    revision: str | None = None) -> list[Item]:
    """Winogrande's sentences with a gap ("_") and the two names or phrases that may fill it (`option1`, `option2`;
    `answer` "1" or "2"), read from its XL configuration as lm-evaluation-harness reads them. Each item is asked as
    the harness asks it (partial scoring): each option written into the gap, and what follows the gap scored after
    it (`Item.blank`). The Hub's test split has no answers, so evaluation uses validation; train holds the few-shot
    examples."""
    frame, source = hub_rows(WINOGRANDE, split, WINOGRANDE_CONFIG, path, revision)

    def convert(n: int, r: dict) -> Item:
        sentence = question_field(r, "sentence")
        blank_parts(sentence, WINOGRANDE_BLANK)
        choices = _options([r["option1"], r["option2"]], "option1 and option2")
        answer = str(r["answer"]).strip()
        if answer not in ("1", "2"):
            raise ValueError(f"field 'answer' must be \"1\" or \"2\" (the option filling the gap), got "
                             f"{r['answer']!r} (the Hub's test split has no answers: use validation)")
        index = int(answer) - 1
        return Item(f"winogrande-{split}-{n}", sentence, [], [choices[index]], "choice", None, choices, index,
                    blank=WINOGRANDE_BLANK)

    return rows_to_items(frame.to_dict("records"), source, convert)
