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
import functools
import gc
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import pandas as pd

from minirun.checkpoints.hub import is_complete, model_folder, resolve_model
from minirun.checkpoints.loader import auto_device, checked_device, checkpoint_digest, resolve_dtype
from minirun.checkpoints.tokenizer import Tokenizer
from minirun.engine.allocator import return_freed_memory
from minirun.engine.llm import LLM
from minirun.errors import MinirunError
from minirun.eval.data import Item, asked_items, benchmark_source, item_record, load_cited, load_examples
from minirun.eval.loop import (HARNESS_SPACING, DataKey, Run, check_gaps, check_paraphrased, check_resumable,
                                check_worked, evaluate_runs, examples_commit, few_shot_prefixes, harness_spaced,
                                item_prompts, prepare, process_group, ranks, resumed_chat, scored_alone, shown_prompts,
                                subject_heads, wait_for_ranks)
from minirun.eval.matching import matcher_name
from minirun.eval.prompts import MINIRUN, new_tokens, prompt_format
from minirun.eval.results import (
    OtherRun,
    journal_paths,
    merge,
    option_differences,
    read_results,
    recorded_differences,
    recorded_item_ids,
    recorded_methods,
    recorded_run_key,
)
from minirun.eval.sweep_results import load_sweep, mixed_run
from minirun.eval.sweep_spec import DatasetSpec, Generation, MethodSpec, ModelSpec, Selection, Sweep
from minirun.methods import EnsembleOptions
from minirun.methods.runner import default_fusion_layer
from minirun.models.config import load_config
from minirun.paths import write_atomic

log = logging.getLogger(__name__)


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
    items: list[Item]  # the test items, the first max_samples (at random with a sample_seed)
    few_shot: list[Item] | None  # the few-shot items a file names (None: the dataset's own)
    source: dict | None  # a Hub dataset's repo, revision and commit (`dataset_source`), for run.json to cite
    few_shot_source: dict | None = None  # likewise for the Hub examples a benchmark asks a file's items with


def _load_items(dataset: DatasetSpec) -> Data:
    """A dataset's test items and few-shot items, a Hub one's read at the commit its revision is at now."""
    items, source = load_cited(dataset.name, dataset.subset, dataset.skip_bad, benchmark=dataset.asked_as)
    items = asked_items(items, dataset.max_samples, dataset.sample_seed, dataset.name)  # warned once, not per label
    if dataset.few_shot is not None:
        return Data(items, load_examples(dataset.few_shot), source)
    shots = benchmark_source(dataset.benchmark, source) if dataset.benchmark and dataset.few_shot_k else None
    return Data(items, None, source, shots)


@dataclasses.dataclass(frozen=True)
class CellState:
    """Where one run of the sweep stands: what `run_sweep` would do with it now."""
    cell: Cell
    items: int  # the items it answers
    answered: int  # of them, those its directory holds a row for
    finished: bool  # done.json names the file's settings for it and every item has its row: nothing to run
    changed: bool  # it finished under other settings or data (done.json names another key): it runs again
    refused: tuple[str, ...] = ()  # settings its rows were made with that the file changed: the sweep will refuse it
    methods: frozenset[str] = frozenset()  # whose rows its directory holds: its method's alone, unless an `eval` wrote
    grown: bool = False  # its run.json lists fewer items, all among these (a larger max_samples): it resumes


def _load_data(sweep: Sweep, labels: set[str]) -> dict[str, Data]:
    """The items and few-shot items of the datasets of these labels, each checked to fit the file's methods, before
    any model is fetched or loaded."""
    chosen = [d for d in sweep.datasets if d.label in labels]
    data = {d.label: _load_items(d) for d in chosen}
    for dataset in chosen:
        try:
            check_paraphrased(data[dataset.label].items, [m.name for m in sweep.methods], dataset.data,
                              dataset.num_prompts, dataset.original)
            check_worked(data[dataset.label].items, [m.name for m in sweep.methods], dataset.data)
            check_gaps(data[dataset.label].items, [m.name for m in sweep.methods], dataset.asked_as or dataset.data,
                       data[dataset.label].few_shot)
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
    made = {d.label: _data_settings(d, data[d.label]) for d in sweep.datasets if d.label in data}
    facts = functools.cache(model_facts)  # each model's read once, where some run of it needs them

    return [_state(cell, cell_keys(cell, sweep, data[cell.dataset.label]), data[cell.dataset.label].items,
                   sweep.generation, made[cell.dataset.label], facts) for cell in mine]


