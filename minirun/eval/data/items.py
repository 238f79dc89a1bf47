"""The `Item` every loader produces, the plain JSONL form items are saved in, and the reading of rows (Hub or a
local copy) every loader shares."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from minirun.errors import HubDataUnavailable, MinirunError
from minirun.text import blank_parts, number_value

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

TASKS = ("qa", "fill", "choice", "math")


def _wording_key(text: str) -> str:
    """What two wordings must share to count as one prompt: the text up to case and spacing."""
    return " ".join(text.split()).casefold()


def ensemble_prompts(question: str, paraphrases: list[str], original: bool = True) -> list[str]:
    """The prompts an ensemble runs over: the question first, then each paraphrase not already
    there (compared up to case and spacing, so data that repeats the question as paraphrase 0
    gives the same prompts as data that does not); blank ones dropped. `original=False` leaves
    the question out (paraphrases only), which may leave nothing."""
    if isinstance(paraphrases, str):  # it would give one prompt per character
        raise MinirunError(f"paraphrases must be a list of texts, got the text {paraphrases!r}: e.g. "
                           "ensemble_prompts(q, ['a rewording'])")
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
    "choice" items carry `choices` and the index `answer` of the right one (`answers` is its text); an item that
    lists its right options as a set (TruthfulQA's MC2 sets, often of several) holds them all in `true_options`,
    `answer` being the first. "math" items are word problems solved step by step: `answers` are numbers, the final
    answer, and `solution`, where known, is the worked solution a few-shot example shows (GSM8K's, ending "#### 72").
    `popularity`, where known, is how well known the question's subject is (PopQA's `s_pop`, its Wikipedia page's
    monthly views): no part of any prompt, it lets `report` score methods along the long tail. `context`, where
    given, is a passage the question is asked about (SciQ's support, a reading-comprehension item's text): written
    before each of its prompts and its own when it is a few-shot example, never paraphrased. `blank`, where given,
    marks a choice item whose options fill a gap in its sentence (Winogrande's "_"): each option is written into the
    gap and what follows the gap, the same in every wording, is scored after it (`blank_parts`).
    """

    id: str
    question: str
    paraphrases: list[str]
    answers: list[str]
    task: str = "qa"
    relation: str | None = None
    choices: list[str] | None = None
    answer: int | None = None
    true_options: list[int] | None = None
    solution: str | None = None
    popularity: float | None = None
    context: str | None = None
    blank: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.relation, str) and not self.relation.strip():  # a blank relation is none, not one named ""
            self.relation = None

    @property
    def right_options(self) -> list[int]:
        """Every right option's index: `true_options`, or `answer` alone (none for an item without options)."""
        return self.true_options or ([] if self.answer is None else [self.answer])

    @property
    def prompts(self) -> list[str]:
        """The question, then its distinct paraphrases (see `ensemble_prompts`)."""
        return ensemble_prompts(self.question, self.paraphrases)


def asked_items(items: list[Item], max_samples: int | None = None, seed: int | None = None,
                name: str = "the dataset") -> list[Item]:
    """The items a run asks: all, the first `max_samples`, or with `seed` that many at random (the items in the
    order `random.Random(seed).sample(items, len(items))` gives first, so a larger count keeps a smaller one's items
    in their order: a pilot grows).
    The first N of a dataset laid out by subject (MMLU's 57, one after another) are a few subjects' items: where
    they cover under half the relations the whole set has, and N could cover them all, that is warned of."""
    if seed is not None and seed < 0:  # random.Random(-s) shuffles as random.Random(s): one seed, two names
        raise MinirunError(f"--sample-seed (sample_seed) must be at least 0, got {seed}")
    if seed is not None and max_samples is None:
        raise MinirunError("--sample-seed (sample_seed) picks which --max-samples items run, and there is no "
                           "--max-samples (max_samples): give both, or drop the seed")
    if seed is not None:
        items = random.Random(seed).sample(items, len(items))
    asked = items[:max_samples]
    every = {item.relation for item in items} - {None}
    covered = {item.relation for item in asked} - {None}
    told = (name, len(asked), len(covered))
    if seed is None and len(every) <= len(asked) < len(items) and 2 * len(covered) < len(every) \
            and told not in _WARNED:
        _WARNED.add(told)
        log.warning(f"the first {len(asked)} of {name}'s {len(items)} items cover {len(covered)} of its {len(every)} "
                    f"relations (subjects): --sample-seed 0 (a sweep's sample_seed) asks {len(asked)} at random")
    return asked


