"""`minirun mask`, `bench` and `paraphrase`: the commands around generation.

`register(app)` adds them to the app.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from minirun.cli.common import (DEVICE_HELP, DTYPE_HELP, SKIP_BAD_HELP, check_figure_path, check_output_file,
                                check_texts, err, few_shot_context, few_shot_count, friendly, load_llm,
                                read_text_file,
                                top_p_above_zero)
from minirun.cli.common import out as tables
from minirun.errors import MinirunError


def register(app: typer.Typer) -> None:
    """Add `mask`, `bench` and `paraphrase` to `app`."""
    for command in (mask, bench):
        app.command()(friendly(command))
    app.command()(friendly(paraphrase, resumable=True))


def mask(
    question: str = typer.Argument(..., help="The original question."),
    paraphrase: list[str] = typer.Option([], "--paraphrase", "-p", help="A rewording (repeatable)."),
    method: str = typer.Option("flex", "--method", "-m", help="flex, or a row method (one panel per row; hidden_avg "
                               "names its layer)."),
    model: Optional[str] = typer.Option(None, help="Checkpoint whose tokenizer lays out the tokens."),
    prefix_file: Optional[Path] = typer.Option(None, help="Shared prefix text file, used verbatim."),
    few_shot: Optional[Path] = typer.Option(None, help="Few-shot examples (.jsonl items, or a benchmark's rows) or a "
                                            "prefix text file, laid out as `generate --few-shot` asks (Q: ... A: "
                                            "blocks)."),
    few_shot_k: Optional[int] = typer.Option(None, min=0, show_default=False,
                                             help="Examples drawn from a few-shot file of examples [default: 5]."),
    suffix: Optional[str] = typer.Option(None, help="Text after each paraphrase (default '\\nA:' with --few-shot)."),
    positions: str = typer.Option("right", help="right, restart or sequential."),
    share_prefix: bool = typer.Option(True, help="The prompts' common head (few-shot examples, chat header) once, "
                                      "shared, as generate and eval lay it out; --no-share-prefix repeats it in "
                                      "every prompt's row or segment."),
    raw: bool = typer.Option(False, help="Do not apply the chat template."),
    decode_steps: int = typer.Option(3, min=0, help="Generated tokens to show."),
    fusion_layer: Optional[int] = typer.Option(None, min=1, help="hidden_avg: first fused block (default 3/4 depth)."),
    out: Optional[Path] = typer.Option(None, help="Write a PNG here; without it, print a text rendering."),
) -> None:
    """Show the exact attention mask (and position ids) the runtime uses for a method."""
    from minirun.cli.mask_view import build_view, render_png, render_text
    from minirun.methods import EnsembleOptions
    from minirun.methods.runner import check_options_used

    check_texts(question, paraphrase)
    check_options_used([method], EnsembleOptions(positions=positions, fusion_layer=fusion_layer))
    if out is not None:
        check_figure_path(out)
    if prefix_file is not None and few_shot is not None:
        raise MinirunError("--prefix-file and --few-shot both give the prefix: drop one of them")
    few_shot_k = few_shot_count(few_shot, few_shot_k)
    prefix, suffix = few_shot_context(few_shot, few_shot_k, question, list(paraphrase), suffix)
    if prefix_file is not None:
        prefix = read_text_file(prefix_file, "prefix file")
    llm = load_llm(model, "cpu", None, False)
    view = build_view(llm, question, list(paraphrase), method=method, prefix=prefix, suffix=suffix,
                      chat=False if raw else None, positions=positions, share_prefix=share_prefix,
                      decode_steps=decode_steps, fusion_layer=fusion_layer)
    if out is None:
        print(render_text(view))
        return
    render_png(view, out)
    err.print(f"wrote {out}")


def bench(
    model: Optional[str] = typer.Option(None, help="Checkpoint dir or HF repo id, org/name or org/name@REV (default: "
                                         "$MINIRUN_MODEL or SmolLM2)."),
    random_weights: Optional[str] = typer.Option(None, help="Random weights of a named shape: smollm2-135m, "
                                                 "llama-3.2-1b, mistral-7b, qwen2.5-0.5b, qwen3-0.6b."),
    method: str = typer.Option("origin", "--method", "-m"),
    prompt_tokens: int = typer.Option(128, min=1),
    new_tokens: int = typer.Option(64, "--new-tokens", "--max-new-tokens", min=2, help="Tokens generated per answer "
                                   "(decode speed needs a step after the first; --max-new-tokens as eval names it)."),
    batch: int = typer.Option(1, min=1, help="Questions per batch."),
    num_paraphrases: Optional[int] = typer.Option(None, min=1, help="Paraphrases per question for an ensemble "
                                                  "method (default 5; origin asks the question alone)."),
    repeats: int = typer.Option(5, min=1),
    warmup: int = typer.Option(1, min=0),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    compile: bool = typer.Option(True, help="Compiled decode step and FlexAttention."),
    compare: Optional[str] = typer.Option(None, help="Comma-separated: transformers, eager, captured (decode steps "
                                          "recorded by the session); on CPU all timed in turns with minirun, so a "
                                          "drifting machine slows them alike, on a GPU eager and captured are."),
    as_json: Optional[Path] = typer.Option(None, "--json", help="Also write the figures to this JSON file."),
) -> None:
    """Time prefill and decode (median and spread over repeats), side by side with transformers."""
    from minirun.bench.run import format_table, run_bench, write_json
    from minirun.checkpoints.loader import auto_device

    if as_json is not None and (as_json.is_dir() or not as_json.parent.is_dir()):  # before minutes of timing
        raise MinirunError(f"--json {as_json}: give a file name in an existing folder")
    if method == "origin" and num_paraphrases is not None:
        raise MinirunError("--num-paraphrases only applies to the ensemble methods (origin asks the question alone): "
                           "drop it or pick another --method")
    compares = [c.strip() for c in compare.split(",")] if compare else []
    if "captured" in compares and str(auto_device(device)).startswith("cpu"):
        raise MinirunError("--compare captured times decode steps recorded as CUDA graphs, and a CPU records none "
                           "(it would time the same compiled step twice): run it on a GPU, or drop captured")
    result = run_bench(model, random_weights, method, prompt_tokens, new_tokens, batch, num_paraphrases or 5, repeats,
                       warmup, dtype, device, compile, compare)
    tables.print(format_table(result))
    if as_json is not None:
        err.print(f"wrote {write_json(result, as_json)}")


def paraphrase(
    data: str = typer.Argument(..., help="A dataset name (sample-qa, sample-fill, sample-choice, sample-math, webqa, "
                               "myriadlama, triviaqa, nq_open, popqa, gsm8k, mmlu, commonsense_qa, arc_challenge, "
                               "arc_easy, openbookqa, hellaswag, piqa, sciq, boolq, truthfulqa_mc1, truthfulqa_mc2, "
                               "winogrande; a Hub one pinned: NAME@REV) or a dataset file."),
    out: Path = typer.Argument(..., help="Output JSONL (also the cache: finished items are not redone)."),
    num: int = typer.Option(5, "--num", min=1, help="Rewrites per question."),
    model: Optional[str] = typer.Option(None, help="The model that rewrites (default: the default model)."),
    temperature: float = typer.Option(1.5, min=0),
    top_p: float = typer.Option(0.9, max=1, callback=top_p_above_zero, help="Nucleus sampling, 0 < p <= 1."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help="New tokens per rewrite (default: 30; 256 for "
                                                 "word problems, reworded whole)."),
    seed: int = typer.Option(0, help="Rewrite i of an item is sampled with a hash of (seed, item id, i)."),
    batch_size: int = typer.Option(8, min=1, help="Questions per batched generation."),
    template_date: Optional[str] = typer.Option(None, help="The day (YYYY-MM-DD) a chat template that writes today's "
                                                "date (Llama 3.2's) renders at (default: the day the file began)."),
    max_samples: Optional[int] = typer.Option(None, min=1, help="Only the first N items (at random with "
                                              "--sample-seed; the file written holds them in that order: evaluate it "
                                              "without the seed)."),
    sample_seed: Optional[int] = typer.Option(None, min=0, help="With --max-samples: N items at random, the items "
                                              "in random.Random(seed).sample's order first (eval's --sample-seed)."),
    skip_bad: bool = typer.Option(False, help=SKIP_BAD_HELP),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Have the model rewrite each question N ways (a fill prompt into fill prompts); duplicate, empty, cut-off and
    answer-leaking rewrites, rewrites starting with the original or sharing no content word with it (off topic),
    fill rewrites that complete the prompt, and word problems' rewrites that change a number, are dropped. The
    output's paraphrases are the question and its kept rewrites (a dataset's own paraphrases are not carried over)."""
    from rich.progress import Progress

    from minirun.checkpoints.tokenizer import template_day
    from minirun.eval.data import asked_items, load_cited
    from minirun.eval.paraphrase import check_sampling, paraphrase_file, paraphrased_from

    check_sampling(num, temperature, top_p)  # a bad value fails before the model loads
    if template_date is not None:
        template_day(template_date)
    check_output_file(out, "output")
    every, source = load_cited(data, skip_bad=skip_bad, resumed=paraphrased_from(out))  # a resume: the same commit
    items = asked_items(every, max_samples, sample_seed, data)
    llm = load_llm(model, device, dtype, False)
    counts: list[int] = []  # items done: first those resumed, then after each batch
    with Progress(console=err, disable=not progress) as bar:
        task = bar.add_task("paraphrasing", total=len(items))

        def advance(done: int) -> None:
            counts.append(done)
            bar.update(task, completed=done)

        done = paraphrase_file(llm, items, out, num, temperature, top_p, max_new_tokens, seed, batch_size,
                               on_progress=advance, dataset=data, template_date=template_date, data_source=source,
                               of=every)
    kept = sum(len(item.paraphrases) - 1 for item in done)
    resumed = f" ({counts[0]} of them already there)" if counts[0] else ""
    if counts[0] == len(done):
        err.print(f"{out} already holds all {len(done)} items: nothing to do")
    else:
        err.print(f"wrote {out}: {len(done)} items{resumed}, {kept} {'rewrite' if kept == 1 else 'rewrites'} kept of "
                  f"{num * len(done)}")
    if bare := [item.id for item in done if len(item.paraphrases) < 2]:  # `eval` would refuse or warn of them later
        err.print(f"warning: {len(bare)} of {len(done)} items (first {bare[0]!r}) kept no rewrite, so every ensemble "
                  "repeats origin on them: rewrite into another file with a larger --num, another --seed or a "
                  "stronger --model", highlight=False)
