"""Datasets as lists of `Item`: bundled samples, WebQA, MyriadLAMA, TriviaQA, NQ-open, PopQA, GSM8K, MMLU,
CommonsenseQA, ARC, OpenBookQA, HellaSwag, PIQA, SciQ, BoolQ, TruthfulQA, Winogrande, or your own JSONL/JSON file."""
from __future__ import annotations

import importlib
import itertools
import json
import logging
import re
from pathlib import Path

from minirun.checkpoints.hub import split_revision
from minirun.errors import MinirunError, error_line
from minirun.eval.data.choice import (
    ARC,
    ARC_SETS,
    BOOLQ_CONFIG,
    COMMONSENSE_QA,
    HELLASWAG,
    MMLU,
    OPENBOOKQA,
    OPENBOOKQA_CONFIG,
    PIQA,
    SCIQ,
    SUPER_GLUE,
    TRUTHFULQA,
    TRUTHFULQA_CONFIG,
    TRUTHFULQA_SETS,
    WINOGRANDE,
    WINOGRANDE_CONFIG,
    load_arc,
    load_boolq,
    load_commonsense_qa,
    load_hellaswag,
    load_mmlu,
    load_openbookqa,
    load_piqa,
    load_sciq,
    load_truthfulqa,
    load_winogrande,
)
from minirun.eval.data.gsm8k import GSM8K, GSM8K_CONFIG, load_gsm8k
from minirun.eval.data.items import (
    TASKS,
    Item,
    LoadResult,
    asked_items,
    ensemble_prompts,
    item_record,
    items_from_records,
    load_jsonl,
    parquet_columns,
    text_lines,
    write_jsonl,
)
from minirun.eval.data.myriadlama import HF_NAME as MYRIADLAMA
from minirun.eval.data.myriadlama import load_myriadlama
from minirun.eval.data.openqa import (
    NQ_OPEN,
    POPQA,
    TRIVIAQA,
    TRIVIAQA_CONFIG,
    load_nq_open,
    load_popqa,
    load_triviaqa,
)
from minirun.eval.data.webqa import HF_NAME as WEBQA
from minirun.eval.data.webqa import QUESTION_KEYS, json_records, load_webqa

log = logging.getLogger(__name__)

SAMPLE_DIR = Path(__file__).parent / "sample"
SAMPLES = {"sample-qa": "qa", "sample-fill": "fill", "sample-choice": "choice", "sample-math": "math"}
OPEN_QA = ("triviaqa", "nq_open", "popqa")
NAMES = (*SAMPLES, "webqa", "myriadlama", *OPEN_QA, "gsm8k", "mmlu", "commonsense_qa", *ARC_SETS, "openbookqa",
         "hellaswag", "piqa", "sciq", "boolq", *TRUTHFULQA_SETS, "winogrande")
WEBQA_KEYS = (*QUESTION_KEYS, "targetValue")
HUB_DATASETS = {"webqa": WEBQA, "myriadlama": MYRIADLAMA, "triviaqa": TRIVIAQA, "nq_open": NQ_OPEN, "popqa": POPQA,
                "gsm8k": GSM8K, "mmlu": MMLU, "commonsense_qa": COMMONSENSE_QA,
                **dict.fromkeys(ARC_SETS, ARC), "openbookqa": OPENBOOKQA, "hellaswag": HELLASWAG, "piqa": PIQA,
                "sciq": SCIQ, "boolq": SUPER_GLUE,
                **dict.fromkeys(TRUTHFULQA_SETS, TRUTHFULQA), "winogrande": WINOGRANDE}
# the Hub config each is read from, where a repo holds several (ARC's two sets)
HUB_CONFIGS = {"triviaqa": TRIVIAQA_CONFIG, "gsm8k": GSM8K_CONFIG, **ARC_SETS, "openbookqa": OPENBOOKQA_CONFIG,
               "boolq": BOOLQ_CONFIG,
               **dict.fromkeys(TRUTHFULQA_SETS, TRUTHFULQA_CONFIG), "winogrande": WINOGRANDE_CONFIG}
