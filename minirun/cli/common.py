"""What every command shares: one-line errors instead of tracebacks, log lines on stderr, model loading."""
from __future__ import annotations

import errno
import functools
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import typer
from rich.console import Console
from rich.text import Text

from minirun.errors import MinirunError
from minirun.paths import write_atomic

if TYPE_CHECKING:
    import pandas as pd

    from minirun.engine.llm import LLM

# No rich markup in either: what they print holds the user's texts (a path, a run's title, a relation, a model's
# name), where "[x]" is text; colours are styles given beside the text.
err = Console(stderr=True, soft_wrap=True, markup=False)  # an error stays one line in a log or a pipe, not wrapped
# Results on stdout: piped into a file or a log, rich would squeeze a table into 80 columns and cut its figures to
# "0.000…"; there a table takes the width it needs.
out = Console(width=None if sys.stdout.isatty() else 1000, markup=False)
SKIP_BAD_HELP = "Skip (and count) bad records of a plain item file (JSONL or JSON array)."
DEVICE_HELP = "auto (a CUDA GPU where one is visible, else the CPU), cpu, cuda or cuda:N."
DTYPE_HELP = ("float32, bfloat16 or float16 (default: the checkpoint's on GPU; on CPU bfloat16 where the CPU has "
              "bfloat16 arithmetic and the checkpoint is bfloat16, else float32).")


_streaming = {"mid_line": False}  # streamed answer text is on screen without its newline yet


def stream(text: str) -> None:
    """Print answer text as it arrives (no newline), so a log line knows to start a new one."""
    sys.stdout.write(text)
    sys.stdout.flush()
    _streaming["mid_line"] = True


def end_stream() -> None:
    print(flush=True)  # before a stats line on stderr, which a shared log would otherwise join to the answer
    _streaming["mid_line"] = False


class _ConsoleLog(logging.Handler):
    """minirun's log lines (a compile starting, a shape budget reached) on stderr, one line each."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if _streaming["mid_line"]:  # the decode step compiles after the first token is shown
            err.print()
            _streaming["mid_line"] = False
        err.print(Text.assemble(("warning:", "yellow"), " ", text) if record.levelno >= logging.WARNING
                  else Text(text, "dim"), highlight=False)


def _show_logs() -> None:
    logger = logging.getLogger("minirun")
    if not any(isinstance(h, _ConsoleLog) for h in logger.handlers):
        logger.addHandler(_ConsoleLog())
        logger.setLevel(logging.INFO)


def print_error(message: str) -> None:
    err.print(Text.assemble(("error:", "red"), " ", message), highlight=False)


def warn(warnings: list[str], console: Console) -> None:
    """A report's caveats: after its tables, or on stderr under --json so that stdout stays one JSON object."""
    for warning in warnings:
        console.print(warning, style="yellow", highlight=False)


_PATH_FIXES = {  # what to do when the system refuses a path the user gave
    IsADirectoryError: "give a file path, not a directory",
    NotADirectoryError: "a part of the path is a file, not a directory",
    FileExistsError: "a file stands where a folder is needed: choose another path",
    FileNotFoundError: "check the path (its folder must exist)",
    PermissionError: "choose a path you may read or write",
}


FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def path_error(e: OSError) -> str:
    """An OSError as one line: the path, the system's reason, and the fix."""
    fix = "free space on that disk (or write elsewhere)" if e.errno in FULL_DISK else next(
        (text for kind, text in _PATH_FIXES.items() if isinstance(e, kind)), "check the path and the disk")
    where = f"{e.filename}: " if e.filename is not None else ""
    return f"{where}{(e.strerror or str(e)).lower()}; {fix}"


def _utf8(value: object) -> bool:
    """Whether a command-line value (text, a path, a list of them) is UTF-8: bytes that are not come as surrogates,
    which the tokenizer and every file written refuse with a traceback."""
    if isinstance(value, (list, tuple)):
        return all(map(_utf8, value))
    if isinstance(value, (str, Path)):
        try:
            str(value).encode("utf-8")
        except UnicodeEncodeError:
            return False
    return True


