"""Where minirun keeps what it can rebuild: calibrations, compiled kernels, sampled confidences,
random test checkpoints. One root, `$MINIRUN_CACHE` or ~/.cache/minirun, so one variable moves or
clears them all."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("minirun")


def cache_root() -> Path:
    return Path(os.environ.get("MINIRUN_CACHE", Path.home() / ".cache" / "minirun"))


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """`write` fills a file named as `path` in a hidden folder beside it, then one rename puts it in place: a reader or
    a kill never sees half a file, concurrent writers (pid-named folders) never take each other's away, and what
    reads the name (pandas' compression and an archive's member, a chart's format, gzip's header) reads the real one.
    An existing file's mode is kept; a link's target is replaced, the link kept; a device or a pipe (/dev/stdout) is
    written into as it is, never replaced."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.is_char_device() or path.is_block_device() or path.is_fifo():
        write(path)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.mkdir(exist_ok=True)
    staged = staging / path.name
    try:
        write(staged)
        if path.is_file():
            shutil.copymode(path, staged)
        os.replace(staged, path)
    except BaseException as e:  # an interrupt mid-write leaves the old file and nothing beside it
        name_the_file(e, path, staged)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def name_the_file(error: BaseException, path: Path, temp: Path | None = None) -> None:
    """Give an OSError that names no file (a full disk's, raised by a write) or names `temp` the file it was writing,
    `path`: its one-line error then says which file and so which disk."""
    if isinstance(error, OSError) and error.filename in (None, str(temp) if temp is not None else None):
        error.filename = str(path)


STALE_TEMP_SECONDS = 600  # far longer than any one write of a run's files takes
_swept: set[Path] = set()  # the folders `remove_stale_temps` looked through in this process


def remove_stale_temps(path: Path) -> None:
    """Delete the temps beside `path` that writers killed outright left (SIGKILL skips `write_atomic`'s clean-up; a
    results table's temp is as large as the table): those of a process that no longer runs here, untouched for
    STALE_TEMP_SECONDS, so a live writer's (another machine's, on a shared folder) is never taken."""
    if path.parent in _swept:  # once a process: a folder of many small cache files is not listed per write
        return
    _swept.add(path.parent)
    for temp in path.parent.glob(".*.tmp"):  # `write_atomic`'s folders: .<name>.<pid>.tmp (files, before)
        name, pid = temp.name[1:].rsplit(".", 2)[:2]
        if left_by_dead_writer(temp, pid):
            with contextlib.suppress(OSError):  # gone meanwhile, or another user's in a shared folder: kept
                if not temp.is_dir():
                    temp.unlink()
                elif set(os.listdir(temp)) <= {name}:  # its shape, or another program's folder that only looks so
                    shutil.rmtree(temp)


def left_by_dead_writer(path: Path, pid: str) -> bool:
    """Whether `path`, written by process `pid` (as its name gives it), was left by one killed outright: no such
    process runs here and nothing touched it for STALE_TEMP_SECONDS (a live writer on another machine sharing the
    folder never looks so)."""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
        return False  # it runs
    except ProcessLookupError:
        try:
            return time.time() - path.stat().st_mtime > STALE_TEMP_SECONDS
        except OSError:  # gone meanwhile
            return False
    except OSError:  # another user's process: it runs
        return False


def read_cache(path: Path, what: str) -> Any | None:
    """The JSON a cache file holds, or None when there is none to trust: missing, or cut short by a crash or
    edited (said in a warning). Whatever is cached can be made again, so a bad file never stops a run."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        log.warning("%s %s is unreadable (%s): it is made again", what, path, e)
        return None
