"""Kernel choices that depend on the machine, measured once per CPU and cached on disk.

Which kernel wins differs between CPU kinds: MKL's few-row float32 products are slow on AMD EPYC
and read at full bandwidth on an Intel Xeon with AMX, torch's bfloat16 SDPA is pathological for one
query per row on the first and the fastest choice on the second, and FlexAttention's C++ template
against SDPA moves with the dtype and the prompt length. So a model times the candidates on its own
shapes the first time it meets a new (CPU model, torch version, dtype, shape) and keeps the answer in
`$MINIRUN_CACHE/calibration.json` (default `~/.cache/minirun`), keyed by the CPU model: a machine of
another kind measures again instead of inheriting a wrong answer. `MINIRUN_CALIBRATE=0` skips the
measuring and uses the defaults (the AMD EPYC figures in bench/README.md). An evaluation pins the choices its
rows were made with (`pin`), over both: a resumed run rounds as it began.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from minirun.layers import flex
from minirun.layers.compiled import seconds_compiling
from minirun.layers.linear import KERNELS, STREAM_MAX_ROWS, Plan, packed_linear, stream_product
from minirun.layers.masks import additive
from minirun.paths import cache_root, read_cache, write_atomic

log = logging.getLogger("minirun")

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # what changes which kernels are fast
PLAN_ROWS = (1, 2, 4, 8, 16, 64, 256, 1024)  # products timed: decode steps of 1 to 16 rows, wider batches, prefill chunks
STREAM_ROWS = 16  # streaming is timed up to this many rows: beyond, it lost everywhere (AMD EPYC, 40 rows: 0.8x BLAS)
DENSE_ROWS = 32  # dense attention is timed at no more rows than this (see `dense_attention`)
SPLIT_ROWS = 128  # ... except one query per row over a shared head, where reading it once gains with the rows
DEFAULT_PREFILL = "sdpa"  # measured on AMD EPYC (Zen 4): SDPA over the written slots beat FlexAttention
DEFAULT_DENSE = "sdpa"  # uncalibrated dense attention: the kernel torch itself picks

_memo: dict[str, Any] = {}  # this process's reads of the cache file, by key
# A run's rows round by the kernels that made them (bfloat16 most): what an evaluation pins (`pin`) is taken over
# whatever this machine would time now, and every choice taken since is kept (`chosen`) for the run to record.
_pinned: dict[str, Any] = {}
_chosen: dict[str, Any] = {}
_timing = {"allowed": True}  # `time_new`: whether a choice not yet cached may be timed


def parse_cpuinfo(text: str) -> tuple[str, str | None, dict[str, bool]]:
    """The first processor's model name, its "family F model M stepping S" where told, and the kernel flags.

    A VM's model name can be as bare as "AMD EPYC", the same on a Zen 3 and a Zen 4 host (family 25, model 1
    against 17): the numbers tell them apart in results files and calibration keys."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # one processor's block is enough
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    numbers = [(label, fields[key]) for label, key in (("family", "cpu family"), ("model", "model"),
                                                        ("stepping", "stepping")) if fields.get(key)]
    ident = " ".join(f"{label} {value}" for label, value in numbers) if len(numbers) >= 2 else None
    flags = set(fields.get("flags", "").split())
    return fields.get("model name") or platform.processor() or "cpu", ident, {f: f in flags for f in CPU_FLAGS}


@functools.cache
def _cpuinfo() -> tuple[str, str | None, dict[str, bool]] | None:
    """`parse_cpuinfo` of this machine, read once per process (every prefill chunk asks)."""
    if not os.path.exists("/proc/cpuinfo"):
        return None
    return parse_cpuinfo(Path("/proc/cpuinfo").read_text())