_WARNED: set[tuple[str, int, int]] = set()  # (dataset, items asked, relations covered) told of in this process


class LoadResult(list):
    """A list of items that also says how many bad lines were skipped, so callers can report it, and the Hub
    dataset every item says it was read from (`data_source`, which `minirun paraphrase` writes on each row; None
    where an item says none or two items differ), so a run on a paraphrased file cites the data it rewrote."""

    def __init__(self, items: list[Item], skipped: int = 0, source: dict | None = None) -> None:
        super().__init__(items)
        self.skipped = skipped
        self.source = source


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
    choices, right = (_choice_fields(record) if task == "choice" else (None, []))
    as_set = task == "choice" and isinstance(record["answer"], list)  # a set of right options, even of one
    answers = [choices[i] for i in right] if choices else _str_list(record["answers"], "answers")
    if choices and record.get("answers") and _str_list(record["answers"], "answers") != answers:
        raise ValueError(f"field 'answers' {record['answers']!r} disagrees with field 'answer' {record['answer']!r}, "
                         f"which makes the right option(s) {answers!r}: fix one, or leave 'answers' out")
    if not answers or not all(a.strip() for a in answers):  # a blank first answer became an empty worked example
        raise ValueError("field 'answers' needs non-empty answers (drop the blank ones)")
    item_id = record["id"]
    if isinstance(item_id, bool) or not isinstance(item_id, (str, int)) or not str(item_id).strip():
        raise ValueError(f"field 'id' must be a non-empty string or an integer, got {item_id!r}")
    relation = record.get("relation")
    if relation is not None and not isinstance(relation, str):
        raise ValueError("field 'relation' must be a string or null")
    solution = record.get("solution")
    if solution is not None and (task != "math" or not isinstance(solution, str) or not solution.strip()):
        raise ValueError("field 'solution' is a math item's worked solution, a non-empty string: drop it elsewhere")
    popularity = record.get("popularity")
    if popularity is not None:
        popularity = popularity_value(popularity, "popularity")
    context = record.get("context")
    if context is not None and not isinstance(context, str):
        raise ValueError(f"field 'context' must be a string (the passage the question is asked about) or null, got "
                         f"{context!r}")
    blank = record.get("blank")
    if blank is not None:
        _check_blank(blank, task, question, record["paraphrases"])
    if task == "math" and (odd := next((a for a in answers if number_value(a) is None), None)) is not None:
        raise ValueError(f"field 'answers' of a math item must be numbers (its final answer: \"72\", \"1,250\", "
                         f"\"3.5\"), got {odd!r}")
    return Item(
        id=str(item_id),
        question=question,
        paraphrases=_str_list(record["paraphrases"], "paraphrases"),
        answers=answers,
        task=task,
        relation=relation,
        choices=choices,
        answer=right[0] if right else None,
        true_options=right if as_set else None,
        solution=solution,
        popularity=popularity,
        context=context,
        blank=blank,
    )


def _check_blank(blank: object, task: str, question: str, paraphrases: object) -> None:
    """A fill-the-gap choice item's `blank`: a non-blank marker found once in its question and in each paraphrase,
    each going on after it with the question's very words (the shared text every option is scored by)."""
    if task != "choice" or not isinstance(blank, str) or not blank.strip():
        raise ValueError(f"field 'blank' marks the gap a choice item's options fill (\"_\"), a non-empty string on "
                         f"a choice item: got {blank!r}{'' if task == 'choice' else f' on a {task} item'}")
    tail = blank_parts(question, blank)[1].strip()
    for n, text in enumerate(_str_list(paraphrases, "paraphrases")):
        if blank_parts(text, blank)[1].strip() != tail:
            raise ValueError(f"paraphrase {n} {text!r} must go on after the blank as the question does ({tail!r}): "
                             "the options are scored by those words, the same in every wording")


