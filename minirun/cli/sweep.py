"""`minirun sweep` (methods × datasets × models from one TOML file) and its report tables.

`register(app)` adds the command; `report_sweep` is what `minirun report` shows for a sweep directory.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import pandas as pd
import typer
from rich.table import Table

from minirun.cli.common import (CALIBRATION_CAPTION, MC2_CAPTION, check_output_dir, err, friendly, load_llm, mc2_cells,
                                out, shown_number, single_prompt_line, warn, write_csv, write_text)
from minirun.errors import MinirunError

if TYPE_CHECKING:  # imported when the command runs: `minirun --help` stays quick
    from minirun.eval.sweep import CellState


def register(app: typer.Typer) -> None:
    """Add `sweep` to `app`."""
    app.command("sweep")(friendly(sweep_command, resumable=True))


def sweep_command(
    file: Path = typer.Argument(..., help="The sweep's TOML file (example: docs/sweep.toml)."),
    output: Optional[Path] = typer.Option(None, help="Output directory (default runs/<file name without .toml>)."),
    progress: bool = typer.Option(True, help="Show progress bars."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what a sweep started now would run (each run's items "
                                 "done and to do, the models it would load or pull), then stop: nothing is written."),
    models: list[str] = typer.Option([], "--models", help="Run only these models' cells (labels; repeatable or "
                                     "comma-separated): machines sharing one --output can each take other models."),
    datasets: list[str] = typer.Option([], "--datasets", help="Run only these datasets' cells (labels; repeatable "
                                       "or comma-separated)."),
    show_prompts: Optional[int] = typer.Option(None, min=1, help="Print each model's prompts for the first N items of "
                                               "each dataset token for token, as `eval --show-prompts` does, then "
                                               "stop: models load, nothing runs or is written."),
) -> None:
    """Run every method on every dataset with every model (resumable; shard with
    `torchrun --nproc_per_node N -m minirun.cli sweep`)."""
    from minirun.eval.sweep import cells, run_sweep, survey, sweep_prompts
    from minirun.eval.sweep_spec import load_sweep_file, selection

    sweep = load_sweep_file(file)  # the whole file checked before any model loads
    only = selection(sweep, models, datasets)
    output = output or Path("runs") / file.stem
    check_output_dir(output)  # a file there, or an unwritable folder: before the plan, as before any model loads
    if dry_run and show_prompts is not None:
        raise MinirunError("--dry-run loads no model and --show-prompts loads each one: give one of them")
    if dry_run:
        show_plan(survey(sweep, output, only), output, {str(c.dir.relative_to(output)) for c in cells(sweep, output)})
        return
    load = lambda m: load_llm(m.path, m.device, m.dtype, m.compile)  # noqa: E731
    if show_prompts is not None:  # plain text: prompts hold brackets and markup that rich would read
        for model, dataset, blocks in sweep_prompts(sweep, output, load, show_prompts, only):
            print(f"##### {model} · {dataset}\n\n" + "\n\n".join(blocks) + "\n")
        err.print("nothing was run or written (drop --show-prompts to run the sweep)", style="dim")
        return
    if run_sweep(sweep, output, load, progress=progress, only=only) is not None:  # rank 0's (other ranks get None)
        report_sweep(output, False, None, None, None)  # what `minirun report` shows: the series tables, the warnings
        out.print(f"results in {output / 'results.parquet'}", style="dim", highlight=False)


def _count(n: int, noun: str) -> str:
    """`n` of `noun` as a sentence says it: one without its plural s."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def show_plan(states: list[CellState], output: Path, planned: set[str]) -> None:
    """`sweep --dry-run`: a row per run (its items, those answered, what runs now), a line per model with work
    saying where it loads from, or that it is pulled first, and one naming run folders of no run `planned` (the
    file's, `--models`/`--datasets` aside)."""
    import torch

    from minirun.checkpoints.hub import is_complete, model_folder
    from minirun.eval.sweep_results import unlisted_note, unlisted_runs

    table = Table(title=f"sweep plan · {output}", title_justify="left")
    for name, justify in (("model", "left"), ("dataset", "left"), ("method", "left"), ("items", "right"),
                          ("answered", "right"), ("now", "left")):
        table.add_column(name, justify=justify)
    for s in states:
        now = "nothing (finished)" if s.finished else \
            f"refused: its rows were made otherwise ({'; '.join(s.refused)})" if s.refused else \
            f"run {_count(s.items - s.answered, 'item')} (resumed: it finished over fewer items, all among these)" \
            if s.changed and s.grown else \
            f"run {_count(s.items - s.answered, 'item')} (resumed)" if s.changed and s.answered < s.items else \
            "run again: its settings or data changed since it finished" if s.changed else \
            "mark it finished: every item is answered (its model loads to check the run)" if s.items == s.answered \
            else f"run {_count(s.items - s.answered, 'item')}" + (" (resumed)" if s.answered else "")
        table.add_row(s.cell.model.label, s.cell.dataset.label, s.cell.method.label, str(s.items), str(s.answered),
                      now)
    out.print(table)
    models = {id(s.cell.model): s.cell.model for s in states if not s.finished}.values()
    for model in models:
        folder = model_folder(model.path)
        source = f"loads {folder}{weights_line(folder, model.dtype, model.device)}" if is_complete(folder) else \
            f"pulls {model.path} into {folder}, then loads it"
        if model.device.startswith("cuda") and not torch.cuda.is_available():  # a plan made on a login node
            source += f"; {model.device} is not on this machine: run the sweep where it is, or device = \"cpu\""
        out.print(f"model {model.label}: {source}", highlight=False)
    if refused := [s for s in states if s.refused]:
        out.print(f"{len(refused)} run{'s' if len(refused) > 1 else ''} would stop the sweep before any runs: do as "
                  "each says (restore the file's settings, move an eval's rows out), or give the method or dataset "
                  "(the model, where its weights or dtype changed) a new label (or the sweep a new --output) to run "
                  "them afresh", highlight=False)
    if unlisted := unlisted_runs(output, planned):
        out.print(unlisted_note(unlisted, output), highlight=False)
    todo = sum(1 for s in states if not s.finished)
    out.print(f"{todo} of {len(states)} runs have work" + ("" if todo else ": the sweep is finished") +
              "; nothing was written (drop --dry-run to run it)", highlight=False)


