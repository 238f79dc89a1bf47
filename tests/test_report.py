"""Summaries, intervals and paired tests, agreement, JSON report, plot, `minirun report`, and
loading a run directory."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from typer.testing import CliRunner

from minirun.cli import app
from minirun.errors import MinirunError
from minirun.eval.report import (
    agreement,
    calibration,
    by_relation,
    figure,
    in_method_order,
    latex,
    load_results,
    pairwise,
    plot,
    relation_latex,
    report_json,
    select_choice_score,
    select_match,
    summarize,
    unrelated_note,
)
from minirun.eval.results import ResultStore
from minirun.eval.stats import holm, newcombe_paired_interval, paired_bootstrap_interval, sign_flip_p


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
    assert s.loc["single", "items_per_second"] == 1.0 and s.loc["vote", "items_per_second"] == pytest.approx(1 / 1.5)


def test_zero_seconds_gives_nan_throughput():
    s = summarize(_frame().assign(seconds=0.0))
    assert math.isnan(s.loc["single", "tokens_per_second"])
    assert math.isnan(s.loc["single", "items_per_second"])
    assert math.isnan(summarize(_frame().assign(tokens=0)).loc["single", "tokens_per_second"])  # choice scoring


def test_tokens_per_second_counts_generated_rows_only():
    rows = []
    for method in ("origin", "avg"):
        for i, task in enumerate(["qa", "qa", "choice", "choice"]):  # a choice row is scored: no token, still timed
            rows.append({"id": f"q{i}", "method": method, "prompts": ["p"], "generated": "g", "answer": "a",
                         "exact": True, "correct": True, "tokens": 10 if task == "qa" else 0, "seconds": 1.0,
                         "task": task})
    s = summarize(pd.DataFrame(rows))
    assert s.loc["avg", "tokens_per_second"] == 10.0 and s.loc["avg", "seconds"] == 4.0  # items/s keeps every row
    assert s.loc["avg", "items_per_second"] == 1.0  # a scored choice row is an item, though no token


def test_missing_verdicts_are_not_counted():
    df = _frame().astype({"correct": object})
    df.loc[(df["method"] == "vote") & df["id"].isin(["q1", "q3"]), "correct"] = None  # hand-made: no verdict
    s = summarize(df)
    assert s.loc["vote", "n"] == 2 and s.loc["vote", "accuracy"] == 1.0
    assert s.loc["vote", "ci95_high"] == 1.0  # Wilson for 2 of 2, not 2 of 4
    df.loc[df["method"] == "single", "correct"] = [True, None, None, None]  # its exact is True on q0 only
    assert summarize(df).loc["single", "exact_accuracy"] == 1.0  # over the one row n counts, not 1 of 4


def test_by_relation():
    r = by_relation(_frame())
    assert r.loc[("single", "capital"), "accuracy"] == 1.0
    assert r.loc[("vote", "birthplace"), "accuracy"] == 0.5 and r.loc[("vote", "birthplace"), "n"] == 2
    with pytest.raises(MinirunError, match="no 'relation'"):
        by_relation(_frame().assign(relation=None))


def test_macro_accuracy_weighs_each_relation_alike():
    """LAMA-style probes report the mean of the per-relation accuracies: a relation of few facts weighs as much as one
    of many, so it can rank methods otherwise than the accuracy over all items (`macro_accuracy`, with how many
    relations it averages), in `summarize`, `--json` (each method's `by_relation` too) and `--latex`."""
    df = _frame()
    df.loc[df["id"] == "q2", "relation"] = "capital"  # capital: 3 items, birthplace: 1
    s = summarize(df)
    assert s.loc["single", "accuracy"] == 0.75 and s.loc["single", "macro_accuracy"] == (1.0 + 0.0) / 2
    assert s.loc["vote", "accuracy"] == 0.5 and s.loc["vote", "macro_accuracy"] == (2 / 3 + 0.0) / 2
    assert s.loc["vote", "relations"] == 2
    scores = report_json(df)
    assert scores["single"]["relations"] == 2 and isinstance(scores["single"]["relations"], int)
    assert scores["vote"]["by_relation"]["capital"]["accuracy"] == pytest.approx(2 / 3)
    assert scores["vote"]["by_relation"]["birthplace"]["n"] == 1
    assert report_json(df.assign(model="m"))["m"]["single"]["by_relation"]["capital"]["n"] == 3
    table = latex(s, "fill")
    assert "& Macro acc. \\\\" in table and "& 4 & 0.500 \\\\" in table and "(2 relations)" in table
    versus = summarize(df.replace({"method": {"single": "origin"}}))  # vs origin: per-relation differences averaged
    assert versus.loc["vote", "diff_macro_vs_origin"] == pytest.approx((2 / 3 - 1 + 0.0) / 2)
    assert versus.loc["vote", "p_macro_vs_origin"] == 1.0  # one relation differs: no sign flip is rarer
    assert versus.loc["vote", "diff_macro_vs_origin_ci95_low"] == pytest.approx(-1 / 3)
    assert math.isnan(versus.loc["origin", "diff_macro_vs_origin"])
    plain = df.assign(relation=None)  # no relations: nothing to average, no column
    assert summarize(plain)["macro_accuracy"].isna().all() and "by_relation" not in report_json(plain)["single"]
    assert "Macro" not in latex(summarize(plain), "qa")


def test_latex_names_a_macro_accuracy_over_fewer_relations():
    """A method that answered fewer relations (an unfinished run) says how many beside its macro accuracy, as the
    terminal does, not under the caption's count of the others'."""
    df = _frame()
    df = df[~((df["method"] == "vote") & (df["relation"] == "birthplace"))]  # vote: capital only
    rows = {line.split(" & ")[0]: line for line in latex(summarize(df), "fill").splitlines() if " & " in line}
    assert rows["vote"].endswith("& 2 & 0.500 ($r=1$) \\\\") and rows["single"].endswith("& 4 & 0.750 \\\\")
    assert "(2 relations; $r$: the number a method answered, where fewer)" in latex(summarize(df), "fill")


def test_latex_sets_text_as_written():
    """Flags keep both hyphens (LaTeX makes "--" an en dash) and <, >, | stay themselves (OT1 sets other glyphs)."""
    table = latex(summarize(_hand()), "qa (rescored: --match harness) <a>|b")
    assert "rescored: -{}-match harness) \\textless{}a\\textgreater{}\\textbar{}b" in table


def test_relation_latex_is_the_appendix_table_of_a_probe():
    """A row per relation (its items), a column per method (origin first), the macro mean last; nothing without
    relations."""
    df = _frame().replace({"method": {"single": "origin"}})
    df.loc[df["id"] == "q2", "relation"] = "capital_of"
    table = relation_latex(df, "fill")
    assert "Relation & $n$ & origin & vote \\\\" in table
    assert "capital\\_of & 1 & 1.000 & 1.000 \\\\" in table and "capital & 2 & 1.000 & 0.500 \\\\" in table
    assert "birthplace & 1 & 0.000 & 0.000 \\\\" in table
    assert "Macro mean &  & 0.667 & 0.500 \\\\" in table and "the 3 relations" in table
    assert relation_latex(df.assign(relation=None), "qa") == ""


def test_pairwise_compares_every_two_methods_with_holm_over_the_pairs():
    """Which fusion beats which, not only which beats origin: every ordered pair of methods on the items both
    answered (the difference antisymmetric, one p per pair), McNemar's exact p Holm-adjusted over the run's pairs,
    per_prompt (its first prompt alone) left out, and each method's `versus` in --json."""
    verdicts = {"origin": [1, 0, 0, 0, 0, 0, 0, 1, 1, 1], "avg": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0], "max": [1] * 10,
                "per_prompt": [0] * 10}
    df = pd.DataFrame([{"id": f"q{i}", "method": m, "prompts": ["p"], "generated": "g", "answer": "g", "exact": False,
                        "correct": bool(v), "tokens": 1, "seconds": 1.0} for m, vs in verdicts.items()
                       for i, v in enumerate(vs)])
    pairs = pairwise(df)
    assert sorted(set(pairs.index.get_level_values("method"))) == ["avg", "max", "origin"]  # no per_prompt
    # avg vs origin: 6 items only avg gets, 1 only origin gets: exact McNemar p = 2 * (1 + 7) / 2**7 = 0.125
    assert pairs.loc[("avg", "origin"), "diff"] == pytest.approx(0.5) and pairs.loc[("avg", "origin"), "p"] == 0.125
    assert pairs.loc[("origin", "avg"), "diff"] == pytest.approx(-0.5) and pairs.loc[("origin", "avg"), "p"] == 0.125
    assert pairs.loc[("origin", "avg"), "ci95_low"] == pytest.approx(-pairs.loc[("avg", "origin"), "ci95_high"])
    # max vs origin: 6 against 0, p = 2 / 2**6 = 0.03125; max vs avg: 1 against 0, p = 1; Holm over the three
    assert pairs.loc[("max", "origin"), "p"] == pytest.approx(0.03125) and pairs.loc[("max", "avg"), "p"] == 1.0
    assert pairs.loc[("max", "origin"), "p_holm"] == pytest.approx(3 * 0.03125)
    assert pairs.loc[("avg", "origin"), "p_holm"] == pytest.approx(2 * 0.125)
    assert pairs.loc[("avg", "max"), "p_holm"] == 1.0 and pairs.loc[("avg", "max"), "n"] == 10
    versus = report_json(df)["max"]["versus"]
    assert sorted(versus) == ["avg", "origin"] and versus["origin"]["p_holm"] == pytest.approx(0.09375)
    assert versus["origin"]["n"] == 10 and len(versus["origin"]["ci95"]) == 2
    assert "versus" not in report_json(df.assign(model="m"))["m"]["max"]  # a sweep compares models instead
    assert pairwise(df[df["method"] == "origin"]).empty