def popularity_value(value: object, field: str) -> float:
    """A subject's popularity as a number >= 0 (a number, or its text in a copy saved as text); ValueError naming
    `field` otherwise."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value.replace(",", ""))
        except ValueError:
            pass
    try:
        if isinstance(number, numbers.Real) and not isinstance(number, bool) and math.isfinite(number) and number >= 0:
            return float(number)
    except OverflowError:  # an integer beyond any float
        pass
    raise ValueError(f"field {field!r} must be a number >= 0 (the subject's page views), got {value!r}")


def item_record(item: Item) -> dict:
    """An item in the plain form `item_from_dict` reads: its fields, a set of right options as the list `answer` (an
    item with one right option and no set keeps the form, and the sweep keys hashed from it, it had before
    `true_options`; an item without a worked solution, a popularity, a context or a blank has none, as before they
    existed)."""
    record = asdict(item)
    if record.pop("true_options") is not None:
        record["answer"] = item.true_options
    for name in ("solution", "popularity", "context", "blank"):
        if record[name] is None:
            del record[name]
    return record


def _choice_fields(record: dict) -> tuple[list[str], list[int]]:
    """`choices` (at least 2 non-empty strings, distinct once their edges' whitespace is dropped, as they are
    scored) and the right options' indices: `answer` is the index or the right option's text, or a list of them,
    the set of right options (TruthfulQA's MC2 sets), not every option."""
    choices = _str_list(record["choices"], "choices")
    if len(choices) < 2 or any(not c.strip() for c in choices) or len({c.strip() for c in choices}) < len(choices):
        raise ValueError("field 'choices' needs at least 2 distinct non-empty options")
    answer = record["answer"]
    given = answer if isinstance(answer, list) else [answer]
    right = [choices.index(a) if isinstance(a, str) and a in choices else a for a in given]
    if given and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(choices) for i in right) \
            and len(set(right)) == len(right) < len(choices):
        return choices, right
    raise ValueError(f"field 'answer' must be an index 0..{len(choices) - 1} or one of the choices (or a list of "
                     f"distinct ones, the set of right options, not all), got {answer!r}")