ROW_TOKENS = 384  # a 5-shot QA prompt with its answer, in SmolLM2's or Qwen's tokens: the dry run's example row


def weights_line(folder: Path, dtype: str | None, device: str) -> str:
    """What loading a model's weights takes and, where the device is on this machine, what it has free now (a dry
    run on a login node says what the GPU node loads), then what its keys and values take a token and, where the
    weights fit here, how many cache rows of a typical few-shot prompt the memory left holds: a 32B model's cache
    beside its weights decides its batch size (questions x prompts rows). ", its weights: 65.52 GB in bfloat16 on
    cuda (79.10 GB free here); keys and values: 262 KB a token in a row, so the 13.58 GB left hold about 101 rows of
    512 slots (…)"."""
    from minirun.checkpoints.loader import available_memory, checked_device, load_config, weights_size
    from minirun.engine.session import cache_size
    from minirun.eval.loop import BATCH_ROWS
    from minirun.layers.kv_cache import token_bytes

    needed, dtype_, where = weights_size(folder, dtype, device)
    config = load_config(folder)
    per_token = token_bytes(config.num_layers, config.num_kv_heads, config.head_dim, dtype_)
    try:
        free = available_memory(checked_device(where))
    except MinirunError:  # a GPU this machine lacks
        free = None
    short = "" if free is None or needed <= free[0] else ": it does not fit"
    room = "" if free is None else f" ({free[0] / 1e9:.2f} GB free here{short})"
    cache = f"; keys and values: {per_token / 1e3:,.0f} KB a token in a row"
    if free is not None and not short:
        slots = cache_size(ROW_TOKENS)  # what the engine allocates a row of that many tokens: chunk padding too
        left = free[0] - needed
        rows = left // (per_token * slots)
        cache += (f", so the {left / 1e9:.2f} GB left hold about {rows:,} rows of {slots} slots (a row of up to "
                  f"{ROW_TOKENS} tokens: few-shot head, prompt and answer; eval's batches run up to {BATCH_ROWS} rows, "
                  "a model's batch_size fewer)" + ("" if rows else ": no batch runs, give it a smaller dtype or a "
                                                   "device with more memory"))
    return f", its weights: {needed / 1e9:.2f} GB in {str(dtype_).removeprefix('torch.')} on {where}{room}{cache}"


