"""Sweeps: every method × dataset × model of one TOML file (`sweep_spec`) in one resumable run.

Each (model, dataset, method label) is an ordinary `evaluate` run in its
own directory `<output>/<model>/<dataset>/<label>/` (its own journal and run key: one method may
appear twice with different options), so resuming and `torchrun` sharding are the eval loop's; a
`done.json` beside a finished run lets a restart skip even loading a model whose runs are all done.
A dataset's runs on one model go together (`evaluate_runs`), so methods that prefill alike (per_prompt,
avg, max, …) prefill each batch once across cells, as they do within one `eval`.
The combined table (`results.parquet` + `results.csv`, with `model`, `dataset` and `label` columns)
is rebuilt from the runs' journals, so it is the same however often the sweep was interrupted.
"""
from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
from collections.abc import Callable
from datetime import date
from pathlib import Path

import pandas as pd

from minirun.checkpoints.hub import resolve_model
from minirun.checkpoints.loader import auto_device, checked_device
from minirun.engine.allocator import return_freed_memory
from minirun.engine.llm import LLM
from minirun.errors import MinirunError
from minirun.eval.data import Item, benchmark_source, load_cited, load_jsonl
from minirun.eval.loop import (Run, check_paraphrased, check_resumable, evaluate_runs, prepare, process_group, ranks,
                                subject_heads, wait_for_ranks)
from minirun.eval.matching import matcher_name
from minirun.eval.prompts import MINIRUN, prompt_format
from minirun.eval.report import (CALIBRATION, MACRO, PAIRED, cut_thinking, load_results, method_label,
                                 paired_difference, provenance, summarize, timed_on, unfinished)
from minirun.eval.results import (OtherRun, integer_columns, journal_paths, merge, read_results, recorded_methods,
                                  recorded_run_key, recorded_sources)
from minirun.eval.sweep_spec import DatasetSpec, Generation, MethodSpec, ModelSpec, Selection, Sweep
from minirun.methods import EnsembleOptions
from minirun.paths import write_atomic

log = logging.getLogger(__name__)

