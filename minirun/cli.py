"""The `minirun` command line (Typer)."""
from __future__ import annotations

import typer

app = typer.Typer(help="minirun: a small LLM runtime for paraphrase self-ensembles.", no_args_is_help=True)
