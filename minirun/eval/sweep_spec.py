"""The sweep file: a TOML of models, datasets, methods and shared generation settings, parsed into
frozen specs and checked whole before anything loads, so a typo fails in a second rather than
after the first model's hours. Every problem is one MinirunError naming the key and the fix.
"""
from __future__ import annotations

import dataclasses
import datetime
import inspect
import re
import sys
import types
import typing
from pathlib import Path

from minirun.checkpoints.hub import DEFAULT_MODEL, is_complete, is_hub_id, local_name, model_folder
from minirun.checkpoints.loader import DTYPES, checked_device
from minirun.checkpoints.tokenizer import day_text
from minirun.models.config import load_config
from minirun.errors import MinirunError
from minirun.eval.data import NAMES, TASK_OF, dataset_label, hub_dataset, text_lines
from minirun.eval.loop import check_draw, prepare
from minirun.eval.matching import MATCH_RULES
from minirun.eval.prompts import CHOICE_FORMATS, check_choice_format
from minirun.methods import METHODS, EnsembleOptions
from minirun.methods.runner import check_method, check_options_used, fusion_layer

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

SECTIONS = ("models", "datasets", "methods", "generation")
GENERATION_OWNED = ("max_new_tokens", "chat", "thinking", "share_prefix")  # EnsembleOptions fields [generation] sets for all
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RESERVED = ("results.parquet", "results.csv", "sweep.json")  # the sweep's own files, beside the model directories


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    path: str  # checkpoint dir or hub id
    label: str = ""  # column group and directory name; default: the path's last part
    dtype: str | None = None
    device: str = "auto"  # the run's key holds the device it resolved to (cell_key)
    compile: bool = False
    batch_size: int | None = None  # questions a batch for this model (default: [generation]'s): a large model's cache


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    name: str  # sample-qa, sample-fill, webqa, myriadlama, or a dataset file
    label: str = ""  # default: the name, or the file's stem
    few_shot_k: int = 5
    few_shot: str | None = None  # a .jsonl of few-shot items or a benchmark's rows (default: the dataset's own)
    few_shot_draw: str = "shared"  # or "per-question": each question its own examples, as lm-evaluation-harness
    num_prompts: int = 5  # prompts per item: the question (unless original is false), then its paraphrases
    original: bool = True
    max_samples: int | None = None
    sample_seed: int | None = None  # max_samples at random: the items shuffled with this seed first
    match: str = "lemma"
    subset: str | None = None  # mmlu: one subject
    choice_format: str = "cloze"  # multiple choice: cloze or letters
    skip_bad: bool = False  # a plain item file: skip (and count) bad records instead of stopping
    benchmark: str | None = None  # a file asked as this named dataset asks its own (prompt format, few-shot examples)

    @property
    def data(self) -> str:
        """The dataset's name without the Hub revision `name` may pin (`mmlu@REV`), or its file."""
        return hub_dataset(self.name)[0]

    @property
    def asked_as(self) -> str | None:
        """The named dataset a file is asked as, without the Hub revision `benchmark` may pin for its examples."""
        return hub_dataset(self.benchmark)[0] if self.benchmark is not None else None


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    label: str = ""  # default: the name
    options: dict = dataclasses.field(default_factory=dict)  # EnsembleOptions fields, passed to the eval loop


@dataclasses.dataclass(frozen=True)
class Generation:
    max_new_tokens: int | None = None  # None: 24 for short answers, 256 for worked solutions (`prompts.new_tokens`)
    batch_size: int | None = None  # None: eval's default (32 questions, at most 256 rows a batch)
    share_prefix: bool = True
    chat: bool | None = None  # None: the chat template when the model has one
    thinking: bool = False  # a template's reasoning switch (Qwen3's enable_thinking), off for short answers
    template_date: str | None = None  # YYYY-MM-DD a dated chat template renders at (default: the day cells began)


