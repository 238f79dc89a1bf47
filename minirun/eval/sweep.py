"""Sweeps: every method × dataset × model of one TOML file in one resumable run.

The whole file is checked before any model loads, so a typo fails in a second rather than after
the first model's hours. Each (model, dataset, method label) is an ordinary `evaluate` run in its
own directory `<output>/<model>/<dataset>/<label>/` (its own journal and run key: one method may
appear twice with different options), so resuming and `torchrun` sharding are the eval loop's; a
`done.json` beside a finished run lets a restart skip even loading a model whose runs are all done.
The combined table (`results.parquet` + `results.csv`, with `model`, `dataset` and `label` columns)
is rebuilt from the runs' journals, so it is the same however often the sweep was interrupted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pandas as pd
import torch

from minirun.checkpoints.hub import DEFAULT_MODEL
from minirun.checkpoints.loader import DTYPES
from minirun.engine.llm import LLM
from minirun.errors import MinirunError
from minirun.eval.data import NAMES, Item, load_dataset, load_jsonl
from minirun.eval.loop import evaluate
from minirun.eval.prompts import CHOICE_FORMATS
from minirun.eval.report import summarize
from minirun.eval.results import merge, read_results
from minirun.methods import METHODS, EnsembleOptions
from minirun.methods.runner import check_method

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

log = logging.getLogger(__name__)

SECTIONS = ("models", "datasets", "methods", "generation")
MATCH_RULES = ("lemma", "bidirectional")
GENERATION_OWNED = ("max_new_tokens", "chat", "share_prefix")  # EnsembleOptions fields [generation] sets for all
METRICS = ("accuracy", "ci95_low", "ci95_high", "exact_accuracy", "n", "tokens_per_second")
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
HUB_ID = re.compile(r"[\w-][\w.-]*/[\w-][\w.-]*")  # what `resolve_model` pulls from the hub


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    path: str  # checkpoint dir or hub id
    label: str = ""  # column group and directory name; default: the path's last part
    dtype: str | None = None
    device: str = "cpu"
    compile: bool = False


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str  # sample-qa, sample-fill, webqa, myriadlama, or a dataset file
    label: str = ""  # default: the name, or the file's stem
    few_shot_k: int = 5
    few_shot: str | None = None  # a .jsonl of few-shot items (default: the dataset's own)
    num_prompts: int = 5  # prompts per item: the question (unless original is false), then its paraphrases
    original: bool = True
    max_samples: int | None = None
    match: str = "lemma"
    subset: str | None = None  # mmlu: one subject
    choice_format: str = "cloze"  # multiple choice: cloze or letters


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str = ""  # default: the name
    options: dict = dataclasses.field(default_factory=dict)  # EnsembleOptions fields, passed to the eval loop


@dataclasses.dataclass(frozen=True)
class Generation:
    max_new_tokens: int = 24
    batch_size: int = 8
    share_prefix: bool = True
    chat: bool | None = None  # None: the chat template when the model has one


@dataclasses.dataclass(frozen=True)
class Sweep:
    models: tuple[ModelSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    methods: tuple[MethodSpec, ...]
    generation: Generation


@dataclasses.dataclass(frozen=True)
class Cell:
    """One `evaluate` run of the sweep."""
    model: ModelSpec
    dataset: DatasetSpec
    method: MethodSpec
    dir: Path


def load_sweep_file(path: str | Path) -> Sweep:
    """Read and check a sweep file; a problem raises one MinirunError naming the key and the fix."""
    path = Path(path)
    if not path.is_file():
        raise MinirunError(f"no sweep file at {path}: pass the path of a .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise MinirunError(f"{path}: invalid TOML ({e}); fix the syntax there") from None
    try:
        return parse_sweep(data)
    except MinirunError as e:
        raise MinirunError(f"{path}: {e}") from None


def parse_sweep(data: dict) -> Sweep:
    """The checked sweep of a parsed TOML document (see `load_sweep_file`)."""
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        raise MinirunError(f"unknown key {unknown[0]!r} at the top level; use {', '.join(SECTIONS)}")
    generation = data.get("generation", {})
    if not isinstance(generation, dict):
        raise MinirunError("generation must be a table of settings; see docs/sweep.toml")
    gen = Generation(**_checked(Generation, generation, "generation"))
    for key in ("max_new_tokens", "batch_size"):
        _at_least(getattr(gen, key), 1, f"generation {key}")
    models = tuple(_model(t, w) for t, w in _entries(data, "models"))
    datasets = tuple(_dataset(t, w) for t, w in _entries(data, "datasets"))
    methods = tuple(_method(t, w) for t, w in _entries(data, "methods"))
    for section, specs in (("models", models), ("datasets", datasets), ("methods", methods)):
        _unique_labels(section, specs)
    return Sweep(models, datasets, methods, gen)


def _entries(data: dict, section: str) -> list[tuple[dict, str]]:
    """The section's tables with where each is, for messages: `methods #2` (no square brackets:
    the CLI prints messages as rich markup, where `[methods]` would vanish as a style tag)."""
    tables = data.get(section)
    if tables is None:
        raise MinirunError(f"no {section} entry; add at least one (see docs/sweep.toml)")
    if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
        raise MinirunError(f"{section} must be an array of tables, one per entry; see docs/sweep.toml")
    return [(t, f"{section} #{i}") for i, t in enumerate(tables, 1)]


def _model(table: dict, where: str) -> ModelSpec:
    spec = ModelSpec(**_checked(ModelSpec, table, where))
    where = f"{where} ({spec.path})"
    if not (Path(spec.path).is_dir() or spec.path == DEFAULT_MODEL or HUB_ID.fullmatch(spec.path)):
        raise MinirunError(f"{where} path: no checkpoint directory there; give a directory or a hub id (owner/name)")
    if spec.dtype is not None and spec.dtype not in DTYPES:
        raise MinirunError(f"{where} dtype: unsupported {spec.dtype!r}; use one of {', '.join(DTYPES)}")
    try:
        torch.device(spec.device)
    except RuntimeError:
        raise MinirunError(f"{where} device: unknown device {spec.device!r}; use cpu, cuda, cuda:1, mps, ...") from None
    return _labelled(spec, Path(spec.path).name, where)


def _dataset(table: dict, where: str) -> DatasetSpec:
    spec = DatasetSpec(**_checked(DatasetSpec, table, where))
    where = f"{where} ({spec.name})"
    if spec.name not in NAMES and not Path(spec.name).is_file():
        raise MinirunError(f"{where} name: unknown dataset; use one of {', '.join(NAMES)} or the path of a file")
    if spec.few_shot is not None and not (spec.few_shot.endswith(".jsonl") and Path(spec.few_shot).is_file()):
        raise MinirunError(f"{where} few_shot: {spec.few_shot!r} is no .jsonl file; give an existing .jsonl of items")
    if spec.match not in MATCH_RULES:
        raise MinirunError(f"{where} match: unknown rule {spec.match!r}; use one of {', '.join(MATCH_RULES)}")
    if spec.choice_format not in CHOICE_FORMATS:
        raise MinirunError(f"{where} choice_format: unknown format {spec.choice_format!r}; use one of "
                           f"{', '.join(CHOICE_FORMATS)}")
    if spec.subset is not None and spec.name != "mmlu":
        raise MinirunError(f"{where} subset: only mmlu has subsets; drop the key")
    _at_least(spec.few_shot_k, 0, f"{where} few_shot_k")
    _at_least(spec.num_prompts, 1, f"{where} num_prompts")
    if spec.max_samples is not None:
        _at_least(spec.max_samples, 1, f"{where} max_samples")
    default = spec.name if spec.name in NAMES else Path(spec.name).stem
    return _labelled(spec, default, where)


def method_options() -> tuple[str, ...]:
    """The EnsembleOptions fields a [[methods]] entry may set: those the eval loop takes as arguments."""
    loop = inspect.signature(evaluate).parameters
    return tuple(f.name for f in dataclasses.fields(EnsembleOptions)
                 if f.name in loop and f.name not in GENERATION_OWNED)


def _method(table: dict, where: str) -> MethodSpec:
    name, label = table.get("name"), table.get("label", "")
    if name is None:
        raise MinirunError(f"{where}: missing key 'name'; add name = \"<method>\" ({', '.join(METHODS)})")
    if name not in METHODS:
        raise MinirunError(f"{where} name: unknown method {name!r}; use one of {', '.join(METHODS)}")
    where = f"{where} ({name})"
    label = _coerce(label, str, f"{where} label")
    allowed = method_options()
    hints = typing.get_type_hints(EnsembleOptions)
    options = {}
    for key, value in table.items():
        if key in ("name", "label"):
            continue
        if key in GENERATION_OWNED:
            raise MinirunError(f"{where} {key}: set it in the generation table, where it applies to every run")
        if key not in allowed:
            fix = "the eval loop does not take it" if key in hints else "unknown key"
            raise MinirunError(f"{where} {key}: {fix}; use name, label, {', '.join(allowed)}")
        options[key] = _coerce(value, hints[key], f"{where} {key}")
    try:
        check_method(name, EnsembleOptions(**options))
    except MinirunError as e:
        raise MinirunError(f"{where}: {e}") from None
    return _labelled(MethodSpec(name, label, options), name, where)


def _checked(cls: type, table: dict, where: str) -> dict:
    """`table` as keyword arguments of dataclass `cls`: no unknown or missing keys, values of the field types."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in table:
        if key not in names:
            raise MinirunError(f"{where}: unknown key {key!r}; use {', '.join(names)}")
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.name not in table:
            raise MinirunError(f"{where}: missing key {f.name!r}; add {f.name} = ...")
    return {key: _coerce(value, hints[key], f"{where} {key}") for key, value in table.items()}


