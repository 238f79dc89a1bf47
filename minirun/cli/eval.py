"""`minirun eval` (a dataset through several methods) and `minirun report` (a run's scores).

`register(app)` adds both commands to the app.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import pandas as pd
import typer
from rich.table import Table

from minirun.cli.common import (
    CALIBRATION_CAPTION,
    DEVICE_HELP,
    DTYPE_HELP,
    MC2_CAPTION,
    SKIP_BAD_HELP,
    check_figure_path,
    check_not_run_file,
    check_output_dir,
    err,
    friendly,
    load_llm,
    mc2_cells,
    method_names,
    out,
    parse_flex_bias,
    shown_interval,
    shown_number,
    single_prompt_line,
    warn,
    write_csv,
    write_text,
)
from minirun.errors import MinirunError

DEFAULT_METHODS = ["origin", "per_prompt", "avg", "max", "flex"]


def register(app: typer.Typer) -> None:
    """Add `eval` and `report` to `app`."""
    app.command("eval")(friendly(eval_command, resumable=True))
    app.command("report")(friendly(report_command))


def eval_command(
    data: str = typer.Option("sample-qa", help="sample-qa, sample-fill, sample-choice, sample-math, webqa, myriadlama, "
                             "triviaqa, nq_open, popqa, gsm8k, mmlu, commonsense_qa, arc_challenge, arc_easy, "
                             "openbookqa, hellaswag, piqa, sciq, boolq, truthfulqa_mc1, truthfulqa_mc2, winogrande (a "
                             "Hub dataset pinned: NAME@REV, a branch, tag or commit), or a dataset file."),
    subset: Optional[str] = typer.Option(None, help="mmlu: one subject (default: all)."),
    benchmark: Optional[str] = typer.Option(None, help="A dataset file's items asked as this named dataset asks its "
                                            "own: its prompt format and few-shot examples (e.g. MMLU paraphrased by "
                                            "`minirun paraphrase`: --benchmark mmlu; its Hub examples pinned: "
                                            "mmlu@REV)."),
    method: list[str] = typer.Option(DEFAULT_METHODS, "--method", "-m",
                                     help="Method to run (repeatable, or comma-separated: -m origin,avg)."),
    model: Optional[str] = typer.Option(None, help="Checkpoint dir or HF repo id, org/name or org/name@REV (default: "
                                         "$MINIRUN_MODEL or SmolLM2)."),
    num_prompts: int = typer.Option(5, "--num-prompts", "--num-paraphrases", min=1,
                                    help="Prompts per item: the question, then its paraphrases (duplicates dropped)."),
    original: bool = typer.Option(True, "--original/--no-original",
                                  help="Include the question itself (--no-original: paraphrases only)."),
    max_samples: Optional[int] = typer.Option(None, min=1, help="Only the first N items (a later run with a larger N "
                                              "keeps these rows: a pilot grows)."),
    sample_seed: Optional[int] = typer.Option(None, min=0, help="With --max-samples: N items at random, the items "
                                              "in random.Random(seed).sample's order first (a larger N keeps a "
                                              "smaller one's items)."),
    few_shot_k: int = typer.Option(5, min=0, help="Worked examples in the prompt."),
    few_shot: Optional[Path] = typer.Option(None, help="Few-shot items (.jsonl), or a local copy of a benchmark's "
                                            "train/dev rows (.jsonl, .parquet); default: the dataset's own."),
    few_shot_draw: str = typer.Option("shared", help="shared: one draw of examples for every question (encoded once "
                                      "a run); per-question: each its own, drawn as lm-evaluation-harness draws "
                                      "them (random.Random(1234) in the questions' order), for its figure."),
    output: Optional[Path] = typer.Option(None, help="Run directory (default runs/<dataset>-<model>)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Questions per batched generation (default: 32, fewer "
                                             "where their prompts would make more than 256 rows)."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="New tokens per answer (default: 24; 256 for "
                                                 "maths items, solved step by step)."),
    match: str = typer.Option("lemma", help="lemma, or bidirectional (a prediction inside a gold also counts); "
                                            "harness and flexible rescore a finished run: `report --match`."),
    num_samples: int = typer.Option(100, min=1, help="Samples per paraphrase for the weighted methods' confidence."),
    positions: str = typer.Option("right", help="flex position scheme: right, restart, sequential."),
    share_prefix: bool = typer.Option(True, help="Encode the few-shot prefix once per run (--no-share-prefix "
                                      "repeats it per paraphrase)."),
    chat: Optional[bool] = typer.Option(None, "--chat/--no-chat", help="Chat template (default: if the model has one)."),
    thinking: bool = typer.Option(False, help="Let a chat template with a reasoning switch (Qwen3's enable_thinking) have the model reason "
                                  "before answering (default: off, the answer starts at once)."),
    template_date: Optional[str] = typer.Option(None, help="The day (YYYY-MM-DD) a chat template that writes "
                                                "today's date (Llama 3.2's) renders at (default: the day the run "
                                                "began, kept on resume)."),
    flex_bias: Optional[str] = typer.Option(None, help="flex: weight w (or 'inv_n') added as log(w) to suffix/answer->paraphrase attention."),
    fusion_layer: Optional[int] = typer.Option(None, min=1, help="hidden_avg: first fused block, 1-based (default: round(0.75 x layers))."),
    fusion_alpha: float = typer.Option(1.0, min=0, max=1, help="hidden_avg: weight of the rows' mean in the fused state."),
    choice_score: str = typer.Option("mean", help="Multiple choice: an option's log-likelihood per token (mean), summed (sum: the harness's acc) or per character (chars: acc_norm)."),
    choice_format: str = typer.Option("cloze", help="Multiple choice: cloze (score each option's text) or letters "
                                      "(options listed as A. B. ..., their letters scored)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
    compile: bool = typer.Option(False, help="Compile the decode step and FlexAttention kernels (a first compile of "
                                 "tens of seconds; pays back on large GPU sweeps)."),
    skip_bad: bool = typer.Option(False, help=SKIP_BAD_HELP),
    progress: bool = typer.Option(True, help="Show progress bars."),
    show_prompts: Optional[int] = typer.Option(None, min=1, help="Print the first N items' prompts token for token "
                                               "as the methods ask them (template, few-shot head, question, options "
                                               "scored), then stop: nothing runs or is written."),
) -> None:
    """Run methods over a dataset (resumable; shard with `torchrun --nproc_per_node N -m minirun.cli eval`)."""
    from minirun.checkpoints.tokenizer import template_day
    from minirun.eval.data import asked_items, benchmark_source, dataset_label, hub_dataset, load_cited, load_examples
    from minirun.eval.loop import (check_benchmark, check_benchmark_task, check_draw, check_paraphrased,
                                   check_resumable, prepare, ranks, run_sharded, shown_prompts)
    from minirun.eval.prompts import check_choice_format
    from minirun.eval.report import cut_thinking, first_prompt_note
    from minirun.eval.sweep_results import sweep_of

    if match not in ("lemma", "bidirectional"):
        raise MinirunError(f"--match must be 'lemma' or 'bidirectional', not {match!r}")
    if few_shot is not None and few_shot.suffix not in (".jsonl", ".parquet"):
        raise MinirunError(f"--few-shot takes a .jsonl file of items or a benchmark's rows (.jsonl, .parquet), not "
                           f"{few_shot}")
    bias = parse_flex_bias(flex_bias)
    if template_date is not None:
        template_day(template_date)  # before a model is fetched
        if chat is False:
            raise MinirunError("--template-date is the day a chat template renders at, and --no-chat uses none: drop "
                               "one of them")
    method = method_names(method)
    asked, data = data, hub_dataset(data)[0]
    named = hub_dataset(benchmark)[0] if benchmark is not None else None
    check_benchmark(data, named)  # before the data or its examples are looked up on the Hub
    check_choice_format(named or data, choice_format)  # before the data is read and a model is fetched
    items, source = load_cited(asked, subset, skip_bad, benchmark=named)  # at one commit: items, examples, citation
    check_benchmark_task(items, named, data)  # before the benchmark's examples are looked up on the Hub
    asked_now = asked_items(items, max_samples, sample_seed, data)
    check_paraphrased(asked_now, method, data, num_prompts, original)  # before a model is fetched
    fewshot_items = load_examples(few_shot) if few_shot is not None else None
    check_draw(few_shot_draw, few_shot_k, named or data, choice_format, fewshot_items)  # before a model is fetched
    # a file asked as MMLU: its Hub examples read at one commit (its items' where they are MMLU's), and cited
    shots = benchmark_source(benchmark, source) if benchmark is not None and few_shot is None and few_shot_k else None
    benchmark = named
    check_output_dir(output)
    if output is not None and (sweep := sweep_of(output)) is not None:
        raise MinirunError(f"{output} is a run of the sweep in {sweep}, which `minirun sweep` writes (one method's "
                           "rows): run the sweep, add another method to its file, or give --output another directory")
    llm = load_llm(model, device, dtype, compile)
    name = dataset_label(asked)
    output = output or Path("runs") / f"{name}-{llm.path.name}"
    settings = dict(dataset=data, num_prompts=num_prompts, original=original, max_samples=max_samples,
                    sample_seed=sample_seed,
                    few_shot_k=few_shot_k, few_shot_draw=few_shot_draw, fewshot_items=fewshot_items,
                    batch_size=batch_size,
                    max_new_tokens=max_new_tokens, bidirectional=match == "bidirectional", num_samples=num_samples,
                    positions=positions, share_prefix=share_prefix, chat=chat, thinking=thinking,
                    template_date=template_date, flex_bias=bias, fusion_layer=fusion_layer, fusion_alpha=fusion_alpha,
                    choice_score=choice_score, choice_format=choice_format, benchmark=benchmark, data_source=source,
                    few_shot_source=shots)
    if show_prompts is not None:  # plain text: prompts hold brackets and markup that rich would read
        run = prepare(llm, items, method, output, **settings)
        if output.is_dir():  # the prompts of a run the directory's rows would refuse: said now, not when it runs
            check_resumable(run)
        print("\n\n".join(shown_prompts(llm, run, show_prompts)))
        err.print("nothing was run or written (drop --show-prompts to run)", style="dim")
        return
    table = run_sharded(llm, items, method, output, progress=progress, **settings)
    if ranks()[0] == 0:
        # the directory may hold other methods' rows: scored with them (origin's, for the comparisons), shown without
        for t in _summary_tables(table, f"{name} · {llm.path.name}", method):
            out.print(t)
        warn(cut_thinking(table) + [note for note in [first_prompt_note(table)] if note], out)  # the merged table
        out.print(f"results in {output}", style="dim", highlight=False)


def report_command(
    run_dirs: list[Path] = typer.Argument(..., metavar="RUN_DIR", help="An `eval` or `sweep` output directory; "
                                          "several eval runs are put side by side (a table per dataset, the first "
                                          "run's model the one the others are compared with)."),
    as_json: bool = typer.Option(False, "--json", help="Print per-method scores as one JSON object."),
    csv: Optional[Path] = typer.Option(None, help="Write the per-method summary as CSV."),
    latex: Optional[Path] = typer.Option(None, help="Write the per-method summary as a LaTeX (booktabs) table."),
    plot: Optional[Path] = typer.Option(None, help="Save an accuracy (95% bars)/throughput chart, e.g. run.png."),
    match: Optional[str] = typer.Option(None, help="Score with lemma or bidirectional matching, harness "
                                        "(lm-evaluation-harness's exact match of triviaqa and nq_open, strict-match of "
                                        "gsm8k) or flexible (its gsm8k flexible-extract); default: the run's rule."),
    choice_score: Optional[str] = typer.Option(None, help="Re-pick multiple-choice answers by an option's log-likelihood "
                                               "per token (mean), summed (sum: acc) or per character (chars: acc_norm)."),
) -> None:
    """Scores of a run: per method (95% intervals, paired tests vs origin), per relation, agreement; or of several
    runs side by side."""
    from minirun.cli.sweep import report_runs, report_sweep
    from minirun.eval import report
    from minirun.eval.results import recorded_methods, recorded_run_key, recorded_sources
    from minirun.eval.sweep_results import is_sweep

    for path, what in ((csv, "--csv"), (latex, "--latex"), (plot, "--plot")):
        check_not_run_file(path, what, run_dirs)
    if plot is not None:
        check_figure_path(plot)
    if len(run_dirs) > 1:  # eval runs (of other models, maybe on other machines) as a sweep's models
        return report_runs(run_dirs, as_json, csv, plot, match, latex, choice_score)
    run_dir = run_dirs[0]
    if is_sweep(run_dir):  # a `minirun sweep` directory: one table per dataset, models side by side
        return report_sweep(run_dir, as_json, csv, plot, match, latex, choice_score)
    raw = report.load_results(run_dir)
    table = report.select_choice_score(report.select_match(raw, match), choice_score)
    comment, note = report.rescored(match, choice_score, raw)  # said in the LaTeX and the terminal's title
    how = report.rescoring(match, choice_score, raw)  # and in --json and --csv beside the scores
    if csv is not None:
        scores = report.with_counts(report.summarize(table)).assign(**({"rescored": json.dumps(how)} if how else {}))
        write_csv(scores, csv)
    if latex is not None:
        name = run_dir.resolve().name  # the dataset first, as a sweep's tables name it
        caption = (f"{table.attrs['dataset']} ({name})" if table.attrs.get("dataset") else name) + note
        provenance = report.provenance(recorded_run_key(run_dir), recorded_methods(run_dir), report.timed_on(table),
                                       sources=recorded_sources(run_dir), rows=table) + comment
        text = provenance + report.latex(report.summarize(table), caption) + report.relation_latex(
            table, caption) + report.popularity_latex(table, caption)
        write_text(latex, text)
    if plot is not None:
        report.plot(table, plot, note)
    warnings = report.unfinished_notes(table)
    if report.single_prompt_dropped(raw, table):
        warnings.append("single-prompt figures left out: per-prompt correctness is recorded under the run's own "
                        f"match rule only, not under --match {match}")
    if mixed := report.mixed_timing(table):
        warnings.append(mixed)
    warnings += [note for note in (report.first_prompt_note(table), report.unrelated_note(table),
                                   report.unrated_note(table, "", table.attrs.get("dataset"))) if note]
    warnings += report.cut_thinking(raw)
    if match in ("harness", "flexible"):
        warnings += report.harness_notes(recorded_run_key(run_dir), raw)
    if as_json:
        print(json.dumps({method: {**scores, **({"rescored": how} if how else {})}
                          for method, scores in report.report_json(table).items()}))
        warn(warnings, err)
        return
    for t in _summary_tables(table, str(run_dir) + note):
        out.print(t)
    warn(warnings, out)
    if "relation" in table.columns and table["relation"].notna().any():
        relations = _scores_table(report.in_method_order(report.by_relation(table)), "per relation")
        macro = report.in_method_order(report.macro_accuracy(table).dropna(subset=["macro_accuracy"]))
        relations.caption = "macro accuracy (the mean of a method's per-relation accuracies; Δ origin: the mean of " \
            "the per-relation differences, bootstrap 95% CI and sign-flip p over relations):\n" + "\n".join(
                f"{_label(index)} {row['macro_accuracy']:.3f} ({int(row['relations'])} relations)" + (
                    "" if pd.isna(row["diff_macro_vs_origin"]) else
                    f", Δ origin {row['diff_macro_vs_origin']:+.3f}"
                    f"{shown_interval(row, 'diff_macro_vs_origin', '+.3f')}, p {row['p_macro_vs_origin']:.3g}")
                for index, row in macro.iterrows())
        out.print(relations)
    if "popularity" in table.columns and table["popularity"].notna().any():
        out.print(_scores_table(report.in_method_order(report.by_popularity(table)), "per popularity of the "
                                "question's subject (quartiles of the items'; Δ origin on each bin's items, Holm over "
                                "every method and bin)"))
    out.print(_matrix(report.agreement(table)))
    pairs = report.pairwise(table)
    compared = set(pairs.index.get_level_values("method"))
    if len(compared) > 2 or (len(compared) == 2 and "origin" not in compared):  # more than Δ origin shows
        out.print(_pairwise_matrix(pairs, "per_prompt" in set(table["method"])))


def _summary_tables(table: pd.DataFrame, title: str, shown: list[str] | None = None) -> list[Table]:
    """Per-method scores (of the `shown` methods only, compared with every method's rows), with the single-prompt
    figures (per_prompt's, or vote's without it) as the caption; then their calibration where multiple-choice rows
    have it."""
    from minirun.eval.report import in_method_order, summarize
    from minirun.methods.names import EVERY_ANSWER

    scores = in_method_order(summarize(table))
    if shown is not None:
        scores = scores[scores.index.get_level_values("method").isin(shown)]
    t = _scores_table(scores, title)
    prompts = scores[scores.index.get_level_values("method").isin(EVERY_ANSWER)]  # the one of them that has them
    t.caption = "\n".join(
        f"{_label(index)}: {single_prompt_line(row)}"
        for index, row in prompts.iterrows() if pd.notna(row["mean_single_accuracy"])) or None
    tables = [t]
    calibrated = scores[scores["ece"].notna()]
    if len(calibrated):
        # beside confidence, accuracy only where it covers the same items: a table of generated answers too has more
        choice_only = "task" in table.columns and bool(table["task"].eq("choice").all())
        tables.append(_calibration_table(calibrated, choice_only))
    listed = scores["mc2"].notna() | scores["mean_single_mc2"].notna()  # vote's row: its prompts' figure alone
    if listed.any():
        tables.append(_mc2_table(scores[listed]))
    return tables


def _mc2_table(scores: pd.DataFrame) -> Table:
    """TruthfulQA's MC2 per method, against origin's, and each prompt's alone where per_prompt (or vote) ran."""
    from minirun.eval.report import method_label

    t = Table(title="MC2 (probability of the right options)", caption=MC2_CAPTION + "".join(
        f"\n{_label(index)}: each prompt alone {row['mean_single_mc2']:.3f}"
        for index, row in scores.iterrows() if pd.notna(row["mean_single_mc2"])))
    for name in ("method", "MC2 [95% CI]", "Δ origin [95% CI] (p)"):
        t.add_column(name, justify="left" if name == "method" else "right")
    for index, row in scores.iterrows():
        label = (*index[:-1], method_label(index[-1])) if isinstance(index, tuple) else method_label(index)
        t.add_row(_label(label), *mc2_cells(row))
    return t


def _calibration_table(scores: pd.DataFrame, with_accuracy: bool) -> Table:
    """How sure each method is of its multiple-choice picks, against how often they are right."""
    from minirun.eval.report import method_label

    columns = (["accuracy"] if with_accuracy else []) + ["confidence", "ece", "brier"]
    t = Table(title="calibration (multiple choice)", caption=CALIBRATION_CAPTION)
    for name in ("method", *columns):
        t.add_column({"ece": "ECE", "brier": "Brier"}.get(name, name), justify="left" if name == "method" else "right")
    for index, row in scores.iterrows():
        label = (*index[:-1], method_label(index[-1])) if isinstance(index, tuple) else method_label(index)
        t.add_row(_label(label), *(shown_number(row[c], ".3f") for c in columns))
    return t


def _scores_table(scores: pd.DataFrame, title: str) -> Table:
    """accuracy with its Wilson 95% interval / exact / n / difference vs origin on the items both
    answered (their count when fewer than n), exact McNemar p and Holm's adjustment of it (when
    paired) / tokens per second / items per second, one row per index entry."""
    from minirun.eval.report import fewer_shared, method_label

    keys = list(scores.index.names)
    paired = "p_vs_origin" in scores.columns
    t = Table(title=title)
    for name in [*keys, "accuracy", "95% CI (Wilson)", "exact", "n",
                 *(["Δ origin", "p (McNemar)", "p (Holm)"] if paired else []), "tokens/s", "items/s"]:
        t.add_column(name, justify="left" if name in keys else "right")
    for index, row in scores.iterrows():
        labels = list(index) if isinstance(index, tuple) else [index]
        m = keys.index("method")
        labels[m] = method_label(labels[m])
        versus = []
        if paired:
            fewer = fewer_shared(row)
            versus = [shown_number(row["diff_vs_origin"], "+.3f") + (f" (n={fewer})" if fewer is not None else ""),
                      shown_number(row["p_vs_origin"], ".3g"), shown_number(row["p_vs_origin_holm"], ".3g")]
        interval = "–" if pd.isna(row["ci95_low"]) else f"{row['ci95_low']:.3f}–{row['ci95_high']:.3f}"
        t.add_row(*map(str, labels), shown_number(row["accuracy"], ".3f"), interval,
                  shown_number(row["exact_accuracy"], ".3f"), str(int(row["n"])), *versus,
                  shown_number(row["tokens_per_second"], ".1f"), shown_number(row["items_per_second"], ".2f"))
    return t


def _label(index: object) -> str:
    return " · ".join(map(str, index)) if isinstance(index, tuple) else str(index)


def _pairwise_matrix(pairs: pd.DataFrame, per_prompt: bool) -> Table:
    """Row method minus column method, on the items both answered, with the exact McNemar p Holm-adjusted over
    every pair: which fusion beats which, not only which beats origin. `per_prompt`: it ran, and is left out."""
    from minirun.eval.report import method_order

    methods = method_order(pairs.index.get_level_values("method"))
    t = Table(title="pairwise: accuracy of the row minus the column (Holm-adjusted exact McNemar p)",
              caption="on the items both answered" + ("; per_prompt (its first prompt) is left out" if per_prompt
                                                        else ""))
    t.add_column("")
    for name in methods:
        t.add_column(name, justify="right")
    for a in methods:
        t.add_row(a, *("" if a == b or (a, b) not in pairs.index else
                       f"{pairs.loc[(a, b), 'diff']:+.3f} (p {pairs.loc[(a, b), 'p_holm']:.2g})" for b in methods))
    return t


def _matrix(agree: pd.DataFrame) -> Table:
    t = Table(title="answer agreement")
    t.add_column("")
    for name in agree.columns:
        t.add_column(name, justify="right")
    for name, row in agree.iterrows():
        t.add_row(name, *(f"{v:.2f}" for v in row))
    return t
