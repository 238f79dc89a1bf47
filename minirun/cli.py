"""The `minirun` command line (Typer). Errors print one line and exit 1, never a traceback."""
from __future__ import annotations

import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import typer
from rich.console import Console

from minirun.errors import MinirunError

app = typer.Typer(help="minirun: a small LLM runtime for paraphrase self-ensembles.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
err = Console(stderr=True)


_streaming = {"mid_line": False}  # streamed answer text is on screen without its newline yet


def _stream(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()
    _streaming["mid_line"] = True


class _ConsoleLog(logging.Handler):
    """minirun's log lines (a compile starting, a shape budget reached) on stderr, one line each."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if _streaming["mid_line"]:  # the decode step compiles after the first token is shown
            err.print()
            _streaming["mid_line"] = False
        err.print(f"[yellow]warning:[/yellow] {text}" if record.levelno >= logging.WARNING else f"[dim]{text}[/dim]",
                  highlight=False)


def _show_logs() -> None:
    logger = logging.getLogger("minirun")
    if not any(isinstance(h, _ConsoleLog) for h in logger.handlers):
        logger.addHandler(_ConsoleLog())
        logger.setLevel(logging.INFO)


def friendly(fn: Callable) -> Callable:
    """Turn MinirunError (and Ctrl-C) into a one-line message and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _show_logs()
        try:
            return fn(*args, **kwargs)
        except MinirunError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def _load(model: Optional[str], device: str, dtype: Optional[str], compile: bool):
    """The model named, else $MINIRUN_MODEL, else the default model (pulled on first use)."""
    import minirun
    from minirun import flex
    from minirun.hub import resolve_model

    flex.set_compiled(compile)
    return minirun.load(resolve_model(model), device=device, dtype=dtype)


def _few_shot_prefix(path: Optional[Path], k: int) -> str:
    """A JSONL of worked examples becomes an instruction + k examples; any other file is used verbatim."""
    if path is None:
        return ""
    if not path.is_file():
        raise MinirunError(f"few-shot file {path} not found: pass an existing .jsonl or .txt file")
    if path.suffix == ".jsonl":
        from minirun.data import load_jsonl
        from minirun.prompts import build_prefix

        items = load_jsonl(path)
        return build_prefix(items[0].task, items, k=min(k, len(items)))
    return path.read_text()


@app.command()
@friendly
def generate(
    prompt: str = typer.Argument(..., help="The question (or raw prompt with --raw)."),
    model: Optional[str] = typer.Option(None, help="Checkpoint dir or HF repo id (default: $MINIRUN_MODEL or the pulled SmolLM2)."),
    method: Optional[str] = typer.Option(None, help="origin, per_prompt, avg, avg_logprob, max, weighted_avg, weighted_max, flex."),
    paraphrase: list[str] = typer.Option([], "--paraphrase", "-p", help="A rewording of the question (repeatable)."),
    paraphrases_file: Optional[Path] = typer.Option(None, help="File with one paraphrase per line."),
    few_shot: Optional[Path] = typer.Option(None, help="Few-shot examples (.jsonl items) or a prefix text file."),
    few_shot_k: int = typer.Option(5, help="Examples drawn from a .jsonl few-shot file."),
    suffix: Optional[str] = typer.Option(None, help="Text after each paraphrase (default '\\nA:' with --few-shot)."),
    max_new_tokens: int = typer.Option(64, help="Most tokens to generate."),
    raw: bool = typer.Option(False, help="Do not apply the chat template."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    top_k: Optional[int] = typer.Option(None),
    top_p: Optional[float] = typer.Option(None),
    seed: int = typer.Option(0),
    stop: list[str] = typer.Option([], help="Stop string (repeatable)."),
    positions: str = typer.Option("right", help="flex position scheme: right, restart, sequential."),
    share_prefix: bool = typer.Option(True, help="Encode the shared prefix once (--no-share-prefix repeats it per paraphrase)."),
    flex_bias: Optional[str] = typer.Option(None, help="flex: weight w (or 'inv_n') added as log(w) to answer->paraphrase attention."),
    num_samples: int = typer.Option(100, help="Samples per paraphrase for the weighted methods' confidence."),
    truncate: bool = typer.Option(False, help="Keep the end of a prompt that does not fit the context."),
    device: str = typer.Option("cpu"),
    dtype: Optional[str] = typer.Option(None, help="float32, bfloat16 or float16."),
    compile: bool = typer.Option(False, help="Use compiled FlexAttention kernels (slow first call, fast after)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Generate an answer, optionally fused across paraphrases with --method."""
    llm = _load(model, device, dtype, compile)
    paraphrases = list(paraphrase)
    if paraphrases_file is not None:
        if not paraphrases_file.is_file():
            raise MinirunError(f"paraphrases file {paraphrases_file} not found")
        paraphrases += [line.strip() for line in paraphrases_file.read_text().splitlines() if line.strip()]
    if method is None and not paraphrases and few_shot is None:
        _plain(llm, prompt, max_new_tokens, raw, temperature, top_k, top_p, seed, stop, truncate, as_json)
        return
    _ensemble(llm, method or "origin", prompt, paraphrases, _few_shot_prefix(few_shot, few_shot_k), suffix,
              few_shot is not None, max_new_tokens, raw, temperature, seed, stop, positions, share_prefix, flex_bias,
              num_samples, as_json)


def _plain(llm, prompt, max_new_tokens, raw, temperature, top_k, top_p, seed, stop, truncate, as_json) -> None:
    stream = None if as_json else _stream
    start = time.perf_counter()
    out = llm.generate(prompt, max_new_tokens, chat=False if raw else None, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed, stop=stop, truncate=truncate, on_text=stream)
    elapsed = time.perf_counter() - start
    speed = len(out.token_ids) / elapsed
    if as_json:
        print(json.dumps({"text": out.text, "token_ids": out.token_ids, "prompt_tokens": out.prompt_tokens,
                          "tokens_per_second": speed, "finish_reason": out.finish_reason, "method": "plain"}))
    else:
        print()
        _streaming["mid_line"] = False
        err.print(f"[dim]{len(out.token_ids)} tokens, {speed:.1f} tokens/s[/dim]")


def _ensemble(llm, method, question, paraphrases, prefix, suffix, few_shot, max_new_tokens, raw, temperature, seed,
              stop, positions, share_prefix, flex_bias, num_samples, as_json) -> None:
    from minirun.methods import EnsembleOptions, Question, run_method

    if method != "origin" and not paraphrases:
        raise MinirunError(f"method {method} fuses paraphrases but none were given: add --paraphrase or --paraphrases-file")
    suffix = ("\nA:" if few_shot else "") if suffix is None else suffix
    if few_shot:
        prefix += "Q: "
    bias = None if flex_bias is None else (flex_bias if flex_bias == "inv_n" else _bias_weight(flex_bias))
    options = EnsembleOptions(max_new_tokens=max_new_tokens, chat=False if raw else None,
                              stop=tuple(stop) or (("\n",) if few_shot else ()), share_prefix=share_prefix,
                              positions=positions, flex_bias=bias, temperature=temperature, seed=seed,
                              num_samples=num_samples)
    start = time.perf_counter()
    result = run_method(llm, method, [Question(question, [question, *paraphrases], prefix, suffix)], options)[0]
    elapsed = time.perf_counter() - start
    tokens = sum(map(len, result.answer_token_ids)) if result.answer_token_ids else len(result.token_ids)
    speed = tokens / elapsed
    if as_json:
        out = {"method": method, "text": result.text, "token_ids": result.token_ids, "prompt_tokens": result.prompt_tokens,
               "tokens_per_second": speed, "finish_reason": result.finish_reason, "prompts": result.prompts}
        if result.answers is not None:
            out["answers"] = result.answers
        if result.confidences is not None:
            out["confidences"] = result.confidences
        print(json.dumps(out))
        return
    if result.answers is not None:
        for prompt, answer in zip(result.prompts, result.answers):
            print(f"[{prompt}] {answer.strip()}")
    else:
        print(result.text.strip())
    err.print(f"[dim]{method}: {len(result.prompts)} prompt(s), {speed:.1f} tokens/s[/dim]")


def _bias_weight(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise MinirunError(f"--flex-bias takes a number or 'inv_n', not {value!r}") from None


@app.command()
@friendly
def convert(
    gguf_file: Path = typer.Argument(..., help="A .gguf file (llama or qwen2 architecture)."),
    out_dir: Path = typer.Argument(..., help="Where to write the HF-style checkpoint."),
    dtype: str = typer.Option("bfloat16", help="float32, bfloat16 or float16."),
) -> None:
    """Convert a GGUF file into a safetensors checkpoint that minirun and transformers load."""
    from minirun.convert import convert_gguf

    start = time.perf_counter()
    path = convert_gguf(gguf_file, out_dir, dtype=dtype)
    err.print(f"wrote {path} in {time.perf_counter() - start:.1f}s")


@app.command()
@friendly
def pull(
    name: str = typer.Argument("smollm2-135m-instruct", help="'smollm2-135m-instruct' or an HF repo id org/name."),
    dir: Optional[Path] = typer.Option(None, "--dir", help="Models directory (default: ./models or $MINIRUN_MODELS_DIR)."),
) -> None:
    """Download a model into the models directory (a no-op when it is already there)."""
    from minirun.hub import pull as pull_model

    print(pull_model(name, dir))


@app.command()
@friendly
def interactive() -> None:
    """Ask what to run, print the equivalent one-line command, then run it."""
    from minirun.hub import default_models_dir
    from minirun.interactive import format_command, run_interactive

    argv = run_interactive(lambda prompt, default: typer.prompt(prompt, default=default), typer.echo,
                           default_models_dir())
    typer.echo(format_command(argv))
    app(args=argv, standalone_mode=False)


from minirun import cli_eval, cli_tools  # noqa: E402  (they use `friendly` and `_load` from above)

cli_tools.register(app)
cli_eval.register(app)

if __name__ == "__main__":
    app()
