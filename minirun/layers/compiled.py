"""torch.compile with a shape budget that is never exceeded silently.

Every new shape a compiled function meets is a recompile (tens of seconds on CPU). minirun keeps
the shapes few (fixed prefill chunks, power-of-two cache sizes), logs each compile, and past
MINIRUN_RECOMPILE_LIMIT shapes per function runs the call uncompiled with a warning naming the
shape. torch's own limit is raised above minirun's, so torch's quiet switch to eager (a log line
deep in torch._dynamo) is never what happens.
"""
from __future__ import annotations

import functools
import logging
import os
import time
import warnings
from typing import Any, Callable, Hashable

import torch

from minirun.errors import MinirunError
from minirun.paths import cache_root

# Inductor's on-disk cache goes under minirun's cache root, so later processes skip most of a first compile and
# one variable moves or clears it with the rest. torch fixes its directory the first time anything is compiled, so
# it is set here, when the first module that compiles is imported, unless TORCHINDUCTOR_CACHE_DIR already says where.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "inductor"))

log = logging.getLogger("minirun")

# Inductor suggests TF32 on every first compile on a GPU, bfloat16 models included. minirun keeps float32 products
# exact on purpose (float32 parity with transformers within 1e-4, the fusion rules' float32 sums); TF32 rounds their
# inputs to 10 mantissa bits, so the hint is noise to minirun's users, or a trap.
warnings.filterwarnings("ignore", message="TensorFloat32 tensor cores for float32 matrix multiplication")


_instances: list["Compiled"] = []  # every compiled function of the process, for `refused_shapes` and the like
_compiling = {"seconds": 0.0}


def seconds_compiling() -> float:
    """Seconds this process has spent in compiled functions' first calls at a new shape (tracing, compiling,
    autotuning; tens of seconds, once per process and shape): a timed run sets them aside as it does kernel
    calibration, so the method that happens to meet a shape first does not read as the slow one."""
    return _compiling["seconds"]


def refused_shapes() -> dict[str, int]:
    """How many shapes each compiled function (by name) has run uncompiled past the budget so far: a
    benchmark compares this before and after, as a figure from a refused shape is an eager one."""
    counts: dict[str, int] = {}
    for compiled in _instances:
        if compiled.refused:
            counts[compiled.name] = counts.get(compiled.name, 0) + len(compiled.refused)
    return counts


def compiled_shapes() -> dict[str, set[Hashable]]:
    """The shapes each compiled function (by name) has compiled so far, as its key describes them:
    which builder or kernel a call went through, without reaching into the module that owns it."""
    shapes: dict[str, set[Hashable]] = {}
    for compiled in _instances:
        shapes.setdefault(compiled.name, set()).update(compiled.shapes)
    return shapes


def recompile_limit() -> int:
    """$MINIRUN_RECOMPILE_LIMIT shapes per compiled function (default 16), a whole number of at least 1."""
    value = os.environ.get("MINIRUN_RECOMPILE_LIMIT", "16")
    if not value.strip().isdigit() or int(value) < 1:
        raise MinirunError(f"MINIRUN_RECOMPILE_LIMIT={value!r}: set it to a whole number of at least 1, or unset it")
    return int(value)