def rescored_title(notes: dict[str, str]) -> str:
    """A sweep plot's title from each dataset's rescoring note (`report.rescored`'s, " (rescored: FLAGS)", or ""):
    the flags alone where every dataset's are the same, else each dataset's that has some; "" where none has."""
    flags = {dataset: note.strip(" ()").removeprefix("rescored: ") for dataset, note in notes.items() if note}
    if not flags:
        return ""
    if len(flags) == len(notes) and len(set(flags.values())) == 1:
        return f"rescored: {next(iter(flags.values()))}"
    return "rescored: " + "; ".join(f"{dataset} {flag}" for dataset, flag in flags.items())


def report_sweep(run_dir: Path, as_json: bool, csv: Optional[Path], plot: Optional[Path],
                 match: Optional[str], latex: Optional[Path] = None, choice_score: Optional[str] = None) -> None:
    """`minirun report` on a sweep directory: one table per dataset, models as column groups."""
    from minirun.eval.sweep_results import (load_sweep, mixed_models, mixed_scoring, prompt_series,
                                            sweep_harness_notes, sweep_provenance, sweep_thinking_cut,
                                            unfinished_cells, unlisted_note, unlisted_runs)

    raw, warnings = load_sweep(run_dir), []  # first: it names a damaged index in one line
    if cells := unfinished_cells(run_dir):
        warnings.append(f"{len(cells)} of the sweep's runs have not finished ({', '.join(cells[:5])}"
                        f"{' …' if len(cells) > 5 else ''}): the tables cover their rows so far, or leave them out; "
                        "rerun `minirun sweep` with the same file to finish them")
    warnings += mixed_models(run_dir) + sweep_thinking_cut(run_dir) + (mixed_scoring(run_dir) if choice_score is None
                                                                       else [])
    if unlisted := unlisted_runs(run_dir):
        warnings.append(unlisted_note(unlisted, run_dir))
    if match in ("harness", "flexible"):
        warnings += sweep_harness_notes(run_dir)
    side_by_side(raw, lambda dataset: str(run_dir), run_dir.resolve().name,
                 lambda table, dataset: sweep_provenance(run_dir, table, dataset), warnings,
                 as_json, csv, plot, match, latex, choice_score, prompt_series(run_dir))


def report_runs(run_dirs: list[Path], as_json: bool, csv: Optional[Path], plot: Optional[Path],
                match: Optional[str], latex: Optional[Path] = None, choice_score: Optional[str] = None) -> None:
    """`minirun report RUN RUN …`: eval runs side by side as a sweep's models, each compared with the first run given
    of its dataset."""
    from minirun.eval.sweep_results import compared_harness_notes, compared_provenance, compared_warnings, load_runs

    compared = load_runs(run_dirs)
    warnings = compared_warnings(compared) + (compared_harness_notes(compared) if match in ("harness", "flexible")
                                                else [])
    side_by_side(compared.table, lambda dataset: " · ".join(str(run) for (name, _), run in compared.dirs.items()
                                                            if name == dataset), "compared runs",
                 lambda table, dataset: compared_provenance(compared, table, dataset), warnings,
                 as_json, csv, plot, match, latex, choice_score)


