"""The Typer app: every command group registers its commands here."""
import sys
from typing import Any

import typer
from typer.core import TyperGroup

from minirun.cli import eval as eval_commands
from minirun.cli import generate, sweep, tools
from minirun.cli.common import print_error

# typer raises click's exceptions, from the click package or, in newer typer, a vendored copy: the classes are
# taken from the exception typer exports, so either works.
_USAGE_ERROR, _CLICK_ERROR = (next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)
                              for name in ("UsageError", "ClickException"))


class OneLineErrors(TyperGroup):
    """Usage errors (an option out of range, a missing argument, an unknown option) as one line naming the
    problem and where the help is, like every other minirun error, instead of a usage box."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:  # a caller (a test, `interactive`) handles the exceptions itself
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except _USAGE_ERROR as e:
            where = e.ctx.command_path if e.ctx is not None else "minirun"
            print_error(f"{e.format_message()} (see `{where} --help`)")
            sys.exit(e.exit_code)
        except _CLICK_ERROR as e:
            print_error(e.format_message())
            sys.exit(e.exit_code)
        except typer.Abort:
            print_error("aborted")
            sys.exit(1)
        except KeyboardInterrupt:  # before a command's own handler is reached (parsing, imports)
            print_error("interrupted")
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=OneLineErrors, pretty_exceptions_enable=False)


@app.callback(invoke_without_command=True)
def overview(ctx: typer.Context) -> None:
    """minirun: a small LLM runtime for paraphrase self-ensembles."""
    if ctx.invoked_subcommand is None:  # plain `minirun`: the list of commands
        typer.echo(ctx.get_help())


for group in (generate, tools, eval_commands, sweep):
    group.register(app)
