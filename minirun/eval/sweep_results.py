"""A sweep's results read back: its rows (`load_sweep`), its tables (`sweep_table`, the ensemble-size series),
provenance and plots, and `eval` runs put side by side as a sweep's models (`load_runs`).

Apart from the running of a sweep (`eval.sweep`), so that `minirun report` reads results without the model code:
it imports no torch for runs of generated answers.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import pandas as pd

from minirun.errors import MinirunError
from minirun.eval.report import (CALIBRATION, CURVE_LIMITS, MACRO, MC2, PAIRED, by_label, cut_thinking,
                                 harness_notes, load_results, method_label, paired_difference, provenance, summarize,
                                 timed_on, unfinished_notes)
from minirun.eval.results import (RECORDED_BEFORE, integer_columns, read_results, recorded_methods, recorded_run_key,
                                  recorded_sources)
from minirun.figures import literal_text, save_figure


METRICS = ("accuracy", "ci95_low", "ci95_high", "exact_accuracy", "n", *MACRO, *PAIRED, "diff_vs_first_model",
           "diff_vs_first_model_ci95_low", "diff_vs_first_model_ci95_high", "p_vs_first_model", "n_vs_first_model",
           "tokens_per_second", "items_per_second", "tokens", "seconds", *CALIBRATION, *MC2)


def prompt_series(output: str | Path) -> list[dict[str, int]]:
    """A sweep's datasets grouped by what they share but prompts per item, each series as {label: num_prompts} in
    order of size (a series of several sizes is an ensemble-size curve); datasets of an index written before sweeps
    recorded them are left out."""
    series: dict[str, dict[str, int]] = {}
    for cell in _index_cells(Path(output)):
        if isinstance(cell.get("series"), str) and isinstance(cell.get("num_prompts"), int):
            series.setdefault(cell["series"], {})[cell["dataset"]] = cell["num_prompts"]
    return [dict(sorted(sizes.items(), key=lambda size: size[1])) for sizes in series.values()]


def size_curve(scores: pd.DataFrame, sizes: dict[str, int], metric: str = "accuracy") -> pd.DataFrame:
    """One series of `prompt_series` read off a `sweep_table`: a row per method label, a column per (model, prompts
    per item) holding `metric`; NaN where a dataset of the series has no such method (or it has not run)."""
    parts = {size: scores.loc[label].xs(metric, axis=1, level="metric") for label, size in sizes.items()
             if label in scores.index.get_level_values("dataset")}
    methods = list(dict.fromkeys(method for part in parts.values() for method in part.index))
    curve = pd.concat(parts, axis=1, names=["num_prompts", "model"]).swaplevel(axis=1)
    models = list(dict.fromkeys(scores.columns.get_level_values("model")))
    return curve.reindex(index=methods,
                         columns=pd.MultiIndex.from_product([models, list(parts)], names=["model", "num_prompts"]))


def size_rows(scores: pd.DataFrame, sizes: dict[str, int]) -> pd.DataFrame:
    """An ensemble-size series as a paper's table shows it: `size_curve`'s accuracy per method (by its label), a
    column per (model, prompts per item), per_prompt's row (its first prompt's accuracy) giving way to the mean
    single-prompt accuracy and the oracle (some prompt right), the references an ensemble is read against."""
    curve = size_curve(scores, sizes)
    rows = curve.drop(index="per_prompt", errors="ignore").rename(index=lambda m: method_label(str(m)))
    for metric, name in (("mean_single_accuracy", "mean single prompt"), ("oracle_accuracy", "oracle (any prompt)")):
        if (reference := size_reference(scores, sizes, metric)).notna().any():
            rows.loc[name] = reference
    return rows


def size_reference(scores: pd.DataFrame, sizes: dict[str, int], metric: str) -> pd.Series:
    """A single-prompt figure of a series (`mean_single_accuracy`, `oracle_accuracy`) per (model, prompts per item):
    per_prompt's row (or vote's) is the only one that carries it."""
    return size_curve(scores, sizes, metric).max()


def size_series(series: list[dict[str, int]], scores: pd.DataFrame) -> list[dict[str, int]]:
    """The series of `prompt_series` a report shows as curves: of several sizes, with some dataset scored."""
    scored = set(scores.index.get_level_values("dataset"))
    return [sizes for sizes in series if len(sizes) > 1 and scored & set(sizes)]


def repeated_sizes(table: pd.DataFrame, curves: list[dict[str, int]]) -> list[str]:
    """A warning per size of an ensemble-size curve that no item reaches (its rows fuse at most fewer prompts):
    its column repeats a smaller size's answers, which a curve would show as a point of its own."""
    notes = []
    for sizes in curves:
        for label, size in sizes.items():
            rows = table[(table["dataset"] == label) & (table["method"] != "origin")]  # origin asks one prompt
            # rows read back hold lists, or numpy arrays from parquet (not `data.items.as_list`: that package
            # imports torch, which a report does not)
            most = max((len(p) for p in rows["prompts"] if isinstance(p, (list, tuple)) or hasattr(p, "tolist")),
                       default=size)
            if most < size:
                notes.append(f"{label} asks {size} prompts per item but no item has more than {most}: its figures "
                             f"repeat those of {most} prompts (a curve's point that is not one)")
    return notes


