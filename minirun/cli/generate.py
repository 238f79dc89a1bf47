"""`minirun generate` (one question, optionally fused across paraphrases), `convert`, `pull`, `interactive`."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from minirun.cli.common import (DEVICE_HELP, DTYPE_HELP, NEW_TOKENS, check_texts, end_stream, err,
                                few_shot_context, few_shot_count, few_shot_task, friendly, load_llm, parse_flex_bias,
                                read_text_file, stream, top_p_above_zero, warn)
from minirun.errors import MinirunError
from minirun.methods.names import METHODS, WEIGHTED
from minirun.text import extract_answer, final_number

if TYPE_CHECKING:  # torch's import waits for a command that runs a model: `minirun --help` stays quick
    from minirun.engine.llm import LLM
    from minirun.methods import EnsembleOptions


def register(app: typer.Typer) -> None:
    """Add `generate`, `convert`, `pull` and `interactive` to `app`."""
    for command in (generate, convert, pull):
        app.command()(friendly(command))

    @app.command()
    @friendly
    def interactive() -> None:
        """Ask what to run, print the equivalent one-line command, then run it."""
        from minirun.checkpoints.hub import default_models_dir
        from minirun.cli.interactive import format_command, run_interactive

        try:
            argv = run_interactive(lambda prompt, default: typer.prompt(prompt, default=default), typer.echo,
                                   default_models_dir())
        except typer.Abort:  # what typer.prompt raises at the end of the input and on Ctrl-C
            raise MinirunError("the answers stopped before the last question (input ended or Ctrl-C): nothing was "
                               "run; answer every question, or run the command itself") from None
        if not sys.stdin.isatty():  # piped answers are not echoed: the last prompt's line is still open
            typer.echo()
        typer.echo(format_command(argv))
        code = app(args=argv, standalone_mode=False)  # the command's own exit status (1 for a refused setting)
        if code:
            raise typer.Exit(code)


def generate(
    prompt: str = typer.Argument(..., help="The question (or raw prompt with --raw)."),
    model: Optional[str] = typer.Option(None, help="Checkpoint dir or HF repo id, org/name or org/name@REV (default: "
                                         "$MINIRUN_MODEL or the pulled SmolLM2)."),
    method: Optional[str] = typer.Option(None, "--method", "-m", help=f"One of {', '.join(METHODS)}."),
    paraphrase: list[str] = typer.Option([], "--paraphrase", "-p", help="A rewording of the question (repeatable)."),
    paraphrases_file: Optional[Path] = typer.Option(None, help="File with one paraphrase per line."),
    rewrites: int = typer.Option(0, min=0, help="Have the model reword the question N times first (sampled at "
                                 "temperature 1.5 with --seed, as `minirun paraphrase` does; empty, cut-off, "
                                 "copied and off-topic rewrites dropped), and fuse the kept ones with any given."),
    few_shot: Optional[Path] = typer.Option(None, help="Few-shot examples (.jsonl items, or a benchmark's rows in "
                                            ".jsonl or .parquet) or a prefix text file."),
    few_shot_k: Optional[int] = typer.Option(None, min=0, show_default=False,
                                             help="Examples drawn from a few-shot file of examples [default: 5]."),
    suffix: Optional[str] = typer.Option(None, help="Text after each paraphrase (default '\\nA:' with --few-shot)."),
    max_new_tokens: Optional[int] = typer.Option(None, min=1, help=f"Most tokens to generate (default: {NEW_TOKENS}; "
                                                 "256 under maths --few-shot examples, solved step by step)."),
    raw: bool = typer.Option(False, help="Do not apply the chat template."),
    thinking: Optional[bool] = typer.Option(None, "--thinking/--no-thinking", help="A chat template's reasoning "
                                            "switch (Qwen3's enable_thinking); default: the template's own for a plain "
                                            "prompt, off with --method (the answer starts at once)."),
    temperature: float = typer.Option(0.0, min=0, help="0 = greedy."),
    top_k: Optional[int] = typer.Option(None, min=1, help="Sample from the k likeliest tokens (plain generation)."),
    top_p: Optional[float] = typer.Option(None, max=1, callback=top_p_above_zero,
                                          help="Nucleus sampling, 0 < p <= 1 (plain generation)."),
    seed: int = typer.Option(0, help="Seed of the sampling draws (with --temperature): a rerun draws alike."),
    stop: list[str] = typer.Option([], help="Stop string (repeatable)."),
    positions: str = typer.Option("right", help="flex position scheme: right, restart, sequential."),
    share_prefix: bool = typer.Option(True, help="Encode the shared prefix once (--no-share-prefix repeats it per paraphrase)."),
    flex_bias: Optional[str] = typer.Option(None, help="flex: weight w (or 'inv_n') added as log(w) to suffix/answer->paraphrase attention."),
    num_samples: int = typer.Option(100, min=1, help="Samples per paraphrase for the weighted methods' confidence."),
    fusion_layer: Optional[int] = typer.Option(None, min=1, help="hidden_avg: first fused block, 1-based (default: round(0.75 x layers))."),
    fusion_alpha: float = typer.Option(1.0, min=0, max=1, help="hidden_avg: weight of the rows' mean in the fused state."),
    truncate: bool = typer.Option(False, help="Keep the end of a prompt's text that does not fit the context (its "
                                  "chat template and BOS stay)."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: Optional[str] = typer.Option(None, help=DTYPE_HELP),
    compile: bool = typer.Option(False, help="Compile the decode step and FlexAttention kernels (slow first call, "
                                 "fast after)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Generate an answer, optionally fused across paraphrases with --method."""
    from minirun.engine.generate import stop_strings
    from minirun.engine.sampling import generation_params
    from minirun.methods import EnsembleOptions
    from minirun.methods.runner import check_method, check_options_used

    check_texts(prompt, paraphrase)
    stop_strings(stop)  # an empty one is refused before the model loads
    paraphrases = list(paraphrase)
    if paraphrases_file is not None:
        lines = read_text_file(paraphrases_file, "paraphrases file").splitlines()
        paraphrases += [line.strip() for line in lines if line.strip()]
    if method is None and paraphrases:
        raise MinirunError("paraphrases were given without --method, which would answer the question alone: "
                           "add --method (e.g. avg or flex) to fuse them, or drop the paraphrases")
    if method == "origin" and paraphrases:  # kept, as a loop over methods passes every one the same paraphrases
        warn([f"origin asks the question alone: the {len(paraphrases)} paraphrase(s) are not used (a method such as "
              "avg, vote or flex answers over them)"], err)
    if rewrites and method in (None, "origin"):
        raise MinirunError("--rewrites only applies to an ensemble method (origin asks the question alone): add "
                           "--method (e.g. avg or flex), or drop --rewrites")
    if thinking is not None and raw:
        raise MinirunError("--thinking/--no-thinking is a chat template's switch, and --raw uses none: drop one of them")
    few_shot_k = few_shot_count(few_shot, few_shot_k)
    if method is None and not paraphrases and few_shot is None:
        ensemble_only = {"--suffix": suffix is not None, "--positions": positions != "right",
                         "--no-share-prefix": not share_prefix, "--flex-bias": flex_bias is not None,
                         "--num-samples": num_samples != 100, "--fusion-layer": fusion_layer is not None,
                         "--fusion-alpha": fusion_alpha != 1.0}
        if given := [name for name, is_set in ensemble_only.items() if is_set]:  # silently ignored otherwise
            raise MinirunError(f"{given[0]} only applies with --method, --paraphrase or --few-shot, and this is a plain "
                               "prompt: drop it, or add --method")
        generation_params(temperature, top_k, top_p, seed)  # a bad value fails before the model loads
        if seed != 0 and temperature == 0:  # silently ignored otherwise, as --top-k and --top-p are refused
            raise MinirunError("--seed seeds the sampling draws, and greedy decoding (temperature 0) draws none: add "
                               "--temperature, or drop --seed")
        llm = load_llm(model, device, dtype, compile)
        _check_thinking(llm, thinking)
        _plain(llm, prompt, max_new_tokens or NEW_TOKENS, raw, temperature, top_k, top_p, seed, stop, truncate, as_json,
               thinking)
        return
    # Everything below is checked before the model loads, so a typo fails at once.
    from minirun.eval.prompts import WORKED_TOKENS

    method, task = "origin" if method is None else method, few_shot_task(few_shot)
    if task == "math" and method in WEIGHTED:
        raise MinirunError(f"{method} weighs each prompt by how its 16-token samples agree, and a worked solution "
                           "reaches its final number far later: use vote (self-consistency over the wordings) or "
                           "another method for word problems")
    options = EnsembleOptions(max_new_tokens=max_new_tokens or (WORKED_TOKENS if task == "math" else NEW_TOKENS),
                              chat=False if raw else None, thinking=bool(thinking),
                              stop=tuple(stop) or (_few_shot_stop(task) if few_shot else ()),
                              share_prefix=share_prefix, worked=task == "math",
                              positions=positions, flex_bias=parse_flex_bias(flex_bias), temperature=temperature,
                              seed=seed, num_samples=num_samples, fusion_layer=fusion_layer,
                              fusion_alpha=fusion_alpha)
    check_method(method, options)
    check_options_used([method], options)
    if top_k is not None or top_p is not None:
        raise MinirunError("--top-k and --top-p only apply to plain generation (no --method, --paraphrase or "
                           "--few-shot); drop them")
    if truncate:
        raise MinirunError("--truncate only applies to plain generation: an ensemble's prompts would lose different "
                           "parts; shorten the prompts or the few-shot examples instead")
    if seed != 0 and temperature == 0 and not rewrites and method not in WEIGHTED:  # silently ignored otherwise
        raise MinirunError(f"--seed seeds sampling, and {method} draws nothing here (temperature 0, no --rewrites): "
                           "add --temperature or --rewrites, or drop --seed")
    if method != "origin" and not paraphrases and not rewrites:
        raise MinirunError(f"method {method} answers over paraphrases but none were given: add --paraphrase, lines to "
                           "--paraphrases-file, or --rewrites N (N of 1 or more)")
    prefix, after = few_shot_context(few_shot, few_shot_k, prompt, paraphrases, suffix)  # before the model loads
    llm = load_llm(model, device, dtype, compile)
    _check_thinking(llm, thinking)
    written = _rewrites(llm, prompt, paraphrases, rewrites, seed, task)
    if written:  # the few-shot examples drawn again, none of them one of the model's rewordings
        prefix, after = few_shot_context(few_shot, few_shot_k, prompt, paraphrases + written, suffix)
    _ensemble(llm, method, prompt, paraphrases + written, prefix, after, options, as_json,
              written if rewrites else None)


