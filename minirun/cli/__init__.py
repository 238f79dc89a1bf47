"""The `minirun` command line. Errors print one line and exit 1, never a traceback.

Run it as the `minirun` console script (`main`) or as `python -m minirun.cli` (what torchrun needs).
"""
from __future__ import annotations

import sys

__all__ = ["app", "main"]


def main() -> None:
    """The console script: the commands import torch, which takes seconds; a Ctrl-C meanwhile is one line."""
    try:
        from minirun.cli.commands import app
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    app()


def __getattr__(name: str):
    """`minirun.cli.app`, the Typer app (tests and `python -m minirun.cli` use it), imported on first use."""
    if name == "app":
        from minirun.cli.commands import app

        return app
    raise AttributeError(f"module 'minirun.cli' has no attribute {name!r}")
