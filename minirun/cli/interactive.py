"""`minirun interactive`: ask for a run step by step and answer with the equivalent command line.

The questions only assemble argv, so the interactive path runs exactly the command a user could
have typed, and teaches it: the caller prints `format_command(argv)` and runs it. `ask(prompt,
default)` and `echo(text)` are injected so the flow is testable without a terminal.
"""
from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Callable

from minirun.checkpoints.hub import DEFAULT_MODEL, default_model_path, is_complete, is_hub_id
from minirun.cli.common import EXAMPLE_FILES, NEW_TOKENS
from minirun.cli.eval import DEFAULT_METHODS
from minirun.errors import MinirunError
from minirun.eval.data import NAMES as DATASETS
from minirun.eval.data import hub_dataset
from minirun.eval.prompts import WORKED_TOKENS
from minirun.methods import METHODS
from minirun.methods.names import WEIGHTED
from minirun.methods.packing import POSITION_SCHEMES

TASKS = ("generate", "eval", "bench")
# what each command runs without --method: generate a plain prompt (no method), eval its five, bench origin
DEFAULT_METHOD = {"generate": "", "eval": ",".join(DEFAULT_METHODS), "bench": "origin"}

Ask = Callable[[str, str], str]
Echo = Callable[[str], None]
Check = Callable[[str], str | None]  # reason the answer is invalid, or None


def _prompt(ask: Ask, echo: Echo, prompt: str, default: str, check: Check) -> str:
    """Ask until `check` accepts the (stripped) answer; each refusal echoes its reason."""
    while True:
        answer = ask(prompt, default).strip()
        reason = check(answer)
        if reason is None:
            return answer
        echo(f"{answer!r}: {reason}")


def _one_of(choices: tuple[str, ...]) -> Check:
    return lambda a: None if a in choices else f"choose one of {', '.join(choices)}"


def _positive_int(answer: str) -> str | None:
    return None if answer.isdecimal() and int(answer) > 0 else "give a whole number above 0"  # "²" is a digit


def _at_least_two(answer: str) -> str | None:
    return None if answer.isdecimal() and int(answer) > 1 else "give a whole number above 1 (a decode step is timed)"


def _count(answer: str) -> str | None:
    return None if answer.isdecimal() else "give a whole number (0 or more)"


def _optional_int(answer: str) -> str | None:
    return None if not answer else _positive_int(answer)


def _unit(answer: str) -> str | None:
    try:
        return None if 0.0 <= float(answer) <= 1.0 else "give a number from 0 to 1"
    except ValueError:
        return "give a number from 0 to 1"


def _methods(single: bool, optional: bool = False) -> Check:
    """Known method names (one where `single`); none at all where `optional` (generate's plain prompt)."""
    def check(answer: str) -> str | None:
        names = _split(answer)
        unknown = [m for m in names if m not in METHODS]
        if unknown or not (names or optional):
            return f"unknown method {', '.join(unknown) or '(none)'}: choose from {', '.join(METHODS)}"
        if single and len(names) > 1:
            return "this task runs one method: give a single name"
        return None

    return check


def _split(answer: str) -> list[str]:
    return [part.strip() for part in answer.split(",") if part.strip()]


def _dataset(answer: str) -> str | None:
    try:
        if hub_dataset(answer)[0] in DATASETS or Path(answer).is_file():
            return None
    except MinirunError as e:  # "mmlu@": no revision
        return str(e)
    return (f"use one of {', '.join(DATASETS)} (a Hub one pinned: NAME@REV) or the path of an existing file "
            "(e.g. items.jsonl)")


def _benchmark(answer: str) -> str | None:
    """A file's benchmark: none, or a named dataset (a Hub one pinned: NAME@REV) whose words and examples ask it."""
    if not answer:
        return None
    try:
        if hub_dataset(answer)[0] in DATASETS:
            return None
    except MinirunError as e:
        return str(e)
    return f"use one of {', '.join(DATASETS)} (a Hub one pinned: NAME@REV), or leave it empty"


def _optional_file(answer: str) -> str | None:
    return None if not answer or Path(answer).is_file() else "no such file (leave empty for none)"


def local_models(models_dir: Path) -> list[str]:
    """Names of the finished checkpoints under `models_dir`: converted ones (`name/`) and pulled hub repos
    (`org/name/`); hidden folders (a pull or conversion still writing, or killed) are none of them."""
    if not models_dir.is_dir():
        return []
    found = [p for p in models_dir.glob("*/") if not p.name.startswith(".")]
    found += [p for org in found for p in org.glob("*/") if not p.name.startswith(".")]
    return sorted(p.relative_to(models_dir).as_posix() for p in found if is_complete(p))


def _model(models_dir: Path, default: str) -> Check:
    def check(answer: str) -> str | None:
        if answer in (default, DEFAULT_MODEL) or (Path(answer) / "config.json").is_file():
            return None
        if answer in local_models(models_dir) or (is_hub_id(answer) and not Path(answer).exists()):
            return None
        return ("not a checkpoint directory (no config.json), a listed model or an HF repo id org/name (or "
                "org/name@revision)")

    return check


def _ask_model(ask: Ask, echo: Echo, models_dir: Path) -> list[str]:
    """`--model X`, or nothing for the default model (the CLI then pulls it on first use)."""
    chosen = os.environ.get("MINIRUN_MODEL")
    default = str(default_model_path(models_dir))
    found = local_models(models_dir)
    echo(f"models in {models_dir}: {', '.join(found)}" if found else f"no models in {models_dir} yet")
    answer = _prompt(ask, echo, "model (listed name, checkpoint dir or HF repo id)", default, _model(models_dir, default))
    if answer == default or (answer == DEFAULT_MODEL and not chosen):
        return []
    if answer == DEFAULT_MODEL:
        return ["--model", DEFAULT_MODEL]
    return ["--model", str(models_dir / answer) if answer in found else answer]


