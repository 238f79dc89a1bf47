"""Subject popularity (PopQA's `s_pop`, a plain item's `popularity`): carried by items and rows, kept out of what
keys a run, and scored by `report` per popularity bin, each method against origin on the bin's items."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import minirun
from minirun.cli import app
from minirun.errors import MinirunError
from minirun.eval.data import item_record, load_dataset, write_jsonl
from minirun.eval.data.items import item_from_dict
from minirun.eval.data.openqa import load_popqa
from minirun.eval.loop import evaluate, items_digest
from minirun.eval.report import by_popularity, figure, popularity_latex, report_json, unrated_note
from minirun.eval.stats import mcnemar_exact

SETTINGS = dict(dataset="sample-qa", num_prompts=2, few_shot_k=1, max_new_tokens=3, progress=False, chat=False)


@pytest.fixture(scope="module")
def tiny(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["qwen2"])


def test_popqa_items_carry_their_subject_s_popularity_and_a_plain_item_may_give_one(tmp_path):
    rows = pd.DataFrame({"id": [1, 2], "subj": ["A", "B"], "prop": ["occupation"] * 2, "question": ["A?", "B?"],
                         "possible_answers": ['["x"]', '["y"]'], "s_pop": [142, None]})
    rows.to_parquet(tmp_path / "popqa.parquet")
    assert [item.popularity for item in load_popqa(path=tmp_path / "popqa.parquet")] == [142.0, None]
    rows.assign(s_pop=["3,071", ""]).to_json(tmp_path / "text.jsonl", orient="records", lines=True)  # saved as text
    assert [item.popularity for item in load_popqa(path=tmp_path / "text.jsonl")] == [3071.0, None]
    for bad, said in ((["many", "1"], "'many'"), ([[1, 2], 3], r"\[1, 2\]")):
        rows.assign(s_pop=bad).to_json(tmp_path / "bad.jsonl", orient="records", lines=True)
        with pytest.raises(MinirunError, match=rf"record 1: field 's_pop' must be a number >= 0 .*got {said}"):
            load_popqa(path=tmp_path / "bad.jsonl")
    plain = {"id": "q", "question": "Q?", "paraphrases": [], "answers": ["a"]}
    assert item_from_dict({**plain, "popularity": 3}).popularity == 3.0
    for bad in (-1, "many", True, float("nan"), 10 ** 400):  # the last beyond any float
        with pytest.raises(ValueError, match="field 'popularity' must be a number >= 0"):
            item_from_dict({**plain, "popularity": bad})
    known = item_from_dict({**plain, "popularity": 3})
    assert item_record(known)["popularity"] == 3.0 and "popularity" not in item_record(item_from_dict(plain))
    write_jsonl([known], tmp_path / "items.jsonl")  # a paraphrased PopQA file keeps it
    assert load_dataset(tmp_path / "items.jsonl") == [known]


def test_rows_carry_the_popularity_and_it_keys_neither_a_run_nor_a_sweep_cell(tiny, tmp_path):
    """A run resumed over the same items with popularities (a PopQA run begun before items had one) is the same
    run, and a finished PopQA sweep cell stays finished: no answer depends on the popularity."""
    from dataclasses import replace

    from minirun.eval import sweep as sweep_module
    from minirun.eval.sweep_spec import parse_sweep

    items = load_dataset("sample-qa")[:3]
    rated = [replace(item, popularity=10.0 ** i) for i, item in enumerate(items)]
    prompts = {item.id: [item.question] for item in items}
    assert items_digest(items, prompts) == items_digest(rated, prompts)
    evaluate(tiny, items, ["origin"], tmp_path, **SETTINGS)
    table = evaluate(tiny, rated, ["origin", "avg"], tmp_path, **SETTINGS)
    avg = table[table["method"] == "avg"].set_index("id")["popularity"]
    assert avg.to_dict() == {item.id: item.popularity for item in rated}
    spec = parse_sweep({"models": [{"path": "owner/model"}], "datasets": [{"name": "sample-qa"}],
                        "methods": [{"name": "origin"}]})
    cell = sweep_module.cells(spec, "out")[0]
    assert sweep_module.cell_key(cell, spec, sweep_module.Data(items, None, None)) == \
        sweep_module.cell_key(cell, spec, sweep_module.Data(rated, None, None))
    assert sweep_module.cell_key(cell, spec, sweep_module.Data(items, items, None)) == \
        sweep_module.cell_key(cell, spec, sweep_module.Data(items, rated, None))  # nor its few-shot examples'


def _rows(popularity: list[float], origin: list[bool], avg: list[bool]) -> pd.DataFrame:
    rows = [{"id": f"q{i}", "method": method, "prompts": [], "generated": "x", "answer": "x", "exact": right,
             "correct": right, "tokens": 2, "seconds": 0.5, "popularity": views, "task": "qa"}
            for method, verdicts in (("origin", origin), ("avg", avg))
            for i, (views, right) in enumerate(zip(popularity, verdicts))]
    return pd.DataFrame(rows)


def test_methods_are_scored_per_popularity_quantile_and_against_origin_on_its_items():
    """Quartiles of the items' popularity, labelled by their range; a bin's accuracy and its paired difference
    from origin are those of its items alone (exact McNemar p, Holm over every method and bin)."""
    views = [5, 50, 500, 5000, 6, 60, 600, 6000]  # two items a quartile
    origin = [False, False, True, True, False, True, True, True]
    avg = [True, True, True, True, True, True, False, True]
    scores = by_popularity(_rows(views, origin, avg))
    bins = list(dict.fromkeys(scores.index.get_level_values("popularity")))
    assert bins == ["1: 5–39", "2: 39–280", "3: 280–1,700", "4: 1,700–6,000"]  # numpy's interpolated quartiles
    lowest = scores.loc[("avg", bins[0])]
    assert (lowest["accuracy"], lowest["n"], lowest["diff_vs_origin"], lowest["n_vs_origin"]) == (1.0, 2, 1.0, 2)
    assert lowest["p_vs_origin"] == mcnemar_exact(2, 0) and scores.loc[("origin", bins[0]), "accuracy"] == 0.0
    p = np.array([scores.loc[("avg", b), "p_vs_origin"] for b in bins])
    assert scores.loc[("avg", bins[0]), "p_vs_origin_holm"] == pytest.approx(min(1.0, p.min() * 4))
    assert np.isnan(scores.loc[("origin", bins[0]), "diff_vs_origin"])
    assert list(report_json(_rows(views, origin, avg))["avg"]["by_popularity"]) == bins
    with pytest.raises(MinirunError, match="results have no 'popularity' column"):
        by_popularity(_rows(views, origin, avg).drop(columns="popularity"))


def test_report_prints_the_bins_and_names_items_without_a_popularity(tmp_path):
    """A run's report shows its methods per popularity bin; items whose rows hold none (rows made before minirun
    recorded it) are counted in a warning, and an item with it in some of its rows counts in every method's bin."""
    from minirun.eval.results import ResultStore

    rows = _rows([5, 50, 500, 5000], [False, True, True, True], [True, True, False, True])
    rows = rows.assign(**{c: None for c in ("relation", "machine")})
    rows.loc[(rows["id"] == "q0") & (rows["method"] == "origin"), "popularity"] = np.nan  # an older row of q0
    rows.loc[rows["id"] == "q3", "popularity"] = np.nan  # an item with none at all
    with ResultStore(tmp_path / "run", {"model": "m", "dataset": "popqa"}, item_ids=["q0", "q1", "q2", "q3"]) as store:
        store.add_batch([{k: v for k, v in row.items() if not (k == "popularity" and pd.isna(v))}
                         for row in rows.to_dict("records")])
        store.finalize()
    assert unrated_note(rows) == ("1 of the 4 items carry no popularity: the popularity bins leave them out (rows or a "
                                  "paraphrase file's lines made before minirun recorded PopQA's s_pop hold none: run "
                                  "those items, or rewrite them, into a new directory or file for them)")
    shown = CliRunner().invoke(app, ["report", str(tmp_path / "run")], env={"COLUMNS": "250"})
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "per popularity of the question's subject" in text and "1 of the 4 items carry no popularity" in text
    assert by_popularity(rows).loc[("origin", "1: 5–28"), "n"] == 1  # q0's origin row scored by its other row's
    as_json = json.loads(CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--json"]).stdout)
    assert set(as_json["avg"]["by_popularity"]) == {"1: 5–28", "2: 28–50", "3: 275–500"}  # none in (50, 275]


def test_equal_popularities_make_one_bin_and_small_ones_keep_their_figures():
    one = by_popularity(_rows([7, 7, 7], [False, True, True], [True, True, True]))
    assert list(one.index.get_level_values("popularity").unique()) == ["1: 7–7"]
    assert one.loc[("avg", "1: 7–7"), "n"] == 3
    fractions = by_popularity(_rows([0.25, 0.5, 0.75, 1.0], [True] * 4, [True] * 4))
    assert list(fractions.index.get_level_values("popularity").unique())[0] == "1: 0.25–0.438"


def test_models_compared_share_one_set_of_bins_drawn_from_every_row(tmp_path):
    """Runs of two models side by side: the bins are the dataset's, the same for both, and a model whose rows of
    before hold no popularity has its items binned by the other's rows (the same items, the same subjects)."""
    from minirun.eval.results import ResultStore

    views = [5, 50, 500, 5000, 6, 60, 600, 6000]
    rows = _rows(views, [True] * 8, [False] * 8).assign(relation=None, machine=None)
    for name, held in (("a", rows), ("b", rows.drop(columns="popularity"))):
        with ResultStore(tmp_path / name, {"model": f"/m/{name}", "dataset": "popqa"},
                         item_ids=[f"q{i}" for i in range(8)]) as store:
            store.add_batch(held.to_dict("records"))
            store.finalize()
    shown = CliRunner().invoke(app, ["report", str(tmp_path / "a"), str(tmp_path / "b"), "--json"])
    assert shown.exit_code == 0, shown.output
    scores = json.loads(shown.stdout)["popqa"]
    bins = {model: scores[model]["avg"]["by_popularity"] for model in ("a", "b")}
    assert list(bins["a"]) == list(bins["b"]) and [b["n"] for b in bins["b"].values()] == [2, 2, 2, 2]
    assert "carry no popularity" not in shown.stderr


def test_a_popqa_run_with_no_popularity_says_why_it_has_no_bins(tmp_path):
    rows = _rows([5, 50], [True, False], [True, True]).drop(columns="popularity")
    assert unrated_note(rows, "", "popqa").startswith("none of the 2 PopQA items carry a popularity, so no popularity "
                                                      "bins: rows or a paraphrase file's lines made before minirun")
    assert unrated_note(rows, "", "sample-qa") is None


def _long_tail() -> pd.DataFrame:
    """40 items, 10 a quartile: avg right on all, origin wrong on the least popular ten only."""
    return _rows(list(range(1, 41)), [False] * 10 + [True] * 30, [True] * 40)


def test_latex_holds_the_long_tail_table_with_origin_first_and_significant_gains_marked():
    tex = popularity_latex(_long_tail(), "popqa")
    cells = {line.split(" & ")[0]: [c.removesuffix(r" \\") for c in line.split(" & ")[1:]]
             for line in tex.splitlines() if " & " in line}
    assert cells.pop("Popularity") == ["$n$", "origin", "avg"]
    assert list(cells) == ["1--11", "11--20", "20--30", "30--40"]  # least popular first, as the terminal's 1: to 4:
    # McNemar's exact p on the first bin, 2 x 0.5^10, times 4 (Holm over avg's 4 bins): marked; the others tie
    assert cells["1--11"] == ["10", "0.000", r"1.000$^\dagger$"]
    assert cells["11--20"] == ["10", "1.000", "1.000"]
    assert popularity_latex(_long_tail().drop(columns="popularity"), "popqa") == ""


def test_the_plot_of_a_rated_run_has_a_panel_of_accuracy_per_popularity_bin():
    from matplotlib.container import ErrorbarContainer

    fig = figure(_long_tail())
    assert len(fig.axes) == 3
    lines = [c for c in fig.axes[2].containers if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in lines] == ["origin", "avg"]
    assert [list(c.lines[0].get_ydata()) for c in lines] == [[0.0, 1.0, 1.0, 1.0], [1.0] * 4]
    assert [t.get_text() for t in fig.axes[2].get_xticklabels()] == ["1–11", "11–20", "20–30", "30–40"]
    unrated = _long_tail().iloc[:4].assign(method="vote", popularity=np.nan, id=[f"u{i}" for i in range(4)])  # alone
    lines = [c for c in figure(pd.concat([_long_tail(), unrated])).axes[2].containers
             if isinstance(c, ErrorbarContainer)]
    assert [c.get_label() for c in lines] == ["origin", "avg"]
    assert len(figure(_long_tail().drop(columns="popularity")).axes) == 2
    assert len(figure(_long_tail().assign(model="m")).axes) == 2  # models side by side: the bars alone


def test_report_writes_the_long_tail_table_and_chart(tmp_path):
    from minirun.eval.results import ResultStore

    rows = _long_tail().assign(relation=None, machine=None)
    with ResultStore(tmp_path / "run", {"model": "m", "dataset": "popqa"}, item_ids=list(rows["id"].unique())) as store:
        store.add_batch(rows.to_dict("records"))
        store.finalize()
    shown = CliRunner().invoke(app, ["report", str(tmp_path / "run"), "--latex", str(tmp_path / "t.tex"), "--plot",
                                     str(tmp_path / "t.png")])
    assert shown.exit_code == 0, shown.output
    tex = (tmp_path / "t.tex").read_text()
    assert tex.count(r"\begin{table}") == 2 and "accuracy per popularity bin" in tex
    assert (tmp_path / "t.png").stat().st_size > 0