SKIP_BAD = "--skip-bad (a sweep dataset's skip_bad)"  # what both commands call skipping bad records
# the task each named dataset's items are, so the format it asks in (`--benchmark`) fits a file's items
TASK_OF = {**SAMPLES, "webqa": "qa", "myriadlama": "fill", **dict.fromkeys(OPEN_QA, "qa"), "gsm8k": "math",
           **dict.fromkeys(("mmlu", "commonsense_qa", *ARC_SETS, "openbookqa", "hellaswag", "piqa", "sciq",
                            "boolq", *TRUTHFULQA_SETS, "winogrande"),
                           "choice")}
# Hub datasets whose few-shot examples minirun holds: TruthfulQA's worked questions; the bundled QA examples for PopQA,
# whose one split is its test
OWN_EXAMPLES = (*TRUTHFULQA_SETS, "popqa")
COMMIT = re.compile(r"[0-9a-f]{40}")
# each Hub dataset's loader by name; those whose test split has no answers are evaluated on validation
NAMED_LOADERS = {"webqa": load_webqa, "myriadlama": load_myriadlama, "triviaqa": load_triviaqa, "nq_open": load_nq_open,
                 "popqa": load_popqa, "gsm8k": load_gsm8k, "commonsense_qa": load_commonsense_qa,
                 **dict.fromkeys(ARC_SETS, load_arc), "openbookqa": load_openbookqa, "hellaswag": load_hellaswag,
                 "piqa": load_piqa, "sciq": load_sciq, "boolq": load_boolq,
                 **dict.fromkeys(TRUTHFULQA_SETS, load_truthfulqa), "winogrande": load_winogrande}
VALIDATION_ONLY = {"triviaqa", "nq_open", "commonsense_qa", "hellaswag", "piqa", "boolq", *TRUTHFULQA_SETS,
                   "winogrande"}
# the loaders that read a local copy of a benchmark's rows as any split, by the kind `_kind` tells
COPY_LOADERS = {"commonsense_qa": load_commonsense_qa, "arc": load_arc, "openbookqa": load_openbookqa,
                "hellaswag": load_hellaswag, "piqa": load_piqa, "sciq": load_sciq, "boolq": load_boolq,
                "triviaqa": load_triviaqa, "nq_open": load_nq_open, "popqa": load_popqa, "gsm8k": load_gsm8k,
                "winogrande": load_winogrande}

__all__ = [
    "HUB_DATASETS",
    "NAMES",
    "TASK_OF",
    "Item",
    "LoadResult",
    "asked_items",
    "benchmark_source",
    "dataset_label",
    "dataset_source",
    "ensemble_prompts",
    "hub_dataset",
    "item_record",
    "load_arc",
    "load_boolq",
    "load_cited",
    "load_commonsense_qa",
    "load_dataset",
    "load_examples",
    "load_fewshot",
    "load_gsm8k",
    "load_hellaswag",
    "load_jsonl",
    "load_mmlu",
    "load_myriadlama",
    "load_nq_open",
    "load_openbookqa",
    "load_piqa",
    "load_popqa",
    "load_sciq",
    "load_triviaqa",
    "load_truthfulqa",
    "load_webqa",
    "load_winogrande",
    "text_lines",
    "write_jsonl",
]


def _records_head(path: Path) -> tuple[set[str], list | None]:
    """Every field some record has (a parquet file's columns), and every record when the file is one
    JSON document (an array, or one object) rather than JSON lines. All records, not the first: a plain
    file whose first record lacks its `id` would otherwise read as WebQA, which invents ids and drops
    tasks and relations without a word."""
    if path.suffix == ".parquet":
        return set(parquet_columns(path)), None
    first = next((line.strip() for line in text_lines(path) if line.strip()), "")
    try:
        head = json.loads(first)
    except json.JSONDecodeError:
        head = None
    if isinstance(head, dict) and json_records(head) == [head]:  # JSON lines: a bad one is its loader's to name
        return set().union(*(r for line in text_lines(path) if isinstance(r := _json_or_none(line), dict))), None
    text = "".join(text_lines(path))
    try:
        records = json_records(json.loads(text))
    except json.JSONDecodeError as e:  # not one JSON document: JSON lines, whose loader names a bad line
        if text.lstrip().startswith("["):  # meant as one array, whose flaw no line of it shows
            raise MinirunError(f"{path} opens a JSON array but is not valid JSON ({e.msg} at line {e.lineno}, "
                               f"column {e.colno}): fix it there, or write one item per line (JSON lines)") from None
        return set(), None
    if records is None:
        return set(), None
    return set().union(*(r for r in records if isinstance(r, dict))), records