def side_by_side(raw: pd.DataFrame, title: Callable[[str], str], caption: str,
                 provenance: Callable[[pd.DataFrame, str], str],
                 warnings: list[str], as_json: bool, csv: Optional[Path], plot: Optional[Path], match: Optional[str],
                 latex: Optional[Path], choice_score: Optional[str], series: list[dict[str, int]] = ()) -> None:
    """One table per dataset with models as column groups (a sweep's rows, or eval runs'), in the output forms
    `report` writes; `title` names what a dataset's table shows (the sweep, or the runs of that dataset),
    `provenance` heads each dataset's LaTeX table, and `warnings` join those of the rows. A sweep's
    `series` (`sweep.prompt_series`) gives each dataset's prompts per item (`num_prompts` in the CSV and JSON), and
    a series of several sizes its ensemble-size table."""
    from minirun.eval.report import latex as latex_table
    from minirun.eval.report import (first_prompt_note, mixed_timing, rescored, rescoring, select_choice_score,
                                     select_match, single_prompt_dropped, size_latex, timed_on, unrated_note,
                                     unrelated_note, with_counts)
    from minirun.eval.sweep_results import plot_sweep, repeated_sizes, size_rows, size_series, sweep_table

    table = select_choice_score(select_match(raw, match), choice_score)
    scores = sweep_table(table)
    prompts = {label: size for sizes in series for label, size in sizes.items()}
    machines = {key: " | ".join(timed_on(part)) or None  # each (dataset, method, model)'s, as one run's --json has
                for key, part in table.groupby(["dataset", "label", "model"], sort=False)}
    curves = size_series(series, scores)
    how = {dataset: rescoring(match, choice_score, part) for dataset, part in table.groupby("dataset", sort=False)}
    if csv is not None:
        frame = with_counts(scores_long(scores, prompts, machines))
        if any(how.values()):  # beside the scores, as the LaTeX comment says it
            frame["rescored"] = frame["dataset"].map(lambda dataset: json.dumps(how[dataset]) if how[dataset] else None)
        write_csv(frame, csv, index=False)
    # what report's options rescored of each table's rows: (a LaTeX comment, a note for its title and caption)
    changed = {dataset: rescored(match, choice_score, part) for dataset, part in table.groupby("dataset", sort=False)}
    if plot is not None:
        plot_sweep(table, plot, curves, rescored_title({d: note for d, (_, note) in changed.items()}))
    curve_notes = [rescored(match, choice_score, table[table["dataset"].isin(list(sizes))])[1] for sizes in curves]
    if latex is not None:
        rows = scores_long(scores)
        text = "\n".join([*(provenance(table, dataset) + changed[dataset][0] + latex_table(
            part.set_index(["model", "method"]), f"{dataset} ({caption}){changed[dataset][1]}")
            for dataset, part in rows.groupby("dataset", sort=False)),
            *(size_latex(size_rows(scores, sizes), f"{', '.join(sizes)} ({caption}){note}")
              for sizes, note in zip(curves, curve_notes))])
        write_text(latex, text)
    if single_prompt_dropped(raw, table):
        warnings = [*warnings, "single-prompt figures left out: per-prompt correctness is recorded under each "
                    f"run's own match rule only, not under --match {match}"]
    if mixed := mixed_timing(table):
        warnings = [*warnings, mixed]
    warnings = [*warnings, *(note for dataset, part in table.groupby("dataset", sort=False)
                             for note in (first_prompt_note(part, f" of {dataset}"),
                                          unrelated_note(part, f" of {dataset}"),
                                          unrated_note(part, f" of {dataset}", str(dataset)))
                             if note), *repeated_sizes(table, curves)]
    if as_json:
        result = with_pairs(scores_json(scores, prompts, machines), table)
        for dataset, models in result.items():
            for entry in (entry for methods in models.values() for entry in methods.values() if how.get(dataset)):
                entry["rescored"] = how[dataset]
        print(json.dumps(result))
        warn(warnings, err)
        return
    for t in score_tables(scores, lambda dataset: title(dataset) + changed[dataset][1]):  # as in LaTeX captions
        out.print(t)
    for sizes, note in zip(curves, curve_notes):
        out.print(size_table(scores, sizes, note))
    warn(warnings, out)


def with_pairs(result: dict, table: pd.DataFrame) -> dict:
    """`scores_json`'s {dataset: {model: {method: scores}}} with what one run's --json adds to each method: `versus`,
    every two methods of a model on a dataset compared (`report.pairwise`, Holm over that model's pairs), and where
    the rows carry relations `by_relation`, the method's scores per relation, or popularities `by_popularity`, per
    popularity bin."""
    from minirun.eval.report import by_label, by_popularity, by_relation, json_scores, pairwise

    for (dataset, model), rows in table.groupby(["dataset", "model"], sort=False):
        run = by_label(rows.drop(columns=["dataset", "model"]))
        for (method, other), stats in pairwise(run).to_dict("index").items():
            result[dataset][model][method].setdefault("versus", {})[other] = json_scores(stats)
        if "relation" in run.columns and run["relation"].notna().any():
            for (method, relation), stats in by_relation(run).to_dict("index").items():
                result[dataset][model][method].setdefault("by_relation", {})[str(relation)] = json_scores(stats)
    for dataset, rows in table.groupby("dataset", sort=False):  # one set of bins for every model of a dataset
        if "popularity" in rows.columns and rows["popularity"].notna().any():
            models = by_label(rows.drop(columns="dataset"))
            for (model, method, part), stats in by_popularity(models).to_dict("index").items():
                result[dataset][model][method].setdefault("by_popularity", {})[str(part)] = json_scores(stats)
    return result