@dataclasses.dataclass(frozen=True)
class Sweep:
    models: tuple[ModelSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    methods: tuple[MethodSpec, ...]
    generation: Generation


@dataclasses.dataclass(frozen=True)
class Selection:
    """The part of a sweep one process runs (`sweep --models/--datasets`), by labels; none given takes every one.
    Processes on several machines can share one output directory, each taking other models."""
    models: tuple[str, ...] = ()
    datasets: tuple[str, ...] = ()

    def takes(self, model: str, dataset: str) -> bool:
        return (not self.models or model in self.models) and (not self.datasets or dataset in self.datasets)


def selection(sweep: Sweep, models: list[str] | tuple[str, ...] = (), datasets: list[str] | tuple[str, ...] = ()) \
        -> Selection:
    """The labels asked for (each may be comma-separated) as a `Selection`, every one checked to be the file's."""
    chosen = {}
    for section, asked, specs in (("models", models, sweep.models), ("datasets", datasets, sweep.datasets)):
        labels = tuple(dict.fromkeys(label.strip() for text in asked for label in text.split(",") if label.strip()))
        known = [spec.label for spec in specs]
        if unknown := [label for label in labels if label not in known]:
            raise MinirunError(f"--{section} {unknown[0]!r} is no label of the file's {section}: use "
                               f"{', '.join(known)}")
        chosen[section] = labels
    return Selection(**chosen)


def load_sweep_file(path: str | Path) -> Sweep:
    """Read and check a sweep file; a problem raises one MinirunError naming the key and the fix."""
    path = Path(path)
    if path.is_dir():
        raise MinirunError(f"{path} is a directory: pass the sweep's .toml file (report a sweep's output directory "
                           "with `minirun report`)")
    if not path.is_file():
        raise MinirunError(f"no sweep file at {path}: pass the path of a .toml file")
    try:
        data = tomllib.loads("".join(text_lines(path)))
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
    if isinstance(generation.get("template_date"), datetime.date):  # TOML's own date, unquoted
        generation = {**generation, "template_date": generation["template_date"].isoformat()}
    gen = Generation(**_checked(Generation, generation, "generation"))
    if gen.template_date is not None:
        try:
            gen = dataclasses.replace(gen, template_date=day_text(gen.template_date))
        except MinirunError as e:
            raise MinirunError(f"generation template_date: {e}") from None
        if gen.chat is False:
            raise MinirunError("generation template_date is the day a chat template renders at, and chat = false uses "
                               "none: drop one of them")
    for key in ("max_new_tokens", "batch_size"):
        if getattr(gen, key) is not None:
            _at_least(getattr(gen, key), 1, f"generation {key}")
    models = tuple(_model(t, w) for t, w in _entries(data, "models"))
    datasets = tuple(spec for t, w in _entries(data, "datasets") for spec in _datasets(t, w))
    methods = tuple(_method(t, w) for t, w in _entries(data, "methods"))
    for section, specs in (("models", models), ("datasets", datasets), ("methods", methods)):
        _unique_labels(section, specs)
    _check_report_labels(methods)
    _check_fusion_layers(models, methods)
    return Sweep(models, datasets, methods, gen)


def _check_fusion_layers(models: tuple[ModelSpec, ...], methods: tuple[MethodSpec, ...]) -> None:
    """A method's fusion_layer against the depth of every model already on disk (a folder, or the default model or
    a hub id pulled before: read from its config.json, no weights), so a block past a model's last fails here and
    not after other runs have finished; a block below 1 fails for any model."""
    folders = {spec.label: model_folder(spec.path) for spec in models}
    depths = {label: load_config(folder).num_layers for label, folder in folders.items() if is_complete(folder)}
    for i, method in enumerate(methods, 1):
        layer = method.options.get("fusion_layer")
        if layer is None:
            continue
        if layer < 1:
            raise MinirunError(f"methods #{i} ({method.name}) fusion_layer: {layer} is no block (they count from 1); "
                               "pick one of the model's blocks")
        for label, depth in depths.items():
            try:
                fusion_layer(EnsembleOptions(**method.options), depth)
            except MinirunError as e:
                raise MinirunError(f"methods #{i} ({method.name}) fusion_layer, model {label}: {e}") from None


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
    hub = not Path(spec.path).is_dir() and is_hub_id(spec.path)
    if not (Path(spec.path).is_dir() or spec.path == DEFAULT_MODEL or hub):
        raise MinirunError(f"{where} path: no checkpoint directory there; give a directory or a hub id (owner/name, "
                           "or owner/name@revision)")
    if Path(spec.path).is_dir() and not is_complete(Path(spec.path)):  # else found after other models ran for hours
        raise MinirunError(f"{where} path: the folder holds no checkpoint (a config.json and *.safetensors weights); "
                           "point it at a checkpoint directory (`minirun convert` or `pull` makes one)")
    if spec.batch_size is not None:
        _at_least(spec.batch_size, 1, f"{where} batch_size")
    if spec.dtype is not None and spec.dtype not in DTYPES:
        raise MinirunError(f"{where} dtype: unsupported {spec.dtype!r}; use one of {', '.join(DTYPES)}")
    try:
        checked_device(spec.device, here=False)  # whether this machine has it: when the sweep runs
    except MinirunError as e:
        raise MinirunError(f"{where} device: {e}") from None
    # a pinned revision's folder is `name@rev`: its label `name-rev`, a plain directory name
    return _labelled(spec, Path(local_name(spec.path) if hub else spec.path).name.replace("@", "-"), where)


def _datasets(table: dict, where: str) -> list[DatasetSpec]:
    """A [[datasets]] entry's specs: one, or with `num_prompts = [2, 3, 5]` (an ensemble-size curve) one per size,
    labelled `<label>-k<size>`, which `report` then shows side by side."""
    sizes = table.get("num_prompts")
    if not isinstance(sizes, list):
        return [_dataset(table, where)]
    if not sizes or len(set(map(repr, sizes))) < len(sizes):
        raise MinirunError(f"{where} num_prompts: give one number or a list of distinct ones (an ensemble-size "
                           f"curve: [2, 3, 5]), not {sizes!r}")
    _checked(DatasetSpec, table | {"num_prompts": sizes[0]}, where)  # its label too, which each size's extends
    specs = [_dataset({k: v for k, v in table.items() if k != "label"} | {"num_prompts": size}, where)
             for size in sizes]
    return [_labelled(dataclasses.replace(spec, label=""), f"{table.get('label') or spec.label}-k{spec.num_prompts}",
                      where) for spec in specs]


def _dataset(table: dict, where: str) -> DatasetSpec:
    spec = DatasetSpec(**_checked(DatasetSpec, table, where))
    where = f"{where} ({spec.name})"
    if spec.data not in NAMES and not Path(spec.name).is_file():
        raise MinirunError(f"{where} name: unknown dataset; use one of {', '.join(NAMES)} (a Hub one pinned: "
                           "NAME@REV) or the path of a file")
    if spec.few_shot is not None and not (spec.few_shot.endswith((".jsonl", ".parquet")) and
                                          Path(spec.few_shot).is_file()):
        raise MinirunError(f"{where} few_shot: {spec.few_shot!r} is no .jsonl or .parquet file; give an existing "
                           ".jsonl of items, or a local copy of a benchmark's train/dev rows")
    if spec.match not in MATCH_RULES:
        raise MinirunError(f"{where} match: unknown rule {spec.match!r}; use one of {', '.join(MATCH_RULES)}")
    if spec.choice_format not in CHOICE_FORMATS:
        raise MinirunError(f"{where} choice_format: unknown format {spec.choice_format!r}; use one of "
                           f"{', '.join(CHOICE_FORMATS)}")
    if spec.skip_bad and spec.data in NAMES:
        raise MinirunError(f"{where} skip_bad: only a plain item file's bad records can be skipped; drop the key")
    if spec.subset is not None and spec.data in NAMES and spec.data != "mmlu":  # a file's rows are read first
        raise MinirunError(f"{where} subset: only mmlu and local MMLU files have subsets; drop the key")
    if spec.benchmark is not None and (spec.data in NAMES or spec.asked_as not in NAMES):
        fix = "drop the key: a named dataset is asked as itself" if spec.data in NAMES else \
            f"use one of {', '.join(NAMES)}"
        raise MinirunError(f"{where} benchmark: {spec.benchmark!r} cannot be asked of it; {fix}")
    if spec.choice_format != "cloze" and TASK_OF.get(spec.asked_as or spec.data, "choice") != "choice":
        raise MinirunError(f"{where} choice_format: {spec.asked_as or spec.data}'s items are not multiple choice, "
                           "which a format lays out: drop the key")
    try:
        check_choice_format(spec.asked_as or spec.data, spec.choice_format)
    except MinirunError as e:
        raise MinirunError(f"{where} choice_format: {e}") from None
    _at_least(spec.few_shot_k, 0, f"{where} few_shot_k")
    try:  # a file of examples is read later: one that names MMLU's subjects is refused then
        check_draw(spec.few_shot_draw, spec.few_shot_k, spec.asked_as or spec.data, spec.choice_format,
                   None if spec.few_shot is None else [])
    except MinirunError as e:
        raise MinirunError(f"{where} few_shot_draw: {e}") from None
    _at_least(spec.num_prompts, 1, f"{where} num_prompts")
    if spec.max_samples is not None:
        _at_least(spec.max_samples, 1, f"{where} max_samples")
    if spec.sample_seed is not None:
        _at_least(spec.sample_seed, 0, f"{where} sample_seed")
    if spec.sample_seed is not None and spec.max_samples is None:
        raise MinirunError(f"{where} sample_seed picks which max_samples items run, and there is no max_samples: "
                           "give both, or drop the seed")
    return _labelled(spec, dataset_label(spec.name), where)


def method_options() -> tuple[str, ...]:
    """The EnsembleOptions fields a [[methods]] entry may set: those the eval loop takes as arguments."""
    loop = inspect.signature(prepare).parameters
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
        check_options_used([name], EnsembleOptions(**options))
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
    if label in RESERVED:
        raise MinirunError(f"{where} label: {label!r} is a file the sweep writes beside its runs; set another label")
    return dataclasses.replace(spec, label=label)


def _check_report_labels(methods: tuple[MethodSpec, ...]) -> None:
    """The report finds the baseline and the single-prompt run by their labels "origin" and "per_prompt": another
    method under one of them would be compared as if it were the baseline, and an origin run under another label
    alone would leave every comparison out without a word."""
    for i, method in enumerate(methods, 1):
        if method.label in ("origin", "per_prompt") and method.name != method.label:
            raise MinirunError(f"methods #{i} ({method.name}) label: {method.label!r} is how the report finds the "
                               f"{method.label} run; set another label")
    for name in ("origin", "per_prompt"):
        labels = [m.label for m in methods if m.name == name]
        if labels and name not in labels:
            raise MinirunError(f"methods: no {name} entry is labelled {name!r} ({', '.join(labels)}), and the report "
                               f"finds the {name} run by that label; drop the label of one of them")


def _one_spelling(name: str) -> str:
    """A dataset file's path as one text however it is written (relative, through a link); a named dataset as it is."""
    return str(Path(name).resolve()) if Path(name).exists() else name


def _unique_labels(section: str, specs: tuple) -> None:
    """Labels name directories, so they must differ; and two entries that differ only in their label would run
    the same cells twice (a method's options compared with their defaults filled in)."""
    seen: dict[str, int] = {}
    settings: list = []
    for i, spec in enumerate(specs, 1):
        if spec.label in seen:
            raise MinirunError(f"{section} #{i}: label {spec.label!r} is also that of #{seen[spec.label]}; "
                               "give one of them a distinct label")
        seen[spec.label] = i
        if isinstance(spec, MethodSpec):
            same = (spec.name, EnsembleOptions(**spec.options))
        else:  # a folder or file however it is spelt; a model's batch size changes no row
            model = isinstance(spec, ModelSpec)
            same = dataclasses.replace(spec, label="", **({"batch_size": None,  # where `resolve_model` loads it from
                                                           "path": str(model_folder(spec.path).resolve())}
                                                          if model else {"name": _one_spelling(spec.name)}))
        if same in settings:
            raise MinirunError(f"{section} #{i} ({spec.label}): the settings of #{settings.index(same) + 1} under "
                               "another label, which would run the same work twice; drop one or change a setting")
        settings.append(same)