def _json_or_none(line: str) -> object:
    try:
        return json.loads(line) if line.strip() else None
    except json.JSONDecodeError:
        return None


def _no_json_records(path: Path) -> bool:
    """Whether the file has text but not one line of a JSON object: a prompt or notes file given as data, whose
    first line's decoding error (and a hint to skip bad records) would not say so."""
    lines = (line for line in text_lines(path) if line.strip())
    first = next(lines, None)
    return first is not None and not any(isinstance(_json_or_none(line), dict)
                                         for line in itertools.chain([first], lines))


def _kind(keys: set[str]) -> str:
    """Which loader records with these fields need: the plain item form first when it is whole (`id` + `paraphrases`: an
    extra field such as a `template` note does not make it another dataset's rows), then MyriadLAMA rows (`template`),
    TruthfulQA's (`mc1_targets` or `mc2_targets`), HellaSwag's (`ctx_a`, `ctx_b`, `endings`), PIQA's (a `goal`, `sol1`
    or `sol2`), SciQ's (a `distractor1`-`3` or `correct_answer`), BoolQ's (`passage` and `label`), TruthfulQA's
    generation config (refused: judged answers), Winogrande's (an
    `option1` or `option2`), labelled options
    (`choices` with `answerKey`: OpenBookQA's with a `question_stem`, CommonsenseQA's with a `question_concept`, else
    ARC's), MMLU (`question`, `subject`, `choices`, `answer`; hendrycks_test's without `subject`), TriviaQA
    (`question_id` and `answer`), PopQA (`possible_answers`), NQ-open (`question` and `answer` alone), plain items
    short of a field (`task`/`relation`/`choices`/`context`, which WebQA's loader would drop or reject: the plain
    loader names what is missing), NQ-open again with fields of its own beside (an `id` a user added: WebQA's rows
    hold `answers` or `targetValue`, never `answer`), WebQA (its question/answer fields)."""
    if {"id", "paraphrases"} <= keys:
        return "plain"
    if "template" in keys:
        return "myriadlama"
    if keys & set(TRUTHFULQA_SETS.values()):
        return "truthfulqa"
    if {"ctx_a", "ctx_b", "endings"} <= keys:
        return "hellaswag"
    if keys & {"goal", "sol1", "sol2"}:  # PIQA's or SciQ's by any field of theirs: the loader names a missing one
        return "piqa"
    if keys & {"distractor1", "distractor2", "distractor3", "correct_answer"}:
        return "sciq"
    if {"passage", "label"} <= keys:
        return "boolq"
    if {"best_answer", "correct_answers", "incorrect_answers"} <= keys:
        return "truthfulqa_generation"
    if keys & {"option1", "option2"}:  # Winogrande's by any option field: the loader names a missing one
        return "winogrande"
    if {"choices", "answerKey"} <= keys:
        return "openbookqa" if "question_stem" in keys else "commonsense_qa" if "question_concept" in keys else "arc"
    if ({"question", "subject", "choices", "answer"} <= keys and "paraphrases" not in keys
            or keys == {"question", "choices", "answer"}):  # cais/mmlu's, or hendrycks_test's without subjects
        return "mmlu"
    if {"question_id", "answer"} <= keys:
        return "triviaqa"
    if "possible_answers" in keys:
        return "popqa"
    if keys == {"question", "answer"}:
        return "nq_open"
    if keys & {"task", "relation", "choices", "context"}:
        return "plain"
    if {"question", "answer"} <= keys and not keys & {"answers", "targetValue"} and \
            not any(k.startswith("paraphrase") for k in keys):
        return "nq_open"
    if keys & {"question", *WEBQA_KEYS} or any(k.startswith("paraphrase") for k in keys):
        return "webqa"
    return "plain"