def test_agreement():
    a = agreement(_frame())
    assert a.loc["single", "vote"] == a.loc["vote", "single"] == 0.5  # "Paris"/"paris." and "Ulm"/"The Ulm"
    assert a.loc["single", "single"] == 1.0


def test_missing_answers_agree_with_nothing():
    """An item both methods answered with nothing counts, as a disagreement (it is shared, unlike an item one of
    them has no row for): even a method with itself, whose diagonal is then the share of items it answered."""
    df = _frame()
    df.loc[df["id"] == "q3", "answer"] = None  # both methods left q3 unanswered
    assert agreement(df).loc["single", "vote"] == pytest.approx(2 / 4)
    assert agreement(df).loc["vote", "vote"] == pytest.approx(3 / 4)


def test_empty_answers_agree_with_nothing():
    df = _frame()
    df.loc[df["id"] == "q3", "answer"] = ""  # both methods extracted nothing from q3
    assert agreement(df).loc["single", "vote"] == pytest.approx(2 / 4)
    hand = _hand()
    hand["answers"] = hand["answers"].map(lambda a: ["", "", ""] if a == ANSWERS[8] else a)  # q8: every prompt empty
    assert summarize(hand).loc["per_prompt", "consistency"] == pytest.approx(0.2)  # q0 and q9 only


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


def test_plot(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    plot(_frame(), tmp_path / "report.png")
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot(_frame().assign(correct=True), tmp_path / "all.png")  # every interval ends at 1: no negative error bar
    plot(_frame().assign(correct=False), tmp_path / "none.png")
    saved, original = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kw: saved.append(fig) or original(fig, path, **kw))
    plot(_frame(), tmp_path / "plain.png")
    plot(_frame(), tmp_path / "rescored.png", " (rescored: --match bidirectional)")  # as its table's caption says
    assert saved[0]._suptitle is None and saved[1]._suptitle.get_text() == "rescored: --match bidirectional"
    assert [ax.get_title() for ax in saved[0].axes] == ["Accuracy", "Throughput"]


def test_an_interrupted_chart_leaves_the_one_before(tmp_path, monkeypatch):
    """Charts are written through a temp file: a save stopped half way leaves the chart that was there, and no
    temp; a CSV keeps the compression its name asks for."""
    from matplotlib.figure import Figure

    chart = tmp_path / "report.png"
    plot(_frame(), chart)
    before = chart.read_bytes()

    def torn(fig, path, **options):
        Path(path).write_bytes(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Figure, "savefig", torn)
    with pytest.raises(KeyboardInterrupt):
        plot(_frame(), chart)
    assert chart.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["report.png"]
    monkeypatch.undo()
    pdf = tmp_path / "report.pdf"
    plot(_frame(), pdf)  # the format its name says, not the temp's
    assert pdf.read_bytes()[:4] == b"%PDF"
    run = _run_dir(tmp_path / "run", _hand())
    assert CliRunner().invoke(app, ["report", str(run), "--csv", str(tmp_path / "t.csv.gz")]).exit_code == 0
    assert (tmp_path / "t.csv.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert pd.read_csv(tmp_path / "t.csv.gz", index_col="method").loc["avg", "accuracy"] == 0.8


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path, monkeypatch):
    """A full disk's error names no file (a write raises it): the one line said "no space left on device" and not
    where; it names the file being written (not its temp) and the fix."""
    import errno

    run = _run_dir(tmp_path / "run", _hand())

    def full(frame, path, **options):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    shown = CliRunner().invoke(app, ["report", str(run), "--csv", str(tmp_path / "t.csv")])
    assert shown.exit_code == 1 and not list(tmp_path.glob(".t.csv.*"))
    assert f"error: {tmp_path / 't.csv'}: no space left on device; free space on that disk (or write elsewhere)" \
        in " ".join(shown.output.split())


def test_load_results(tmp_path):
    with ResultStore(tmp_path / "run", {"model": "m"}) as store:
        for row in _frame().to_dict("records"):
            store.add(row)
        assert len(load_results(tmp_path / "run")) == 8  # from the journal, before finalize
        store.finalize()
    for journal in (tmp_path / "run").glob("results.rank*.jsonl"):
        journal.unlink()
    assert summarize(load_results(tmp_path / "run")).loc["vote", "n"] == 4  # from results.parquet
    with pytest.raises(MinirunError, match="nothing: no such directory"):
        load_results(tmp_path / "nothing")
    with pytest.raises(MinirunError, match="no results found"):
        load_results(tmp_path)


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
    assert hand.loc["avg", "p_vs_origin_holm"] == pytest.approx(0.125)  # a family of one: per_prompt is not in it
    for method in ("origin", "per_prompt"):
        assert hand.loc[method, ["diff_vs_origin", "diff_vs_origin_ci95_low", "p_vs_origin", "p_vs_origin_holm",
                                 "n_vs_origin"]].isna().all()


def test_per_prompt_is_left_out_of_the_tests_against_origin():
    # 12 items; per_prompt's first prompt is origin's own (the question): right where origin is.
    # avg wins 6 discordant pairs, loses none: p = 2 / 2^6, and Holm over avg alone leaves it.
    rows = []
    for i in range(12):
        base = {"id": f"q{i}", "prompts": ["p"], "generated": "g", "answer": "a", "exact": False, "tokens": 1,
                "seconds": 1.0}
        rows += [{**base, "method": "origin", "correct": i < 3}, {**base, "method": "per_prompt", "correct": i < 3},
                 {**base, "method": "avg", "correct": i < 9}]
    s = summarize(pd.DataFrame(rows))
    assert s.loc["avg", "p_vs_origin"] == pytest.approx(0.03125)
    assert s.loc["avg", "p_vs_origin_holm"] == pytest.approx(0.03125)
    assert s.loc["per_prompt", ["p_vs_origin", "p_vs_origin_holm"]].isna().all()


def test_per_prompt_figures(hand):
    assert hand.loc["per_prompt", "mean_single_accuracy"] == pytest.approx(11 / 30)
    assert hand.loc["per_prompt", "oracle_accuracy"] == pytest.approx(0.8)
    assert hand.loc["per_prompt", "consistency"] == pytest.approx(0.3)  # q0, q8, q9
    assert hand.loc[["avg", "origin"], ["mean_single_accuracy", "oracle_accuracy", "consistency"]].isna().all().all()


def test_a_vote_run_without_per_prompt_gives_the_single_prompt_figures(hand, tmp_path):
    """vote's rows hold every prompt's answer and verdict, as per_prompt's do: a run of vote alone showed no
    single-prompt accuracy, and no method was tested against it."""
    df = _hand()
    voted = summarize(df.assign(method=df["method"].replace("per_prompt", "vote")))
    single = ["mean_single_accuracy", "oracle_accuracy", "consistency", "diff_vs_mean_single", "p_vs_mean_single"]
    assert voted.loc["vote", single[:3]].tolist() == hand.loc["per_prompt", single[:3]].tolist()
    assert voted.loc["avg", single[3:]].tolist() == hand.loc["avg", single[3:]].tolist()
    both = summarize(pd.concat([df, df[df["method"] == "per_prompt"].assign(method="vote")]))
    assert both.loc["per_prompt", "mean_single_accuracy"] == pytest.approx(11 / 30)  # per_prompt's, once
    assert math.isnan(both.loc["vote", "mean_single_accuracy"])
    run = _run_dir(tmp_path, df.assign(method=df["method"].replace("per_prompt", "vote")))
    shown = CliRunner().invoke(app, ["report", str(run), "--latex", str(tmp_path / "t.tex")])
    assert "vote: mean single-prompt accuracy 0.367, oracle 0.800, consistency 0.300" in shown.output
    tex = (tmp_path / "t.tex").read_text()
    assert "mean single-prompt accuracy 0.367" in tex and "not compared with origin" not in tex


def test_every_table_lists_origin_first_then_the_methods_by_name(tmp_path):
    """The terminal's score table and its agreement and pairwise matrices listed methods by name, origin (the
    baseline) after avg, as LaTeX and the figure did not."""
    df = pd.concat([_hand(), _hand().query("method == 'avg'").assign(method="flex")])
    assert list(agreement(df).columns) == ["origin", "avg", "flex", "per_prompt"]
    assert list(dict.fromkeys(pairwise(df).index.get_level_values("method"))) == ["avg", "flex", "origin"]
    shown = CliRunner().invoke(app, ["report", str(_run_dir(tmp_path, df))], env={"COLUMNS": "200"}).stdout
    rows = [[cell.strip() for cell in line[1:-1].split(line[0])] for line in shown.splitlines()
            if line.startswith(("│", "┃"))]
    assert [row[0].split(" (")[0] for row in rows[1:5]] == ["origin", "avg", "flex", "per_prompt"]  # the scores
    headers = [row[1:] for row in rows if row[0] == ""]
    assert headers == [["origin", "avg", "flex", "per_prompt"], ["origin", "avg", "flex"]]  # agreement, pairwise
    related = in_method_order(by_relation(df.assign(relation=df["id"].map(lambda i: "r" + str(int(i[1:]) % 2)))))
    assert list(related.index) == [(m, r) for m in ("origin", "avg", "flex", "per_prompt") for r in ("r0", "r1")]


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
    """Rows as the eval loop now writes them, of a run under the lemma rule (as `read_results`
    tells): bidirectional matching also accepts q9 for avg."""
    bidirectional = df["correct"] | ((df["method"] == "avg") & (df["id"] == "q9"))
    scored = df.assign(correct_lemma=df["correct"], correct_bidirectional=bidirectional)
    scored.attrs["match"] = "lemma"
    return scored


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