def _check_thinking(llm: LLM, thinking: bool | None) -> None:
    """--thinking for a model whose chat template has no reasoning switch changes no prompt: said, as eval says it,
    not taken silently."""
    if thinking and not llm.opens_reasoning(None, True) and not llm.tokenizer.thinking_switch:
        warn([f"{llm.path.name}'s chat template has no reasoning switch (Qwen3's enable_thinking): --thinking changes "
              "none of its prompts"], err)


class _Clock:
    """Seconds since it was made, less those spent calibrating kernels for shapes this machine met for the first
    time (tens of seconds, once: cached on disk) and compiling (with --compile: every process traces its step
    again), which eval's rows leave out too; tokens/s is then the rate the run settles at."""

    def __init__(self) -> None:
        from minirun.layers.calibrate import seconds_set_aside

        self.set_aside = seconds_set_aside
        self.start, self.aside = time.perf_counter(), seconds_set_aside()

    def seconds(self) -> float:
        return max(time.perf_counter() - self.start - (self.set_aside() - self.aside), 1e-9)


def _plain(llm: LLM, prompt, max_new_tokens, raw, temperature, top_k, top_p, seed, stop, truncate, as_json,
           thinking) -> None:
    stream_to = None if as_json else stream
    clock = _Clock()
    out = llm.generate(prompt, max_new_tokens, chat=False if raw else None, thinking=thinking, temperature=temperature,
                       top_k=top_k, top_p=top_p, seed=seed, stop=stop, truncate=truncate, on_text=stream_to)
    speed = len(out.token_ids) / clock.seconds()
    if as_json:
        print(json.dumps({"text": out.text, "token_ids": out.token_ids, "prompt_tokens": out.prompt_tokens,
                          "tokens_per_second": speed, "finish_reason": out.finish_reason, "method": "plain"}))
    else:
        end_stream()
        err.print(f"{len(out.token_ids)} tokens, {speed:.1f} tokens/s", style="dim")