def _run_folders(output: Path) -> list[str]:
    """The run directories a sweep's index (`sweep.json`) lists, in its order."""
    return [cell["dir"] for cell in _index_cells(output)]


def _index_cells(output: Path) -> list[dict]:
    """The runs a sweep's index (`sweep.json`) lists, in its order: model, dataset, label, directory, series."""
    return json.loads((output / "sweep.json").read_text(encoding="utf-8"))["cells"]


def _made_cells(output: Path) -> Iterator[tuple[dict, dict]]:
    """Each run of the index that has begun, with the run key its run.json records."""
    for cell in _index_cells(output):
        if (output / cell["dir"] / "run.json").is_file():
            yield cell, recorded_run_key(output / cell["dir"])


def unlisted_runs(output: str | Path, listed: set[str] | None = None) -> list[str]:
    """Run folders (`<model>/<dataset>/<label>` with a run.json) under a sweep's output that `listed` (by default
    its index's runs) does not hold: entries removed from the file or relabelled since, whose rows no table shows
    (and whose work a relabelled entry does again)."""
    output = Path(output)
    listed = set(_run_folders(output)) if listed is None else listed
    found = (str(path.parent.relative_to(output)) for path in output.glob("*/*/*/run.json"))
    return sorted(folder for folder in found if folder not in listed)


def unlisted_note(runs: list[str], output: Path) -> str:
    """`unlisted_runs` as one warning line."""
    return (f"{len(runs)} run folder{'s' if len(runs) > 1 else ''} under {output} belong{'' if len(runs) > 1 else 's'}"
            f" to no entry of the file ({', '.join(runs[:5])}{' …' if len(runs) > 5 else ''}): entries removed or "
            "relabelled since, left out of the tables (a relabelled entry runs afresh: restore its label to keep them)")


def unfinished_cells(output: str | Path) -> list[str]:
    """The runs of a sweep's index (`sweep.json`) without their done.json marker, or short of a row for an item
    their run.json lists: a report over the others must say so."""
    output = Path(output)
    out = []
    for folder in _run_folders(output):
        rows = read_results(output / folder) if (output / folder).is_dir() else pd.DataFrame({"id": []})
        if not (output / folder / "done.json").is_file() or rows["id"].nunique() < rows.attrs.get("items", 0):
            out.append(folder)
    return out


def sweep_thinking_cut(output: str | Path) -> list[str]:
    """`report.cut_thinking`'s warnings for every reasoning run of a sweep's index, each named by its directory (the
    rows of the others are not read again)."""
    output = Path(output)
    return [f"{folder} · {line}" for folder in _run_folders(output) if (output / folder).is_dir()
            and recorded_run_key(output / folder).get("answers") == "after thinking"
            for line in cut_thinking(read_results(output / folder))]


def sweep_harness_notes(output: str | Path) -> list[str]:
    """`report.harness_notes` for every run of a sweep's index, each named by its directory."""
    output = Path(output)
    return [f"{folder} · {line}" for folder in _run_folders(output) if (output / folder / "run.json").is_file()
            for line in harness_notes(recorded_run_key(output / folder), read_results(output / folder))]