def test_select_match_drops_single_prompt_figures_under_another_rule():
    # no first verdict differs between the rules, but per-prompt verdicts exist under the run's rule only
    hand = _hand()
    df = hand.assign(correct_lemma=hand["correct"], correct_bidirectional=hand["correct"])
    df.attrs["match"] = "lemma"
    assert "per_prompt_accuracy" not in select_match(df, "bidirectional")
    assert "per_prompt_accuracy" in select_match(df, "lemma")
    df.attrs.clear()  # a table whose rule is not recorded: its figures cannot be shown to be under either
    assert "per_prompt_accuracy" not in select_match(df, "lemma")


def test_load_results_tells_the_runs_rule(tmp_path):
    run = _run_dir(tmp_path, _hand())
    assert load_results(run).attrs["match"] == "lemma"
    for journal in run.glob("results.rank*.jsonl"):
        journal.unlink()
    assert load_results(run).attrs["match"] == "lemma"  # from results.parquet, run.json beside it


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
    assert len(bars) == 1 and [b.get_height() for b in bars[0]] == pytest.approx([0.3, 0.8, 0.7])  # origin first
    (errors,) = [c for c in acc.containers if isinstance(c, ErrorbarContainer)]
    spans = [y for segment in errors.lines[2][0].get_segments() for y in sorted(segment[:, 1])]
    expected = [y for m in ("origin", "avg", "per_prompt") for y in hand.loc[m, ["ci95_low", "ci95_high"]]]
    assert spans == pytest.approx(expected)


def test_plot_groups_bars_by_model():
    acc = figure(_sweep()).axes[0]
    bars = [c for c in acc.containers if isinstance(c, BarContainer)]
    assert len(bars) == 2  # one per model, methods on the x axis
    assert bars[0].patches[0].get_facecolor() != bars[1].patches[0].get_facecolor()
    assert [t.get_text() for t in acc.get_xticklabels()] == ["origin", "avg"]
    assert sorted(t.get_text() for t in acc.get_legend().get_texts()) == ["big", "exact", "small"]
    assert [b.get_height() for b in bars[0]] == [0.5, 1.0] and [b.get_height() for b in bars[1]] == [1.0, 0.5]


def test_plot_throughput_is_items_per_second_so_scored_choice_runs_get_bars():
    choice = _frame().assign(task="choice", tokens=0)
    speed = figure(choice).axes[1]
    (bars,) = [c for c in speed.containers if isinstance(c, BarContainer)]
    assert [b.get_height() for b in bars] == pytest.approx([1.0, 1 / 1.5]) and speed.get_ylabel() == "items / s"


def _run_dir(tmp_path, df: pd.DataFrame, **key):
    with ResultStore(tmp_path / "run", {"model": "m", "bidirectional": False, **key}) as store:
        for row in df.to_dict("records"):
            store.add(row)
        store.finalize()
    return tmp_path / "run"


def _model_run(folder: Path, df: pd.DataFrame, model: str, **key) -> Path:
    key = {"model": f"/checkpoints/{model}", "dataset": "sample-qa", "bidirectional": False, "num_prompts": 3, **key}
    with ResultStore(folder, key, item_ids=sorted(df["id"].unique())) as store:
        store.add_batch(df.to_dict("records"))
        store.finalize()
    return folder


def test_eval_runs_of_several_models_side_by_side(tmp_path):
    """Runs of each model made apart (one GPU each, or one machine after another) put side by side as a sweep's
    models: per dataset a table, each model compared with the first one given on the items both answered; settings
    besides the model that differ are named, as they confound the comparison."""
    first = _model_run(tmp_path / "a", _hand(), "qwen")
    flipped = _hand()
    flipped.loc[flipped["method"] == "avg", "correct"] = flipped["id"].isin([f"q{i}" for i in ORIGIN])
    second = _model_run(tmp_path / "b", flipped, "llama")
    runner = CliRunner()
    shown = runner.invoke(app, ["report", str(first), str(second), "--json"])
    assert shown.exit_code == 0, shown.output
    scores = json.loads(shown.stdout)["sample-qa"]
    alone = json.loads(runner.invoke(app, ["report", str(first), "--json"]).stdout)
    assert list(scores) == ["qwen", "llama"] and scores["qwen"]["avg"]["accuracy"] == alone["avg"]["accuracy"]
    assert scores["qwen"]["avg"]["p_vs_origin"] == alone["avg"]["p_vs_origin"]
    assert scores["llama"]["avg"]["accuracy"] == 0.3 and scores["llama"]["avg"]["n_vs_first_model"] == 10
    assert scores["llama"]["avg"]["diff_vs_first_model"] == pytest.approx(0.3 - 0.8)  # q3..q8 lost, q2 won
    assert scores["llama"]["avg"]["p_vs_first_model"] == pytest.approx(2 * 8 / 2 ** 7)  # exact McNemar, b=1, c=6
    assert scores["llama"]["origin"]["diff_vs_first_model"] == 0 and "warning" not in shown.output
    table = runner.invoke(app, ["report", str(first), str(second), "--latex", str(tmp_path / "t.tex")],
                          env={"COLUMNS": "250"})
    assert table.exit_code == 0 and "qwen" in table.stdout and "llama" in table.stdout
    tex = (tmp_path / "t.tex").read_text()
    assert tex.count("% made by minirun report from run") == 2 and '% model: "/checkpoints/llama"' in tex
    assert "Model & Method & Accuracy" in tex and "llama & avg & 0.300" in tex
    other = _model_run(tmp_path / "c", _hand(), "qwen", num_prompts=5)  # the first's model, other settings
    both = runner.invoke(app, ["report", str(first), str(other), "--json"])
    assert list(json.loads(both.stdout)["sample-qa"]) == ["a", "c"]  # one model twice: named by their directories
    assert "the runs compared on sample-qa differ in num_prompts (run.json run_key), with one model: their " \
           "differences are those settings'" in " ".join(both.stderr.split())  # not "besides the model"
    llama = _model_run(tmp_path / "e", _hand(), "llama", num_prompts=5)
    models = runner.invoke(app, ["report", str(first), str(llama), "--json"])
    assert "the runs compared on sample-qa differ in num_prompts besides the model" in " ".join(models.stderr.split())
    short = _hand()
    cut = _model_run(tmp_path / "d", short[(short["method"] != "avg") | (short["id"] != "q9")], "llama")
    warned = " ".join(runner.invoke(app, ["report", str(first), str(cut)]).output.split())
    assert "llama · avg has scored 9 of the 10 items of sample-qa (an unfinished run)" in warned
    twice = runner.invoke(app, ["report", str(first), str(first)])
    assert twice.exit_code == 1 and f"{first} is given twice: give each run once" in " ".join(twice.output.split())
    again = first.parent / ".." / first.parent.name / first.name  # the same run spelt otherwise
    twice = runner.invoke(app, ["report", str(first), str(again)])
    assert twice.exit_code == 1 and f"{first} is given twice (again as {again})" in " ".join(twice.output.split())


