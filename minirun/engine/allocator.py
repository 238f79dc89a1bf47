"""The C heap under CPU tensors: large temporaries reused, not mapped afresh for every operation."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
LARGE = 1 << 30  # blocks up to this size come from the heap


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def return_freed_memory() -> None:
    """Give the memory freed into glibc's heap back to the system, as `keep_large_allocations` has it kept there:
    after a model is let go (a sweep's next model), the host's available memory, which the loader checks the
    next weights against, counts it again. A no-op without glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@functools.cache
def keep_large_allocations() -> bool:
    """Have glibc serve blocks up to 1 GiB from its heap and keep freed memory there for reuse.

    By default glibc maps every block above a threshold of at most 32 MiB afresh and unmaps it when
    freed, so each such temporary costs thousands of page faults that the kernel must zero: an
    evaluation batch's prefill of 255 rows x 20 tokens ([5100, 3072] MLP activations, 31 MB in
    bfloat16) spent a third of its time in the kernel and ran 1.34x slower (bench/README.md). Once
    per process; returns whether it took (False without glibc, where nothing changes).
    """
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, LARGE)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * LARGE))