def _few_shot_stop(task: str) -> tuple[str, ...]:
    """Where an answer under worked examples ends: its line, or a worked solution's next question."""
    from minirun.eval.prompts import WORKED_STOP

    return WORKED_STOP if task == "math" else ("\n",)


def _rewrites(llm: LLM, question: str, given: list[str], num: int, seed: int, task: str) -> list[str]:
    """The model's kept rewordings of `question` (none when `num` is 0), as `task` asks it (a fill prompt, under
    fill worked examples, is rewritten into fill prompts); refused when none is kept and none was given, as the
    ensemble would be the question alone."""
    if not num:
        return []
    from minirun.eval.paraphrase import rewrite_question

    written = rewrite_question(llm, question, num, seed=seed, task=task)
    why = f"none of the model's {num} rewordings of the question was kept (empty, a copy, cut off or off-topic; a " \
          "small model such as the default rarely rewords well)"
    if not written and not given:
        raise MinirunError(f"{why}: raise --rewrites, change --seed, use a larger --model, or give --paraphrase")
    if not written:  # the ensemble goes on over the paraphrases given
        warn([f"{why}: the ensemble runs over the given paraphrases alone"], err)
    return written


def _ensemble(llm: LLM, method: str, question: str, paraphrases: list[str], prefix: str, suffix: str,
              options: EnsembleOptions, as_json: bool, rewrites: list[str] | None = None) -> None:
    from minirun.eval.data import ensemble_prompts
    from minirun.methods import Question, run_method

    if not as_json:  # what the model wrote, before the answer it leads to
        for rewrite in rewrites or []:
            err.print(f"rewrite: {rewrite}", style="dim", highlight=False)
    prompts = ensemble_prompts(question, paraphrases)
    if method != "origin" and len(prompts) == 1:  # every paraphrase repeats the question (up to case and spacing)
        warn([f"the paraphrases repeat the question, so {method} runs over one prompt and answers as origin does: "
              "give paraphrases that reword it"], err)
    clock = _Clock()
    result = run_method(llm, method, [Question(question, prompts, prefix, suffix)], options)[0]
    tokens = sum(map(len, result.answer_token_ids)) if result.answer_token_ids else len(result.token_ids)
    speed = tokens / clock.seconds()
    if as_json:
        out = {"method": method, "text": result.text, "token_ids": result.token_ids, "prompt_tokens": result.prompt_tokens,
               "tokens_per_second": speed, "finish_reason": result.finish_reason, "prompts": result.prompts}
        if result.answers is not None:
            out["answers"] = result.answers
        if result.chosen is not None:
            out["chosen"] = result.chosen
        if result.confidences is not None:
            out["confidences"] = result.confidences
        if result.fusion_layer is not None:
            out["fusion_layer"] = result.fusion_layer
        if rewrites is not None:
            out["rewrites"] = rewrites
        print(json.dumps(out))
        return
    if result.chosen is not None:  # the vote's answer, and who voted for what (the answers as compared) on stderr
        reasoning = llm.opens_reasoning(options.chat, options.thinking)
        for i, (prompt, answer) in enumerate(zip(result.prompts, result.answers)):  # a worked one: its final number
            shown = final_number(answer, reasoning) if options.worked else extract_answer(answer, reasoning=reasoning)
            mark, shown = "*" if i == result.chosen else " ", shown or "(no answer)"
            err.print(f"{mark} [{prompt}] {shown}", style="dim", highlight=False)
        print(result.text.strip())
    elif result.answers is not None:
        for prompt, answer in zip(result.prompts, result.answers):
            print(f"[{prompt}] {answer.strip()}")
    else:
        print(result.text.strip())
    err.print(f"{method}: {len(result.prompts)} prompt(s), {speed:.1f} tokens/s", style="dim")