def test_names_are_shown_as_written(tmp_path):
    """A run's folder, dataset, model or relation is the user's text: "[bold]" in it is no rich markup in the
    terminal and "$5_$" no mathtext in a chart (which failed to parse it and stopped with a traceback)."""
    rows = _hand().assign(relation=lambda d: d["id"].map(lambda i: "[red]born" if i < "q5" else "[/x]lives"))
    run = _run_dir(tmp_path / "[bold]v2", rows)
    shown = CliRunner().invoke(app, ["report", str(run)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    assert f"{run}" in shown.output and "[red]born" in shown.output and "[/x]lives" in shown.output
    runs = [_model_run(tmp_path / name, _hand(), model, dataset="/data/cost_$5_$x.jsonl")
            for name, model in (("a", "$q$"), ("b", "$$"))]
    compared = CliRunner().invoke(app, ["report", *map(str, runs), "--plot", str(tmp_path / "c.png")])
    assert compared.exit_code == 0, compared.output
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_two_methods_neither_origin_are_compared_in_the_terminal(tmp_path):
    """Without origin, the pair of two methods is in no Δ origin column: the terminal shows their pairwise matrix,
    as it does from three methods on; beside origin the one pair is the summary's Δ origin, and no matrix."""
    rows = _hand().replace({"method": {"origin": "max"}})
    two = _run_dir(tmp_path / "two", rows[rows["method"] != "per_prompt"])
    shown = CliRunner().invoke(app, ["report", str(two)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "pairwise: accuracy of the row minus the column" in " ".join(shown.output.split())
    assert "+0.500 (p 0.12)" in shown.output
    plain = _run_dir(tmp_path / "plain", _hand()[lambda d: d["method"] != "per_prompt"])
    assert "pairwise" not in CliRunner().invoke(app, ["report", str(plain)]).output


def test_runs_side_by_side_compare_each_dataset_with_its_first_run(tmp_path):
    """Where the first run given did not ask a dataset, that dataset's runs are compared with the first run given of
    it, not left uncompared."""
    qa = _model_run(tmp_path / "a", _hand(), "qwen")
    flipped = _hand()
    flipped.loc[flipped["method"] == "avg", "correct"] = flipped["id"].isin([f"q{i}" for i in ORIGIN])
    probes = [_model_run(tmp_path / name, rows, model, dataset="probes.jsonl")
              for name, rows, model in (("b", _hand(), "llama"), ("c", flipped, "mistral"))]
    shown = CliRunner().invoke(app, ["report", str(qa), *map(str, probes), "--json"])
    assert shown.exit_code == 0, shown.output
    scores = json.loads(shown.stdout)["probes.jsonl"]
    assert scores["llama"]["avg"]["diff_vs_first_model"] is None  # the first of its dataset
    assert scores["mistral"]["avg"]["diff_vs_first_model"] == pytest.approx(0.3 - 0.8)
    assert scores["mistral"]["avg"]["n_vs_first_model"] == 10


def test_runs_of_other_datasets_compared_name_each_tables_own_runs(tmp_path):
    """Each dataset's table is titled by the runs that answered it, not by every run given."""
    qa = _model_run(tmp_path / "a", _hand(), "qwen")
    other = _model_run(tmp_path / "b", _hand(), "llama", dataset="probes.jsonl")
    shown = CliRunner().invoke(app, ["report", str(qa), str(other)], env={"COLUMNS": "300"})
    assert shown.exit_code == 0, shown.output
    titles = [line.strip() for line in shown.stdout.splitlines() if " · " in line and "┃" not in line
              and "│" not in line]
    assert f"sample-qa · {qa}" in titles and f"probes.jsonl · {other}" in titles and not any(
        str(qa) in t and str(other) in t for t in titles)


def test_report_command(tmp_path):
    run = _run_dir(tmp_path, _with_rules(_hand()))
    runner = CliRunner()
    table = runner.invoke(app, ["report", str(run)])  # not a terminal: the table takes the width it needs
    assert table.exit_code == 0, table.output
    assert "95% CI (Wilson)" in table.output and "p (McNemar)" in table.output and "p (Holm)" in table.output
    assert "0.397–0.892" in table.output  # per_prompt's interval
    assert "per_prompt (first prompt)" in table.output  # its accuracy is one prompt's, not an ensemble's
    avg = next(line for line in table.output.splitlines() if " avg " in line)
    assert avg.count("0.125") == 2  # McNemar p and Holm's: a family of one, per_prompt is not compared
    assert "unfinished" not in table.output and "left out" not in table.output
    assert "oracle 0.800" in table.output and "consistency 0.300" in table.output
    as_json = runner.invoke(app, ["report", str(run), "--json", "--match", "bidirectional",
                                  "--csv", str(tmp_path / "t.csv")])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["avg"]["accuracy"] == 0.9
    assert json.loads(as_json.stdout)["avg"]["diff_vs_mean_single"] is None  # another rule than per-prompt's
    assert json.loads(as_json.stdout)["avg"]["rescored"] == {"match": "bidirectional"}  # said beside the scores
    assert "rescored" not in json.loads(runner.invoke(app, ["report", str(run), "--json"]).stdout)["avg"]
    csv = pd.read_csv(tmp_path / "t.csv", index_col="method")
    assert set(csv["rescored"]) == {'{"match": "bidirectional"}'}
    assert csv.loc["avg", "accuracy"] == 0.9 and csv.loc["avg", "p_vs_origin"] == pytest.approx(0.0703125)  # b=7, c=1
    shown = runner.invoke(app, ["report", str(run), "--match", "bidirectional"])
    assert "single-prompt figures left out" in shown.output and "--match bidirectional" in shown.output
    assert "left out" not in runner.invoke(app, ["report", str(run), "--match", "lemma"]).output  # no verdict changes
    alone = _run_dir(tmp_path / "alone", _with_rules(_hand()[lambda d: d["method"] != "per_prompt"]))
    shown = runner.invoke(app, ["report", str(alone), "--match", "bidirectional"])
    assert shown.exit_code == 0 and "left out" not in shown.output  # no single-prompt figures to leave out


def test_harness_scores_say_when_they_are_not_the_harness_s_figure(tmp_path):
    """`--match harness` on a run asked in minirun's words, in a chat template, or with answers cut by max_new_tokens
    before a stop, says so (each a reason its figure is not lm-evaluation-harness's), in one run's report, runs
    compared and a sweep alike; a run asked as the harness asks, whose answers all reached a stop, says nothing."""
    from minirun.eval.report import harness_notes

    rows = _hand().assign(correct_harness=False, task="qa")
    rows.loc[rows["method"] == "avg", "tokens"] = 24
    plain = {"prompt_format": "harness triviaqa", "chat": False, "max_new_tokens": 24}
    assert harness_notes({**plain, "max_new_tokens": 32}, rows) == []
    assert harness_notes({**plain, "max_new_tokens": 32}, rows.assign(task="choice")) == []
    notes = harness_notes({"prompt_format": "minirun", "chat": True, "max_new_tokens": 24}, rows)
    assert [n.split(" ", 3)[:3] for n in notes] == [["its", "answers", "were"], ["its", "answers", "were"],
                                                   ["avg:", "10", "of"]]
    assert "prompt format 'minirun'" in notes[0] and "--benchmark NAME" in notes[0] and "--no-chat" in notes[1]
    assert "avg: 10 of 10 answers took all 24 new tokens before a stop" in notes[2]  # per_prompt's sum prompts'
    assert harness_notes({**plain, "max_new_tokens": 256}, rows.assign(tokens=256)) == []  # the harness's own budget
    run = _run_dir(tmp_path, _with_rules(rows), prompt_format="minirun", chat=False, max_new_tokens=32)
    shown = CliRunner().invoke(app, ["report", str(run), "--match", "harness"], env={"COLUMNS": "250"})
    assert shown.exit_code == 0 and "asked in minirun's words" in shown.output
    assert "minirun's words" not in CliRunner().invoke(app, ["report", str(run)]).output  # the run's own rule
    runs = [_model_run(tmp_path / name, _with_rules(rows), name, prompt_format=fmt, max_new_tokens=32)
            for name, fmt in (("a", "harness triviaqa"), ("b", "minirun"))]
    compared = CliRunner().invoke(app, ["report", *map(str, runs), "--match", "harness"], env={"COLUMNS": "250"})
    assert compared.exit_code == 0, compared.output
    assert " ".join(compared.output.split()).count("asked in minirun's words") == 1 and "b · sample-qa · its" in \
        " ".join(compared.output.split())
    as_json = CliRunner().invoke(app, ["report", *map(str, runs), "--match", "harness", "--json", "--csv",
                                       str(tmp_path / "c.csv")])
    scores = json.loads(as_json.stdout)["sample-qa"]
    assert {entry["rescored"]["match"] for methods in scores.values() for entry in methods.values()} == {"harness"}
    assert set(pd.read_csv(tmp_path / "c.csv")["rescored"]) == {'{"match": "harness"}'}


def test_latex_table(tmp_path):
    run = _run_dir(tmp_path, _hand())
    shown = CliRunner().invoke(app, ["report", str(run), "--latex", str(tmp_path / "t.tex")])
    assert shown.exit_code == 0, shown.output
    written = (tmp_path / "t.tex").read_text()
    comments = [line for line in written.splitlines() if line.startswith("%")]  # what made the rows: run.json's
    assert comments == ["% made by minirun report from a run with", '% bidirectional: false', '% model: "m"']
    tex = written[written.index("\\begin{table}"):]
    assert tex.startswith("\\begin{table}") and "\\toprule" in tex and tex.rstrip().endswith("\\end{table}")
    rows = {line.split(" & ")[0]: line.split(" & ") for line in tex.splitlines() if " & " in line}
    assert list(rows)[:2] == ["Method", "origin"]  # the baseline first, then the methods compared with it
    assert rows["avg"] == ["avg", "0.800", "[0.490, 0.943]", "$+0.500$", "0.125", "10 \\\\"]  # Holm over avg alone
    assert rows["origin"][3:5] == ["--", "--"]
    per_prompt = rows["per\\_prompt (first prompt)"]  # its first prompt's accuracy, and no test against origin
    assert per_prompt[1] == "0.700" and per_prompt[3:5] == ["--", "--"]
    assert "mean single-prompt accuracy 0.367" in tex and "not compared with origin" in tex
    assert "\\caption{run. " in tex  # a run that records no dataset: its directory's name
    named = _run_dir(tmp_path / "named", _hand(), dataset="/data/items.jsonl")
    assert CliRunner().invoke(app, ["report", str(named), "--latex", str(tmp_path / "n.tex")]).exit_code == 0
    assert "\\caption{items.jsonl (run). " in (tmp_path / "n.tex").read_text()  # the data first, as a sweep's
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
    as_json = CliRunner().invoke(app, ["report", str(run), "--json"])  # stdout one JSON object, the caveat on stderr
    assert json.loads(as_json.stdout)["origin"]["n"] == 7 and "origin has scored 7 of the 10 items" in as_json.stderr
    assert summarize(load_results(run)).loc["avg", "n_vs_origin"] == 7


def test_report_names_a_method_stopped_before_its_first_row(tmp_path):
    """run.json lists every method asked: one killed before writing a row is named, not silently absent."""
    df = _hand()
    methods = {"origin": {}, "avg": {}, "per_prompt": {}, "flex": {}}
    with ResultStore(tmp_path / "run", {"model": "m", "bidirectional": False}, 0, [f"q{i}" for i in range(10)],
                     methods) as store:
        for row in df.to_dict("records"):
            store.add(row)
    shown = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert shown.exit_code == 0, shown.output
    assert "flex was asked for but has scored none of the 10 items (an unfinished run)" in shown.output
    assert "origin has scored" not in shown.output


def test_report_of_a_run_with_no_rows(tmp_path):
    ResultStore(tmp_path / "run", {"model": "m"}).close()
    shown = CliRunner().invoke(app, ["report", str(tmp_path / "run")])
    assert shown.exit_code == 1 and shown.output.count("\n") == 1 and "no finished rows" in shown.output


def test_report_command_match_on_an_old_table(tmp_path):
    result = CliRunner().invoke(app, ["report", str(_run_dir(tmp_path, _hand())), "--match", "lemma"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "lack 'correct_lemma'" in result.output and "re-run" in result.output


def test_latex_p_keeps_three_significant_digits():
    scores = summarize(_hand())
    scores.loc["avg", "p_vs_origin_holm"] = 0.0496  # 0.050 to three decimals: past the 0.05 line it is under
    rows = {line.split(" & ")[0]: line.split(" & ") for line in latex(scores, "run").splitlines() if " & " in line}
    assert rows["avg"][4] == "0.0496"


def test_latex_keeps_the_models_order():
    scores = summarize(_sweep()).loc[["small", "big"]]  # the sweep file's order: small is the reference model
    tex = latex(scores, "sweep")
    rows = [line.split(" & ")[:2] for line in tex.splitlines() if " & " in line][1:]
    assert rows == [["small", "origin"], ["small", "avg"], ["big", "origin"], ["big", "avg"]]


def _mixed() -> pd.DataFrame:
    """`_with_rules(_hand())` and two multiple-choice items every method gets right per token (option 1:
    -1.5 over 3 tokens beats -1.0 over 1) and wrong summed."""
    choice = []
    for i in range(2):
        for method in ("origin", "avg", "per_prompt"):
            prompts = {"answers": ["B", "B"], "per_prompt_correct": [True, True], "per_prompt_accuracy": 1.0,
                       "per_prompt_logprobs": [[-1.0, -1.5]] * 2}
            choice.append({"id": f"c{i}", "method": method, "prompts": ["p", "p"], "generated": "B", "answer": "B",
                           "exact": True, "correct": True, "correct_lemma": True, "correct_bidirectional": True,
                           "tokens": 0, "seconds": 1.0, "task": "choice", "choices": ["A", "B"], "gold_choice": 1,
                           "choice": 1, "choice_scores": [-1.0, -0.5], "choice_logprobs": [-1.0, -1.5],
                           "choice_tokens": [1, 3], "choice_chars": [1, 1],
                           **(prompts if method == "per_prompt" else {})})
    return pd.concat([_with_rules(_hand()).assign(task="qa"), pd.DataFrame(choice)], ignore_index=True)


def test_choice_score_keeps_single_prompt_figures_dropped(tmp_path):
    run = _run_dir(tmp_path, _mixed())
    shown = CliRunner().invoke(app, ["report", str(run), "--match", "bidirectional", "--choice-score", "sum",
                                     "--csv", str(tmp_path / "t.csv")])
    assert shown.exit_code == 0, shown.output
    assert "single-prompt figures left out" in shown.output  # not brought back for the choice rows alone
    assert pd.read_csv(tmp_path / "t.csv", index_col="method")["mean_single_accuracy"].isna().all()
    summed = CliRunner().invoke(app, ["report", str(run), "--choice-score", "sum", "--csv", str(tmp_path / "s.csv")])
    assert "left out" not in summed.output  # the run's own rule: every row's figures under one rule
    assert pd.read_csv(tmp_path / "s.csv", index_col="method").loc["per_prompt", "mean_single_accuracy"] == (
        pytest.approx((11 / 3) / 12))  # the choice rows' prompts re-picked wrong, summed


def test_a_method_without_verdicts_is_named(tmp_path):
    df = _hand()
    none = df[df["method"] == "avg"].assign(method="max", correct=None)
    shown = CliRunner().invoke(app, ["report", str(_run_dir(tmp_path, pd.concat([df, none])))])
    assert shown.exit_code == 0, shown.output
    assert "max was asked for but has scored none of the 10 items" in shown.output


def test_a_run_short_of_its_items_is_named_with_one_method(tmp_path):
    """An interrupted one-method run: counted against the items its run.json lists, not those it answered."""
    df = _hand()
    run = _run_dir(tmp_path, df[(df["method"] == "origin") & (df["id"] != "q9")])
    (run / "run.json").write_text(json.dumps({**json.loads((run / "run.json").read_text()),
                                              "item_ids": sorted(df["id"].unique())}))
    shown = CliRunner().invoke(app, ["report", str(run)])
    assert shown.exit_code == 0, shown.output
    assert "origin has scored 9 of the 10 items" in shown.output


def _append(journal, line: bytes) -> None:
    with journal.open("ab") as f:
        f.write(line + b"\n")


@pytest.mark.parametrize("line, message", [
    (json.dumps({**_hand().iloc[0].to_dict(), "id": "q10"}).encode()[:-1] + b', "x": "\xff"}',
     "results.rank0.jsonl:31: corrupt result line"),  # a byte that is not UTF-8
    (json.dumps({k: v for k, v in _hand().iloc[0].to_dict().items() if k != "correct"} | {"id": "q10"}).encode(),
     "results.rank0.jsonl:31: corrupt result line (no correct)"),
    (json.dumps({**_hand().iloc[0].to_dict(), "id": "q10", "correct": "yes"}).encode(),
     "results.rank0.jsonl:31: corrupt result line (correct of the wrong type)"),  # by file and line, as others
    (json.dumps({**_hand().iloc[0].to_dict(), "id": "q10", "tokens": "abc"}).encode(),
     "results.rank0.jsonl:31: corrupt result line (tokens of the wrong type)"),  # a sum of text, a traceback
    (json.dumps({**_hand().iloc[0].to_dict(), "id": ["q10"]}).encode(),
     "results.rank0.jsonl:31: corrupt result line (id of the wrong type)"),
    (json.dumps({**_hand().iloc[0].to_dict(), "id": "q10", "method": None, "seconds": "1s"}).encode(),
     "results.rank0.jsonl:31: corrupt result line (method, seconds of the wrong type)"),
    (json.dumps({**_hand().iloc[0].to_dict(), "id": "q10", "popularity": "high"}).encode(),
     "results.rank0.jsonl:31: corrupt result line (popularity of the wrong type)"),  # bins of text, a traceback
    *[(json.dumps({**_hand().iloc[0].to_dict(), "id": "q10", column: value}).encode(),
       f"results.rank0.jsonl:31: corrupt result line ({column} of the wrong type)")  # parquet's traceback after a
      for column, value in [("correct", 2), ("prompts", 5), ("answers", 5), ("answer", 5), ("task", 7),  # resume's
                            ("per_prompt_correct", ["x"]), ("tokens", -3), ("choice_scores", "high")]],  # work
], ids=["not UTF-8", "no correct", "correct yes", "tokens text", "id list", "method null", "popularity text",
        "correct 2", "prompts int", "answers int", "answer int", "task int", "verdicts text", "tokens negative",
        "scores text"])
def test_bad_journal_rows_are_one_line_errors(tmp_path, line, message):
    run = _run_dir(tmp_path, _hand())
    _append(run / "results.rank0.jsonl", line)
    shown = CliRunner().invoke(app, ["report", str(run)])
    assert shown.exit_code == 1 and shown.output.count("\n") == 1 and message in shown.output, shown.output


def test_a_hand_made_table_keeps_the_first_copy_of_a_row(tmp_path):
    run = _run_dir(tmp_path, _hand())
    for journal in run.glob("results.rank*.jsonl"):
        journal.unlink()
    table = pd.read_parquet(run / "results.parquet")
    pd.concat([table, table.assign(correct=~table["correct"])]).to_parquet(run / "results.parquet")
    assert summarize(load_results(run)).loc["avg", "accuracy"] == 0.8  # as the journals do: the first copy
    shown = CliRunner().invoke(app, ["report", str(run)])
    assert shown.exit_code == 0, shown.output


@pytest.mark.parametrize("edit", [{"run_key": ["model"]}, {"item_ids": 5}, {"item_ids": [1, 2]}, {"methods": ["avg"]}],
                         ids=["run_key list", "item_ids int", "item_ids ints", "methods list"])
def test_a_damaged_run_record_is_a_one_line_error(tmp_path, edit):
    run = _run_dir(tmp_path, _hand())
    (run / "run.json").write_text(json.dumps({**json.loads((run / "run.json").read_text()), **edit}))
    shown = CliRunner().invoke(app, ["report", str(run)])
    assert shown.exit_code == 1 and shown.output.count("\n") == 1, shown.output
    assert "run.json is not a run record minirun wrote" in shown.output


def test_latex_says_on_how_many_items_a_difference_from_origin_is():
    """origin unfinished: avg's 10 items, the difference on the 7 both answered; the row's n alone would hide it."""
    df = _hand()
    scores = summarize(df[(df["method"] != "origin") | ~df["id"].isin(["q7", "q8", "q9"])])
    rows = {line.split(" & ")[0]: line.split(" & ") for line in latex(scores, "run").splitlines() if " & " in line}
    assert rows["avg"][3].endswith("($n=7$)") and rows["avg"][5] == "10 \\\\"
    assert "their number where fewer than the row's $n$" in latex(scores, "run")
    assert "$n=" not in latex(summarize(df), "run").split("\\caption")[0]  # both finished: no count


def test_latex_row_labels_starting_with_a_bracket_are_not_a_line_break_argument():
    """`\\\\` followed by a line starting "[" reads it as the row-spacing length: the table does not compile."""
    tex = latex(summarize(_sweep().assign(model=lambda d: d["model"].map({"big": "[hf]big", "small": "s]"}))), "x")
    labels = [line.split(" & ")[0] for line in tex.splitlines() if " & " in line][1:]
    assert labels == ["{[}hf{]}big"] * 2 + ["s{]}"] * 2


def test_untimed_rows_do_not_raise_tokens_per_second():
    df = _frame()
    df.loc[(df["method"] == "single") & (df["id"] == "q0"), "seconds"] = None  # a hand-made row without a time
    s = summarize(df)
    assert s.loc["single", "tokens_per_second"] == 10.0 and s.loc["single", "tokens"] == 40  # 30 / 3 s, not 40 / 3 s
    assert s.loc["single", "items_per_second"] == 1.0  # 3 items / 3 s, not 4 / 3 s


def test_the_plot_names_per_prompt_as_its_first_prompt():
    acc = figure(_hand()).axes[0]
    assert [t.get_text() for t in acc.get_xticklabels()] == ["origin", "avg", "per_prompt (first prompt)"]


def test_plot_labels_end_under_their_bars_and_the_legend_sits_beside_them():
    """Centred 30° labels ran into each other ("per_prompt (first prompt)" over the next one), and a legend inside
    the panel covered the bars and whiskers near 1."""
    fig = figure(_hand())
    fig.canvas.draw()
    acc = fig.axes[0]
    assert all(t.get_ha() == "right" and t.get_rotation_mode() == "anchor" for t in acc.get_xticklabels())
    renderer = fig.canvas.get_renderer()
    assert acc.get_legend().get_window_extent(renderer).x0 >= acc.get_window_extent(renderer).x1


def test_a_method_without_verdicts_shows_dashes_not_nan(tmp_path):
    df = _hand()
    none = df[df["method"] == "avg"].assign(method="max", correct=None)
    shown = CliRunner().invoke(app, ["report", str(_run_dir(tmp_path, pd.concat([df, none])))], env={"COLUMNS": "200"})
    row = next(line for line in shown.output.splitlines() if " max " in line)
    cells = [cell.strip() for cell in row.split("│")[1:-1]]  # method, accuracy, CI, exact, n, …, items/s
    assert "nan" not in row and cells[1:3] == ["–", "–"] and cells[4] == "0", row
    assert cells[-2:] == ["5.0", "1.00"], row  # its rows were still generated and timed


SURE = 1 / (1 + math.exp(-0.5))  # softmax of option scores [-1.0, -0.5]: the second option's probability, 0.6225


def test_calibration_covers_the_multiple_choice_rows_only():
    scores = summarize(_mixed())
    for method in ("origin", "avg", "per_prompt"):  # both choice items picked right at 0.6225
        assert scores.loc[method, "confidence"] == pytest.approx(SURE)
        assert scores.loc[method, "ece"] == pytest.approx(1 - SURE)
        assert scores.loc[method, "brier"] == pytest.approx(2 * (1 - SURE) ** 2)
    assert scores.loc[method, "accuracy"] != pytest.approx(1.0)  # the generated rows count there, not here
    assert summarize(_hand())[["confidence", "ece", "brier"]].isna().all(axis=None)  # no option probabilities
    summed = summarize(select_choice_score(_mixed(), "sum"))  # re-picked: option 0 at 0.6225, wrong
    assert summed.loc["avg", "confidence"] == pytest.approx(SURE) and summed.loc["avg", "ece"] == pytest.approx(SURE)
    assert summed.loc["avg", "brier"] == pytest.approx(2 * SURE ** 2)


def test_calibration_of_a_vote_is_its_share_of_the_picks():
    rows = [{"id": f"c{i}", "method": "vote", "prompts": ["p"] * 5, "generated": "A", "answer": "A", "exact": right,
             "correct": right, "tokens": 0, "seconds": 1.0, "task": "choice", "choices": ["A", "B"], "gold_choice": 0,
             "choice": 0, "choice_scores": [share, 1 - share]} for i, (share, right) in enumerate([(0.6, True),
                                                                                            (1.0, False)])]
    scores = calibration(pd.DataFrame(rows))
    assert scores.loc["vote", "confidence"] == pytest.approx(0.8)
    assert scores.loc["vote", "ece"] == pytest.approx((0.4 + 1.0) / 2)  # bins: 0.6 right, 1.0 wrong
    assert scores.loc["vote", "brier"] == pytest.approx((2 * 0.4 ** 2 + 0) / 2)  # gold 0 both times, picked at 0.6 / 1.0
    rows[1]["gold_choice"] = 1
    assert calibration(pd.DataFrame(rows)).loc["vote", "brier"] == pytest.approx((2 * 0.4 ** 2 + 2) / 2)


def test_report_shows_calibration_for_multiple_choice(tmp_path):
    runner = CliRunner()
    mixed = runner.invoke(app, ["report", str(_run_dir(tmp_path / "mixed", _mixed()))])
    assert mixed.exit_code == 0, mixed.output
    assert "calibration (multiple choice)" in mixed.output and "ECE" in mixed.output
    header = next(line for line in mixed.output.splitlines() if "confidence" in line and "ECE" in line)
    assert "accuracy" not in header  # a mixed table's accuracy covers generated items too, not those calibrated
    assert f"{SURE:.3f} │ {1 - SURE:.3f} │ {2 * (1 - SURE) ** 2:.3f}" in mixed.output
    choice = _mixed().query("task == 'choice'")
    only = runner.invoke(app, ["report", str(_run_dir(tmp_path / "choice", choice))])
    assert next(line for line in only.output.splitlines() if "ECE" in line).split("┃")[2].strip() == "accuracy"
    assert "(multiple choice)" not in runner.invoke(app, ["report", str(_run_dir(tmp_path / "qa", _hand()))]).output
    as_json = json.loads(runner.invoke(app, ["report", str(_run_dir(tmp_path / "j", _mixed())), "--json"]).stdout)
    assert as_json["avg"]["ece"] == pytest.approx(1 - SURE)
    generated = json.loads(runner.invoke(app, ["report", str(_run_dir(tmp_path / "g", _hand())), "--json"]).stdout)
    assert generated["avg"]["ece"] is None and generated["avg"]["brier"] is None


def test_latex_adds_calibration_columns_for_multiple_choice():
    tex = latex(summarize(_mixed()), "run")
    rows = {line.split(" & ")[0]: line.split(" & ") for line in tex.splitlines() if " & " in line}
    assert rows["Method"][-3:] == ["Conf.", "ECE", "Brier \\\\"]
    assert rows["avg"][-3:] == [f"{SURE:.3f}", f"{1 - SURE:.3f}", f"{2 * (1 - SURE) ** 2:.3f} \\\\"]
    assert "{lrcrrrrrr}" in tex and "15 equal-width bins" in tex
    assert "ECE" not in latex(summarize(_hand()), "run")  # generated answers only: no calibration columns


def test_a_table_rescored_at_report_time_says_so(tmp_path):
    """run.json's settings in the LaTeX comments are the run's; `--match`/`--choice-score` given to report rescore
    the table, so its comments and caption name them (none given: neither)."""
    run = _run_dir(tmp_path, _mixed())
    result = CliRunner().invoke(app, ["report", str(run), "--match", "bidirectional", "--choice-score", "sum",
                                      "--latex", str(tmp_path / "r.tex")])
    assert result.exit_code == 0, result.output
    tex = (tmp_path / "r.tex").read_text()
    assert '% rescored by minirun report: {"choice_score": "sum", "match": "bidirectional"}' in tex.splitlines()
    assert "(rescored: -{}-match bidirectional, -{}-choice-score sum)" in tex
    assert "(rescored: --match bidirectional, --choice-score sum)" in " ".join(result.output.split())  # the title too
    plain = CliRunner().invoke(app, ["report", str(run), "--latex", str(tmp_path / "plain.tex")])
    assert "rescored" not in (tmp_path / "plain.tex").read_text() and "(rescored:" not in plain.output


def test_a_table_is_said_rescored_only_by_the_options_that_change_its_rows():
    """--match rescores generated answers, --choice-score multiple-choice picks: a sweep's table of one kind is not
    said rescored by the other's option (its caption would mislead a paper's reader)."""
    from minirun.eval.report import rescored

    qa, choice = pd.DataFrame({"task": ["qa", "fill"]}), pd.DataFrame({"task": ["choice"]})
    assert rescored("bidirectional", "sum", qa)[1] == " (rescored: --match bidirectional)"
    assert rescored("bidirectional", "sum", choice)[1] == " (rescored: --choice-score sum)"
    assert rescored(None, "sum", qa) == ("", "") and rescored("lemma", None, choice) == ("", "")
    both = pd.concat([qa, choice])
    assert rescored("bidirectional", "sum", both)[1] == " (rescored: --match bidirectional, --choice-score sum)"
    qa.attrs["match"] = "lemma"  # the rule the rows were scored under: naming it changes nothing
    assert rescored("lemma", None, qa) == ("", "") and rescored("bidirectional", None, qa)[1] != ""


def test_report_on_a_path_that_is_not_there_or_a_sweep_file_that_is_a_folder_says_so(tmp_path):
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "nope: no such directory; pass the output directory" in missing.output
    folder = CliRunner().invoke(app, ["sweep", str(tmp_path)])
    assert folder.exit_code == 1 and "is a directory: pass the sweep's .toml file" in " ".join(folder.output.split())


def test_the_pairwise_matrix_says_per_prompt_is_left_out_only_where_it_ran(tmp_path):
    """The caption names per_prompt's absence from the matrix where the run has per_prompt, not in every run."""
    df = _hand()
    with_max = pd.concat([df, df[df["method"] == "avg"].assign(method="max")])
    shown = " ".join(CliRunner().invoke(app, ["report", str(_run_dir(tmp_path / "a", with_max))]).output.split())
    assert "pairwise: accuracy of the row minus the column" in shown
    assert "per_prompt (its first prompt) is left" in shown
    fused = with_max[with_max["method"] != "per_prompt"]
    shown = " ".join(CliRunner().invoke(app, ["report", str(_run_dir(tmp_path / "b", fused))]).output.split())
    assert "pairwise: accuracy of the row minus the column" in shown and "per_prompt" not in shown


def test_items_without_a_relation_are_said_to_be_left_out_of_the_macro(tmp_path):
    """A blank relation is none (not a relation named ""), as an item file's is read; where some items carry one
    and others none, report says how many the per-relation tables and the macro accuracy leave out."""
    from minirun.eval.data import Item

    assert Item("a", "Q?", [], ["x"], "fill", "  ").relation is None
    df = _frame()
    df.loc[df["id"] == "q3", "relation"] = ""  # rows an earlier minirun wrote from a file's blank relation
    df.loc[df["id"] == "q2", "relation"] = None
    run = _run_dir(tmp_path, df)
    shown = " ".join(CliRunner().invoke(app, ["report", str(run)]).output.split())
    assert "2 of the 4 items carry no relation: the per-relation tables and the macro accuracy leave them out" in shown
    assert "(1 relations)" in shown  # capital alone, not a relation named ""
    whole = " ".join(CliRunner().invoke(app, ["report", str(_run_dir(tmp_path / "whole", _frame()))]).output.split())
    assert "carry no relation" not in whole
    assert unrelated_note(df.assign(relation=df["relation"].replace("", None)), " of fill").startswith(
        "2 of the 4 items of fill carry no relation")  # a sweep's, per dataset


def _harness_mc2(logprobs: list[float], rights: list[int]) -> float:
    """lm-evaluation-harness's truthfulqa_mc2 figure, written as it computes it: exp of each option's summed
    log-likelihood, the right options' share of their sum."""
    p = [math.exp(lp) for lp in logprobs]
    return sum(p[i] for i in rights) / sum(p)


MC2_ITEMS = [("t0", [0, 1], {"origin": [-1.0, -2.0, -0.5], "avg": [-0.5, -1.0, -2.0]}),
             ("t1", [0, 2], {"origin": [-3.0, -2.0, -1.0], "avg": [-1.0, -3.0, -1.0]}),
             ("t2", [1], {"origin": [-1.0, -1.0, -1.0], "avg": [-2.0, -0.1, -2.0]})]  # one right option
PROMPTS = [[-1.0, -2.0, -0.5], [-0.2, -2.0, -3.0]]  # per_prompt's two prompts, on every item


def _mc2_rows() -> pd.DataFrame:
    """Three items of three options scored summed (picks the highest log-likelihood): two with several right
    options, one with one; origin, avg, vote (shares of two prompts' picks) and per_prompt."""
    rows = []
    for item, rights, sums in MC2_ITEMS:
        shown = {**sums, "per_prompt": PROMPTS[0], "vote": [sum(x) / 2 for x in zip(*PROMPTS)]}
        for method, logprobs in shown.items():
            picks = [max(range(3), key=lp.__getitem__) for lp in PROMPTS]
            scores = [picks.count(i) / 2 for i in range(3)] if method == "vote" else logprobs
            choice = max(range(3), key=scores.__getitem__)
            rows.append({"id": item, "method": method, "prompts": ["p", "q"], "generated": "x", "answer": "x",
                         "exact": choice in rights, "correct": choice in rights, "correct_lemma": choice in rights,
                         "correct_bidirectional": choice in rights, "tokens": 0, "seconds": 1.0, "task": "choice",
                         "choices": ["A", "B", "C"], "gold_choice": rights[0], "choice": choice,
                         "true_options": rights if len(rights) > 1 else None, "choice_scores": scores,
                         "choice_logprobs": logprobs, "choice_tokens": [1, 1, 1], "choice_chars": [1, 1, 1],
                         **({"per_prompt_logprobs": PROMPTS, "answers": ["ABC"[c] for c in picks],
                             "per_prompt_correct": [c in rights for c in picks],
                             "per_prompt_accuracy": sum(c in rights for c in picks) / 2}
                            if method in ("vote", "per_prompt") else {})})
    return pd.DataFrame(rows)


def test_mc2_is_the_harness_figure_with_its_interval_and_paired_test():
    """Each method's MC2 is the mean over items of the harness's per-item figure, with a bootstrap interval; against
    origin the mean per-item difference, its paired bootstrap interval and sign-flip p, Holm over the methods
    compared; per_prompt's row adds each prompt's MC2 averaged. vote, with no likelihoods of its own, has none."""
    scores = summarize(_mc2_rows())
    origin = [_harness_mc2(sums["origin"], rights) for _, rights, sums in MC2_ITEMS]
    avg = [_harness_mc2(sums["avg"], rights) for _, rights, sums in MC2_ITEMS]
    assert scores.loc["origin", "mc2"] == pytest.approx(sum(origin) / 3)
    assert scores.loc["avg", "mc2"] == pytest.approx(sum(avg) / 3)
    assert scores.loc["vote", ["mc2", "mc2_ci95_low", "diff_mc2_vs_origin", "p_mc2_vs_origin"]].isna().all()
    assert (scores.loc["avg", "mc2_ci95_low"], scores.loc["avg", "mc2_ci95_high"]) == pytest.approx(
        paired_bootstrap_interval(avg, seed=0))
    diffs = [a - o for a, o in zip(avg, origin)]
    assert scores.loc["avg", "diff_mc2_vs_origin"] == pytest.approx(sum(diffs) / 3)
    assert (scores.loc["avg", "diff_mc2_vs_origin_ci95_low"], scores.loc["avg", "diff_mc2_vs_origin_ci95_high"]) == \
        pytest.approx(paired_bootstrap_interval(diffs, seed=0))
    assert scores.loc["avg", "p_mc2_vs_origin"] == pytest.approx(sign_flip_p(diffs, seed=0))
    assert scores.loc["avg", "p_mc2_vs_origin_holm"] == scores.loc["avg", "p_mc2_vs_origin"]  # a family of one
    two = summarize(pd.concat([_mc2_rows(), _mc2_rows().query("method == 'avg'").assign(method="max")]))
    assert two.loc[["avg", "max"], "p_mc2_vs_origin_holm"].tolist() == pytest.approx(holm([sign_flip_p(diffs)] * 2))
    assert scores.loc[["origin", "per_prompt"], "diff_mc2_vs_origin"].isna().all()  # no test of no ensemble
    first = [_harness_mc2(PROMPTS[0], rights) for _, rights, _ in MC2_ITEMS]
    assert scores.loc["per_prompt", "mc2"] == pytest.approx(sum(first) / 3)
    each = [sum(_harness_mc2(lp, rights) for lp in PROMPTS) / 2 for _, rights, _ in MC2_ITEMS]
    assert scores.loc["per_prompt", "mean_single_mc2"] == pytest.approx(sum(each) / 3)
    assert scores.loc[["origin", "avg", "vote"], "mean_single_mc2"].isna().all()
    assert summarize(_mixed())["mc2"].isna().all()  # one right option everywhere: no MC2 figure


def test_several_right_options_count_any_of_them_and_leave_brier_to_single_ones():
    """A pick is right when it is any of the item's right options, as the run wrote it and re-picked under another
    choice score; Brier (against one right option) covers the items with one."""
    rows = _mc2_rows()
    rows["choice_tokens"] = [[1, 8, 1]] * len(rows)  # per token, B (-2.0 over 8) beats every other option
    mean = select_choice_score(rows, "mean")
    repicked = mean[mean["method"] == "origin"].set_index("id")
    # B everywhere: right on t0 (A and B right) and t2 (B), wrong on t1 (A and C)
    assert repicked["choice"].tolist() == [1, 1, 1] and repicked["correct"].tolist() == [True, False, True]
    each = mean[mean["method"] == "per_prompt"].set_index("id")["per_prompt_correct"]
    assert [list(c) for c in each] == [[True, True], [False, True], [True, False]]  # the prompts pick B, A
    brier = calibration(rows).loc["origin", "brier"]
    assert brier == pytest.approx((1 / 3) ** 2 + (2 / 3) ** 2 + (1 / 3) ** 2)  # t2 alone: a third on each option
    several = rows[rows["id"] != "t2"]
    assert math.isnan(calibration(several).loc["origin", "brier"])
    # the picks' confidence still measured: C on t0 (wrong) and t1 (right), in bins of their own
    wrong, right = (math.exp(-0.5) / sum(map(math.exp, (-1.0, -2.0, -0.5))),
                    math.exp(-1.0) / sum(map(math.exp, (-3.0, -2.0, -1.0))))
    assert int(wrong * 15) != int(right * 15)
    assert calibration(several).loc["origin", "ece"] == pytest.approx((wrong + (1 - right)) / 2)


def test_report_shows_mc2_in_each_form(tmp_path):
    """The terminal's MC2 table, the JSON's and CSV's columns and the LaTeX columns, only where some item has several
    right options."""
    run = _run_dir(tmp_path / "mc2", _mc2_rows())
    runner = CliRunner()
    shown = runner.invoke(app, ["report", str(run), "--csv", str(tmp_path / "s.csv"), "--latex",
                                str(tmp_path / "t.tex")])
    assert shown.exit_code == 0, shown.output
    scores = summarize(_mc2_rows())
    words = " ".join(shown.output.split())
    assert "MC2 (probability of the right options)" in words and "TruthfulQA's MC2" in words
    avg = scores.loc["avg"]
    assert (f"{avg['mc2']:.3f} [{avg['mc2_ci95_low']:.3f}, {avg['mc2_ci95_high']:.3f}] │ "
            f"{avg['diff_mc2_vs_origin']:+.3f} [{avg['diff_mc2_vs_origin_ci95_low']:+.3f}, "
            f"{avg['diff_mc2_vs_origin_ci95_high']:+.3f}] (p {avg['p_mc2_vs_origin']:.3g})") in shown.output
    assert f"per_prompt: each prompt alone {scores.loc['per_prompt', 'mean_single_mc2']:.3f}" in words
    as_json = json.loads(runner.invoke(app, ["report", str(run), "--json"]).stdout)
    assert as_json["avg"]["mc2"] == pytest.approx(avg["mc2"])
    assert as_json["avg"]["mc2_ci95"] == pytest.approx([avg["mc2_ci95_low"], avg["mc2_ci95_high"]])
    assert pd.read_csv(tmp_path / "s.csv").set_index("method").loc["avg", "mc2"] == pytest.approx(avg["mc2"])
    written = pd.read_csv(tmp_path / "s.csv", dtype=str)  # counts as counts, 3 not 3.0
    assert written["n_vs_origin"].dropna().tolist() == ["3", "3"] and set(written["tokens"]) == {"0"}
    tex = (tmp_path / "t.tex").read_text()
    cells = {line.split(" & ")[0]: line.split(" & ") for line in tex.splitlines() if " & " in line}
    assert cells["Method"][-3:] == ["MC2", r"$\Delta$ MC2", r"$p$ (MC2) \\"]
    assert cells["avg"][-3:-1] == [f"{avg['mc2']:.3f}", f"${avg['diff_mc2_vs_origin']:+.3f}$"]
    assert cells["origin"][-2:] == ["--", r"-- \\"] and "MC2 (TruthfulQA's)" in tex
    assert "over the items with one right option" in tex
    plain = runner.invoke(app, ["report", str(_run_dir(tmp_path / "one", _mixed()))]).output
    assert "MC2" not in plain and "MC2" not in latex(summarize(_mixed()), "run")
    votes = _mc2_rows().query("method == 'vote'")  # no MC2 of its own: its prompts' alone, shown all the same
    alone = summarize(votes).loc["vote", "mean_single_mc2"]
    shown = " ".join(runner.invoke(app, ["report", str(_run_dir(tmp_path / "vote", votes))]).output.split())
    assert f"vote: each prompt alone {alone:.3f}" in shown
    single = summarize(votes).loc["vote", "mean_single_accuracy"]
    assert f"mean single-prompt accuracy {single:.3f}; MC2 {alone:.3f}." in latex(summarize(votes), "run")


def test_runs_side_by_side_show_each_models_mc2(tmp_path):
    """Runs of two models on an MC2 dataset: an MC2 table per dataset with a column group per model, each model's
    figures its own run's, and each prompt's alone in the caption."""
    first = _model_run(tmp_path / "a", _mc2_rows(), "qwen", dataset="truthfulqa_mc2")
    second = _model_run(tmp_path / "b", _mc2_rows().query("method != 'avg'"), "llama", dataset="truthfulqa_mc2")
    runner = CliRunner()
    shown = runner.invoke(app, ["report", str(first), str(second)], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    alone = summarize(_mc2_rows())
    mc2 = shown.stdout[shown.stdout.index("truthfulqa_mc2 · MC2 (probability of the right options)"):]
    avg = next(line for line in mc2.splitlines() if line.startswith("│ avg"))  # llama ran no avg
    assert f"{alone.loc['avg', 'mc2']:.3f}" in avg and [c.strip() for c in avg.split("│")[4:6]] == ["–", "–"]
    assert f"qwen: per_prompt's each prompt alone {alone.loc['per_prompt', 'mean_single_mc2']:.3f}" in mc2
    scores = json.loads(runner.invoke(app, ["report", str(first), str(second), "--json"]).stdout)["truthfulqa_mc2"]
    assert scores["llama"]["origin"]["mc2"] == pytest.approx(alone.loc["origin", "mc2"])


def test_origin_and_the_ensembles_first_prompt_answering_apart_is_told_as_rounding():
    """origin and per_prompt's first prompt are one prompt: where they answer apart (bfloat16 rounds a row by its
    batch) the count is told, of short answers and of picked options alike (each prompt's pick is in `answers`), per
    model in a sweep's table or runs side by side, against the first per_prompt entry where a sweep has two; items
    whose origin asked another prompt (--no-original), and rows without each prompt's answers, are not compared."""
    from minirun.eval.report import first_prompt_note

    def row(method, item, prompts, answer, answers=None, task="qa"):
        return {"method": method, "id": item, "prompts": prompts, "answer": answer, "answers": answers, "task": task}

    rows = [row("origin", "a", ["Q a"], "Paris"), row("per_prompt", "a", ["Q a", "P a"], "Paris", ["Paris", "Lyon"]),
            row("origin", "b", ["Q b"], "Rome"), row("per_prompt", "b", ["Q b", "P b"], "Milan", ["Milan", "Rome"]),
            row("origin", "c", ["Q c"], "x"), row("per_prompt", "c", ["P c"], "y", ["y"]),  # --no-original
            row("origin", "d", ["Q d"], "B", task="choice"),
            row("per_prompt", "d", ["Q d", "P d"], "A", ["A", "B"], task="choice"),
            row("origin", "e", ["Q e"], "z"), row("per_prompt", "e", ["Q e"], "z", None)]  # no answers kept
    said = first_prompt_note(pd.DataFrame(rows))
    assert said.startswith("origin and per_prompt's first prompt, the same prompt, answer some items differently "
                           "(2 of 3): bfloat16 rounds a row by the batch it runs in")
    alike = pd.DataFrame([r for r in rows if r["id"] in ("a", "c", "e")])
    assert first_prompt_note(alike) is None and first_prompt_note(alike[alike["method"] == "origin"]) is None
    vote = pd.DataFrame([{**r, "method": "vote"} if r["method"] == "per_prompt" else r for r in rows])
    assert first_prompt_note(vote).startswith("origin and vote's first prompt, the same prompt, answer some items "
                                              "differently (2 of 3)")
    sweep = pd.DataFrame([{**r, "model": m, "dataset": "qa", "label": r["method"]} for m in ("m1", "m2")
                          for r in rows[:4]] + [{**r, "model": "m1", "dataset": "qa", "label": "pp-sum",
                                                 "answers": [{"a": "Paris", "b": "Rome"}[r["id"]]]}  # origin's
                                                for r in rows[:4] if r["method"] == "per_prompt"]
                         + [{**r, "model": "m2", "dataset": "qa", "label": "origin-2", "answer": "?"}
                            for r in rows[:4] if r["method"] == "origin"])  # another origin entry: not the baseline
    assert "answer some items of qa differently (1 of 2 for m1; 1 of 2 for m2)" in first_prompt_note(sweep, " of qa")


def test_the_latex_provenance_says_where_ensembles_fused_fewer_prompts_than_asked():
    """An item with fewer distinct wordings than num_prompts fuses the ones it has: the table's provenance says how
    many its ensembles fused, not only the count asked, where any item fused fewer; where every item had them all it
    says nothing more."""
    from minirun.eval.report import provenance

    rows = pd.DataFrame([{"method": "origin", "prompts": ["q"]}, {"method": "avg", "prompts": ["q", "p"]},
                         {"method": "avg", "prompts": ["q", "p", "r"]}])
    said = provenance({"num_prompts": 5}, {}, [], rows=rows).splitlines()
    assert said[-1] == "% prompts an ensemble fused per item: 2-3 (num_prompts asks more: some items hold fewer " \
        "distinct wordings)"
    some_short = provenance({"num_prompts": 3}, {}, [], rows=rows).splitlines()[-1]  # one item of 2, one of 3
    assert some_short.startswith("% prompts an ensemble fused per item: 2-3 (num_prompts asks more")
    assert "fused" not in provenance({"num_prompts": 2}, {}, [], rows=rows.iloc[:2])
    assert "fused" not in provenance({"num_prompts": 5}, {}, [], rows=rows[rows["method"] == "origin"])
    one_size = provenance({"num_prompts": 5}, {}, [], rows=rows.iloc[:2]).splitlines()[-1]
    assert one_size.startswith("% prompts an ensemble fused per item: 2 (num_prompts asks more")



def test_a_report_written_over_a_file_of_its_run_is_refused(tmp_path):
    """`report R --csv R/run.json` wrote the CSV over the run's record: it could be neither reported nor resumed."""
    run = _run_dir(tmp_path, _hand())
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    for option, name in (("--csv", "run.json"), ("--latex", "results.jsonl"), ("--csv", "results.rank0.jsonl")):
        shown = CliRunner().invoke(app, ["report", str(run), option, str(run / name)])
        assert shown.exit_code == 1 and f"{option} {run / name} is a file of the run reported" in shown.output
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == kept
    assert CliRunner().invoke(app, ["report", str(run), "--csv", str(run / "table.csv")]).exit_code == 0
