"""Summaries of a results table: accuracy and throughput per method, per relation, and how
often methods agree. Plain DataFrames and dicts; rendering them is the CLI's job."""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from minirun.errors import MinirunError
from minirun.eval.results import journal_paths, read_results
from minirun.text import normalize

NEEDED = ("id", "method", "answer", "exact", "correct", "tokens", "seconds")


def load_results(output_dir: str | Path) -> pd.DataFrame:
    """A run's table: from its journals when present (they are never behind, even mid-run),
    else from `results.parquet`."""
    output_dir = Path(output_dir)
    if journal_paths(output_dir):
        return read_results(output_dir)
    if (output_dir / "results.parquet").is_file():
        return pd.read_parquet(output_dir / "results.parquet")
    raise MinirunError(f"{output_dir}: no results found; pass the output directory of a run")


def _check(df: pd.DataFrame) -> None:
    missing = [c for c in NEEDED if c not in df.columns]
    if missing:
        raise MinirunError(f"results table lacks column(s) {', '.join(missing)}; pass a table written by ResultStore")


def _scores(groups) -> pd.DataFrame:
    out = groups.agg(
        accuracy=("correct", "mean"),
        exact_accuracy=("exact", "mean"),
        n=("id", "size"),
        tokens=("tokens", "sum"),
        seconds=("seconds", "sum"),
    )
    out["tokens_per_second"] = out["tokens"] / out["seconds"].where(out["seconds"] > 0)
    return out


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method: accuracy (lemma match), exact_accuracy, n, tokens, seconds and
    tokens_per_second (total tokens over total seconds, so long generations weigh in)."""
    _check(df)
    return _scores(df.astype({"correct": float, "exact": float}).groupby("method", sort=True))


def by_relation(df: pd.DataFrame) -> pd.DataFrame:
    """The same scores per (method, relation), for fill-in datasets whose rows carry a relation."""
    _check(df)
    if "relation" not in df.columns or df["relation"].isna().all():
        raise MinirunError("results have no 'relation' column; per-relation scores need a fill-in dataset")
    rows = df[df["relation"].notna()].astype({"correct": float, "exact": float})
    return _scores(rows.groupby(["method", "relation"], sort=True))


def agreement(df: pd.DataFrame) -> pd.DataFrame:
    """Method x method: the fraction of shared items whose extracted answers are equal after
    `normalize`. High agreement with low accuracy means methods fail the same way."""
    _check(df)
    answers = df.assign(answer=df["answer"].fillna("").map(normalize)).pivot(index="id", columns="method", values="answer")
    methods = sorted(answers.columns)
    return pd.DataFrame([[_agree(answers[a], answers[b]) for b in methods] for a in methods],
                        index=methods, columns=methods)


def _agree(x: pd.Series, y: pd.Series) -> float:
    shared = x.notna() & y.notna()
    return float((x[shared] == y[shared]).mean()) if shared.any() else math.nan


def report_json(df: pd.DataFrame) -> dict:
    """Per-method scores as a JSON-ready dict (numpy values as Python ones, NaN as None)."""
    return {method: {k: _plain(v) for k, v in scores.items()} for method, scores in summarize(df).to_dict("index").items()}


def _plain(value: object) -> object:
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and math.isnan(value) else value


def plot(df: pd.DataFrame, path: str | Path) -> None:
    """Accuracy and throughput per method, side by side, saved to `path` (PNG, PDF, SVG...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    summary = summarize(df)
    methods = list(summary.index)
    fig = Figure(figsize=(max(6.0, 1.2 * len(methods) + 3), 3.5), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global backend, safe in servers and tests
    acc, speed = fig.subplots(1, 2)
    acc.bar(methods, summary["accuracy"], color="tab:blue", label="lemma match")
    acc.scatter(methods, summary["exact_accuracy"], color="black", marker="_", s=400, label="exact", zorder=3)
    acc.set(ylim=(0, 1), ylabel="accuracy", title="Accuracy")
    acc.legend(loc="upper right", fontsize="small")
    speed.bar(methods, summary["tokens_per_second"].fillna(0), color="tab:orange")
    speed.set(ylabel="generated tokens / s", title="Throughput")
    for ax in (acc, speed):
        ax.tick_params(axis="x", labelrotation=30)
    fig.savefig(path)