def _coerce(value: object, hint: object, where: str) -> object:
    """`value` as a `hint` (an int where a float is wanted becomes a float), else a MinirunError."""
    choices = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for choice in choices:
        if choice is bool and isinstance(value, bool) or choice is str and isinstance(value, str):
            return value
        if choice is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if choice is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    wanted = " or ".join(getattr(c, "__name__", str(c)) for c in choices if c is not type(None))
    raise MinirunError(f"{where}: expected {wanted}, got {value!r}; write a TOML {wanted} there")


def _at_least(value: int, minimum: int, where: str) -> None:
    if value < minimum:
        raise MinirunError(f"{where}: {value} is below {minimum}; use {minimum} or more")


def _labelled(spec, default: str, where: str):
    """`spec` with its label (the default when none is given), checked to be a directory name."""
    label = spec.label or default
    if not LABEL.fullmatch(label):
        raise MinirunError(f"{where} label: {label!r} is no plain directory name; "
                           "set label = \"<letters, digits, . _ ->\"")
    return dataclasses.replace(spec, label=label)


def _unique_labels(section: str, specs: tuple) -> None:
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs, 1):
        if spec.label in seen:
            raise MinirunError(f"{section} #{i}: label {spec.label!r} is also that of #{seen[spec.label]}; "
                               "give one of them a distinct label")
        seen[spec.label] = i


