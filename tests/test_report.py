"""Summaries, intervals and paired tests, agreement, JSON report, plot, `minirun report`, and
loading a run directory."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from typer.testing import CliRunner

from minirun.cli import app
from minirun.errors import MinirunError
from minirun.eval.report import (
    agreement,
    by_relation,
    figure,
    latex,
    load_results,
    plot,
    report_json,
    select_match,
    summarize,
)
from minirun.eval.results import ResultStore
from minirun.eval.stats import newcombe_paired_interval, paired_bootstrap_interval, sign_flip_p


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
    assert math.isnan(summarize(_frame().assign(tokens=0)).loc["single", "tokens_per_second"])  # choice scoring


def test_missing_verdicts_are_not_counted():
    df = _frame().astype({"correct": object})
    df.loc[(df["method"] == "vote") & df["id"].isin(["q1", "q3"]), "correct"] = None  # hand-made: no verdict
    s = summarize(df)
    assert s.loc["vote", "n"] == 2 and s.loc["vote", "accuracy"] == 1.0
    assert s.loc["vote", "ci95_high"] == 1.0  # Wilson for 2 of 2, not 2 of 4


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


def test_missing_answers_agree_with_nothing():
    df = _frame()
    df.loc[df["id"] == "q3", "answer"] = None  # both methods left q3 unanswered
    assert agreement(df).loc["single", "vote"] == pytest.approx(2 / 3)


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
    plot(_frame().assign(correct=True), tmp_path / "all.png")  # every interval ends at 1: no negative error bar
    plot(_frame().assign(correct=False), tmp_path / "none.png")


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


# Ten items, three prompts each. origin right on q0-q2; avg right on q0, q1, q3-q8 (vs origin:
# 2 both, 6 avg only, 1 origin only, 1 neither); per_prompt's first prompt right on q0-q6.
ORIGIN = {0, 1, 2}
AVG = {0, 1, 3, 4, 5, 6, 7, 8}
FIRST = set(range(7))
PER_PROMPT = [1, 2 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 1 / 3, 0, 0]  # mean 11/30, some prompt right on q0-q7
ANSWERS = {0: ["Paris", "paris.", "The Paris"], 8: ["x", "x", "x"], 9: ["y", "Y!", "y"]}  # the consistent ones


def _hand() -> pd.DataFrame:
    rows = []
    for i in range(10):
        base = {"id": f"q{i}", "prompts": ["p"] * 3, "generated": "g", "exact": False, "tokens": 5, "seconds": 1.0}
        rows.append({**base, "method": "origin", "answer": "o", "correct": i in ORIGIN})
        rows.append({**base, "method": "avg", "answer": "a", "correct": i in AVG})
        answers = ANSWERS.get(i, ["a", "b", "c"])
        rows.append({**base, "method": "per_prompt", "answer": answers[0], "correct": i in FIRST,
                     "answers": answers, "per_prompt_accuracy": PER_PROMPT[i]})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def hand() -> pd.DataFrame:
    return summarize(_hand())  # once: the sign-flip tests on ten items enumerate every pattern


def test_wilson_interval_per_method(hand):
    # per_prompt: 7/10 right; Wilson by hand: centre 0.644490, half-width 0.247713
    assert hand.loc["per_prompt", "accuracy"] == 0.7
    assert hand.loc["per_prompt", "ci95_low"] == pytest.approx(0.396777, abs=1e-5)
    assert hand.loc["per_prompt", "ci95_high"] == pytest.approx(0.892203, abs=1e-5)
    assert hand.loc["origin", "ci95_low"] < 0.3 < hand.loc["origin", "ci95_high"]


def test_paired_test_against_origin(hand):
    # avg vs origin: 6 discordant pairs one way, 1 the other: 2 * P(X <= 1), X ~ Bin(7, 1/2) = 0.125
    assert hand.loc["avg", "p_vs_origin"] == pytest.approx(0.125)
    assert hand.loc["avg", "diff_vs_origin"] == pytest.approx(0.5)
    low, high = newcombe_paired_interval(2, 6, 1, 1)
    assert (hand.loc["avg", "diff_vs_origin_ci95_low"], hand.loc["avg", "diff_vs_origin_ci95_high"]) == (low, high)
    assert low < 0.5 < high
    # per_prompt's first prompt vs origin: 4 one way, none the other: 2 / 2^4
    assert hand.loc["per_prompt", "p_vs_origin"] == pytest.approx(0.125)
    assert hand.loc["per_prompt", "diff_vs_origin"] == pytest.approx(0.4)
    assert hand.loc["origin", ["diff_vs_origin", "diff_vs_origin_ci95_low", "p_vs_origin"]].isna().all()


def test_per_prompt_figures(hand):
    assert hand.loc["per_prompt", "mean_single_accuracy"] == pytest.approx(11 / 30)
    assert hand.loc["per_prompt", "oracle_accuracy"] == pytest.approx(0.8)
    assert hand.loc["per_prompt", "consistency"] == pytest.approx(0.3)  # q0, q8, q9
    assert hand.loc[["avg", "origin"], ["mean_single_accuracy", "oracle_accuracy", "consistency"]].isna().all().all()


def test_paired_test_against_mean_single(hand):
    # avg right minus the item's single-prompt accuracy, by hand
    diffs = [0, 1 / 3, -1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 1, 0]
    assert hand.loc["avg", "diff_vs_mean_single"] == pytest.approx(13 / 30)  # 0.8 - 11/30
    low, high = paired_bootstrap_interval(diffs, seed=0)
    assert hand.loc["avg", "diff_vs_mean_single_ci95_low"] == pytest.approx(low)
    assert hand.loc["avg", "diff_vs_mean_single_ci95_high"] == pytest.approx(high)
    assert low < 13 / 30 < high
    assert hand.loc["avg", "p_vs_mean_single"] == pytest.approx(sign_flip_p(diffs))
    assert hand.loc["avg", "p_vs_mean_single"] == pytest.approx(6 / 256)  # exact: every pattern of the 8 signs
    assert hand.loc["origin", "diff_vs_mean_single"] == pytest.approx(0.3 - 11 / 30)
    assert summarize(_hand()).equals(hand)  # the bootstrap is seeded: the same report twice


def test_old_tables_get_basic_figures():
    report = report_json(_frame())  # no origin, no per_prompt, no per-prompt columns
    assert report["single"]["ci95"] == pytest.approx([0.300636, 0.954405], abs=1e-5)  # Wilson 3/4
    for field in ("diff_vs_origin", "diff_vs_origin_ci95", "p_vs_origin", "diff_vs_mean_single",
                  "diff_vs_mean_single_ci95", "p_vs_mean_single", "mean_single_accuracy", "oracle_accuracy",
                  "consistency"):
        assert report["single"][field] is None
    old = report_json(_hand().drop(columns=["answers"]))  # per_prompt rows from before answers were stored
    assert old["per_prompt"]["consistency"] is None and old["per_prompt"]["oracle_accuracy"] == pytest.approx(0.8)


def test_report_json_fields(hand):
    report = report_json(_hand())
    avg, origin = report["avg"], report["origin"]
    assert avg["ci95"] == pytest.approx(list(hand.loc["avg", ["ci95_low", "ci95_high"]]))
    assert avg["diff_vs_origin_ci95"] == pytest.approx(list(newcombe_paired_interval(2, 6, 1, 1)))
    assert avg["p_vs_origin"] == pytest.approx(0.125) and origin["p_vs_origin"] is None
    assert origin["diff_vs_origin_ci95"] is None and origin["ci95"] is not None
    assert report["per_prompt"]["consistency"] == pytest.approx(0.3)
    assert not any(k.endswith(("_low", "_high")) for k in avg)
    json.dumps(report, allow_nan=False)


def _with_rules(df: pd.DataFrame) -> pd.DataFrame:
    """Rows as the eval loop now writes them: bidirectional matching also accepts q9 for avg."""
    bidirectional = df["correct"] | ((df["method"] == "avg") & (df["id"] == "q9"))
    return df.assign(correct_lemma=df["correct"], correct_bidirectional=bidirectional)


def test_select_match():
    df = _with_rules(_hand())
    assert summarize(select_match(df, "bidirectional")).loc["avg", "accuracy"] == 0.9
    assert summarize(select_match(df, "lemma")).loc["avg", "accuracy"] == 0.8
    assert select_match(df, None) is df
    assert "per_prompt_accuracy" not in select_match(df, "bidirectional")  # q9's verdict changed for avg
    assert "per_prompt_accuracy" in select_match(df, "lemma")  # the run's own verdicts
    assert math.isnan(summarize(select_match(df, "bidirectional")).loc["avg", "diff_vs_mean_single"])
    with pytest.raises(MinirunError, match="re-run `minirun eval`"):
        select_match(_hand(), "bidirectional")
    with pytest.raises(MinirunError, match="--match must be one of lemma, bidirectional"):
        select_match(df, "fuzzy")


def _sweep() -> pd.DataFrame:
    """Two models on the same two items: avg beats origin on one, loses on the other."""
    rows = []
    for model, origin, avg in [("big", {"q0"}, {"q0", "q1"}), ("small", {"q0", "q1"}, {"q0"})]:
        for method, right in [("origin", origin), ("avg", avg)]:
            for item in ("q0", "q1"):
                rows.append({"model": model, "id": item, "method": method, "prompts": ["p"], "generated": "g",
                             "answer": item, "exact": False, "correct": item in right, "tokens": 1, "seconds": 1.0})
    return pd.DataFrame(rows)


def test_sweep_pairs_items_within_a_model():
    s = summarize(_sweep())
    assert list(s.index) == [("big", "avg"), ("big", "origin"), ("small", "avg"), ("small", "origin")]
    assert s.loc[("big", "avg"), "diff_vs_origin"] == 0.5 and s.loc[("small", "avg"), "diff_vs_origin"] == -0.5
    report = report_json(_sweep())
    assert set(report) == {"big", "small"} and set(report["big"]) == {"avg", "origin"}
    assert report["small"]["avg"]["p_vs_origin"] == pytest.approx(1.0)  # one discordant pair
    assert agreement(_sweep()).loc["avg", "origin"] == 1.0


def test_plot_has_wilson_error_bars(hand):
    acc = figure(_hand()).axes[0]
    bars = [c for c in acc.containers if isinstance(c, BarContainer)]
    assert len(bars) == 1 and [b.get_height() for b in bars[0]] == pytest.approx([0.8, 0.3, 0.7])
    (errors,) = [c for c in acc.containers if isinstance(c, ErrorbarContainer)]
    spans = [y for segment in errors.lines[2][0].get_segments() for y in sorted(segment[:, 1])]
    expected = [y for m in ("avg", "origin", "per_prompt") for y in hand.loc[m, ["ci95_low", "ci95_high"]]]
    assert spans == pytest.approx(expected)


def test_plot_groups_bars_by_model():
    acc = figure(_sweep()).axes[0]
    bars = [c for c in acc.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2  # one per model, methods on the x axis
    assert bars[0].patches[0].get_facecolor() != bars[1].patches[0].get_facecolor()
    assert [t.get_text() for t in acc.get_xticklabels()] == ["avg", "origin"]
    assert sorted(t.get_text() for t in acc.get_legend().get_texts()) == ["big", "exact", "small"]
    assert [b.get_height() for b in bars[0]] == [1.0, 0.5] and [b.get_height() for b in bars[1]] == [0.5, 1.0]


def _run_dir(tmp_path, df: pd.DataFrame):
    with ResultStore(tmp_path / "run", {"model": "m"}) as store:
        for row in df.to_dict("records"):
            store.add(row)
        store.finalize()
    return tmp_path / "run"


def test_report_command(tmp_path):
    run = _run_dir(tmp_path, _with_rules(_hand()))
    runner = CliRunner()
    table = runner.invoke(app, ["report", str(run)])  # not a terminal: the table takes the width it needs
    assert table.exit_code == 0, table.output
    assert "95% CI (Wilson)" in table.output and "p (McNemar)" in table.output and "p (Holm)" in table.output
    assert "0.397–0.892" in table.output and "0.125" in table.output  # per_prompt's interval, avg's McNemar p
    assert "0.25 " in table.output  # avg's Holm-adjusted p: twice 0.125 in a family of two (avg, per_prompt)
    assert "unfinished" not in table.output and "left out" not in table.output
    assert "oracle 0.800" in table.output and "consistency 0.300" in table.output
    as_json = runner.invoke(app, ["report", str(run), "--json", "--match", "bidirectional",
                                  "--csv", str(tmp_path / "t.csv")])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["avg"]["accuracy"] == 0.9
    assert json.loads(as_json.stdout)["avg"]["diff_vs_mean_single"] is None  # another rule than per-prompt's
    csv = pd.read_csv(tmp_path / "t.csv", index_col="method")
    assert csv.loc["avg", "accuracy"] == 0.9 and csv.loc["avg", "p_vs_origin"] == pytest.approx(0.0703125)  # b=7, c=1
    shown = runner.invoke(app, ["report", str(run), "--match", "bidirectional"])
    assert "single-prompt figures left out" in shown.output and "--match bidirectional" in shown.output
    assert "left out" not in runner.invoke(app, ["report", str(run), "--match", "lemma"]).output  # no verdict changes


def test_latex_table(tmp_path):
    run = _run_dir(tmp_path, _hand())
    shown = CliRunner().invoke(app, ["report", str(run), "--latex", str(tmp_path / "t.tex")])
    assert shown.exit_code == 0, shown.output
    tex = (tmp_path / "t.tex").read_text()
    assert tex.startswith("\\begin{table}") and "\\toprule" in tex and tex.rstrip().endswith("\\end{table}")
    rows = {line.split(" & ")[0]: line.split(" & ") for line in tex.splitlines() if " & " in line}
    assert list(rows)[:2] == ["Method", "origin"]  # the baseline first, then the methods compared with it
    assert rows["avg"] == ["avg", "0.800", "[0.490, 0.943]", "$+0.500$", "0.250", "10 \\\\"]  # Holm: 2 x 0.125
    assert rows["origin"][3:5] == ["--", "--"] and "per\\_prompt" in rows
    assert "Holm-adjusted" in tex and "Wilson" in tex
    weird = latex(summarize(_hand()).rename(index={"avg": "a_b%c~d"}), "run #1 {x}")
    assert "a\\_b\\%c\\textasciitilde{}d" in weird and "run \\#1 \\{x\\}" in weird


def test_report_warns_of_an_unfinished_method(tmp_path):
    df = _hand()
    run = _run_dir(tmp_path, df[~((df["method"] == "origin") & df["id"].isin(["q7", "q8", "q9"]))])
    shown = CliRunner().invoke(app, ["report", str(run)])
    assert shown.exit_code == 0, shown.output
    assert "origin has scored 7 of the 10 items (an unfinished run)" in shown.output
    assert "(n=7)" in shown.output  # avg's difference from origin pairs 7 of its 10 items
    assert summarize(load_results(run)).loc["avg", "n_vs_origin"] == 7


def test_report_of_a_run_with_no_rows(tmp_path):
    ResultStore(tmp_path / "run", {"model": "m"}).close()
    shown = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert shown.exit_code == 1 and shown.output.count("\n") == 1 and "no finished rows" in shown.output


def test_report_command_match_on_an_old_table(tmp_path):
    result = CliRunner().invoke(app, ["report", str(_run_dir(tmp_path, _hand())), "--match", "lemma"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "lack 'correct_lemma'" in result.output and "re-run" in result.output