@functools.cache
def l3_mib(cache_dir: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int | None:
    """The last-level (L3) cache size in MiB, from sysfs, read once per process (every kernel choice asks
    for the machine's key: reading sysfs each time cost ~0.1 ms a decode step); None where it is not told.

    Two Intel Xeon VMs of the same model name and flags had 105 and 480 MiB (the larger holds all of
    SmolLM2-135M's bfloat16 weights) and ran the same code at up to twice the speed (bench/README.md)."""
    for index in sorted(cache_dir.glob("index*")):
        try:
            if (index / "level").read_text().strip() == "3":
                size = (index / "size").read_text().strip()
                scale = {"K": 1 / 1024, "M": 1, "G": 1024}.get(size[-1:], 1 / 2**20)
                return round(float(size.rstrip("KMG")) * scale)
        except (OSError, ValueError):
            return None
    return None


def cpu_facts() -> dict[str, Any]:
    """The CPU model (name, and family/model/stepping where told), the flags that decide kernel speed and the
    L3 size: results move between machine kinds."""
    facts: dict[str, Any] = {"cpu": platform.processor() or "cpu", "cores": os.cpu_count(),
                             "torch_threads": torch.get_num_threads()}
    if (info := _cpuinfo()) is not None:
        facts["cpu"], facts["flags"] = info[0], dict(info[2])
        if info[1] is not None:
            facts["cpu_id"] = info[1]
    if (l3 := l3_mib()) is not None:
        facts["l3_mib"] = l3
    return facts


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX-512 BF16 or AMX). Where it does, eval's
    200-question sweep ran 1.25-2.4x faster in bfloat16 than in float32 (bench/README.md); where it
    does not (AVX2 only), oneDNN has no bfloat16 path and every product would convert."""
    flags = cpu_facts().get("flags", {})
    return bool(flags.get("avx512_bf16") or flags.get("amx_bf16"))


ANSWERS = {"prefill_attention": ("sdpa", "flex"), "dense_attention": ("sdpa", "folded", "grouped", "split")}
CHOICES = (*ANSWERS, "product_plan")  # the measurements a run pins


def pin(choices: dict[str, Any]) -> None:
    """Take `choices` (as `chosen` gave them to an earlier process of a run) over this machine's own answers from
    now on, and start a new record of the choices taken: a resumed evaluation then rounds its rows as the process
    that began it did, whether that one timed the kernels on a busy machine, with another thread count or with
    calibration off. {} unpins. A choice this minirun does not make is passed over (a newer one's); one it makes
    with an answer no kernel gives raises ValueError naming it."""
    for choice, value in choices.items():
        if not is_answer(choice, value):
            raise ValueError(f"{choice}: {value!r} is no kernel's answer")
    _pinned.clear()
    _pinned.update({c: v for c, v in choices.items() if c.partition(" | ")[0] in CHOICES})
    _chosen.clear()


def is_answer(choice: str, value: Any) -> bool:
    """Whether `value` is an answer a kernel gives to `choice` ("name | shape"): a product plan's rows and kernels
    (streaming in compiled graphs only, as `linear.set_plan` runs them), an attention kernel's name. A choice this
    minirun does not make takes anything (a newer one's)."""
    name = choice.partition(" | ")[0]
    if name == "product_plan":
        eager = "compiled=False" in choice
        return isinstance(value, list) and bool(value) and all(
            isinstance(e, list) and len(e) == 2 and type(e[0]) is int and e[0] > 0 and e[1] in KERNELS
            and not (eager and e[1] == "stream") for e in value)
    return name not in ANSWERS or value in ANSWERS[name]


def chosen() -> dict[str, Any]:
    """Every kernel choice taken since the last `pin`, by "name | shape": what a run records to pin them later."""
    return dict(_chosen)


def time_new(allowed: bool) -> None:
    """Whether a choice the cache does not hold may be timed (else it takes the default). Ranks of a sharded run
    timing side by side would each time a busy machine and choose apart, so their table would not be one
    process's: they take what the cache holds, the same for all, and the defaults beyond it."""
    _timing["allowed"] = allowed


def forget() -> None:
    """Drop what this process has read of the calibration cache and any pins, as a new process starts: the next
    `measured` reads the file again (and warns again of a busy machine)."""
    global _told_busy
    _memo.clear()
    _pinned.clear()
    _chosen.clear()
    _timing["allowed"] = True
    _told_busy = False


def enabled() -> bool:
    return os.environ.get("MINIRUN_CALIBRATE", "1") != "0"


def cache_file() -> Path:
    return cache_root() / "calibration.json"


TIMING = "turns"  # how candidates are timed (`race`): answers timed otherwise are measured again


def cpu_name() -> str:
    """The CPU as timings must name it: its model and family/model numbers, kernel flags, L3 size and torch's
    thread count (x2: two threads)."""
    facts = cpu_facts()
    ident = f" ({facts['cpu_id']})" if "cpu_id" in facts else ""
    flags = ",".join(f for f, present in facts.get("flags", {}).items() if present)
    l3 = f" L3 {facts['l3_mib']} MiB" if "l3_mib" in facts else ""
    return f"{facts['cpu']}{ident} [{flags}]{l3} x{facts['torch_threads']}"


def machine_key() -> str:
    """What a measurement is only true for: the CPU (`cpu_name`), torch, and the way it was timed."""
    return f"{cpu_name()} torch {torch.__version__} timed in {TIMING}"


def device_name(device: torch.device) -> str:
    """The machine a timing on `device` was taken on, for results files: the GPU's name or `cpu_name`, and torch."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return f"{name} torch {torch.__version__}"


BUSY = 1.5  # the 1-minute load average per core above which timings are not kept: others hold half the machine


def load_per_core() -> float | None:
    """The 1-minute load average per core this process may run on (None where the system tells none). Timing
    its kernels, the process itself adds up to about one."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return load / cores


_measuring = 0.0  # seconds this process has spent measuring
_told_busy = False


def seconds_measuring() -> float:
    """Seconds this process has spent measuring kernels: a timed run subtracts them, so the first batch that
    meets a new shape does not read as a slow method."""
    return _measuring


def seconds_set_aside() -> float:
    """What a timed run leaves out of its figures, as a later run (or process) spends neither: the seconds this
    process has spent measuring kernels and compiling (`compiled.seconds_compiling`)."""
    return seconds_measuring() + seconds_compiling()


def measured(name: str, shape: dict[str, Any], measure: Callable[[], dict[str, Any]], default: Any) -> Any:
    """The cached `value` of measurement `name` at `shape` on this machine, measuring it once if new; a value
    pinned for it (`pin`) instead, and each one taken kept for `chosen`.

    `measure()` returns {"value": ..., plus the timings behind it}; all of it is written to the cache
    file so a reader can see why a kernel was chosen. An answer timed while other processes loaded the machine
    (`load_per_core` above BUSY) is used by this process only: kept on disk, it would choose for every later one
    (a bfloat16 one-row product timed at 312 ms beside a test suite, 3.5 ms alone, picked the slower kernel).
    """
    choice = f"{name} | " + ", ".join(f"{k}={v}" for k, v in sorted(shape.items()))
    if choice in _pinned:
        value = _pinned[choice]
    elif not enabled():
        value = default
    else:
        value = _cached(f"{machine_key()} | {choice}", measure, default, lambda found: is_answer(choice, found))
    _chosen[choice] = value
    return value


def _cached(key: str, measure: Callable[[], dict[str, Any]], default: Any, valid: Callable[[Any], bool]) -> Any:
    """`measured`'s answer from this process's memo or the cache file, else timed now (or `default` where
    `time_new` forbids it). A cached answer that is no kernel's (a file edited by hand, or written by another
    minirun) is not remembered: a bad file never stops a run."""
    if key in _memo:
        return _memo[key]
    path = cache_file()
    entry = _read_entries(path).get(key)
    if isinstance(entry, dict) and "value" in entry and not valid(entry["value"]):
        entry = None
    if not (isinstance(entry, dict) and "value" in entry) and not _timing["allowed"]:
        return default  # not remembered: once timing is allowed again, this shape is timed
    if not (isinstance(entry, dict) and "value" in entry):
        global _measuring
        start = time.perf_counter()
        entry = {**measure(), "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
        _measuring += time.perf_counter() - start
        load = load_per_core()
        if load is not None:
            entry["load_per_core"] = round(load, 2)
        if load is not None and load > BUSY:
            _tell_busy(load)
        else:
            _save(path, key, entry)
    _memo[key] = entry["value"]
    return _memo[key]


def _tell_busy(load: float) -> None:
    global _told_busy
    if not _told_busy:  # once a process: a model meets dozens of shapes
        log.warning("the machine was busy while kernels were timed (1-minute load %.1f per core): this process "
                    "uses the answers, but they are not saved; a later process measures again", load)
        _told_busy = True


def _save(path: Path, key: str, entry: dict[str, Any]) -> None:
    entries = _read_entries(path)  # again: another process may have added its own answers meanwhile
    entries[key] = entry
    try:
        write_atomic(path, lambda temp: temp.write_text(json.dumps(entries, indent=1, sort_keys=True)))
    except OSError as e:
        log.warning("cannot write the kernel calibration to %s (%s): this process keeps it, the next measures "
                    "again; point MINIRUN_CACHE at a writable folder", path, e.strerror or e)


def _read_entries(path: Path) -> dict[str, Any]:
    """The calibration file's answers; one that cannot be read as them is measured over again, as a missing one is."""
    entries = read_cache(path, "the kernel calibration")
    if entries is not None and not isinstance(entries, dict):
        log.warning("the kernel calibration %s holds no answers (a JSON object): measuring again", path)
    return entries if isinstance(entries, dict) else {}


def median_seconds(fn: Callable[[], Any], repeats: int = 15) -> float:
    """Median wall time of `fn` over `repeats` calls after 3 warm-up calls: robust to a noisy machine."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def race(candidates: dict[str, Callable[[], Any]], repeats: int = 7) -> dict[str, float]:
    """Median wall time (s) of each candidate, timed in turns after 3 warm-up calls each.

    Timing one candidate after another let a few seconds of contention on a shared VM land on one of
    them: a plan measured so on an Intel Xeon VM (every bfloat16 one-row kernel within 10 %) took
    F.linear for the compiled decode step, and the step ran at half the speed of the streaming kernel a
    later measurement picked (bench/README.md). In turns, a slow spell slows every candidate alike."""
    for fn in candidates.values():
        for _ in range(3):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def default_plan(compiled: bool, packable: bool) -> Plan:
    """The product plan without calibration, as measured on AMD EPYC (Zen 4): streaming up to
    STREAM_MAX_ROWS rows when compiled, oneDNN on packed weights (where they may be packed) for the rest."""
    many = "packed" if packable else "library"
    return {STREAM_MAX_ROWS: "stream", STREAM_MAX_ROWS + 1: many} if compiled else {1: many}


def product_plan(weights: list[torch.Tensor], compiled: bool, packable: bool,
                 rows: tuple[int, ...] = PLAN_ROWS) -> Plan:
    """{row count: the fastest kernel} for the products of `weights` (`linear.KERNELS`), timed at every
    count in `rows` the way they run: in one compiled graph over all matrices when `compiled` and the
    count is few enough to stream (where each opaque packed call costs more than eagerly, and the
    stream form fuses), as plain calls otherwise; "packed" only if `packable`.

    `weights` (one dtype, any shapes) should be a decode step's mix of matrices, far larger than the
    L3 cache as in a model: one matrix alone stays cached and times the wrong thing, and one kind
    alone (a model's widest) hides the per-call cost that its many smaller products pay.
    """
    dtype = weights[0].dtype

    def candidates(m: int) -> dict[str, Callable[[dict[int, torch.Tensor]], Any]]:
        ws = [w.detach() for w in weights]
        found: dict[str, Callable[[dict[int, torch.Tensor]], Any]] = {
            "library": lambda xs: [F.linear(xs[w.shape[1]], w) for w in ws]}
        if packable:
            found["packed"] = lambda xs: [packed_linear(xs[w.shape[1]], w, None) for w in ws]
        if compiled and m <= STREAM_ROWS:
            found["stream"] = lambda xs: [stream_product(xs[w.shape[1]], w) for w in ws]
            # one graph each; `* 1` gives the products a producer, as RMSNorm is in a model
            found = {name: torch.compile(lambda xs, fn=fn: fn({k: x * 1 for k, x in xs.items()}), dynamic=False)
                     for name, fn in found.items()}
        return found

    def measure() -> dict[str, Any]:
        times = {}
        with torch.inference_mode():
            for m in rows:
                xs = {k: torch.randn(m, k, dtype=dtype) for k in {w.shape[1] for w in weights}}
                raced = race({name: lambda fn=fn: fn(xs) for name, fn in candidates(m).items()})
                times[m] = {name: round(t * 1e3, 3) for name, t in raced.items()}
        return {"value": [[m, min(t, key=t.get)] for m, t in times.items()], "ms": times}

    if weights[0].device.type != "cpu":
        return {1: "library"}
    shapes = ",".join(sorted({"x".join(map(str, w.shape)) for w in weights}))
    shape = {"dtype": dtype, "matrices": f"{len(weights)} of {shapes}", "compiled": compiled, "packable": packable,
             "rows": ",".join(map(str, rows))}
    return dict(measured("product_plan", shape, measure, [list(e) for e in default_plan(compiled, packable).items()]))


def _bucket(n: int) -> int:
    return 1 << (n - 1).bit_length()


def prefill_attention(dtype: torch.dtype, rows: int, heads: int, kv_heads: int, head_dim: int, queries: int) -> str:
    """"sdpa" or "flex": the faster kernel for a compiled prefill chunk of `queries` tokens per row.

    Timed on the second chunk of a causal prompt: FlexAttention over a cache of four chunks
    (block-sparse), SDPA with the dense mask over the two chunks written so far.
    """
    def measure() -> dict[str, Any]:
        live, slots = 2 * queries, max(4 * queries, flex.BLOCK)
        q = torch.randn(rows, heads, queries, head_dim, dtype=dtype)
        k, v = (torch.randn(rows, kv_heads, slots, head_dim, dtype=dtype) for _ in range(2))

        def causal(b: torch.Tensor, h: torch.Tensor, qi: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
            return kv <= qi + queries

        sparse = flex.block_mask(causal, rows, queries, slots, q.device)
        dense = flex.block_mask(causal, rows, queries, live, q.device)
        with torch.inference_mode():
            times = race({"flex": lambda: flex.attention(q, k, v, sparse),
                          "sdpa": lambda: flex.attention(q, k, v, dense)}, 15)
        return {"value": min(times, key=times.get), "ms": {n: round(t * 1e3, 4) for n, t in times.items()}}

    rows = _bucket(rows)  # measured at the next power of two: few shapes to time
    shape = {"dtype": dtype, "rows": rows, "heads": f"{heads}/{kv_heads}x{head_dim}", "queries": queries}
    return measured("prefill_attention", shape, measure, DEFAULT_PREFILL)


def dense_attention(dtype: torch.dtype, rows: int, heads: int, kv_heads: int, head_dim: int, queries: int,
                    keys: int, shared: int = 0) -> str:
    """"sdpa", "folded", "grouped" or "split" (`flex.folded_attention`, `flex.grouped_attention`,
    `flex.split_attention`): the faster dense attention kernel for this shape, timed at the next power
    of two of rows (at most DENSE_ROWS), queries and keys (few shapes to measure) under a random mask
    that leaves every query its last key, as a decode step or a causal chunk does. With a head of
    `shared` slots common to every row and visible to all (timed at the power of two at or below it,
    and the rows' own slots after it at the power of two at or above theirs), the grouped and split
    kernels read it once for all rows, which SDPA cannot: a long few-shot head moves the answer. The
    two are rounded apart because the kernels pay for them differently: an evaluation's decode step
    over a 129-slot head and ~25 own slots, timed as 128 of 256 keys, took folded SDPA (AMD EPYC Zen 4,
    128 rows: 4.7 vs 5.1 ms for the grouped products) and ran 1.3x slower than with the grouped
    products, which timed at 128 + 32 keys win (3.1 vs 3.8 ms). SDPA's and the grouped kernel's work
    grows in proportion to the rows beyond a few dozen, so wider batches take the answer measured at
    DENSE_ROWS: timing a 256-row prefill shape took ~1 s, and an evaluation's shrinking batches meet
    dozens of shapes on a new machine. Split attention is a candidate for one query per row only (a
    decode step: its merge costs more than it saves over a prompt chunk's queries, 150 rows x 23
    queries on an Intel Xeon: 22 vs 15 ms), timed up to SPLIT_ROWS rows, as its gain grows with them
    (bfloat16, same Xeon: 0.77 vs 0.73 ms at 32 rows, 1.97 vs 2.41 ms at 150; with its own slots
    folded, AMD EPYC Zen 4, 128 rows: 2.41 vs 2.81 ms for the grouped products, 4.06 folded SDPA)."""
    if shared and rows > 1:  # the head and the rows' own slots rounded apart, as their costs differ by kernel
        own, shared = keys - shared, 1 << (shared.bit_length() - 1)
        keys = shared + (_bucket(own) if own > 0 else 0)
    else:
        own, shared, keys = keys, 0, _bucket(keys)
    split = bool(shared) and queries == 1 and own > 0
    rows, queries = min(_bucket(rows), SPLIT_ROWS if split else DENSE_ROWS), _bucket(queries)

    def measure() -> dict[str, Any]:
        q = torch.randn(rows, heads, queries, head_dim, dtype=dtype)
        k, v = (torch.randn(rows, kv_heads, keys, head_dim, dtype=dtype) for _ in range(2))
        mask = torch.rand(rows, 1, queries, keys) < 0.7
        mask[..., :shared] = True
        mask[..., -1] = True
        bias = additive(mask, dtype)  # as `flex.attention` hands SDPA its mask
        folded = flex.fold_bias(mask, heads // kv_heads, dtype)
        candidates = {"sdpa": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True),
                      "folded": lambda: flex.folded_attention(q, k, v, folded),
                      "grouped": lambda: flex.grouped_attention(q, k, v, mask, shared)}
        if split:
            own = flex.split_bias(mask, shared, dtype, heads // kv_heads)
            candidates["split"] = lambda: flex.split_attention(q, k, v, own, shared)
        with torch.inference_mode():
            times = race(candidates)
        return {"value": min(times, key=times.get), "ms": {n: round(t * 1e3, 4) for n, t in times.items()}}

    shape = {"dtype": dtype, "rows": rows, "heads": f"{heads}/{kv_heads}x{head_dim}", "queries": queries, "keys": keys}
    if shared:  # keys of measurements made before shared heads were read once stay valid
        shape["shared"] = shared
    shape["kernels"] = "sdpa,folded,grouped" + (",split" if split else "")  # answers among fewer: measured again
    return measured("dense_attention", shape, measure, DEFAULT_DENSE)