NEW_TOKENS = 64  # generate's budget for a plain generation or a short answer unless told otherwise


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's time limit, torchrun stopping the other ranks) taken as Ctrl-C is: the command stops
    between Python steps, its files closed, and says so."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def friendly(fn: Callable, resumable: bool = False) -> Callable:
    """Turn MinirunError, a refused path (OSError), running out of memory, Ctrl-C and SIGTERM into a one-line message
    and a non-zero exit (130, or 143 for SIGTERM); a `resumable` command's interrupt says that what it finished is
    kept and how to go on."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _show_logs()
        if (bad := next((v for v in (*args, *kwargs.values()) if not _utf8(v)), None)) is not None:
            print_error(f"an argument is not UTF-8 text ({str(bad).encode('utf-8', 'replace').decode()!r}): give it "
                        "in UTF-8 (set the terminal's and the locale's encoding to UTF-8)")
            raise typer.Exit(1)
        main = threading.current_thread() is threading.main_thread()  # where a signal handler may be set
        before = signal.signal(signal.SIGTERM, _terminate) if main else None
        try:
            return fn(*args, **kwargs)
        except MinirunError as e:
            print_error(str(e))
            raise typer.Exit(1) from None
        except BrokenPipeError:  # `minirun report ... | head`: the Typer app quiets it
            raise
        except OSError as e:  # an output directory that is a file, a folder that does not exist, no permission
            print_error(path_error(e))
            raise typer.Exit(1) from None
        except RuntimeError as e:  # torch's: a GPU (or host) out of memory is a setting to change, not a crash
            from minirun.engine.session import out_of_memory

            if (asked := out_of_memory(e)) is None:
                raise
            print_error(f"out of memory ({asked}): run fewer rows at once — a smaller --batch-size (paraphrase "
                        "resumes from the batches finished; eval halves its batches itself), fewer paraphrases, a "
                        "smaller --max-new-tokens — or a smaller model or --dtype")
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:
            how = "terminated" if isinstance(e, Terminated) else "interrupted"
            err.print(f"{how}: every finished batch is kept; run the same command again to go on from there"
                      if resumable else how)
            raise typer.Exit(143 if isinstance(e, Terminated) else 130) from None
        finally:
            if main and before is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(signal.SIGTERM, before)

    return wrapper


def read_text_file(path: Path, what: str) -> str:
    """The UTF-8 text of a file the user named as `what` (e.g. "paraphrases file"), or a one-line error."""
    if path.is_dir():
        raise MinirunError(f"{what} {path} is a directory: pass a file")
    if not path.is_file():
        raise MinirunError(f"{what} {path} not found: pass an existing file")
    from minirun.eval.data import text_lines  # the one reader of users' text files: a non-UTF-8 one is one line

    return "".join(text_lines(path))


def check_texts(prompt: str, paraphrases: list[str]) -> None:
    """Refuse an empty question or paraphrase before the model loads, naming the argument (the API
    refuses them too, later and in its own terms)."""
    if not prompt.strip():
        raise MinirunError("the prompt is empty: give the question as the first argument")
    if empty := [i for i, text in enumerate(paraphrases, 1) if not text.strip()]:
        raise MinirunError(f"--paraphrase {empty[0]} is empty: give its text or drop it")


def write_csv(frame: pd.DataFrame, path: Path, **options) -> None:
    """`frame` as CSV at `path`, replaced whole (`write_atomic`), compressed as its name says (`out.csv.gz`)."""
    write_atomic(path, lambda staged: frame.to_csv(staged, **options))


def write_text(path: Path, text: str) -> None:
    """`text` at `path` as UTF-8 (a LaTeX table), replaced whole (`write_atomic`)."""
    write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def check_figure_path(path: Path) -> None:
    """Refuse a chart path matplotlib would not write as named (a directory, a missing or unknown extension,
    a folder that does not exist) before any work is done."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if path.is_dir():
        raise MinirunError(f"{path} is a directory: give a file name such as {path / 'chart.png'}")
    if path.suffix.lstrip(".").lower() not in formats:
        raise MinirunError(f"{path}: give a file name ending in one of {', '.join('.' + f for f in formats)}")
    if not path.parent.is_dir():
        raise MinirunError(f"folder {path.parent} does not exist: create it or choose another path for {path.name}")


