"""MyriadLAMA: fill-in prompts for subject-relation facts, many templates per fact.

Each dataset row is one (fact, template) pair. We group rows by the fact's `uuid`, turn every
template into a prompt that stops where the object goes, and keep the manual templates plus a
seeded sample of the automatic ones, so runs with the same seed see the same prompts. The first
prompt (a manual one when there is any) stands as the item's question and is also paraphrase 0.
"""
from __future__ import annotations

import logging
import numbers
import random
from pathlib import Path

import numpy as np
import pandas as pd

from minirun.errors import MinirunError
from minirun.eval.data.items import Item, as_list, hf_frame, read_frame, text_list

log = logging.getLogger(__name__)

HF_NAME = "iszhaoxin/MyriadLAMA"
HUB_TEST_FACTS = 2000  # the Hub copy's test split; the rest of its facts are the few-shot pool
# Our name -> accepted column names, first match wins (the Hub release uses the first of each).
COLUMNS = {
    "uuid": ("uuid", "fact_id"),
    "subject": ("sub_ent", "sub_label", "subject"),
    "template": ("template",),
    "manual": ("is_manual", "manual"),
    "relation": ("rel_uri", "predicate_id", "relation"),
}
ANSWER_COLUMNS = ("obj_ents", "obj_aliases", "obj_label", "answers")


def prompt_head(template: str) -> str | None:
    """The template up to the answer slot `[Y]`, or None when it has no `[Y]` or the subject `[X]`
    only comes after it: a fill prompt must stop where the answer goes."""
    head, slot, _ = template.partition("[Y]")
    return head if slot and "[X]" in head else None


def template_prompt(template: str, subject: str) -> str | None:
    """The template filled with the subject and cut at `[Y]`; None when no usable prompt remains."""
    head = prompt_head(template)
    if head is None:
        return None
    return head.replace("[X]", subject).strip() or None


def _resolve_columns(df: pd.DataFrame, source: str) -> tuple[dict[str, str], list[str]]:
    cols = {name: next((c for c in options if c in df.columns), None) for name, options in COLUMNS.items()}
    answer_cols = [c for c in ANSWER_COLUMNS if c in df.columns]
    missing = [f"{name} ({'/'.join(COLUMNS[name])})" for name, c in cols.items() if c is None and name != "relation"]
    if not answer_cols:
        missing.append(f"answers ({'/'.join(ANSWER_COLUMNS)})")
    if missing:
        raise MinirunError(
            f"{source}: missing MyriadLAMA column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}. "
            "Pass the dataset's own rows (JSONL or parquet) with those columns"
        )
    return cols, answer_cols


