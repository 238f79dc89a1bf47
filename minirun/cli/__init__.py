"""The `minirun` command line. Errors print one line and exit 1, never a traceback.

Run it as the `minirun` console script or as `python -m minirun.cli` (what torchrun needs).
"""
from minirun.cli.app import app

__all__ = ["app"]