def cells(sweep: Sweep, output: str | Path) -> list[Cell]:
    """Every run of the sweep, model by model (so each model loads once), in file order."""
    output = Path(output)
    return [Cell(m, d, x, output / m.label / d.label / x.label)
            for m in sweep.models for d in sweep.datasets for x in sweep.methods]


def _load_items(dataset: DatasetSpec) -> tuple[list[Item], list[Item] | None]:
    """A dataset's test items (the first max_samples) and its few-shot items when a file names them."""
    items = load_dataset(dataset.name, subset=dataset.subset)
    items = items[:dataset.max_samples] if dataset.max_samples is not None else items
    return items, load_jsonl(dataset.few_shot) if dataset.few_shot is not None else None


def _cell_key(cell: Cell, sweep: Sweep, items: list[Item]) -> str:
    """Everything a cell's rows depend on; `done.json` holds it, so a changed cell is rerun (the
    eval loop then resumes it or refuses a conflicting change)."""
    model = dataclasses.asdict(cell.model)
    if Path(cell.model.path).is_dir():
        model["path"] = str(Path(cell.model.path).resolve())
    key = {"model": model, "dataset": dataclasses.asdict(cell.dataset), "method": dataclasses.asdict(cell.method),
           "generation": dataclasses.asdict(sweep.generation), "items": [item.id for item in items]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _finished(cell: Cell, key: str) -> bool:
    marker = cell.dir / "done.json"
    return marker.is_file() and json.loads(marker.read_text(encoding="utf-8")).get("key") == key


def _write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temp file and os.replace, so a kill never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def run_sweep(sweep: Sweep, output: str | Path, load: Callable[[ModelSpec], LLM], *, progress: bool = True,
              on_row: Callable[[dict], None] | None = None) -> pd.DataFrame | None:
    """Run every cell not yet finished, each model loaded once (by `load`) and only if it has work.

    Datasets load first, so a bad file fails before any model does. Under `torchrun` every cell is
    sharded across the ranks; rank 0 writes the combined table and returns it, other ranks None.
    """
    output = Path(output)
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    data = {d.label: _load_items(d) for d in sweep.datasets}
    plan = cells(sweep, output)
    if rank == 0:
        index = {"cells": [{"model": c.model.label, "dataset": c.dataset.label, "label": c.method.label,
                            "dir": str(c.dir.relative_to(output))} for c in plan]}
        _write(output / "sweep.json", lambda tmp: tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8"))
    keys = {c.dir: _cell_key(c, sweep, data[c.dataset.label][0]) for c in plan}
    todo = [c for c in plan if not _finished(c, keys[c.dir])]  # decided before any rank writes a marker
    with _process_group(world_size):
        for model in sweep.models:
            mine = [c for c in todo if c.model is model]
            if not mine:
                continue
            llm = load(model)
            for cell in mine:
                log.info(f"sweep {plan.index(cell) + 1}/{len(plan)}: "
                         f"{model.label} · {cell.dataset.label} · {cell.method.label}")
                _run_cell(llm, cell, data[cell.dataset.label], sweep.generation, rank, world_size, progress, on_row)
                if rank == 0:
                    _write(cell.dir / "done.json", lambda tmp, c=cell: tmp.write_text(
                        json.dumps({"key": keys[c.dir]}) + "\n", encoding="utf-8"))
            del llm  # before the next model loads, not after
    if rank != 0:
        return None
    table = load_sweep(output)
    _write(output / "results.parquet", lambda tmp: table.to_parquet(tmp, index=False))
    _write(output / "results.csv", lambda tmp: table.to_csv(tmp, index=False))
    return table


@contextlib.contextmanager
def _process_group(world_size: int) -> Iterator[None]:
    """One gloo group for the whole sweep: `run_sharded` opens one per call, and a later group in
    the same torchrun processes can read an earlier one's addresses and fail to connect."""
    if world_size <= 1:
        yield
        return
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(days=7))  # ranks may finish far apart on uneven shards
    try:
        yield
    finally:
        dist.destroy_process_group()


def _run_cell(llm: LLM, cell: Cell, data: tuple[list[Item], list[Item] | None], gen: Generation, rank: int,
              world_size: int, progress: bool, on_row: Callable[[dict], None] | None) -> None:
    """One `evaluate` run on this rank's shard; with several ranks, rank 0 merges them once all are done."""
    items, fewshot = data
    evaluate(llm, items, [cell.method.name], cell.dir, dataset=cell.dataset.name, num_prompts=cell.dataset.num_prompts,
             original=cell.dataset.original, few_shot_k=cell.dataset.few_shot_k, fewshot_items=fewshot,
             bidirectional=cell.dataset.match == "bidirectional", choice_format=cell.dataset.choice_format,
             batch_size=gen.batch_size,
             max_new_tokens=gen.max_new_tokens, share_prefix=gen.share_prefix, chat=gen.chat, rank=rank,
             world_size=world_size, progress=progress, on_row=on_row, **cell.method.options)
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        if rank == 0:
            merge(cell.dir)


def is_sweep(path: str | Path) -> bool:
    """Whether `path` is a sweep's output directory (rather than one `eval` run's)."""
    return (Path(path) / "sweep.json").is_file()


def load_sweep(output: str | Path) -> pd.DataFrame:
    """Every row the sweep's runs have journalled so far, with `model`, `dataset` and `label`
    (the method's label) first; runs in file order, rows in each run's order."""
    output = Path(output)
    if not is_sweep(output):
        raise MinirunError(f"{output}: no sweep.json; pass the output directory of `minirun sweep`")
    index = json.loads((output / "sweep.json").read_text(encoding="utf-8"))
    parts = [read_results(output / c["dir"]).assign(model=c["model"], dataset=c["dataset"], label=c["label"])
             for c in index["cells"] if (output / c["dir"]).is_dir()]
    parts = [p for p in parts if len(p)]
    if not parts:
        raise MinirunError(f"{output}: the sweep has no results yet; run `minirun sweep` first")
    table = pd.concat(parts, ignore_index=True)
    first = ["model", "dataset", "label"]
    return table[first + [c for c in table.columns if c not in first]]


def sweep_table(df: pd.DataFrame) -> pd.DataFrame:
    """Scores per (dataset, method label) row with one column group per model: METRICS as
    `report.summarize` defines them, in file order. A method's label stands for its name, so two
    runs of one method with different options stay apart."""
    scores = {}
    for (dataset, model), group in df.groupby(["dataset", "model"], sort=False):
        summary = summarize(group.drop(columns=["model", "dataset"]).assign(method=group["label"]))
        for label, row in summary.iterrows():
            scores[(dataset, label), model] = row[list(METRICS)]
    rows = list(dict.fromkeys(zip(df["dataset"], df["label"])))
    models = list(dict.fromkeys(df["model"]))
    columns = pd.MultiIndex.from_product([models, METRICS], names=["model", "metric"])
    table = pd.DataFrame(index=pd.MultiIndex.from_tuples(rows, names=["dataset", "method"]), columns=columns,
                         dtype=float)
    for (row, model), values in scores.items():
        table.loc[row, model] = values.to_numpy(dtype=float)
    return table


def plot_sweep(df: pd.DataFrame, path: str | Path) -> None:
    """Accuracy per method with its 95% interval, one bar per model, one panel per dataset, saved to `path`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    table = sweep_table(df)
    datasets = list(dict.fromkeys(table.index.get_level_values("dataset")))
    models = list(dict.fromkeys(table.columns.get_level_values("model")))
    width = 0.8 / len(models)
    most = max(len(table.loc[d]) for d in datasets)
    fig = Figure(figsize=(max(6.0, 0.6 * most * len(models) + 2), 3.5 * len(datasets)), layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: no global backend, safe in servers and tests
    axes = fig.subplots(len(datasets), 1, squeeze=False)[:, 0]
    for ax, dataset in zip(axes, datasets):
        part = table.loc[dataset]
        for i, model in enumerate(models):
            xs = [x + (i - (len(models) - 1) / 2) * width for x in range(len(part))]
            acc, low, high = (part[(model, m)].fillna(0) for m in ("accuracy", "ci95_low", "ci95_high"))
            errors = [(acc - low).clip(lower=0), (high - acc).clip(lower=0)]  # Wilson's bound can miss 0 by 1e-17
            ax.bar(xs, acc, width, yerr=errors, capsize=3, label=model)
        ax.set_xticks(range(len(part)), list(part.index), rotation=30)
        ax.set(ylim=(0, 1), ylabel="accuracy", title=dataset)
        ax.legend(loc="upper right", fontsize="small")
    fig.savefig(path)
