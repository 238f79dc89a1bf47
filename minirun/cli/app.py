"""The Typer app: every command group registers its commands here."""
import typer

from minirun.cli import eval as eval_commands
from minirun.cli import generate, sweep, tools

app = typer.Typer(help="minirun: a small LLM runtime for paraphrase self-ensembles.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
for group in (generate, tools, eval_commands, sweep):
    group.register(app)