def text_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 text file the user gave, read as they are needed, or a one-line error."""
    try:
        with path.open(encoding="utf-8-sig") as f:  # a byte-order mark (Windows editors) is not the first field
            yield from f
    except UnicodeDecodeError:
        raise MinirunError(f"{path} is not UTF-8 text: save the file as UTF-8") from None


def load_jsonl(path: str | Path, skip_bad: bool = False, examples: bool = False) -> LoadResult:
    """Read the plain JSONL form; a bad line is an error (or skipped and counted with skip_bad).
    `examples`: the file is a --few-shot file, whose bad lines are never skipped."""
    path = Path(path)
    if not path.is_file():
        what = "few-shot file; pass an existing JSONL path" if examples else \
            "dataset file; pass an existing JSONL path or a dataset name"
        raise MinirunError(f"{path}: no such {what}")
    return _collect(_decoded_lines(path), path, skip_bad, examples)


def items_from_records(records: list, path: str | Path, skip_bad: bool = False) -> LoadResult:
    """Plain-form items from a JSON array's elements, checked like JSONL lines (bad ones named
    `item N`, or skipped and counted with skip_bad)."""
    return _collect(((f"{path}: item {n}", record) for n, record in enumerate(records, 1)), Path(path), skip_bad)


def _decoded_lines(path: Path) -> Iterator[tuple[str, object]]:
    """(where, record) per non-blank line; a line that is not JSON comes as its decoding error."""
    for lineno, line in enumerate(text_lines(path), 1):
        if line.strip():
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{lineno}", e


def _collect(records: Iterable[tuple[str, object]], path: Path, skip_bad: bool, examples: bool = False) -> LoadResult:
    items: list[Item] = []
    seen: set[str] = set()
    sources: list[object] = []  # each kept record's `data_source`
    skipped = 0
    for where, record in records:
        try:
            if isinstance(record, json.JSONDecodeError):
                raise record
            item = item_from_dict(record)
            if item.id in seen:
                raise ValueError(f"duplicate id {item.id!r}")
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            if examples:
                raise MinirunError(f"{where}: {e}; fix that record (a few-shot file's bad records are not skipped)") \
                    from None
            if not skip_bad:
                raise MinirunError(f"{where}: {e}; fix that record, or skip bad ones (`--skip-bad` of eval and "
                                   "paraphrase, `skip_bad = true` in a sweep file's dataset entry, "
                                   "`load_dataset(..., skip_bad=True)`)") from None
            skipped += 1
            continue
        seen.add(item.id)
        items.append(item)
        sources.append(record.get("data_source"))
    if not items:
        raise MinirunError(f"{path}: no usable items (empty file or every record bad); check the file's contents")
    if skipped:
        log.warning("%s: skipped %d bad record(s)", path, skipped)
    source = sources[0] if isinstance(sources[0], dict) and all(s == sources[0] for s in sources) else None
    return LoadResult(items, skipped, source)


def read_frame(path: Path, what: str) -> pd.DataFrame:
    """A local copy of a dataset's rows (parquet, JSON lines or a JSON array) as a DataFrame, or a
    one-line error when the file cannot be read as such."""
    import pandas as pd

    if path.suffix == ".parquet":
        try:
            return pd.read_parquet(path)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise MinirunError(f"{path}: not a readable parquet file ({e}); pass an intact copy of the {what} rows "
                               "(.parquet, .jsonl or .json)") from None
    head = next((line.lstrip()[:1] for line in text_lines(path) if line.strip()), "")
    if not head:
        raise MinirunError(f"{path}: the file is empty; pass a copy of the {what} rows (.parquet, .jsonl or .json)")
    try:
        # "00123" stays text, "0.50" too; a byte-order mark (an editor's UTF-8) is read past, as item files' is
        return pd.read_json(path, lines=head != "[", dtype=False, encoding="utf-8-sig")
    except ValueError as e:
        if head != "[":  # JSON lines: name the first line that is not one JSON value, as an item file's error does
            for n, line in enumerate(text_lines(path), 1):
                try:
                    if line.strip():
                        json.loads(line)
                except json.JSONDecodeError as bad:
                    raise MinirunError(f"{path}:{n}: not a JSON line ({bad.msg}); fix or remove that line") from None
        raise MinirunError(f"{path}: not readable as {what} rows ({e}); pass them as JSON lines, a JSON array "
                           "or parquet") from None


def parquet_columns(path: Path) -> list[str]:
    """A parquet file's column names, read from its footer without loading the rows."""
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except (OSError, ValueError) as e:
        raise MinirunError(f"{path}: not a readable parquet file ({e}); pass an intact copy") from None


def text_value(value: object, field: str) -> str | None:
    """A data file's string as is, a number as its string form ("1969", also from 1969.0: a column with a null
    somewhere is read as floats), None for null; any other value (a list, an object, true/false) raises ValueError
    naming the field."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
    raise ValueError(f"field {field!r} holds {value!r}, which is not text; give it as a string")


def write_jsonl(items: list[Item], path: str | Path) -> None:
    """Write items in the plain form `load_jsonl` reads back unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item_record(item), ensure_ascii=False) + "\n")


def hf_frame(name: str, split: str, config: str | None = None, revision: str | None = None,
             subset: bool = False) -> pd.DataFrame:
    """A Hugging Face Hub dataset split as a DataFrame (at `revision`, a branch, tag or commit; default its main
    branch), importing `datasets` only when needed. `subset`: `config` is the user's `--subset` (an MMLU subject),
    named in the error as what may be misspelt."""
    what = f"{name}{'@' + revision if revision else ''}[{config + '/' if config else ''}{split}]"
    try:
        import datasets
    except ImportError:
        raise HubDataUnavailable(
            f"loading {name} from the Hugging Face Hub needs the `datasets` package: "
            "run `pip install datasets`, or give the path of a local copy (JSON lines, a JSON array or parquet) in "
            "place of the name",
            what, "reading it needs the `datasets` package: run `pip install datasets`") from None
    try:
        pinned = {"revision": revision} if revision is not None else {}
        return datasets.load_dataset(name, *([config] if config else []), split=split, **pinned).to_pandas()
    except (OSError, ValueError, RuntimeError) as e:  # offline, no such repo, config or split, a refused script
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        given = f", or the subset {config!r} (--subset, spelt as the Hub does)" if subset else ""
        check = f"({reason}): check the network (HF_TOKEN, HF_ENDPOINT){given}"
        raise HubDataUnavailable(f"cannot load {what} from the Hugging Face Hub {check}; or give the path of a local "
                                 "copy (`--data FILE`)", what, check) from None