def compared_harness_notes(compared: Compared) -> list[str]:
    """`report.harness_notes` for every run compared side by side, each named by its model and dataset."""
    return [f"{model} · {dataset} · {line}" for (dataset, model), run_dir in compared.dirs.items()
            for line in harness_notes(recorded_run_key(run_dir), load_results(run_dir))]


def mixed_scoring(output: str | Path) -> list[str]:
    """Per dataset and model of a sweep's index whose runs pick their options by other choice scores than origin's (a
    method's own `choice_score` in the sweep file): their differences from origin mix the scoring with the method,
    which a reader of the table must be told (`report --choice-score` re-picks every run alike)."""
    runs: dict[tuple[str, str], dict[str, str]] = {}
    for cell, key in _made_cells(Path(output)):
        runs.setdefault((cell["dataset"], cell["model"]), {})[cell["label"]] = key.get("choice_score")
    out = []
    for (dataset, model), scores in runs.items():
        origin = scores.get("origin")
        others = [f"{label} ({score})" for label, score in scores.items() if origin and score not in (None, origin)]
        if others:
            out.append(f"{dataset} · {model}: {', '.join(others)} pick by another choice score than origin ({origin}): "
                       "their differences from origin mix the scoring with the method; `report --choice-score MODE` "
                       "re-picks every run alike")
    return out


def mixed_models(output: str | Path) -> list[str]:
    """Per model label of a sweep's index whose runs were made with other weights or in other dtypes (a checkpoint
    replaced at its path, a default dtype another machine picked, under a minirun before `sweep` refused them): its
    column would compare two models, which a reader of the tables must be told."""
    made: dict[str, dict[tuple, list[str]]] = {}  # model label -> (weights digest, dtype) -> its runs
    for cell, key in _made_cells(Path(output)):
        made.setdefault(cell["model"], {}).setdefault((key.get("weights_sha256"), key.get("dtype")), []).append(
            cell["dir"])
    out = []
    for model, kinds in made.items():  # a run recorded no digest before 2026-12-05 (`weights_sha256`): it matches any
        if len({digest for digest, _ in kinds} - {None}) > 1 or len({dtype for _, dtype in kinds} - {None}) > 1:
            said = "; ".join(f"weights {digest or '?'}, {dtype}: {', '.join(dirs[:3])}{' …' if len(dirs) > 3 else ''}"
                             for (digest, dtype), dirs in kinds.items())
            out.append(f"model {model}'s runs were made with different weights or dtypes ({said}): its figures "
                       "compare different models; rerun one kind under another model label")
    return out


def sweep_provenance(output: str | Path, table: pd.DataFrame, dataset: str) -> str:
    """`report.provenance` of one dataset's table in a sweep: per model, the run key of its first cell (the others
    differ in their method's settings, and where a method sets one of the key's, its `choice_score`, in that), each
    cell's method settings under its label with the key's entries it differs in, and the machines that timed it."""
    output = Path(output)
    index = _index_cells(output)
    blocks = []
    for model in dict.fromkeys(c["model"] for c in index if c["dataset"] == dataset):
        cells = [c for c in index if c["dataset"] == dataset and c["model"] == model
                 and (output / c["dir"] / "run.json").is_file()]
        if not cells:
            continue
        shared = recorded_run_key(output / cells[0]["dir"])
        methods = {c["label"]: {**next(iter(recorded_methods(output / c["dir"]).values()), {}),
                                **{k: v for k, v in recorded_run_key(output / c["dir"]).items() if shared.get(k) != v}}
                   for c in cells}
        rows = table[(table["model"] == model) & (table["dataset"] == dataset)]
        blocks.append(provenance(shared, methods, timed_on(rows),
                                 f"model {model}'s runs", recorded_sources(output / cells[0]["dir"]), rows))
    return "".join(blocks)


def is_sweep(path: str | Path) -> bool:
    """Whether `path` is a sweep's output directory (rather than one `eval` run's)."""
    return (Path(path) / "sweep.json").is_file()