def _read_local(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise MinirunError(f"{path}: no such MyriadLAMA file; pass an existing .jsonl/.parquet file or path=None for the Hub")
    return read_frame(path, "MyriadLAMA")


def _flag(value: object) -> bool | None:
    """`is_manual` as a bool: true/false, 1/0 or their strings ("False" is False); None if neither."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    return None


def _checked(df: pd.DataFrame, cols: dict[str, str], source: str) -> pd.DataFrame:
    """The rows with the manual column as bools; a null uuid/subject/template or an unreadable flag is
    a one-line error naming the row (1-based) and column, where it would otherwise become a prompt
    like 'nan was born in' or count "False" as manual."""
    df = df.reset_index(drop=True)
    for name in ("uuid", "subject", "template"):
        column = df[cols[name]]
        blank = column.isna() | (column.astype(str).str.strip() == "")
        if blank.any():
            raise MinirunError(f"{source}: row {int(blank.idxmax()) + 1}: no {name} (column {cols[name]!r}); "
                               "fix or remove that row")
    column = df[cols["manual"]]
    if pd.api.types.is_bool_dtype(column):
        return df
    manual = column.map(_flag)
    if manual.isna().any():
        row = int(manual.isna().idxmax())
        raise MinirunError(f"{source}: row {row + 1}: column {cols['manual']!r} holds {column[row]!r}, not "
                           "true/false; fix or remove that row")
    return df.assign(**{cols["manual"]: manual.astype(bool)})


def _fact_item(uuid: str, rows: pd.DataFrame, cols: dict[str, str], answer_cols: list[str], n_manual: int | None,
               n_auto: int | None, seed: int) -> Item | None:
    manual: list[str] = []
    auto: list[str] = []
    for template, subject, is_manual in zip(rows[cols["template"]], rows[cols["subject"]], rows[cols["manual"]]):
        prompt = template_prompt(str(template), str(subject))
        pool = manual if is_manual else auto
        if prompt and prompt not in pool:
            pool.append(prompt)
    # sorted pools: a copy with its rows in another order gives the same prompts, and the same question (the
    # first manual one)
    manual, auto = sorted(manual), sorted(auto)
    rng = random.Random(f"{seed}:{uuid}")
    if n_manual is not None:
        manual = rng.sample(manual, min(n_manual, len(manual)))
    if n_auto is not None:
        auto = rng.sample(auto, min(n_auto, len(auto)))
    prompts = manual + auto
    first = rows.iloc[0]
    try:
        answers = list(dict.fromkeys(a for c in answer_cols for group in as_list(first[c])
                                     for a in text_list(group, c)))
    except ValueError as e:
        raise MinirunError(f"fact {uuid}: {e}") from None
    if not prompts or not answers:
        return None
    relation = str(first[cols["relation"]]) if cols["relation"] else None
    return Item(id=uuid, question=prompts[0], paraphrases=prompts, answers=answers, task="fill", relation=relation)


def load_myriadlama(path: str | Path | None = None, n_test: int | None = None, n_manual: int | None = None,
                    n_auto: int | None = 5, seed: int = 0, split: str = "test",
                    revision: str | None = None) -> list[Item]:
    """MyriadLAMA facts as fill items: all manual prompts (or `n_manual` sampled) plus `n_auto`
    sampled automatic ones (None keeps all). The Hub copy's facts are shuffled with `seed` and the
    first `n_test` (default HUB_TEST_FACTS) form the test split, the rest the train split used for
    few-shot examples; a local file is the user's own selection, so all its facts are used, in
    file order, unless `n_test` is given."""
    if split not in ("test", "train"):
        raise MinirunError(f"unknown MyriadLAMA split {split!r}; use 'test' or 'train'")
    source = HF_NAME if path is None else str(path)
    df = hf_frame(HF_NAME, "train", revision=revision) if path is None else _read_local(Path(path))
    cols, answer_cols = _resolve_columns(df, source)
    df = _checked(df, cols, source)
    uuids = list(df[cols["uuid"]].astype(str).unique())
    if path is None and n_test is None:
        n_test = HUB_TEST_FACTS
    if n_test is None:
        if split == "train":
            raise MinirunError(f"{source}: a local MyriadLAMA file is used whole, so it has no train split apart from "
                               "its test items; pass n_test to split it, or take few-shot examples from another file")
        chosen = uuids
    else:
        uuids.sort()
        random.Random(seed).shuffle(uuids)
        chosen = uuids[:n_test] if split == "test" else uuids[n_test:]
    if not chosen:
        raise MinirunError(f"{source}: {len(uuids)} facts and n_test={n_test} leave the {split} split empty; lower n_test")
    df = df[df[cols["uuid"]].astype(str).isin(set(chosen))]
    templates = df[cols["template"]].astype(str).unique()
    if dropped := sum(prompt_head(t) is None for t in templates):
        log.warning("%s: %d of %d templates dropped: a fill prompt stops where the answer goes, and these have no "
                    "[Y] or put the subject [X] after it", source, dropped, len(templates))
    groups = {str(k): g for k, g in df.groupby(df[cols["uuid"]].astype(str), sort=False)}
    items = [_fact_item(u, groups[u], cols, answer_cols, n_manual, n_auto, seed) for u in chosen]
    if missing := [u for u, it in zip(chosen, items) if it is None]:
        log.warning("%s: %d of %d facts left out (%s%s): each has no answer or no template ending in [Y] after [X]",
                    source, len(missing), len(chosen), ", ".join(missing[:3]), ", …" if len(missing) > 3 else "")
    items = [it for it in items if it is not None]
    if not items:
        raise MinirunError(f"{source}: no fact has both answers and a template ending in [Y] after [X]; "
                           "check the template and answer columns")
    return items