def raise_torch_limit() -> None:
    """Give torch's per-function recompile limit room above minirun's own."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 4 * recompile_limit())


class Compiled:
    """`fn` compiled with `options`; `key(*args)` identifies what a call compiles for, `label(*args)`
    says it in words for the log (default: the key).

    torch.compile is called at the first compiled call, not here: it imports Dynamo and Inductor (~2.5 s on
    a 2-core CPU), which a process that never compiles (eager runs, `report`, `--help`, a refused option)
    would otherwise pay at start-up, as the modules making these objects are imported by every command."""

    def __init__(self, fn: Callable, name: str, key: Callable[..., Hashable],
                 label: Callable[..., str] | None = None, **options: Any):
        self.fn, self.name, self.key, self.label = fn, name, key, label or (lambda *a, **k: str(key(*a, **k)))
        self.options = options
        self.shapes: set[Hashable] = set()
        self.refused: set[Hashable] = set()
        _instances.append(self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        shape = self.key(*args, **kwargs)
        if shape not in self.shapes:
            limit = recompile_limit()
            if len(self.shapes) >= limit:
                if shape not in self.refused:
                    self.refused.add(shape)
                    log.warning("%s is already compiled for %d shapes (MINIRUN_RECOMPILE_LIMIT=%d): %s runs "
                                "uncompiled and slowly; use fewer batch sizes or raise the limit",
                                self.name, len(self.shapes), limit, self.label(*args, **kwargs))
                return self.fn(*args, **kwargs)
            self.shapes.add(shape)
            log.info("compiling %s for %s (once per shape; later processes reuse the on-disk cache)", self.name,
                     self.label(*args, **kwargs))
            if not torch.compiler.is_compiling():  # inside another's trace, that one's first call is timed
                start = time.perf_counter()
                try:
                    return self.compiled(*args, **kwargs)
                finally:
                    _compiling["seconds"] += time.perf_counter() - start
        return self.compiled(*args, **kwargs)

    @functools.cached_property
    def compiled(self) -> Callable:
        return torch.compile(self.fn, **self.options)


def capture(run: Callable[[], torch.Tensor], device: torch.device) -> tuple[Callable[[], None], torch.Tensor]:
    """Record `run` (no host syncs, tensors only) once; returns (replay, output): each replay recomputes
    `output` in place from whatever its recorded inputs hold then. On CUDA a graph of its own, warmed up
    first on a side stream (a first call compiles and autotunes, which synchronises, and a capture allows
    no sync) and recorded on it: torch's default capture stream is made once per process on whichever GPU
    was current, so a model on another (`cuda:1`) would record nothing and replay nothing. Elsewhere a
    replay is a plain call copied into the same output, so the bookkeeping runs (and is tested) on CPU too."""
    if device.type != "cuda":
        output = run()
        return (lambda: output.copy_(run()), output)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(2):  # the first call compiles; the second runs as the recording will
            run()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=side):  # not torch's capture stream: made once, on the device current then
        output = run()
    return Replay(graph, run), output


class Replay:
    """A CUDA graph's replay that keeps `run` alive, and with it every tensor the recording reads and writes
    by address. A tensor only `run` held (a step counter its caller made and let go of) would otherwise
    return to the allocator and go to the next allocation while the graph still used it: on an H200 greedy
    loops at batch 8 failed with `index_copy_(): index out of bounds` (batch 1 ran), as the answers' host
    copy every 8 steps (an [8, n] slice, not contiguous, so copied through a device temporary) could take
    the counter's block."""

    def __init__(self, graph: "torch.cuda.CUDAGraph", run: Callable[[], torch.Tensor]):
        self.graph, self.run = graph, run

    def __call__(self) -> None:
        self.graph.replay()


class Captured:
    """`fn(*args)` recorded once (`capture`), then replayed with new values for the tensors at positions
    `changing`: they are copied into the recorded ones, every other argument must stay the very same
    tensors with contents updated in place. One replay a call instead of torch.compile's guards and its
    CUDA-graph tree's per-call checks; the result is a copy, as the next replay overwrites the recorded one.
    The replay holds `fn` and `args`, never this object: a cycle through it would keep the graph and its
    memory until Python's next full collection (`fn` must not hold its owner either)."""

    def __init__(self, fn: Callable[..., torch.Tensor], args: tuple, changing: tuple[int, ...], device: torch.device):
        self.args = recorded = tuple(a.clone() if i in changing else a for i, a in enumerate(args))
        self.changing = changing
        self.replay, self.output = capture(lambda: fn(*recorded), device)

    def __call__(self, *values: torch.Tensor) -> torch.Tensor:
        for i, value in zip(self.changing, values, strict=True):
            self.args[i].copy_(value)
        self.replay()
        return self.output.clone()