METRICS = ("accuracy", "ci95_low", "ci95_high", "exact_accuracy", "n", *MACRO, *PAIRED, "diff_vs_first_model",
           "diff_vs_first_model_ci95_low", "diff_vs_first_model_ci95_high", "p_vs_first_model", "n_vs_first_model",
           "tokens_per_second", "tokens", "seconds", *CALIBRATION)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One `evaluate` run of the sweep."""
    model: ModelSpec
    dataset: DatasetSpec
    method: MethodSpec
    dir: Path


def cells(sweep: Sweep, output: str | Path) -> list[Cell]:
    """Every run of the sweep, model by model (so each model loads once), in file order."""
    output = Path(output)
    return [Cell(m, d, x, output / m.label / d.label / x.label)
            for m in sweep.models for d in sweep.datasets for x in sweep.methods]


@dataclasses.dataclass(frozen=True)
class Data:
    """A dataset as its cells run it."""
    items: list[Item]  # the test items, the first max_samples
    few_shot: list[Item] | None  # the few-shot items a file names (None: the dataset's own)
    source: dict | None  # a Hub dataset's repo, revision and commit (`dataset_source`), for run.json to cite
    few_shot_source: dict | None = None  # likewise for the Hub examples a benchmark asks a file's items with


def _load_items(dataset: DatasetSpec) -> Data:
    """A dataset's test items and few-shot items, a Hub one's read at the commit its revision is at now."""
    items, source = load_cited(dataset.name, dataset.subset, dataset.skip_bad)
    items = items[:dataset.max_samples] if dataset.max_samples is not None else items
    if dataset.few_shot is not None:
        return Data(items, load_jsonl(dataset.few_shot, examples=True), source)
    return Data(items, None, source, benchmark_source(dataset.benchmark, source) if dataset.benchmark else None)


@dataclasses.dataclass(frozen=True)
class CellState:
    """Where one run of the sweep stands: what `run_sweep` would do with it now."""
    cell: Cell
    items: int  # the items it answers
    answered: int  # of them, those its directory holds a row for
    finished: bool  # done.json names the file's settings for it and every item has its row: nothing to run
    changed: bool  # it finished under other settings or data (done.json names another key): it runs again
    refused: tuple[str, ...] = ()  # settings its rows were made with that the file changed: the sweep will refuse it


def _load_data(sweep: Sweep, labels: set[str]) -> dict[str, Data]:
    """The items and few-shot items of the datasets of these labels, each checked to fit the file's methods, before
    any model is fetched or loaded."""
    chosen = [d for d in sweep.datasets if d.label in labels]
    data = {d.label: _load_items(d) for d in chosen}
    for dataset in chosen:
        try:
            check_paraphrased(data[dataset.label].items, [m.name for m in sweep.methods], dataset.data,
                              dataset.num_prompts, dataset.original)
        except MinirunError as e:
            raise MinirunError(f"dataset {dataset.label}: {e}") from None
    return data


def _check_output(output: Path) -> None:
    if journal_paths(output) or (output / "run.json").is_file():  # its results.parquet would be overwritten
        raise MinirunError(f"{output} holds an `eval` run: give the sweep another output directory")


def survey(sweep: Sweep, output: str | Path, only: Selection = Selection()) -> list[CellState]:
    """Every run of the sweep (`only` those selected) and where it stands in `output`, reading its files and writing
    none: what a sweep started now would run (`minirun sweep --dry-run`), without fetching or loading a model."""
    output = Path(output)
    _check_output(output)
    mine = _selected(cells(sweep, output), only)
    data = _load_data(sweep, {c.dataset.label for c in mine})
    return [_state(cell, cell_key(cell, sweep, data[cell.dataset.label]), data[cell.dataset.label].items,
                   sweep.generation) for cell in mine]


def _run_settings(cell: Cell, gen: Generation) -> dict:
    """What of a cell's run key (`loop.prepare`) its sweep file sets without a model: a dry run compares these with
    the key its rows were made under, and names the changes the sweep would refuse."""
    return {"num_prompts": cell.dataset.num_prompts, "original": cell.dataset.original,
            "max_new_tokens": gen.max_new_tokens, "bidirectional": cell.dataset.match == "bidirectional",
            "share_prefix": gen.share_prefix, "chat": gen.chat, "thinking": gen.thinking,
            "choice_format": cell.dataset.choice_format}


def _selected(plan: list[Cell], only: Selection) -> list[Cell]:
    return [c for c in plan if only.takes(c.model.label, c.dataset.label)]


def _state(cell: Cell, key: str, items: list[Item], gen: Generation | None = None) -> CellState:
    """Finished only where done.json names `key` and the journals still hold every item's row (a row deleted to
    redo it, as a corrupt-line error advises, makes it unfinished again); a marker no sweep wrote is no marker, and
    the eval loop resumes the cell from its rows."""
    ids = {item.id for item in items}
    answered = set(read_results(cell.dir)["id"]) & ids if cell.dir.is_dir() else set()
    try:
        marked = json.loads((cell.dir / "done.json").read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        marked = None
    finished = marked == key and answered == ids
    refused = _refused(cell, gen) if answered and gen is not None and not finished else ()
    return CellState(cell, len(ids), len(answered), finished, marked is not None and marked != key, refused)


def _refused(cell: Cell, gen: Generation) -> tuple[str, ...]:
    """The settings a cell's rows were made under that the file now changes, as the eval loop names them when it
    refuses to mix rows: the run's (`_run_settings`) and its method's plain options (a layer or bias the loop
    resolves with the model is left to the run's own check)."""
    made = recorded_run_key(cell.dir)
    changed = [f"{k}: {made[k]!r} -> {v!r}" for k, v in _run_settings(cell, gen).items() if k in made and made[k] != v]
    recorded = recorded_methods(cell.dir).get(cell.method.name, {})
    default = EnsembleOptions()
    changed += [f"{cell.method.name}'s {k}: {recorded[k]!r} -> {v!r}" for k in ("positions", "num_samples",
                                                                                 "fusion_alpha")
                if k in recorded and recorded[k] != (v := cell.method.options.get(k, getattr(default, k)))]
    return tuple(changed)


def cell_key(cell: Cell, sweep: Sweep, data: Data) -> str:
    """Everything a cell's rows depend on, the items' and few-shot examples' content included (an edited
    file changes no setting); `done.json` holds it, so a changed cell is rerun (the eval loop then
    resumes it or refuses a conflicting change)."""
    model = dataclasses.asdict(cell.model)
    del model["batch_size"]  # a model's own batch size (its cache's fit), as eval's, changes no row's meaning
    model["device"] = str(auto_device(cell.model.device))  # "auto" keyed as what it ran on: cpu keys stay as they were
    if Path(cell.model.path).is_dir():
        model["path"] = str(Path(cell.model.path).resolve())
    # finished keys stay valid: skip_bad's effect is in the items, which the key holds, and keys written before
    # datasets had a benchmark hold none
    dataset = {k: v for k, v in dataclasses.asdict(cell.dataset).items()
               if k != "skip_bad" and not (k == "benchmark" and v is None)}
    generation = {k: v for k, v in dataclasses.asdict(sweep.generation).items()  # nor before template_date
                  if not (k == "template_date" and v is None)}
    key = {"model": model, "dataset": dataset, "method": dataclasses.asdict(cell.method),
           "generation": generation, "items": [dataclasses.asdict(i) for i in data.items],
           "few_shot": None if data.few_shot is None else [dataclasses.asdict(i) for i in data.few_shot],
           "matcher": matcher_name()}  # a cell finished under another answer matcher is not this one
    source = cell.dataset.asked_as or cell.dataset.data  # whose prompts these are
    if subject_heads(source, data.few_shot):  # MMLU's head per subject: not a cell finished under one for all
        key["subject_heads"] = True  # (other cells' keys stay as they were, so their finished runs stay finished)
    if (fmt := prompt_format(source, cell.dataset.choice_format)) != MINIRUN:  # nor one finished in minirun's words
        key["prompt_format"] = fmt.name
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def series_key(dataset: DatasetSpec) -> str:
    """What a dataset entry shares with the entries that differ from it in prompts per item alone (an ensemble-size
    curve, `num_prompts = [2, 3, 5]`, or entries written apart): a hash of its settings but label and num_prompts."""
    settings = {k: v for k, v in dataclasses.asdict(dataset).items() if k not in ("label", "num_prompts")}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def prompt_series(output: str | Path) -> list[dict[str, int]]:
    """A sweep's datasets grouped by what they share but prompts per item, each series as {label: num_prompts} in
    order of size (a series of several sizes is an ensemble-size curve); datasets of an index written before sweeps
    recorded them are left out."""
    index = json.loads((Path(output) / "sweep.json").read_text(encoding="utf-8"))
    series: dict[str, dict[str, int]] = {}
    for cell in index["cells"]:
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


def unfinished_cells(output: str | Path) -> list[str]:
    """The runs of a sweep's index (`sweep.json`) without their done.json marker, or short of a row for an item
    their run.json lists: a report over the others must say so."""
    output = Path(output)
    index = json.loads((output / "sweep.json").read_text(encoding="utf-8"))
    out = []
    for folder in (c["dir"] for c in index["cells"]):
        rows = read_results(output / folder) if (output / folder).is_dir() else pd.DataFrame({"id": []})
        if not (output / folder / "done.json").is_file() or rows["id"].nunique() < rows.attrs.get("items", 0):
            out.append(folder)
    return out


def sweep_thinking_cut(output: str | Path) -> list[str]:
    """`report.cut_thinking`'s warnings for every reasoning run of a sweep's index, each named by its directory (the
    rows of the others are not read again)."""
    output = Path(output)
    index = json.loads((output / "sweep.json").read_text(encoding="utf-8"))
    return [f"{folder} · {line}" for folder in (c["dir"] for c in index["cells"]) if (output / folder).is_dir()
            and recorded_run_key(output / folder).get("answers") == "after thinking"
            for line in cut_thinking(read_results(output / folder))]


def sweep_provenance(output: str | Path, table: pd.DataFrame, dataset: str) -> str:
    """`report.provenance` of one dataset's table in a sweep: per model, the run key its cells share (they differ
    only in their method's settings), each cell's method settings under its label, and the machines that timed it."""
    output = Path(output)
    index = json.loads((output / "sweep.json").read_text(encoding="utf-8"))
    blocks = []
    for model in dict.fromkeys(c["model"] for c in index["cells"] if c["dataset"] == dataset):
        cells = [c for c in index["cells"] if c["dataset"] == dataset and c["model"] == model
                 and (output / c["dir"] / "run.json").is_file()]
        if not cells:
            continue
        methods = {c["label"]: next(iter(recorded_methods(output / c["dir"]).values()), {}) for c in cells}
        rows = table[(table["model"] == model) & (table["dataset"] == dataset)]
        blocks.append(provenance(recorded_run_key(output / cells[0]["dir"]), methods, timed_on(rows),
                                 f"model {model}'s runs", recorded_sources(output / cells[0]["dir"])))
    return "".join(blocks)


def run_sweep(sweep: Sweep, output: str | Path, load: Callable[[ModelSpec], LLM], *, progress: bool = True,
              on_row: Callable[[dict], None] | None = None, only: Selection = Selection()) -> pd.DataFrame | None:
    """Run every cell not yet finished (of those `only` selects), each model loaded once (by `load`) and only if it
    has work.

    Datasets load first, and every model with work is fetched (`resolve_model`), so a bad file or a
    mistyped hub id fails before any model runs. Under `torchrun` every cell is
    sharded across the ranks; rank 0 writes the combined table (every cell's rows so far, whoever ran them: the
    index names the whole file's cells) and returns it, other ranks None.
    """
    output = Path(output)
    _check_output(output)
    rank, world_size = ranks()
    plan = cells(sweep, output)
    chosen = _selected(plan, only)
    data = _load_data(sweep, {c.dataset.label for c in chosen})
    if rank == 0:
        index = {"cells": [{"model": c.model.label, "dataset": c.dataset.label, "label": c.method.label,
                            "dir": str(c.dir.relative_to(output)), "num_prompts": c.dataset.num_prompts,
                            "series": series_key(c.dataset)} for c in plan]}
        write_atomic(output / "sweep.json", lambda tmp: tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8"))
    keys = {c.dir: cell_key(c, sweep, data[c.dataset.label]) for c in chosen}
    # before a rank writes
    todo = [c for c in chosen if not _state(c, keys[c.dir], data[c.dataset.label].items).finished]
    for model in {id(c.model): c.model for c in todo}.values():  # a later model's missing GPU: before hours of work
        try:
            checked_device(model.device)
            resolve_model(model.path)  # a mistyped or unreachable hub id too: every download before the first run
        except MinirunError as e:
            raise MinirunError(f"model {model.label}: {e}") from None
    with process_group(world_size):
        for model in sweep.models:
            mine = [c for c in todo if c.model is model]
            if not mine:
                continue
            llm = load(model)
            groups = {d.label: [c for c in mine if c.dataset is d] for d in sweep.datasets}
            days = {d.label: sweep.generation.template_date or _template_day(
                [c for c in plan if c.model is model and c.dataset is d]) for d in sweep.datasets}
            prepared = {label: [_prepare(llm, cell, data[label], sweep.generation, days[label]) for cell in group]
                        for label, group in groups.items() if group}
            for label, runs in prepared.items():  # every cell of the model checked before any of them runs
                for cell, run in zip(groups[label], runs):
                    _check(cell, run, rank)
            for label, runs in prepared.items():
                group = groups[label]
                log.info(f"sweep {model.label} · {label}: {', '.join(c.method.label for c in group)} "
                         f"({len(group)} of {len(plan)} runs)")
                _run_cells(llm, group, runs, rank, world_size, progress, on_row)
                if rank == 0:
                    for cell in group:
                        write_atomic(cell.dir / "done.json", lambda tmp, c=cell: tmp.write_text(
                            json.dumps({"key": keys[c.dir]}) + "\n", encoding="utf-8"))
            # Freed before the next model loads, not after: compiling leaves reference cycles around a model
            # (Dynamo's tracing state holds its modules) that only a full collection frees, and none may come first.
            del llm
            gc.collect()
            return_freed_memory()
    if rank != 0:
        return None
    table = load_sweep(output)
    write_atomic(output / "results.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    write_atomic(output / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table


def _template_day(cells: list[Cell]) -> str:
    """The day one model's cells of one dataset render a dated chat template at: the earliest any of them recorded
    (a sweep resumed another day), else today, so the methods a table compares ask the same words."""
    return min((day for c in cells if (day := recorded_run_key(c.dir).get("template_date"))),
               default=date.today().isoformat())


def _prepare(llm: LLM, cell: Cell, data: Data, gen: Generation, template_date: str) -> Run:
    """The cell as an `eval` run of its one method; a setting that does not fit its dataset is named with it
    (the first model's cells are all prepared before any runs, and every model's cells are the same product)."""
    try:
        return prepare(llm, data.items, [cell.method.name], cell.dir, dataset=cell.dataset.data,
                       num_prompts=cell.dataset.num_prompts, original=cell.dataset.original,
                       few_shot_k=cell.dataset.few_shot_k, fewshot_items=data.few_shot, data_source=data.source,
                       few_shot_source=data.few_shot_source,
                       bidirectional=cell.dataset.match == "bidirectional", choice_format=cell.dataset.choice_format,
                       benchmark=cell.dataset.asked_as,
                       batch_size=cell.model.batch_size or gen.batch_size, max_new_tokens=gen.max_new_tokens,
                       share_prefix=gen.share_prefix,
                       chat=gen.chat, thinking=gen.thinking, template_date=template_date, **cell.method.options)
    except MinirunError as e:
        raise MinirunError(f"sweep run {cell.model.label}/{cell.dataset.label}/{cell.method.label}: {e}") from None


def _check(cell: Cell, run: Run, rank: int) -> None:
    """Refuse, before any cell runs, a cell whose directory holds rows the file's settings would not make
    now, naming the cell and the way out a sweep has (the eval loop would name eval's)."""
    try:
        check_resumable(run, rank)
    except OtherRun as e:
        raise MinirunError(f"sweep run {cell.model.label}/{cell.dataset.label}/{cell.method.label} holds rows made "
                           f"otherwise ({'; '.join(e.differences)}): restore the file's settings for it, or give the "
                           "method or dataset a new label (or the sweep a new --output) to run it afresh") from None


def _run_cells(llm: LLM, group: list[Cell], runs: list[Run], rank: int, world_size: int, progress: bool,
               on_row: Callable[[dict], None] | None) -> None:
    """One dataset's prepared cells on this rank's shard, as one `evaluate_runs`: each cell keeps its own
    run directory, and the methods that prefill alike prefill each batch once for all the cells (what eval
    gives the methods of one run). With several ranks, rank 0 merges each cell once all are done."""
    evaluate_runs(llm, runs, rank=rank, world_size=world_size, progress=progress, on_row=on_row)
    if world_size > 1:
        wait_for_ranks()
        if rank == 0:
            for cell in group:
                merge(cell.dir)


def is_sweep(path: str | Path) -> bool:
    """Whether `path` is a sweep's output directory (rather than one `eval` run's)."""
    return (Path(path) / "sweep.json").is_file()


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
    parts = [read_results(output / folder).assign(model=model, dataset=dataset, label=label)
             for folder, model, dataset, label in cells if (output / folder).is_dir()]
    parts = [p for p in parts if len(p)]
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
    runs = []
    for run_dir in run_dirs:
        if is_sweep(run_dir):
            raise MinirunError(f"{run_dir} is a sweep: report it alone (its tables put its models side by side), "
                               "or give its runs' directories (<model>/<dataset>/<label>) among the eval runs")
        rows, key = load_results(run_dir), recorded_run_key(run_dir)
        dataset = str(key.get("dataset") or rows.attrs.get("dataset") or "data")
        runs.append((run_dir, rows, dataset, Path(str(key.get("model") or run_dir.resolve())).name))
    for pick in (lambda run: run[3], lambda run: run[0].resolve().name, lambda run: str(run[0])):
        labels = [pick(run) for run in runs]
        if len(set(zip((run[2] for run in runs), labels))) == len(runs):
            break
    else:
        raise MinirunError(f"{runs[0][0]} is given twice: give each run once")
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
                              timed_on(table[(table["model"] == model) & (table["dataset"] == dataset)]),
                              f"run {run_dir}", recorded_sources(run_dir))
                   for (name, model), run_dir in compared.dirs.items() if name == dataset)


def compared_warnings(compared: Compared) -> list[str]:
    """What a reader of runs compared side by side must know: settings besides the model that differ between the
    runs of one dataset (their differences are then not the model's alone), and methods short of their run's items."""
    warnings = []
    for dataset in dict.fromkeys(name for name, _ in compared.dirs):
        keys = {model: recorded_run_key(run_dir) for (name, model), run_dir in compared.dirs.items() if name == dataset}
        differ = sorted({k for key in keys.values() for k in key if k not in MODEL_IDENTITY
                         and len({json.dumps(other.get(k), sort_keys=True) for other in keys.values()}) > 1})
        if differ:
            warnings.append(f"the runs compared on {dataset} differ in {', '.join(differ)} besides the model (run.json "
                            "run_key): their differences are not the models' alone")
    for (dataset, model), run_dir in compared.dirs.items():
        warnings += [f"{model} · {method} has scored {answered} of the {total} items of {dataset} (an unfinished "
                     "run): its figures cover those items only"
                     for method, answered, total in unfinished(load_results(run_dir))]
    return warnings


def sweep_table(df: pd.DataFrame) -> pd.DataFrame:
    """Scores per (dataset, method label) row with one column group per model: METRICS as
    `report.summarize` defines them (the comparisons with the label "origin" of the same model and
    dataset), in file order. A method's label stands for its name, so two runs of one method with
    different options stay apart."""
    scores = {}
    first = df["model"].iloc[0]  # the file's first model: every other one is compared with it, item by item
    for (dataset, model), group in df.groupby(["dataset", "model"], sort=False):
        summary = summarize(group.drop(columns=["model", "dataset"]).assign(method=group["label"]))
        reference = df[(df["dataset"] == dataset) & (df["model"] == first)]
        for label, row in summary.iterrows():
            versus = {} if model == first else paired_difference(
                _verdicts(group[group["label"] == label]), _verdicts(reference[reference["label"] == label]), "first_model")
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


def plot_sweep(df: pd.DataFrame, path: str | Path, curves: list[dict[str, int]] = ()) -> None:
    """Accuracy per method with its 95% interval, one bar per model, one panel per dataset, saved to `path`; then a
    panel per ensemble-size series of `curves` (`size_series`), accuracy against prompts per item, a line per
    model and method, its intervals as a band, and the mean single-prompt accuracy dashed."""
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
    fig.savefig(path)


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
    ax.set(ylim=(0, 1), xlabel="prompts per item", ylabel="accuracy", title=", ".join(sizes))
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
