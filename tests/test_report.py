"""Summaries, agreement, JSON report, plot, and loading a run directory."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from minirun.errors import MinirunError
from minirun.eval.report import agreement, by_relation, load_results, plot, report_json, summarize
from minirun.eval.results import ResultStore


def _frame() -> pd.DataFrame:
    rows = []
    for i, (a, b, rel) in enumerate([("Paris", "paris.", "capital"), ("Rome", "Milan", "capital"),
                                     ("Ulm", "The Ulm", "birthplace"), ("x", "y", "birthplace")]):
        rows.append({"id": f"q{i}", "method": "single", "prompts": ["p"], "generated": a, "answer": a,
                     "exact": i == 0, "correct": i < 3, "tokens": 10, "seconds": 1.0, "relation": rel})
        rows.append({"id": f"q{i}", "method": "vote", "prompts": ["p"], "generated": b, "answer": b,
                     "exact": False, "correct": i in (0, 2), "tokens": 30, "seconds": 1.5, "relation": rel})
    return pd.DataFrame(rows)


def test_summarize():
    s = summarize(_frame())
    assert list(s.index) == ["single", "vote"]
    assert s.loc["single", "accuracy"] == 0.75 and s.loc["vote", "accuracy"] == 0.5
    assert s.loc["single", "exact_accuracy"] == 0.25 and s.loc["single", "n"] == 4
    assert s.loc["single", "tokens_per_second"] == 10.0 and s.loc["vote", "tokens_per_second"] == 20.0


def test_zero_seconds_gives_nan_throughput():
    s = summarize(_frame().assign(seconds=0.0))
    assert math.isnan(s.loc["single", "tokens_per_second"])


def test_by_relation():
    r = by_relation(_frame())
    assert r.loc[("single", "capital"), "accuracy"] == 1.0
    assert r.loc[("vote", "birthplace"), "accuracy"] == 0.5 and r.loc[("vote", "birthplace"), "n"] == 2
    with pytest.raises(MinirunError, match="no 'relation'"):
        by_relation(_frame().assign(relation=None))


def test_agreement():
    a = agreement(_frame())
    assert a.loc["single", "vote"] == a.loc["vote", "single"] == 0.5  # "Paris"/"paris." and "Ulm"/"The Ulm"
    assert a.loc["single", "single"] == 1.0


def test_agreement_only_counts_shared_items():
    df = _frame()
    df = df[~((df["method"] == "vote") & (df["id"].isin(["q1", "q3"])))]
    assert agreement(df).loc["single", "vote"] == 1.0


def test_report_json_is_json_ready():
    report = report_json(_frame().assign(seconds=0.0))
    assert set(report) == {"single", "vote"}
    assert report["vote"]["accuracy"] == 0.5 and report["vote"]["n"] == 4
    assert report["vote"]["tokens_per_second"] is None
    json.dumps(report, allow_nan=False)


def test_missing_columns():
    with pytest.raises(MinirunError, match="correct"):
        summarize(_frame().drop(columns=["correct"]))


def test_plot(tmp_path):
    plot(_frame(), tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_load_results(tmp_path):
    with ResultStore(tmp_path / "run", {"model": "m"}) as store:
        for row in _frame().to_dict("records"):
            store.add(row)
        assert len(load_results(tmp_path / "run")) == 8  # from the journal, before finalize
        store.finalize()
    for journal in (tmp_path / "run").glob("results.rank*.jsonl"):
        journal.unlink()
    assert summarize(load_results(tmp_path / "run")).loc["vote", "n"] == 4  # from results.parquet
    with pytest.raises(MinirunError, match="no results"):
        load_results(tmp_path / "nothing")