def _ask_paraphrases(ask: Ask, echo: Echo, needed: bool) -> list[str]:
    """Paraphrases one per answer until an empty one; fusing methods need at least one."""
    out: list[str] = []
    while True:
        answer = ask(f"paraphrase {len(out) + 1} (empty to finish)", "").strip()
        if answer:
            out.append(answer)
        elif out or not needed:
            return out
        else:
            echo("this method answers over paraphrases: give at least one")


def _ask_method_options(ask: Ask, echo: Echo, methods: list[str]) -> list[str]:
    """The settings only some of `methods` read (flex's positions and head, hidden_avg's block and weight, the
    weighted methods' samples), each asked only when a method that reads it runs; defaults are the commands'."""
    argv: list[str] = []
    if "flex" in methods:
        argv += ["--positions", _prompt(ask, echo, f"flex positions ({'/'.join(POSITION_SCHEMES)})", "right",
                                        _one_of(POSITION_SCHEMES))]
        if _prompt(ask, echo, "share the prefix across paraphrases (yes/no)", "yes", _one_of(("yes", "no"))) == "no":
            argv.append("--no-share-prefix")
    if "hidden_avg" in methods:
        layer = _prompt(ask, echo, "hidden_avg: first fused block (empty: 3/4 of the depth)", "", _optional_int)
        argv += ["--fusion-layer", layer] if layer else []
        argv += ["--fusion-alpha", _prompt(ask, echo, "hidden_avg: weight of the mean (0-1)", "1.0", _unit)]
    if any(m in WEIGHTED for m in methods):
        argv += ["--num-samples", _prompt(ask, echo, "samples per paraphrase for the confidence", "100", _positive_int)]
    return argv


def run_interactive(ask: Ask, echo: Echo, models_dir: Path) -> list[str]:
    """Ask for a generate / eval / bench run and return its argv (without the program name); every default
    offered is the command's own, so accepting them all runs what the bare command would."""
    task = _prompt(ask, echo, f"task ({'/'.join(TASKS)})", "generate", _one_of(TASKS))
    single = task != "eval"  # generate and bench run one method
    label = "method" if single else "methods (comma-separated)"
    plain = " (empty: the prompt alone, no method)" if task == "generate" else ""
    methods = _split(_prompt(ask, echo, f"{label}, from {', '.join(METHODS)}{plain}", DEFAULT_METHOD[task],
                             _methods(single, optional=task == "generate")))
    argv = [task]
    for method in methods:
        argv += ["--method", method]
    if task == "generate":
        question = _prompt(ask, echo, "question", "", lambda a: None if a else "a question is needed")
        # origin asks the question alone: paraphrases would go unused
        paraphrases = _ask_paraphrases(ask, echo, True) if methods and methods != ["origin"] else []
        argv += _ask_model(ask, echo, models_dir)
        argv += _ask_method_options(ask, echo, methods)
        few_shot = _prompt(ask, echo, "few-shot file (.jsonl examples or a prefix text; empty for none)", "",
                           _optional_file)
        argv += ["--few-shot", few_shot] if few_shot else []
        if Path(few_shot).suffix in EXAMPLE_FILES:  # a prefix text is the prompt's text itself: nothing to draw
            argv += ["--few-shot-k", _prompt(ask, echo, "few-shot examples to use (0 for none)", "5", _count)]
        tokens = _prompt(ask, echo, f"max new tokens (empty: {NEW_TOKENS}, {WORKED_TOKENS} with worked maths "
                         "examples)", "", _optional_int)
        argv += ["--max-new-tokens", tokens] if tokens else []
        for p in paraphrases:
            argv += ["--paraphrase", p]
        return [*argv, "--", question]  # a question may start with "-" ("-5 plus 7 is?")
    if task == "eval":
        data = _prompt(ask, echo, f"dataset ({', '.join(DATASETS)} or a .jsonl path)", "sample-qa", _dataset)
        argv += ["--data", data]
        if hub_dataset(data)[0] not in DATASETS:  # a file: asked in minirun's words, or as a benchmark asks its own
            benchmark = _prompt(ask, echo, "asked as benchmark (its words and few-shot examples, e.g. mmlu for MMLU "
                                "paraphrased, winogrande for items with a gap; empty: minirun's words)", "", _benchmark)
            argv += ["--benchmark", benchmark] if benchmark else []
    argv += _ask_model(ask, echo, models_dir)
    if task == "bench":
        if methods != ["origin"]:  # origin asks the question alone
            argv += ["--num-paraphrases", _prompt(ask, echo, "paraphrases per question", "5", _positive_int)]
        return argv + ["--new-tokens", _prompt(ask, echo, "new tokens per generation", "64", _at_least_two)]
    argv += _ask_method_options(ask, echo, methods)
    argv += ["--num-prompts", _prompt(ask, echo, "prompts per question (the question and its paraphrases)", "5",
                                      _positive_int)]
    samples = _prompt(ask, echo, "max samples (empty: all)", "", _optional_int)
    argv += ["--max-samples", samples] if samples else []
    argv += ["--few-shot-k", _prompt(ask, echo, "few-shot examples (0 for none)", "5", _count)]
    output = ask("output directory (empty: runs/<dataset>-<model>)", "").strip()
    if output:
        argv += ["--output", output]
    tokens = _prompt(ask, echo, "max new tokens (empty: 24, 256 for maths items)", "", _optional_int)
    return argv + (["--max-new-tokens", tokens] if tokens else [])


def format_command(argv: list[str]) -> str:
    """The one-line shell command for `argv`, quoted so it can be pasted as is."""
    return shlex.join(["minirun", *argv])
