"""Where minirun keeps what it can rebuild: calibrations, compiled kernels, sampled confidences,
random test checkpoints. One root, `$MINIRUN_CACHE` or ~/.cache/minirun, so one variable moves or
clears them all."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("MINIRUN_CACHE", Path.home() / ".cache" / "minirun"))