def _answer_kind(path: Path, records: list | None, keys: set[str]) -> str:
    """Whose rows of a `question` and an `answer` are: GSM8K's, whose answer is a worked solution (text), TriviaQA's
    without their ids, whose answer is an object of aliases, google/boolq's, a true or false one about a `passage`,
    or NQ-open's, a list of answers; told by the parquet column's type or the first row's value."""
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        kind = pq.read_schema(path).field("answer").type
        solved, aliased = pa.types.is_string(kind) or pa.types.is_large_string(kind), pa.types.is_struct(kind)
        yes_no = pa.types.is_boolean(kind)
    else:
        first = records[0] if records else _json_or_none(next((line for line in text_lines(path) if line.strip()), ""))
        answer = first.get("answer") if isinstance(first, dict) else None
        solved, aliased, yes_no = isinstance(answer, str), isinstance(answer, dict), isinstance(answer, bool)
    if yes_no and "passage" in keys:
        return "boolq"
    return "gsm8k" if solved else "triviaqa" if aliased else "nq_open"


def _no_subset(name: str) -> MinirunError:
    return MinirunError(f"--subset picks an MMLU subject; {name!r} has no subsets: drop --subset")


def hub_dataset(name: str) -> tuple[str, str | None]:
    """A Hub dataset's name with the revision it pins, `mmlu@REV` (a branch, tag or commit), as ("mmlu", "REV");
    any other name as given, with none (a file's path may hold an "@")."""
    base, revision = split_revision(name)
    if revision is None or base not in HUB_DATASETS:
        return name, None
    if not revision.strip():
        raise MinirunError(f"{name!r} names no revision after '@': give a branch, tag or commit, or drop the '@'")
    return base, revision


def dataset_label(name_or_path: str) -> str:
    """A dataset as a folder name (eval's default output, a sweep's default label): a file's stem, or the name with
    the revision it pins (`mmlu@REV` -> `mmlu-REV`)."""
    if Path(name_or_path).is_file():
        return Path(name_or_path).stem
    return name_or_path.replace("@", "-").replace("/", "--")


def dataset_source(name: str, revision: str | None = None) -> dict | None:
    """Where a named Hub dataset's rows come from: its repo, the revision asked for (default its main branch) and
    the commit that revision is at now, which a run then loads every split at (test items and few-shot examples
    of one upload) and records, as a paper cites the data; None for the shipped samples and files. A full commit
    is taken as given, so a pinned run needs no Hub (`datasets` may read it from its cache offline); a branch the
    Hub cannot be asked about is recorded without a commit, with a warning."""
    if name not in HUB_DATASETS:
        return None
    repo = HUB_DATASETS[name]
    config = {"config": HUB_CONFIGS[name]} if name in HUB_CONFIGS else {}  # which set of the repo: ARC's two
    if revision is not None and COMMIT.fullmatch(revision):
        return {"hub": repo, **config, "revision": revision, "commit": revision}
    try:
        from huggingface_hub import dataset_info
        commit = dataset_info(repo, revision=revision).sha
    except Exception as e:  # hub errors come in many types (HTTP, offline, auth); all mean the same to the user
        reason = error_line(e)
        if revision is not None:
            raise MinirunError(f"cannot find revision {revision!r} of {repo} on the Hugging Face Hub ({reason}): check "
                               "the revision, your network and HF_TOKEN, or give a full commit") from None
        try:
            importlib.import_module("datasets")
        except ImportError:  # loading it says what is missing; the warning's "loads its main branch" would not happen
            return {"hub": repo, **config, "revision": "main"}
        log.warning(f"cannot ask the Hugging Face Hub which commit {repo} is at ({reason}): the run loads its main "
                    "branch as `datasets` finds it and records no commit; name one to pin it (NAME@COMMIT: eval's "
                    "`--data`, a sweep's dataset `name`)")
        return {"hub": repo, **config, "revision": "main"}
    return {"hub": repo, **config, "revision": revision or "main", "commit": commit}


def load_cited(name_or_path: str | Path, subset: str | None = None, skip_bad: bool = False,
               resumed: dict | None = None, benchmark: str | None = None) -> tuple[list[Item], dict | None]:
    """A run's test items and where they came from: a Hub dataset (`mmlu`, `mmlu@REV`) read at the commit its revision
    is at now (`dataset_source`), which the run's few-shot examples are then read at too and run.json cites; a file
    of items at the source its rows record (a paraphrased Hub dataset's). `resumed`, the source an unfinished output
    recorded for this revision, is read again instead, so a branch that moved since does not mix two uploads.
    `benchmark`: what a file is asked as (see `load_dataset`)."""
    name, revision = hub_dataset(str(name_or_path))
    source = dataset_source(name, revision) if not _same_upload(resumed, name, revision) else resumed
    items = load_dataset(name_or_path if source is None else name, subset=subset, skip_bad=skip_bad,
                         revision=(source or {}).get("commit", revision), benchmark=benchmark)
    return items, source if source is not None else getattr(items, "source", None)