def check_not_run_file(path: Optional[Path], what: str, run_dirs: list[Path]) -> None:
    """Refuse a report's output path that is a file a reported run keeps (`results.KEPT_FILES`): written over, the
    run could be neither reported nor resumed again."""
    from minirun.eval.results import KEPT_FILES  # pandas: not for every command's start

    if path is None or not KEPT_FILES.fullmatch(path.name):
        return
    for run in run_dirs:
        if path.resolve().is_relative_to(run.resolve()):
            raise MinirunError(f"{what} {path} is a file of the run reported ({run}): give another path")


def check_output_dir(path: Optional[Path]) -> None:
    """Refuse, before a model loads (minutes for a large one), an output directory no run could write: a file
    there, or a folder this user may not write in."""
    if path is None:
        return
    if path.exists() and not path.is_dir():
        raise MinirunError(f"{path} is a file, not a directory: give --output a directory for the run")
    _check_writable(path, "--output")


def check_output_file(path: Path, what: str) -> None:
    """Refuse, before a model loads, an output file no run could write: a directory there, or a folder this user
    may not write in (missing folders are made)."""
    if path.is_dir():
        raise MinirunError(f"{what} {path} is a directory: give a file name such as {path / 'out.jsonl'}")
    _check_writable(path.parent, f"{what} {path.name}")


def _check_writable(folder: Path, what: str) -> None:
    """The nearest existing folder at or above `folder` must be one this user may write in (the rest is made)."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise MinirunError(f"{existing} is a file, not a folder: choose another path for {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MinirunError(f"{existing} is not writable by this user: choose another path for {what}")


def load_llm(model: Optional[str], device: str, dtype: Optional[str], compile: bool) -> LLM:
    """The model named, else $MINIRUN_MODEL, else the default model (pulled on first use)."""
    from minirun.checkpoints.hub import resolve_model
    from minirun.engine.llm import load
    return load(resolve_model(model), device=device, dtype=dtype, compile=compile)


CALIBRATION_CAPTION = ("over the multiple-choice items. confidence: mean probability of the option picked (softmax of "
                       "the scores it was picked by; vote: its share of the prompts' picks); ECE: 15 equal-width bins; "
                       "Brier: multi-class (items with one right option), 0 best, 2 worst")


def method_names(values: list[str]) -> list[str]:
    """--method as given, each flag a name or a comma-separated list of them (as sweep files and scripts write
    them), a name given twice kept once; an unknown or empty name refused before a model loads."""
    from minirun.methods import METHODS

    names = [name.strip() for value in values for name in value.split(",")]
    if bad := [name for name in names if name not in METHODS]:
        raise MinirunError(f"unknown method {bad[0]!r} in --method: choose from {', '.join(METHODS)} (repeat the "
                           "flag or separate names with commas)")
    return list(dict.fromkeys(names))


EXAMPLE_FILES = (".jsonl", ".parquet")  # a --few-shot file of worked examples (items, or a benchmark's rows)


FEW_SHOT_K = 5  # generate's and mask's examples drawn from a --few-shot file when --few-shot-k names no count


def few_shot_count(path: Optional[Path], k: Optional[int]) -> int:
    """The examples to draw from --few-shot: --few-shot-k's count, which given alone (even as the default's 5)
    would be silently ignored, so is refused."""
    if path is None and k is not None:
        raise MinirunError("--few-shot-k counts the examples drawn from --few-shot, and none was given: add "
                           "--few-shot FILE, or drop --few-shot-k")
    if path is not None and k is not None and path.suffix not in EXAMPLE_FILES:
        raise MinirunError(f"--few-shot-k counts the examples drawn from a file of them ({', '.join(EXAMPLE_FILES)}), "
                           f"and {path.name} is read as the prompt's text itself: drop --few-shot-k")
    return FEW_SHOT_K if k is None else k


def few_shot_context(path: Optional[Path], k: int, question: str, paraphrases: list[str],
                     suffix: Optional[str]) -> tuple[str, str]:
    """(prefix, suffix) around each paraphrase as `generate --few-shot` asks and `mask --few-shot` draws it: a file of
    worked examples (JSONL items, or a benchmark's rows in JSONL or parquet, as `eval --few-shot` takes them) becomes
    an instruction and k examples of its first item's task, as eval builds them (never
    the question asked, which would hand the model its answer), any other file is used verbatim; then eval's blocks,
    the question's lead ("Q: ") and, unless `suffix` is given, its cue ("\\nA:"). No file: no prefix, and the suffix
    as given."""
    from minirun.eval.prompts import MINIRUN

    if path is None:
        return "", suffix or ""
    if path.suffix in EXAMPLE_FILES:
        from minirun.eval.data import Item, load_examples
        from minirun.eval.loop import few_shot_prefixes

        examples = load_examples(path)
        task = examples[0].task
        prefix = few_shot_prefixes([Item("asked", question, paraphrases, [], task)], examples, str(path), task, k)[task]
    else:
        prefix = read_text_file(path, "few-shot file")
    return prefix + MINIRUN.lead, MINIRUN.cue if suffix is None else suffix


def few_shot_task(path: Optional[Path]) -> str:
    """The task a `--few-shot` file's worked examples are of (its first item's: "qa", "fill", "choice" or "math"),
    which the question is asked as; "qa" for no file or a verbatim text file."""
    if path is None or path.suffix not in EXAMPLE_FILES:
        return "qa"
    from minirun.eval.data import load_examples

    return load_examples(path)[0].task


MC2_CAPTION = ("TruthfulQA's MC2: the mean probability a method puts on an item's right options (its options' summed "
               "log-likelihoods normalised over the options, as lm-evaluation-harness computes it; vote has none of "
               "its own), bootstrap 95% CI over items; Δ origin: the mean per-item difference on the items both "
               "scored, paired bootstrap CI, sign-flip p (Holm-adjusted over a model's methods in --json, --csv and "
               "--latex)")


def shown_interval(scores: pd.Series, name: str, spec: str) -> str:
    """` [low, high]` of `name`'s 95% interval, or nothing where it has none (a bootstrap over one unit)."""
    low, high = scores[f"{name}_ci95_low"], scores[f"{name}_ci95_high"]
    return "" if math.isnan(low) else f" [{low:{spec}}, {high:{spec}}]"