def score_tables(scores: pd.DataFrame, title: Callable[[str], str]) -> list[Table]:
    """One rich table per dataset of a `sweep_table`: a row per method, a column group per model
    (accuracy with its Wilson interval, exact, n, the difference from origin with its exact
    McNemar p, tokens and items per second; each model after the dataset's first, the difference from that one under
    the same method label); per_prompt's row is named as its first prompt's, and its single-prompt figures per model
    go in the caption, as in one run's table."""
    from minirun.eval.report import fewer_shared, method_label

    models = list(dict.fromkeys(scores.columns.get_level_values("model")))
    tables = []
    for dataset in dict.fromkeys(scores.index.get_level_values("dataset")):
        ran = scores.loc[dataset].xs("n", axis=1, level="metric").notna().any()
        first = next(model for model in models if ran[model])  # the model the others are compared with
        others = [model for model in models if model != first and ran[model]]
        t = Table(title=f"{dataset} · {title(dataset)}", caption="\n".join([
                  *_single_prompt_lines(scores, dataset, models),
                  "95% CI: Wilson; Δ origin: on the items both answered, p: exact McNemar, unadjusted (Holm-adjusted "
                  "over a model's methods in --json, --csv and --latex)",
                  *([f"Δ {first}: the same method label of {first} on the items both answered, p: exact McNemar, "
                     "unadjusted"] if others else [])]))
        t.add_column("method")
        for model in models:
            headers = ("accuracy [95% CI]", "exact", "n", "Δ origin (p)", *([f"Δ {first} (p)"] * (model in others)),
                       "tokens/s", "items/s")
            for i, header in enumerate(headers):
                t.add_column(f"{model if i == 0 else ''}\n{header}", justify="right")
        for method, row in scores.loc[dataset].iterrows():
            cells = []
            for model in models:
                s = row[model]
                if math.isnan(s["n"]):
                    cells += ["–"] * (7 if model in others else 6)
                    continue
                versus = [_difference(s, "origin", fewer_shared(s))]
                if model in others:
                    shared = s["n_vs_first_model"]
                    versus.append(_difference(s, "first_model", int(shared) if shared < s["n"] else None))
                cells += [f"{s['accuracy']:.3f} [{s['ci95_low']:.3f}, {s['ci95_high']:.3f}]",
                          f"{s['exact_accuracy']:.3f}", str(int(s["n"])), *versus,
                          shown_number(s["tokens_per_second"], ".1f"), shown_number(s["items_per_second"], ".2f")]
            t.add_row(method_label(str(method)), *cells)
        tables.append(t)
        if scores.loc[dataset].xs("ece", axis=1, level="metric").notna().any(axis=None):
            tables.append(_calibration_table(scores.loc[dataset], f"{dataset} · calibration (multiple choice)", models))
        if scores.loc[dataset].xs("mc2", axis=1, level="metric").notna().any(axis=None) or \
                scores.loc[dataset].xs("mean_single_mc2", axis=1, level="metric").notna().any(axis=None):
            tables.append(_mc2_table(scores.loc[dataset], f"{dataset} · MC2 (probability of the right options)",
                                     models))
    return tables


def _difference(row: pd.Series, side: str, fewer: int | None) -> str:
    """A difference in accuracy from `side` with its p (and the items it rests on where fewer than n), or "–"."""
    if math.isnan(row[f"diff_vs_{side}"]):
        return "–"
    return f"{row[f'diff_vs_{side}']:+.3f} ({row[f'p_vs_{side}']:.3g}{f', n={fewer}' if fewer is not None else ''})"