def sweep_of(run_dir: str | Path) -> Path | None:
    """The sweep whose run `run_dir` is (`<sweep>/<model>/<dataset>/<label>`, as its index names it), else None: an
    `eval` written into it would put another method's rows among the sweep's one method's."""
    run_dir = Path(run_dir).resolve()
    for root in list(run_dir.parents)[:3]:
        try:
            index = json.loads((root / "sweep.json").read_text(encoding="utf-8"))
            if any((root / cell["dir"]).resolve() == run_dir for cell in index["cells"]):
                return root
        except (OSError, ValueError, KeyError, TypeError):  # no index there, or one `load_sweep` names as damaged
            continue
    return None


def mixed_run(run_dir: Path, methods: Iterable[str]) -> MinirunError:
    """The error of a sweep's run holding the rows of several methods (`methods`, its rows'), where it holds one's."""
    return MinirunError(f"{run_dir} holds rows of the methods {', '.join(sorted(set(methods)))}, and a sweep's run "
                        "holds one method's: an `eval` wrote into it; move that run out (or delete the folder to run "
                        "it afresh), and add the method to the sweep file instead")


def load_sweep(output: str | Path) -> pd.DataFrame:
    """Every row the sweep's runs have journalled so far, with `model`, `dataset` and `label`
    (the method's label) first; runs in file order, rows in each run's order. `attrs["match"]` is
    the match rule of every run, where they share one."""
    output = Path(output)
    if not is_sweep(output):
        raise MinirunError(f"{output}: no sweep.json; pass the output directory of `minirun sweep`")
    try:
        index = json.loads((output / "sweep.json").read_text(encoding="utf-8"))
        cells = [(c["dir"], c["model"], c["dataset"], c["label"]) for c in index["cells"]]
    except (ValueError, KeyError, TypeError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MinirunError(f"{output / 'sweep.json'} is not the index `minirun sweep` writes ({type(e).__name__}): "
                           "rerun `minirun sweep` with the same file and --output to rewrite it") from None
    found = {folder: read_results(output / folder).assign(model=model, dataset=dataset, label=label)
             for folder, model, dataset, label in cells if (output / folder).is_dir()}
    for folder, part in found.items():
        if len(part) and part["method"].nunique() > 1:  # one method's run: another's rows came from an `eval` into it
            raise mixed_run(output / folder, part["method"])
    parts = [p for p in found.values() if len(p)]
    if not parts:
        raise MinirunError(f"{output}: the sweep has no results yet; run `minirun sweep` first")
    rules = {part.attrs.get("match") for part in parts}
    table = integer_columns(pd.concat(parts, ignore_index=True))  # pandas keeps attrs only where all parts' are equal
    table.attrs = {"match": rules.pop()} if len(rules) == 1 and None not in rules else {}  # `report.select_match`
    first = ["model", "dataset", "label"]
    return table[first + [c for c in table.columns if c not in first]]


# What tells compared runs' models apart, rather than their settings (a dated template's day is its model's)
MODEL_IDENTITY = ("model", "weights_sha256", "device", "template_date")


@dataclasses.dataclass(frozen=True)
class Compared:
    """Several `eval` runs as one sweep-shaped table (`load_runs`): `table` as `load_sweep` gives a sweep's, and
    each (dataset, model label)'s run directory, for provenance and warnings."""
    table: pd.DataFrame
    dirs: dict[tuple[str, str], Path]


def load_runs(run_dirs: list[Path]) -> Compared:
    """`eval` runs side by side, as a sweep's models: each run's rows with `model` (its checkpoint folder's name,
    or its run directory's where two runs of one dataset share one), `dataset` (as its run.json names it) and
    `label` (the method); models in the order given, so the first run's model is the one the others are compared
    with, item by item, on each dataset."""
    runs, seen = [], {}
    for run_dir in run_dirs:
        if (first := seen.setdefault(run_dir.resolve(), run_dir)) is not run_dir:  # also in two spellings, a link
            again = "" if str(first) == str(run_dir) else f" (again as {run_dir})"
            raise MinirunError(f"{first} is given twice{again}: give each run once")
        if is_sweep(run_dir):
            raise MinirunError(f"{run_dir} is a sweep: report it alone (its tables put its models side by side), "
                               "or give its runs' directories (<model>/<dataset>/<label>) among the eval runs")
        rows, key = load_results(run_dir), recorded_run_key(run_dir)
        dataset = str(key.get("dataset") or rows.attrs.get("dataset") or "data")
        runs.append((run_dir, rows, dataset, Path(str(key.get("model") or run_dir.resolve())).name))
    for pick in (lambda run: run[3], lambda run: run[0].resolve().name, lambda run: str(run[0])):
        labels = [pick(run) for run in runs]  # the last, their paths, always differ: no run is given twice
        if len(set(zip((run[2] for run in runs), labels))) == len(runs):
            break
    parts = [rows.assign(model=label, dataset=dataset, label=rows["method"])
             for (_, rows, dataset, _), label in zip(runs, labels)]
    rules = {part.attrs.get("match") for part in parts}
    table = integer_columns(pd.concat(parts, ignore_index=True))
    table.attrs = {"match": rules.pop()} if len(rules) == 1 and None not in rules else {}  # `report.select_match`
    first = ["model", "dataset", "label"]
    return Compared(table[first + [c for c in table.columns if c not in first]],
                    {(run[2], label): run[0] for run, label in zip(runs, labels)})


def compared_provenance(compared: Compared, table: pd.DataFrame, dataset: str) -> str:
    """`report.provenance` of each run compared on `dataset`, in the order given."""
    return "".join(provenance(recorded_run_key(run_dir), recorded_methods(run_dir),
                              timed_on(rows := table[(table["model"] == model) & (table["dataset"] == dataset)]),
                              f"run {run_dir}", recorded_sources(run_dir), rows)
                   for (name, model), run_dir in compared.dirs.items() if name == dataset)


def compared_warnings(compared: Compared) -> list[str]:
    """What a reader of runs compared side by side must know: settings besides the model that differ between the
    runs of one dataset (their differences are then not the model's alone), and methods short of their run's items."""
    warnings = []
    for dataset in dict.fromkeys(name for name, _ in compared.dirs):
        # a setting one run does not record (a minirun before it recorded it) is no difference, as on resuming
        keys = {model: {**RECORDED_BEFORE, **recorded_run_key(run_dir)} for (name, model), run_dir in
                compared.dirs.items() if name == dataset}
        differ = sorted({k for key in keys.values() for k in key if k not in MODEL_IDENTITY
                         and all(k in other for other in keys.values())
                         and len({json.dumps(other[k], sort_keys=True) for other in keys.values()}) > 1})
        one_model = len({(key.get("model"), key.get("weights_sha256")) for key in keys.values()}) == 1
        if differ and one_model:
            warnings.append(f"the runs compared on {dataset} differ in {', '.join(differ)} (run.json run_key), with "
                            "one model: their differences are those settings'")
        elif differ:
            warnings.append(f"the runs compared on {dataset} differ in {', '.join(differ)} besides the model (run.json "
                            "run_key): their differences are not the models' alone")
    for (dataset, model), run_dir in compared.dirs.items():
        warnings += unfinished_notes(load_results(run_dir), f"{model} · ", f" of {dataset}")
    return warnings


def sweep_table(df: pd.DataFrame) -> pd.DataFrame:
    """Scores per (dataset, method label) row with one column group per model: METRICS as
    `report.summarize` defines them (the comparisons with the label "origin" of the same model and
    dataset), in file order. A method's label stands for its name, so two runs of one method with
    different options stay apart. On each dataset every model is compared, item by item, with the first one that
    answered it (the file's first model, or the first run given of that dataset)."""
    scores = {}
    for (dataset, model), group in df.groupby(["dataset", "model"], sort=False):
        first = df.loc[df["dataset"] == dataset, "model"].iloc[0]
        summary = summarize(by_label(group.drop(columns=["model", "dataset"])))
        reference = df[(df["dataset"] == dataset) & (df["model"] == first)]
        for label, row in summary.iterrows():
            versus = {} if model == first else paired_difference(
                _verdicts(group[group["label"] == label]), _verdicts(reference[reference["label"] == label]),
                "first_model")
            scores[(dataset, label), model] = row.reindex(list(METRICS)).fillna(pd.Series(versus, dtype=float))
    rows = list(dict.fromkeys(zip(df["dataset"], df["label"])))
    models = list(dict.fromkeys(df["model"]))
    columns = pd.MultiIndex.from_product([models, METRICS], names=["model", "metric"])
    table = pd.DataFrame(index=pd.MultiIndex.from_tuples(rows, names=["dataset", "method"]), columns=columns,
                         dtype=float)
    for (row, model), values in scores.items():
        table.loc[row, model] = values.to_numpy(dtype=float)
    return table


def _verdicts(rows: pd.DataFrame) -> pd.Series:
    return rows.set_index("id")["correct"].astype(float)


@literal_text
def plot_sweep(df: pd.DataFrame, path: str | Path, curves: list[dict[str, int]] = (), title: str = "") -> None:
    """Accuracy per method with its 95% interval, one bar per model, one panel per dataset, saved to `path`; then a
    panel per ensemble-size series of `curves` (`size_series`), accuracy against prompts per item, a line per
    model and method, its intervals as a band, and the mean single-prompt accuracy dashed. `title`, where `report`
    rescored the rows, says how, per dataset where they differ."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = sweep_table(df)
    datasets = list(dict.fromkeys(table.index.get_level_values("dataset")))
    models = list(dict.fromkeys(table.columns.get_level_values("model")))
    width = 0.8 / len(models)
    most = max(len(table.loc[d]) for d in datasets)
    fig = Figure(figsize=(max(6.0, 0.6 * most * len(models) + 2), 3.5 * (len(datasets) + len(curves))),
                 layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global backend, safe in servers and tests
    axes = fig.subplots(len(datasets) + len(curves), 1, squeeze=False)[:, 0]
    for ax, sizes in zip(axes[len(datasets):], curves):
        _plot_curve(ax, table, sizes)
    for ax, dataset in zip(axes, datasets):
        part = table.loc[dataset]
        for i, model in enumerate(models):
            ran = part[(model, "accuracy")].notna().to_numpy()  # a cell never run has no bar, not a bar at 0
            xs = [x + (i - (len(models) - 1) / 2) * width for x, kept in zip(range(len(part)), ran) if kept]
            acc, low, high = (part[(model, m)][ran] for m in ("accuracy", "ci95_low", "ci95_high"))
            errors = [(acc - low).clip(lower=0), (high - acc).clip(lower=0)]  # Wilson's bound can miss 0 by 1e-17
            ax.bar(xs, acc, width, yerr=errors, capsize=3, label=model)
        # labels end under their bars, and the legend sits beside the panel: centred long labels ran into each
        # other, and a legend inside covered the bars and whiskers near 1
        ax.set_xticks(range(len(part)), list(map(method_label, part.index)), rotation=30, ha="right",
                      rotation_mode="anchor")
        ax.set(ylim=(0, 1), ylabel="accuracy", title=dataset)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def _plot_curve(ax, table: pd.DataFrame, sizes: dict[str, int]) -> None:
    """One ensemble-size series on `ax`: accuracy against prompts per item, a line per (model, method) with its
    Wilson band (per_prompt left out: its accuracy is its first prompt's, origin's), and its mean single prompt."""
    accuracy, low, high = (size_curve(table, sizes, metric) for metric in ("accuracy", "ci95_low", "ci95_high"))
    several = len(dict.fromkeys(accuracy.columns.get_level_values("model"))) > 1
    for method in accuracy.index.drop("per_prompt", errors="ignore"):
        for model in dict.fromkeys(accuracy.columns.get_level_values("model")):
            ys = accuracy.loc[method, model]
            line, = ax.plot(ys.index, ys.to_numpy(), marker="o",
                            label=f"{model} · {method_label(method)}" if several else method_label(method))
            ax.fill_between(ys.index, low.loc[method, model].to_numpy(dtype=float),
                            high.loc[method, model].to_numpy(dtype=float), color=line.get_color(), alpha=0.12)
    single = size_reference(table, sizes, "mean_single_accuracy")
    for model in dict.fromkeys(single.index.get_level_values("model")):
        if single[model].notna().any():
            ax.plot(single[model].index, single[model].to_numpy(), linestyle="--", color="grey",
                    label=f"{model} · mean single prompt" if several else "mean single prompt")
    ax.set_xticks(list(sizes.values()))
    ax.set(ylim=CURVE_LIMITS, xlabel="prompts per item", ylabel="accuracy", title=", ".join(sizes))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