def mc2_cells(scores: pd.Series) -> list[str]:
    """A method's MC2 with its interval, and its difference from origin's with interval and p: two cells."""
    if math.isnan(scores["mc2"]):
        return ["–", "–"]
    versus = "–" if math.isnan(scores["diff_mc2_vs_origin"]) else (
        f"{scores['diff_mc2_vs_origin']:+.3f}{shown_interval(scores, 'diff_mc2_vs_origin', '+.3f')} "
        f"(p {scores['p_mc2_vs_origin']:.3g})")
    return [f"{scores['mc2']:.3f}{shown_interval(scores, 'mc2', '.3f')}", versus]


def single_prompt_line(scores: pd.Series) -> str:
    """The single-prompt figures (per_prompt's or vote's) as one run's and a sweep's tables caption them
    (consistency may not apply: a dash)."""
    return (f"mean single-prompt accuracy {scores['mean_single_accuracy']:.3f}, oracle {scores['oracle_accuracy']:.3f}, "
            f"consistency {shown_number(scores['consistency'], '.3f')}")


def parse_flex_bias(value: Optional[str]) -> float | str | None:
    """--flex-bias as EnsembleOptions takes it: None, 'inv_n', or a number (its range checked there)."""
    if value is None or value == "inv_n":
        return value
    try:
        return float(value)
    except ValueError:
        raise MinirunError(f"--flex-bias takes a number or 'inv_n', not {value!r}") from None


def shown_number(value: float, spec: str) -> str:
    """`value` formatted, or a dash where it does not apply (NaN): a table's cell."""
    import pandas as pd

    return "–" if pd.isna(value) else format(value, spec)


def top_p_above_zero(value: float | None) -> float | None:
    """--top-p's lower bound, which Typer's ranges cannot state (they include their ends): a usage error, exit 2,
    as theirs are."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"{value} is not above 0", param_hint="'--top-p'")
    return value