def _mc2_table(scores: pd.DataFrame, title: str, models: list[str]) -> Table:
    """One dataset's TruthfulQA MC2: a row per method, a column group per model (MC2, difference from origin), each
    prompt's alone in the caption where per_prompt (or vote) ran."""
    from minirun.eval.report import method_label

    alone = [f"{model}: {method}'s each prompt alone {row[model]['mean_single_mc2']:.3f}"
             for method, row in scores.iterrows() for model in models if not math.isnan(row[model]["mean_single_mc2"])]
    t = Table(title=title, caption="\n".join([MC2_CAPTION, *alone]))
    t.add_column("method")
    for model in models:
        for i, header in enumerate(("MC2 [95% CI]", "Δ origin [95% CI] (p)")):
            t.add_column(f"{model if i == 0 else ''}\n{header}", justify="right")
    for method, row in scores.iterrows():
        t.add_row(method_label(str(method)), *(cell for model in models for cell in mc2_cells(row[model])))
    return t


def size_table(scores: pd.DataFrame, sizes: dict[str, int], note: str = "") -> Table:
    """An ensemble-size series (`sweep.size_rows`) as a rich table: a row per method, a column per model and prompts
    per item; `note` after its title (`report.rescored`'s)."""
    from minirun.eval.sweep_results import size_rows

    rows = size_rows(scores, sizes)
    t = Table(title=f"{', '.join(sizes)} · accuracy by prompts per item{note}",
              caption="each column a dataset entry of the sweep that differs from the others in num_prompts alone")
    t.add_column("method")
    for model, size in rows.columns:
        t.add_column(f"{model if size == rows.columns[0][1] else ''}\nk={size}", justify="right")
    for name, values in rows.iterrows():
        t.add_row(name, *(shown_number(v, ".3f") for v in values))
    return t


def _calibration_table(scores: pd.DataFrame, title: str, models: list[str]) -> Table:
    """One dataset's calibration: a row per method, a column group per model (confidence, ECE, Brier)."""
    from minirun.eval.report import method_label

    t = Table(title=title, caption=CALIBRATION_CAPTION)
    t.add_column("method")
    for model in models:
        for i, header in enumerate(("confidence", "ECE", "Brier")):
            t.add_column(f"{model if i == 0 else ''}\n{header}", justify="right")
    for method, row in scores.iterrows():
        t.add_row(method_label(str(method)), *(shown_number(row[model][c], ".3f")
                                               for model in models for c in ("confidence", "ece", "brier")))
    return t


def _single_prompt_lines(scores: pd.DataFrame, dataset: str, models: list[str]) -> list[str]:
    """Per model that ran per_prompt (or vote, whose rows hold the same answers) on `dataset`: its mean
    single-prompt accuracy, oracle and consistency, on the one entry `sweep_table` gives them, whatever its label."""
    return [f"{model}: {method}'s {single_prompt_line(row[model])}" for method, row in scores.loc[dataset].iterrows()
            for model in models if not math.isnan(row[model]["mean_single_accuracy"])]


def scores_long(scores: pd.DataFrame, prompts: dict[str, int] | None = None,
                machines: dict[tuple[str, str, str], str | None] | None = None) -> pd.DataFrame:
    """A `sweep_table` as one row per (dataset, method, model) scored, a column per metric: the
    shape a plotting or stats script reads without a multi-row header. `prompts` (a sweep's datasets' prompts per
    item) adds them as `num_prompts`, the x of an ensemble-size curve; `machines` (by (dataset, method, model)) the
    machines their seconds were timed on as `machine`."""
    models = list(dict.fromkeys(scores.columns.get_level_values("model")))
    rows = [{"dataset": dataset, "method": method, "model": model, **row[model].to_dict(),
             **({"num_prompts": prompts.get(dataset)} if prompts else {}),
             **({"machine": machines.get((dataset, method, model))} if machines is not None else {})}
            for (dataset, method), row in scores.iterrows() for model in models if not math.isnan(row[(model, "n")])]
    return pd.DataFrame(rows).astype({"n": int})


def scores_json(scores: pd.DataFrame, prompts: dict[str, int] | None = None,
                machines: dict[tuple[str, str, str], str | None] | None = None) -> dict:
    """{dataset: {model: {method: scores}}} with each method's scores as `minirun report --json`
    gives them for one run (intervals as [low, high], NaN as null); runs not yet scored left out."""
    from minirun.eval.report import json_scores

    result: dict = {}
    for row in scores_long(scores, prompts, machines).to_dict("records"):
        dataset, method, model = row.pop("dataset"), row.pop("method"), row.pop("model")
        result.setdefault(dataset, {}).setdefault(model, {})[method] = json_scores(row)
    return result
