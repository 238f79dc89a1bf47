"""What every command shares: one-line errors instead of tracebacks, log lines on stderr, model loading."""
from __future__ import annotations

import functools
import logging
import sys
from typing import TYPE_CHECKING, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

from minirun.errors import MinirunError

if TYPE_CHECKING:
    from minirun.engine.llm import LLM

err = Console(stderr=True)
DTYPE_HELP = ("float32, bfloat16 or float16 (default: the checkpoint's on GPU; on CPU bfloat16 where the CPU has "
              "bfloat16 arithmetic and the checkpoint is bfloat16, else float32).")


_streaming = {"mid_line": False}  # streamed answer text is on screen without its newline yet


def stream(text: str) -> None:
    """Print answer text as it arrives (no newline), so a log line knows to start a new one."""
    sys.stdout.write(text)
    sys.stdout.flush()
    _streaming["mid_line"] = True


def end_stream() -> None:
    print()
    _streaming["mid_line"] = False


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
            err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False)  # "[x]" in a message is text, not markup
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def load_llm(model: Optional[str], device: str, dtype: Optional[str], compile: bool) -> LLM:
    """The model named, else $MINIRUN_MODEL, else the default model (pulled on first use)."""
    from minirun.checkpoints.hub import resolve_model
    from minirun.engine.llm import load
    from minirun.layers import flex

    flex.set_compiled(compile)
    return load(resolve_model(model), device=device, dtype=dtype)


def parse_flex_bias(value: Optional[str]) -> float | str | None:
    """--flex-bias as EnsembleOptions takes it: None, 'inv_n', or a number (its range checked there)."""
    if value is None or value == "inv_n":
        return value
    try:
        return float(value)
    except ValueError:
        raise MinirunError(f"--flex-bias takes a number or 'inv_n', not {value!r}") from None
