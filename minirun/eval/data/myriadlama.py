"""MyriadLAMA: fill-in prompts for subject-relation facts, many templates per fact.

Each dataset row is one (fact, template) pair. We group rows by the fact's `uuid`, turn every
template into a prompt that stops where the object goes, and keep the manual templates plus a
seeded sample of the automatic ones, so runs with the same seed see the same prompts. The first
prompt (a manual one when there is any) stands as the item's question and is also paraphrase 0.
"""
from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from minirun.errors import MinirunError
from minirun.eval.data.items import Item, as_list, hf_frame

HF_NAME = "iszhaoxin/MyriadLAMA"
# Our name -> accepted column names, first match wins (the Hub release uses the first of each).
COLUMNS = {
    "uuid": ("uuid", "fact_id"),
    "subject": ("sub_ent", "sub_label", "subject"),
    "template": ("template",),
    "manual": ("is_manual", "manual"),
    "relation": ("rel_uri", "predicate_id", "relation"),
}
ANSWER_COLUMNS = ("obj_ents", "obj_aliases", "obj_label", "answers")


def template_prompt(template: str, subject: str) -> str | None:
    """The template filled with the subject and cut at `[Y]`; None when no usable prompt remains
    (no `[Y]`, or the subject only appears after the answer slot)."""
    head, slot, _ = template.partition("[Y]")
    if not slot or "[X]" not in head:
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
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.stat().st_size == 0:
        raise MinirunError(f"{path}: the file is empty; pass a MyriadLAMA JSONL or parquet copy")
    try:
        return pd.read_json(path, lines=True)
    except ValueError as e:
        raise MinirunError(f"{path}: not readable as JSON lines ({e}); pass MyriadLAMA rows as .jsonl or .parquet") from None


def _fact_item(uuid: str, rows: pd.DataFrame, cols: dict[str, str], answer_cols: list[str],
               n_manual: int | None, n_auto: int | None, seed: int) -> Item | None:
    manual: list[str] = []
    auto: list[str] = []
    for template, subject, is_manual in zip(rows[cols["template"]], rows[cols["subject"]], rows[cols["manual"]]):
        prompt = template_prompt(str(template), str(subject))
        pool = manual if bool(is_manual) else auto
        if prompt and prompt not in pool:
            pool.append(prompt)
    rng = random.Random(f"{seed}:{uuid}")
    if n_manual is not None:
        manual = rng.sample(manual, min(n_manual, len(manual)))
    if n_auto is not None:
        auto = rng.sample(auto, min(n_auto, len(auto)))
    prompts = manual + auto
    first = rows.iloc[0]
    answers = [str(a) for c in answer_cols for group in as_list(first[c]) for a in as_list(group)]
    answers = list(dict.fromkeys(a for a in answers if a.strip()))
    if not prompts or not answers:
        return None
    relation = str(first[cols["relation"]]) if cols["relation"] else None
    return Item(id=uuid, question=prompts[0], paraphrases=prompts, answers=answers, task="fill", relation=relation)


def load_myriadlama(path: str | Path | None = None, n_test: int = 2000, n_manual: int | None = None,
                    n_auto: int | None = 5, seed: int = 0, split: str = "test") -> list[Item]:
    """MyriadLAMA facts as fill items: all manual prompts (or `n_manual` sampled) plus `n_auto`
    sampled automatic ones (None keeps all). Facts are shuffled with `seed` and the first
    `n_test` form the test split, the rest the train split used for few-shot examples."""
    if split not in ("test", "train"):
        raise MinirunError(f"unknown MyriadLAMA split {split!r}; use 'test' or 'train'")
    source = HF_NAME if path is None else str(path)
    df = hf_frame(HF_NAME, "train") if path is None else _read_local(Path(path))
    cols, answer_cols = _resolve_columns(df, source)
    uuids = sorted(df[cols["uuid"]].astype(str).unique())
    random.Random(seed).shuffle(uuids)
    chosen = uuids[:n_test] if split == "test" else uuids[n_test:]
    if not chosen:
        raise MinirunError(f"{source}: {len(uuids)} facts and n_test={n_test} leave the {split} split empty; lower n_test")
    df = df[df[cols["uuid"]].astype(str).isin(set(chosen))]
    groups = {str(k): g for k, g in df.groupby(df[cols["uuid"]].astype(str), sort=False)}
    items = [_fact_item(u, groups[u], cols, answer_cols, n_manual, n_auto, seed) for u in chosen]
    items = [it for it in items if it is not None]
    if not items:
        raise MinirunError(f"{source}: no fact has a template ending in [Y] after [X]; check the template column")
    return items