def _run_settings(cell: Cell, gen: Generation, items: list[Item]) -> dict:
    """What of a cell's run key (`loop.prepare`) its sweep file sets without a model: a dry run compares these with
    the key its rows were made under, and names the changes the sweep would refuse."""
    return {"num_prompts": cell.dataset.num_prompts, "original": cell.dataset.original,
            "max_new_tokens": new_tokens(items, gen.max_new_tokens),
            "bidirectional": cell.dataset.match == "bidirectional",
            "share_prefix": gen.share_prefix, "chat": gen.chat, "thinking": gen.thinking,
            "choice_format": cell.dataset.choice_format,
            "choice_score": method_options(cell, items).get("choice_score", EnsembleOptions().choice_score)}


def method_options(cell: Cell, items: list[Item]) -> dict:
    """The options a cell's method runs with: a `choice_score` picks among options, so a dataset without any leaves
    it out (its run keys eval's default)."""
    scored = any(item.task == "choice" for item in items)
    return {k: v for k, v in cell.method.options.items() if scored or k != "choice_score"}


def _data_settings(dataset: DatasetSpec, data: Data) -> DataKey:
    """What of a dataset's cells' run key its items and few-shot examples decide (the few-shot heads' and the
    items' hashes, and the few-shot settings behind them, as `loop.prepare` makes them, with no model)."""
    source = dataset.asked_as or dataset.data  # whose prompts these are
    fmt = prompt_format(source, dataset.choice_format)
    prompts = item_prompts(data.items, fmt, dataset.original, dataset.num_prompts)
    try:
        prefixes = few_shot_prefixes(data.items, data.few_shot, source, None, dataset.few_shot_k,
                                     dataset.choice_format, examples_commit(dataset.asked_as, data.few_shot,
                                                                            data.source, data.few_shot_source),
                                     dataset.few_shot_draw)
    except MinirunError as e:  # too few examples for its few_shot_k: named with the entry in the dry run
        raise MinirunError(f"dataset {dataset.label}: {e}") from None
    return DataKey.of(data.items, prompts, prefixes, None, subject_heads(source, data.few_shot), dataset.few_shot_k,
                      dataset.few_shot_draw, fmt, dataset.choice_format)


def _selected(plan: list[Cell], only: Selection) -> list[Cell]:
    return [c for c in plan if only.takes(c.model.label, c.dataset.label)]


def _state(cell: Cell, keys: tuple[str, ...], items: list[Item], gen: Generation | None = None,
           made: DataKey | None = None, facts: Callable[[ModelSpec], ModelFacts] | None = None) -> CellState:
    """Finished only where done.json names one of `keys` and the journals still hold every item's row (a row deleted
    to redo it, as a corrupt-line error advises, makes it unfinished again); a marker no sweep wrote is no marker, and
    the eval loop resumes the cell from its rows."""
    ids = {item.id for item in items}
    rows = read_results(cell.dir) if cell.dir.is_dir() else pd.DataFrame(columns=["id", "method"])
    answered = set(rows.loc[rows["method"] == cell.method.name, "id"]) & ids  # its method's: an `eval` may have
    methods = frozenset(rows["method"])  # put another's there, which `run_sweep` refuses
    others = methods - {cell.method.name}
    try:
        marked = json.loads((cell.dir / "done.json").read_text(encoding="utf-8")).get("key")
    except (OSError, ValueError, AttributeError):
        marked = None
    recorded = recorded_item_ids(cell.dir)  # a run grown and stopped lists more items than its rows answer
    finished = marked in keys and answered == ids and not others and set(recorded or ids) == ids \
        and not (facts is not None and model_changes(cell, facts(cell.model).settings))
    # rows of other items than these too (another seed or file): the sweep refuses them, so the plan must say it
    refused = _refused(cell, gen, facts(cell.model), made, items) if not rows.empty and gen and facts and made \
        and not finished else ()
    if others:
        refused += (f"rows of {', '.join(sorted(others))} as well, which an `eval` wrote there: move them out",)
    grown = not finished and 0 < len(recorded) < len(ids) and set(recorded) <= ids
    return CellState(cell, len(ids), len(answered), finished, marked is not None and marked not in keys, refused,
                     methods, grown)