def benchmark_source(benchmark: str, items_source: dict | None = None) -> dict | None:
    """Where the Hub examples a file's items are asked with (`--benchmark mmlu`, `mmlu@REV`) are read: at the
    revision the name pins, else at the commit the items themselves were read at where they are that dataset's (a
    `minirun paraphrase` of it records it), so items and examples come from one upload, else at main's commit now."""
    name, revision = hub_dataset(benchmark)
    if name in OWN_EXAMPLES:  # no Hub rows to cite
        return None
    if revision is None and items_source is not None and _same_upload(items_source, name, items_source.get("revision")):
        return items_source
    return dataset_source(name, revision)


def _same_upload(source: dict | None, name: str, revision: str | None) -> bool:
    """Whether `source` is `name` at `revision` (default main) read at a known commit."""
    return (source is not None and name in HUB_DATASETS and source.get("hub") == HUB_DATASETS[name]
            and source.get("config") == HUB_CONFIGS.get(name)
            and source.get("revision") == (revision or "main") and isinstance(source.get("commit"), str))


def load_dataset(name_or_path: str | Path, split: str = "test", subset: str | None = None,
                 skip_bad: bool = False, revision: str | None = None, benchmark: str | None = None) -> list[Item]:
    """Items for a dataset name (see NAMES) or a local file, its format told by its fields: plain items (JSONL or a
    JSON array), or WebQA, MyriadLAMA, TriviaQA, NQ-open, PopQA, MMLU, CommonsenseQA, ARC, OpenBookQA, HellaSwag,
    PIQA, SciQ, BoolQ, TruthfulQA or Winogrande rows (parquet, JSONL or JSON). `subset` picks an MMLU subject
    (default all of them); `skip_bad` skips and counts bad records of a plain item file (other loaders stop at the
    first). A Hub dataset is read at `revision` (or the one its name pins, `mmlu@REV`; default the main branch). A
    local copy of TruthfulQA's rows gives the options of the set it is asked as (`benchmark` "truthfulqa_mc2":
    MC2's), else those of the set it holds (MC1's where it holds both)."""
    name, pinned = hub_dataset(str(name_or_path))
    revision = revision or pinned
    if revision is not None and name not in HUB_DATASETS:
        raise MinirunError(f"a revision picks an upload of a Hugging Face Hub dataset ({', '.join(HUB_DATASETS)}); "
                           f"{name!r} is none: drop the revision")
    if name in NAMES and skip_bad:
        raise MinirunError(f"{SKIP_BAD} skips bad records of a plain item file; {name!r} is a named dataset: "
                           "drop it")
    if name in NAMES and subset is not None and name != "mmlu":
        raise _no_subset(name)
    if name in SAMPLES:
        return load_jsonl(SAMPLE_DIR / f"{SAMPLES[name]}.jsonl")
    if name == "mmlu":
        return load_mmlu(subset, split="dev" if split == "train" else split, revision=revision)
    if name in HUB_DATASETS:
        asked = ("train" if split == "train" else "validation") if name in VALIDATION_ONLY else split
        if name in ARC_SETS or name in TRUTHFULQA_SETS:  # one loader for each repo's sets, told which
            return NAMED_LOADERS[name](name, split=asked, revision=revision)
        return NAMED_LOADERS[name](split=asked, revision=revision)
    path = Path(name_or_path)
    if path.is_dir():
        raise MinirunError(f"dataset {name!r} is a directory: pass a .jsonl file in it, or one of {', '.join(NAMES)}")
    if not path.is_file() and (path.suffix or len(path.parts) > 1):  # a file's name or path, not a dataset's name
        raise MinirunError(f"no file {path} (in {Path.cwd()}): check the path, or give a dataset by name, one of "
                           f"{', '.join(NAMES)}")
    if not path.is_file():
        raise MinirunError(f"unknown dataset {name!r}: use one of {', '.join(NAMES)} or the path of an existing file")
    keys, records = _records_head(path)
    kind = _kind(keys)
    if kind == "nq_open":  # a question and an answer alone: whose is told by the answer
        kind = _answer_kind(path, records, keys)
    if subset is not None and kind != "mmlu":
        raise MinirunError(f"--subset picks an MMLU subject; {path} reads as {kind} data, which has no subsets: "
                           "drop --subset")
    if skip_bad and kind != "plain":
        raise MinirunError(f"{SKIP_BAD} skips bad records of a plain item file; {path} reads as {kind} data, whose "
                           "loader stops at the first bad record: fix that record and drop it")
    if kind == "plain" and records is None and path.suffix != ".parquet" and _no_json_records(path):
        raise MinirunError(f"{path} holds no JSON record on any line: a dataset is JSON lines of items (see the "
                           "README's data format), a JSON array of them, or parquet rows")
    if kind == "plain" and path.suffix == ".parquet":
        raise MinirunError(f"{path}: a parquet file must hold MyriadLAMA, TriviaQA, NQ-open, PopQA, GSM8K, MMLU, "
                           "CommonsenseQA, ARC, OpenBookQA, HellaSwag, PIQA, SciQ, BoolQ, TruthfulQA, Winogrande or "
                           "WebQA rows, and its columns "
                           f"({', '.join(sorted(keys))}) match none; save plain items as JSONL instead")
    if kind == "truthfulqa_generation":
        raise MinirunError(f"{path} holds rows of TruthfulQA's generation config (best_answer, correct_answers), "
                           "whose answers a judge model scores: save its multiple_choice config's rows (mc1_targets, "
                           "mc2_targets) and ask them as truthfulqa_mc1 or truthfulqa_mc2")
    if kind == "myriadlama":
        return load_myriadlama(path=path, split=split)
    if kind == "mmlu":
        return load_mmlu(subset, split=split, path=path)
    if kind in COPY_LOADERS:
        return COPY_LOADERS[kind](split=split, path=path)
    if kind == "truthfulqa":  # a copy of both sets' rows gives the MC1 options unless asked as truthfulqa_mc2
        mc2 = benchmark == "truthfulqa_mc2" or "mc1_targets" not in keys
        return load_truthfulqa("truthfulqa_mc2" if mc2 else "truthfulqa_mc1", split=split, path=path)
    if kind == "webqa":
        return load_webqa(path=path)
    return load_jsonl(path, skip_bad) if records is None else items_from_records(records, path, skip_bad)


