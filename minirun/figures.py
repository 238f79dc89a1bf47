"""Charts written as files: their texts taken literally and the file replaced whole, whichever command draws them."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ParamSpec, TypeVar

from minirun.paths import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

P = ParamSpec("P")
R = TypeVar("R")


def literal_text(draw: Callable[P, R]) -> Callable[P, R]:
    """`draw` with matplotlib's mathtext off for every text it creates or renders: a title, label or tick holding
    the user's words (a dataset at "cost_$5_$x.jsonl", a model's "$$" token) is shown as written, where mathtext
    would fail to parse it and stop the command with a traceback."""
    @functools.wraps(draw)
    def drawn(*args: P.args, **kwargs: P.kwargs) -> R:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):  # read when each text is made, so around it all
            return draw(*args, **kwargs)

    return drawn


def save_figure(fig: Figure, path: str | Path, **options) -> None:
    """`fig` written to `path` whole (`write_atomic`: an interrupted save leaves the chart that was there), in the
    format its name's suffix says."""
    write_atomic(Path(path), lambda staged: fig.savefig(staged, **options))