# What a sweep's model decides of a run key and its cell key does not hold; not the folder's path: where a run recorded
# no weights digest (a minirun before 2026-12-05), the path alone cannot say another model made it (a hub id pulled
# into another models folder is the same model)
MODEL_ENTRIES = ("weights_sha256", "dtype")


def model_changes(cell: Cell, settings: dict) -> list[str]:
    """What of the model a cell's rows were made with differs from the model its entry gives now (`settings`: run-key
    entries, `MODEL_ENTRIES` compared): the weights at its path replaced, or another dtype picked by default on
    this machine. A cell key holds the file's settings, not these, so a finished cell is checked against them too:
    its rows would otherwise stand in one table beside rows of another model. Rows made on another device are
    not this check's: the cell key holds the device, and the eval loop's refusal names it with the dtype."""
    recorded, made = recorded_item_ids(cell.dir), recorded_run_key(cell.dir)
    if not recorded or settings.get("device", made.get("device")) != made.get("device"):
        return []
    return recorded_differences(cell.dir, {k: v for k, v in settings.items() if k in MODEL_ENTRIES}, recorded)


def _refused(cell: Cell, gen: Generation, model: ModelFacts, data: DataKey, items: list[Item]) -> tuple[str, ...]:
    """The settings a cell's rows were made under that the file now changes, as the eval loop names them when it
    refuses to mix rows: the run's (`_run_settings`, the few-shot heads' and items' hashes, which items, what the
    model decides: `model_facts`) and its method's options (hidden_avg's layer where the model's depth is known)."""
    settings, recorded = {**_run_settings(cell, gen, items), **model.settings}, recorded_run_key(cell.dir)
    if model.templated is not None:  # the chat the run keys, as `loop.prepare` makes it
        settings["chat"] = resumed_chat(recorded.get("chat", gen.chat), gen.chat, model.templated)
    elif None in (settings["chat"], recorded.get("chat")):  # the model's default: its tokenizer's to say, which the
        del settings["chat"]  # sweep reads once the model is here (and refuses there if need be)
    templated = gen.chat if gen.chat is not None else model.templated  # None: not known here, nor the spacing
    data = dataclasses.replace(data, spacing=templated is False)
    changed = recorded_differences(cell.dir, {**settings, **data.digests()}, [item.id for item in items], data.grown)
    made = recorded_methods(cell.dir).get(cell.method.name, {})
    options = {**dataclasses.asdict(EnsembleOptions()), **cell.method.options}
    if model.num_layers is not None and options["fusion_layer"] == default_fusion_layer(model.num_layers):
        options["fusion_layer"] = None  # keyed as the default, however it is asked for
    known = ("positions", "num_samples", "fusion_alpha", "flex_bias",
             *(("fusion_layer",) if model.num_layers is not None or options["fusion_layer"] is None else ()))
    return tuple(changed + option_differences(cell.method.name, made, {k: options[k] for k in known}))


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What a dry run reads of a model without loading it (`model_facts`)."""
    settings: dict  # the run-key entries it decides: the device; where it is here, its path, weights' digest, dtype
    templated: bool | None  # whether its tokenizer has a chat template (None: not on this machine)
    num_layers: int | None  # its depth, which hidden_avg's default layer follows (None: not on this machine)


def model_facts(model: ModelSpec) -> ModelFacts:
    """`model`'s run-key entries read from its folder where it is on this machine (`model_folder`): the device "auto"
    resolves to, and there its path, weights' digest (cached on disk after a first read), dtype, template and depth;
    elsewhere the device and an explicit dtype alone."""
    device = checked_device(auto_device(model.device), here=False)
    folder = model_folder(model.path)
    if not is_complete(folder):
        return ModelFacts({"device": device.type, **({"dtype": model.dtype} if model.dtype is not None else {})},
                          None, None)
    config = load_config(folder)
    dtype = str(resolve_dtype(model.dtype, config, device)).removeprefix("torch.")
    return ModelFacts({"device": device.type, "model": str(folder.resolve()),
                       "weights_sha256": checkpoint_digest(folder), "dtype": dtype},
                      Tokenizer(folder).chat_template is not None, config.num_layers)


def cell_keys(cell: Cell, sweep: Sweep, data: Data) -> tuple[str, str]:
    """The cell's key (`cell_key`), then the one an earlier minirun wrote for it, which held `[generation]`'s batch
    size: a done.json of either is finished, so cells finished before stay finished."""
    return cell_key(cell, sweep, data), cell_key(cell, sweep, data, with_batch_size=True)


def cell_key(cell: Cell, sweep: Sweep, data: Data, with_batch_size: bool = False) -> str:
    """Everything a cell's rows depend on, the items' and few-shot examples' content included (an edited
    file changes no setting); `done.json` holds it, so a changed cell is rerun (the eval loop then
    resumes it or refuses a conflicting change). No batch size, a model's or `[generation]`'s, is in it (as in
    eval's key: no row depends on one) unless `with_batch_size` (`cell_keys`)."""
    model = dataclasses.asdict(cell.model)
    del model["batch_size"]  # a model's own batch size (its cache's fit), as eval's, changes no row's meaning
    model["device"] = str(auto_device(cell.model.device))  # "auto" keyed as what it ran on: cpu keys stay as they were
    if Path(cell.model.path).is_dir():
        model["path"] = str(Path(cell.model.path).resolve())
    # finished keys stay valid: skip_bad's effect is in the items, which the key holds, and keys written before
    # datasets had a benchmark (a few_shot_draw, a sample_seed) hold none
    dataset = {k: v for k, v in dataclasses.asdict(cell.dataset).items()
               if k != "skip_bad" and not (k == "benchmark" and v is None)
               and not (k == "few_shot_draw" and v == "shared") and not (k == "sample_seed" and v is None)}
    generation = {k: v for k, v in dataclasses.asdict(sweep.generation).items()  # nor before template_date
                  if not (k == "template_date" and v is None) and (with_batch_size or k != "batch_size")}
    if scored_alone(data.items):  # no row depends on max_new_tokens: raising it for the file's QA datasets leaves
        del generation["max_new_tokens"]  # these finished
    else:  # keyed as the count it runs with: a file's 24 is the default's 24
        generation["max_new_tokens"] = new_tokens(data.items, sweep.generation.max_new_tokens)
    key = {"model": model, "dataset": dataset, "method": dataclasses.asdict(cell.method),
           "generation": generation, "items": [_keyed(i) for i in data.items],
           "few_shot": None if data.few_shot is None else [_keyed(i) for i in data.few_shot],
           "matcher": matcher_name()}  # a cell finished under another answer matcher is not this one
    source = cell.dataset.asked_as or cell.dataset.data  # whose prompts these are
    if subject_heads(source, data.few_shot):  # MMLU's head per subject: not a cell finished under one for all
        key["subject_heads"] = True  # (other cells' keys stay as they were, so their finished runs stay finished)
    if (fmt := prompt_format(source, cell.dataset.choice_format)) != MINIRUN:  # nor one finished in minirun's words
        key["prompt_format"] = fmt.name
    if sweep.generation.chat is not True and any(harness_spaced(item, fmt, cell.dataset.choice_format)
                                                 for item in data.items):  # nor one whose options were spaced otherwise
        key["options_spaced"] = HARNESS_SPACING  # (a chat run's rows the same: rerun, it resumes them all)
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _keyed(item: Item) -> dict:
    """An item (or a few-shot example) as its cells' keys hold it: without its popularity, which no answer depends on
    (PopQA cells finished before items carried one stay finished)."""
    return {k: v for k, v in item_record(item).items() if k != "popularity"}


def series_key(dataset: DatasetSpec) -> str:
    """What a dataset entry shares with the entries that differ from it in prompts per item alone (an ensemble-size
    curve, `num_prompts = [2, 3, 5]`, or entries written apart): a hash of its settings but label and num_prompts."""
    settings = {k: v for k, v in dataclasses.asdict(dataset).items() if k not in ("label", "num_prompts")
                and not (k == "sample_seed" and v is None)}  # the hashes of files before sample_seed stay theirs
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


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
    index = json.dumps({"cells": [{"model": c.model.label, "dataset": c.dataset.label, "label": c.method.label,
                                   "dir": str(c.dir.relative_to(output)), "num_prompts": c.dataset.num_prompts,
                                   "series": series_key(c.dataset)} for c in plan]}, indent=1) + "\n"

    def record_index() -> None:
        """The file's runs as `report` reads them: a new sweep's at once, an earlier one's rewritten only once the
        runs about to start are checked, so a sweep refused before it runs leaves the index of the runs made as it
        was (it listed the file's new labels, and `report` hid the finished runs under the old); an index that
        already says so is left as it is."""
        path = output / "sweep.json"
        if rank == 0 and not (path.is_file() and path.read_text(encoding="utf-8") == index):  # rank 0 alone
            write_atomic(path, lambda tmp: tmp.write_text(index, encoding="utf-8"))

    if not (output / "sweep.json").is_file():
        record_index()
    keys = {c.dir: cell_keys(c, sweep, data[c.dataset.label]) for c in chosen}
    # before a rank writes
    states = [_state(c, keys[c.dir], data[c.dataset.label].items) for c in chosen]
    for state in states:  # a run holding another method's rows, as an `eval` into it wrote them: before any model loads
        if state.methods - {state.cell.method.name}:
            raise mixed_run(state.cell.dir, state.methods)
    facts = functools.cache(model_facts)  # each model's read once; its runs, finished too, checked against it
    _check_models(states, facts)  # rows of other weights or another dtype than the model's: before any download
    todo = [state.cell for state in states if not state.finished]
    if not todo and rank == 0:
        log.info(f"{'the run is' if len(chosen) == 1 else f'every one of the {len(chosen)} runs is'} finished: "
                 f"nothing ran (its tables below, as `minirun report {output}` shows them)")
    for model in {id(c.model): c.model for c in todo}.values():  # a later model's missing GPU: before hours of work
        try:
            checked_device(model.device)
            resolve_model(model.path)  # a mistyped or unreachable hub id too: every download before the first run
        except MinirunError as e:
            raise MinirunError(f"model {model.label}: {e}") from None
    facts.cache_clear()  # a model pulled just now: its weights and dtype are known only here
    _check_models(states, facts)
    if not todo:
        record_index()
    with process_group(world_size):
        for model in sweep.models:
            mine = [c for c in todo if c.model is model]
            if not mine:
                continue
            llm = load(model)
            groups = {d.label: [c for c in mine if c.dataset is d] for d in sweep.datasets}
            days = {d.label: _template_day(sweep, plan, model, d) for d in sweep.datasets}
            prepared = {label: [_prepare(llm, cell, data[label], sweep.generation, days[label]) for cell in group]
                        for label, group in groups.items() if group}
            for label, runs in prepared.items():  # every cell of the model checked before any of them runs
                for cell, run in zip(groups[label], runs):
                    _check(cell, run, rank)
            record_index()
            for label, runs in prepared.items():
                group = groups[label]
                if rank == 0:  # once, not once per process of a torchrun
                    log.info(f"sweep {model.label} · {label}: {', '.join(c.method.label for c in group)} "
                             f"({len(group)} of {len(plan)} runs)")
                _run_cells(llm, group, runs, rank, world_size, progress, on_row)
                if rank == 0:
                    for cell in group:
                        write_atomic(cell.dir / "done.json", lambda tmp, c=cell: tmp.write_text(
                            json.dumps({"key": keys[c.dir][0]}) + "\n", encoding="utf-8"))
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


def sweep_prompts(sweep: Sweep, output: str | Path, load: Callable[[ModelSpec], LLM], count: int,
                  only: Selection = Selection()) -> Iterator[tuple[str, str, list[str]]]:
    """(model label, dataset label, `shown_prompts`'s blocks) for each model and dataset `only` selects, finished
    or not: each model loaded once, the first `count` items of each dataset as the sweep's runs of it ask them (its
    methods together, so the blocks say which prompt origin asks). Nothing is written."""
    output = Path(output)
    plan = cells(sweep, output)
    chosen = _selected(plan, only)
    data = _load_data(sweep, {c.dataset.label for c in chosen})
    for model in sweep.models:
        if not (mine := [c for c in chosen if c.model is model]):
            continue
        llm = load(model)
        for dataset in sweep.datasets:
            if not (group := [c for c in mine if c.dataset is dataset]):
                continue
            day = _template_day(sweep, plan, model, dataset)
            run = _prepare(llm, group[0], data[dataset.label], sweep.generation, day)
            methods = tuple(dict.fromkeys(c.method.name for c in group))
            yield model.label, dataset.label, shown_prompts(llm, dataclasses.replace(run, methods=methods), count)
        del llm  # as `run_sweep` frees one model before the next loads
        gc.collect()
        return_freed_memory()


def _template_day(sweep: Sweep, plan: list[Cell], model: ModelSpec, dataset: DatasetSpec) -> str:
    """The day one model's cells of one dataset render a dated chat template at: the file's `template_date`, else the
    earliest any of them recorded (a sweep resumed another day), else today, so the methods a table compares ask the
    same words."""
    recorded = (recorded_run_key(c.dir).get("template_date") for c in plan if c.model is model and c.dataset is dataset)
    return sweep.generation.template_date or min((day for day in recorded if day), default=date.today().isoformat())


def _prepare(llm: LLM, cell: Cell, data: Data, gen: Generation, template_date: str) -> Run:
    """The cell as an `eval` run of its one method; a setting that does not fit its dataset is named with it
    (the first model's cells are all prepared before any runs, and every model's cells are the same product). A
    method's options as `method_options` gives them."""
    options = method_options(cell, data.items)
    try:
        return prepare(llm, data.items, [cell.method.name], cell.dir, dataset=cell.dataset.data,
                       num_prompts=cell.dataset.num_prompts, original=cell.dataset.original,
                       few_shot_k=cell.dataset.few_shot_k, few_shot_draw=cell.dataset.few_shot_draw,
                       fewshot_items=data.few_shot, data_source=data.source,
                       few_shot_source=data.few_shot_source,
                       bidirectional=cell.dataset.match == "bidirectional", choice_format=cell.dataset.choice_format,
                       benchmark=cell.dataset.asked_as,
                       batch_size=cell.model.batch_size or gen.batch_size, max_new_tokens=gen.max_new_tokens,
                       share_prefix=gen.share_prefix,
                       chat=gen.chat, thinking=gen.thinking, template_date=template_date, **options)
    except MinirunError as e:
        raise MinirunError(f"sweep run {cell.model.label}/{cell.dataset.label}/{cell.method.label}: {e}") from None


def _check(cell: Cell, run: Run, rank: int) -> None:
    """Refuse, before any cell runs, a cell whose directory holds rows the file's settings would not make
    now, naming the cell and the way out a sweep has (the eval loop would name eval's)."""
    try:
        check_resumable(run, rank)
    except OtherRun as e:
        if model_changes(cell, run.run_key):
            raise _other_model(cell, e.differences) from None
        raise MinirunError(f"sweep run {cell.model.label}/{cell.dataset.label}/{cell.method.label} holds rows made "
                           f"otherwise ({'; '.join(e.differences)}): restore the file's settings for it, or give the "
                           "method or dataset a new label (or the sweep a new --output) to run it afresh") from None


def _check_models(states: list[CellState], facts: Callable[[ModelSpec], ModelFacts]) -> None:
    """Refuse a run whose rows were made by another model than its entry gives now (`model_changes`), finished
    or not, where the model is on this machine."""
    for state in states:
        if state.answered and (changes := model_changes(state.cell, facts(state.cell.model).settings)):
            raise _other_model(state.cell, changes)


def _other_model(cell: Cell, differences: list[str]) -> MinirunError:
    """The refusal of a run whose rows another model made (`model_changes`), naming the way out a sweep has."""
    return MinirunError(f"sweep run {cell.model.label}/{cell.dataset.label}/{cell.method.label} holds rows made "
                        f"otherwise ({'; '.join(differences)}), by another model than {cell.model.label}'s entry gives "
                        "now: give the model a new label to run it afresh beside them, or restore its checkpoint (or "
                        "set its dtype to the one its rows were made in)")


def _run_cells(llm: LLM, group: list[Cell], runs: list[Run], rank: int, world_size: int, progress: bool,
               on_row: Callable[[dict], None] | None) -> None:
    """One dataset's prepared cells on this rank's shard, as one `evaluate_runs`: each cell keeps its own
    run directory, and the methods that prefill alike prefill each batch once for all the cells (what eval
    gives the methods of one run). With several ranks, rank 0 merges each cell once all are done. An error names
    the model and dataset: a prompt past a later model's context is found only as that model runs."""
    try:
        evaluate_runs(llm, runs, rank=rank, world_size=world_size, progress=progress, on_row=on_row)
    except MinirunError as e:
        raise MinirunError(f"sweep {group[0].model.label} · {group[0].dataset.label}: {e}") from None
    if world_size > 1:
        wait_for_ranks()
        if rank == 0:
            for cell in group:
                merge(cell.dir)