def text_list(values: object, field: str) -> list[str]:
    """A field's strings (numbers as their string form), nulls and blanks left out."""
    texts = (text_value(v, field) for v in as_list(values))
    return [t for t in texts if t is not None and t.strip()]


def content_id(prefix: str, question: str) -> str:
    """An id from the question's text, for rows that carry none: the same question gets the same id from the Hub
    and from a local copy, whatever its row number."""
    return f"{prefix}-" + hashlib.sha1(question.strip().lower().encode("utf-8")).hexdigest()[:10]


def given_id(record: dict, *keys: str) -> str | None:
    """The record's id under the first of `keys` it holds one, as text; None where it holds none (null, NaN: a
    column's gap, blank). An id of 0 is an id, where a test of truth took it for none. `str` of it, not `text_value`'s
    whole-number form: an id 1.0 stays "1.0", as runs before keyed it."""
    for key in keys:
        value = record.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)) and str(value).strip():
            return str(value)
    return None


def number_repeats(items: list[Item]) -> list[Item]:
    """`items` with the second and later of a repeated id numbered (`-2`, …): a run keeps one row per id. A number
    another item's id already is goes on to the next ("q", "q", "q-2": "q", "q-3", "q-2"), so numbering never makes a
    repeat of its own."""
    taken = {item.id for item in items}
    first: set[str] = set()
    last: dict[str, int] = {}  # the number each repeated id was last given
    for item in items:
        if item.id not in first:
            first.add(item.id)
            continue
        n = last.get(item.id, 1) + 1
        while f"{item.id}-{n}" in taken:
            n += 1
        last[item.id] = n
        item.id = f"{item.id}-{n}"
        taken.add(item.id)
    return items


def hub_rows(name: str, split: str, config: str | None, path: str | Path | None, revision: str | None,
             subset: bool = False) -> tuple[pd.DataFrame, str]:
    """A benchmark's rows, from the Hub (`hf_frame`; `subset` as there) or a local copy at `path`, and the source
    its errors name."""
    if path is None:
        return hf_frame(name, split, config, revision, subset), f"{name}[{config + '/' if config else ''}{split}]"
    path = Path(path)
    if not path.is_file():
        raise MinirunError(f"{path}: no such {name} file; pass an existing .parquet/.jsonl copy or path=None for the "
                           "Hub")
    return read_frame(path, name), str(path)


def question_field(record: dict, field: str = "question") -> str:
    """A row's question text; ValueError naming the field when it is null, blank or not text."""
    question = record[field]
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"field {field!r} must be a non-empty string, got {question!r}")
    return question


def rows_to_items(records: list[dict], source: str, convert: Callable[[int, dict], Item]) -> list[Item]:
    """Each row (numbered from 1) as an item; the first bad one stops the load in one line naming it."""
    items = []
    for n, record in enumerate(records, 1):
        try:
            items.append(convert(n, record))
        except KeyError as e:
            raise MinirunError(f"{source}: record {n}: missing field {e}; fix or remove that record") from None
        except (ValueError, TypeError) as e:
            raise MinirunError(f"{source}: record {n}: {e}; fix or remove that record") from None
    if not items:
        raise MinirunError(f"{source}: no questions found; check the file, subset or split name")
    return items


def as_list(value: object) -> list:
    """Lists from JSON, numpy arrays from parquet/pandas, or a lone scalar, as a plain list."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        return [value]
    if hasattr(value, "tolist"):
        value = value.tolist()
    return list(value) if isinstance(value, (list, tuple)) else [value]