def convert(
    gguf_file: Path = typer.Argument(..., help="A .gguf file: llama, qwen2 or qwen3 architecture with a byte-level "
                                     "BPE vocabulary (Llama 3, SmolLM2, Qwen; not SentencePiece: Llama 2, TinyLlama)."),
    out_dir: Path = typer.Argument(..., help="Where to write the HF-style checkpoint."),
    dtype: str = typer.Option("bfloat16", help="float32, bfloat16 or float16."),
) -> None:
    """Convert a GGUF file into a safetensors checkpoint that minirun and transformers load."""
    from minirun.checkpoints.convert import convert_gguf

    convert_gguf(gguf_file, out_dir, dtype=dtype)  # its log line names the files, the dtype and the time


def pull(
    name: str = typer.Argument("smollm2-135m-instruct", help="'smollm2-135m-instruct' or an HF repo id org/name "
                               "(org/name@REV pins a branch, tag or commit, as --revision does)."),
    dir: Optional[Path] = typer.Option(None, "--dir", help="Models directory (default: ./models or $MINIRUN_MODELS_DIR)."),
    revision: Optional[str] = typer.Option(None, "--revision", help="A branch, tag or commit of the hub repo; it is "
                                           "pulled into org/name@REV beside any other revision."),
) -> None:
    """Download a model into the models directory (a no-op when it is already there) and record the hub commit (or
    the GGUF) it came from."""
    from minirun.checkpoints.hub import pull as pull_model

    print(pull_model(name, dir, revision=revision))
