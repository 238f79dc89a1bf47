"""Where minirun keeps what it can rebuild: calibrations, compiled kernels, sampled confidences,
random test checkpoints. One root, `$MINIRUN_CACHE` or ~/.cache/minirun, so one variable moves or
clears them all."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def cache_root() -> Path:
    return Path(os.environ.get("MINIRUN_CACHE", Path.home() / ".cache" / "minirun"))


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write` fills a temp file beside `path`, then one rename puts it in place: a reader or a kill never
    sees half a file, and concurrent writers (pid-named temps) never take each other's temp away."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:  # an interrupt mid-write leaves the old file and no temp behind
        tmp.unlink(missing_ok=True)
        raise