def load_examples(path: str | Path) -> list[Item]:
    """A few-shot file's worked examples: items (JSON lines), or a local copy of a benchmark's own rows (its train or
    dev split, told apart by their fields as `load_dataset` tells a dataset's), so a file asked as ARC can take ARC's
    train rows with no Hub."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".parquet" and _kind(_records_head(path)[0]) == "plain":
        return load_jsonl(path, examples=True)  # names a missing file or a bad line as a few-shot file's
    return load_dataset(path, split="train")


def load_fewshot(name_or_path: str | Path, task: str | None = None, subset: str | None = None,
                 revision: str | None = None) -> list[Item]:
    """Worked examples disjoint from the test items: the train split of WebQA, MyriadLAMA, TriviaQA, NQ-open, GSM8K,
    CommonsenseQA, ARC, OpenBookQA, HellaSwag, PIQA, SciQ, BoolQ and Winogrande, MMLU's dev split (of `subset`'s
    subject, as lm-evaluation-harness does, or of all subjects; at `revision`, the test items' upload), TruthfulQA's
    six worked questions, otherwise the bundled examples for `task` (PopQA's too)."""
    name = str(name_or_path)
    if name in HUB_DATASETS and name != "popqa":  # PopQA's one split is its test: the bundled QA examples serve it
        return load_dataset(name, split="train", subset=subset, revision=revision)
    if subset is not None:
        raise _no_subset(name)
    task = task or SAMPLES.get(name, "qa")
    if task not in TASKS:
        raise MinirunError(f"unknown task {task!r} for few-shot examples; use one of {', '.join(TASKS)}")
    return load_jsonl(SAMPLE_DIR / f"fewshot_{task}.jsonl")
