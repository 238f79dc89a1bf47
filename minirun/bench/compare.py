"""Measurement primitives for `minirun bench` and its reference figures: transformers on the same
files, and GPU copy bandwidth.

transformers is imported here only, lazily: it is a benchmark reference, never a runtime dependency.
"""
from __future__ import annotations

import os
import resource
import statistics
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from minirun.errors import MinirunError

if TYPE_CHECKING:  # the reference, imported only where a comparison runs
    from transformers import PreTrainedModel


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def summarize(values: list[float]) -> tuple[float, list[float]]:
    """Median and [min, max]: the median resists a stray slow repeat, the range shows the noise."""
    return statistics.median(values), [min(values), max(values)]


class PeakMemory:
    """Peak memory of a block in MB: allocator peak on CUDA, sampled RSS on CPU.

    RSS is polled from /proc in a thread (ru_maxrss is a process-wide high-water mark, so it could
    not tell two engines apart in one process); the block is an untimed run, so polling costs no
    accuracy in the timings.
    """

    def __init__(self, device: torch.device):
        self.device, self.mb = device, 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None  # the RSS poller, where /proc has it

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif os.path.exists("/proc/self/statm"):
            self._sample()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        with open("/proc/self/statm") as f:
            self.mb = max(self.mb, int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self._sample()

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()
        else:
            self.mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


Run = Callable[[], dict[str, float]]  # one timed generation: seconds of "prefill", "ttft" and a decode "step"


class Trial:
    """Engines timed side by side. `add` warms an engine up (compilation lands there) and makes its
    untimed memory run; `time` then runs `repeats` rounds over the engines added since the last call,
    each round timing every engine once, in turns. A shared 2-core VM drifts by 10-40 % over minutes
    (bench/README.md): timed one engine after the other, a slow spell lands on one side of a ratio;
    in turns it slows every engine alike. `results` holds each engine's figures, or its error.
    """

    def __init__(self, device: torch.device, repeats: int, warmup: int, prefill_tokens: int, answers_per_step: int):
        self.device, self.repeats, self.warmup = device, repeats, warmup
        self.prefill_tokens, self.answers_per_step = prefill_tokens, answers_per_step
        self.results: dict[str, dict[str, Any]] = {}
        self.rounds: dict[str, list[float]] = {}  # engine -> decode step seconds, probe -> seconds, per timed round
        # name -> (run, fallible, its prefill tokens and answers per step, warm-up s, memory MB)
        self._waiting: dict[str, tuple[Run, bool, tuple[int, int], float, float]] = {}
        self._probes: dict[str, Callable[[], float]] = {}

    def add(self, name: str, run: Run, fallible: bool = False, workload: tuple[int, int] | None = None) -> None:
        """Warm `run` up and measure its memory; with `fallible` (a compiled path, whose failure is a
        finding rather than a bug) an exception is recorded as the engine's error instead of raised.
        `workload` is (prefill tokens, answers per step) of an engine that does other work than the trial's
        (transformers answering each question from one plain prompt, beside an ensemble)."""
        try:
            start = time.perf_counter()
            for _ in range(self.warmup):
                run()
            warmup_s = time.perf_counter() - start
            with PeakMemory(self.device) as peak:
                run()
        except Exception as e:  # noqa: BLE001 - see `fallible`
            if not fallible:
                raise
            self.results[name] = {"error": error_text(e)}
            return
        self._waiting[name] = (run, fallible, workload or (self.prefill_tokens, self.answers_per_step), warmup_s,
                               peak.mb)

    def add_probe(self, name: str, probe: Callable[[], float]) -> None:
        """Time `probe` (it returns the seconds of one measurement) after the engines in every timed round
        of the next `time`: a reference such as the machine's read rate then meets the same slow and fast
        spells as the engines it is compared with (`rounds[name]`)."""
        self._probes[name] = probe

    def time(self) -> None:
        """Time the engines waiting, in turns, and summarise each into `results`.

        With several engines, one untimed round comes first: an engine warmed up before the next one
        was loaded may have to compile again (loading transformers registers pytree node types, and
        torch's compiled graphs guard on their count: minirun's decode step recompiled inside the first
        timed round, a 0.26 s step among 20 ms ones)."""
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in self._waiting}
        for timed in [False] * (len(runs) > 1) + [True] * self.repeats:
            for name in list(runs):
                run, fallible = self._waiting[name][:2]
                try:
                    figures = run()
                except Exception as e:  # noqa: BLE001 - see `add`
                    if not fallible:
                        raise
                    self.results[name] = {"error": error_text(e)}
                    del runs[name]
                    continue
                if timed:
                    runs[name].append(figures)
            if timed:
                for name, probe in self._probes.items():
                    self.rounds.setdefault(name, []).append(probe())
        for name, figures in runs.items():
            self.results[name] = self._summary(figures, *self._waiting[name][2:])
            self.rounds[name] = [f["step"] for f in figures]
        self._waiting.clear()
        self._probes.clear()

    @staticmethod
    def _summary(runs: list[dict[str, float]], workload: tuple[int, int], warmup_s: float,
                 memory_mb: float) -> dict[str, Any]:
        prefill, prefill_spread = summarize([r["prefill"] for r in runs])
        step, step_spread = summarize([r["step"] for r in runs])
        ttft, ttft_spread = summarize([r["ttft"] for r in runs])
        prefill_tokens, answers_per_step = workload
        return {"decode_tokens_per_s": answers_per_step / step, "prefill_tokens_per_s": prefill_tokens / prefill,
                "ms_per_token": step * 1e3, "ttft_s": ttft, "peak_memory_mb": memory_mb, "warmup_s": warmup_s,
                "spread": {"ms_per_token": [s * 1e3 for s in step_spread], "prefill_s": prefill_spread,
                           "ttft_s": ttft_spread}}


def transformers_version() -> str | None:
    """The installed transformers, which every comparison's figures depend on (None where it is absent)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return None


def error_text(e: Exception) -> str:
    """Exception type, its first line and the first compiler `error:` line after it (Inductor dumps whole files)."""
    lines = str(e).splitlines() or [""]
    detail = next((l.strip() for l in lines[1:] if " error: " in l), "")
    return f"{type(e).__name__}: {lines[0]}" + (f" | {detail}" if detail else "")


def hf_run(model: PreTrainedModel, ids: torch.Tensor, new_tokens: int,
           generate_kwargs: dict[str, Any]) -> dict[str, float]:
    """Prefill = one forward over the prompt; ttft and decode steps from a clock stamped as each token's
    logits reach the logits processors, so one generate call gives both (no subtraction of noisy runs)."""
    from transformers import LogitsProcessor, LogitsProcessorList

    class StepClock(LogitsProcessor):
        def __init__(self):
            self.stamps: list[float] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            sync(scores.device)
            self.stamps.append(time.perf_counter())
            return scores

    mask = torch.ones_like(ids)
    pad = model.generation_config.pad_token_id
    clock = StepClock()
    with torch.inference_mode():
        start = time.perf_counter()
        model(ids, attention_mask=mask, logits_to_keep=1)
        sync(ids.device)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=pad if pad is not None else 0,
                             logits_processor=LogitsProcessorList([clock]), **generate_kwargs)
    if out.shape[1] != ids.shape[1] + new_tokens or len(clock.stamps) != new_tokens:
        raise MinirunError(f"transformers generated {out.shape[1] - ids.shape[1]} tokens instead of {new_tokens}")
    first, last = clock.stamps[0], clock.stamps[-1]
    return {"prefill": prefill, "ttft": first - start, "step": (last - first) / (new_tokens - 1)}


def add_transformers(trial: Trial, path: Path, dtype: torch.dtype, device: str, prompts: list[list[int]],
                     new_tokens: int, compile: bool) -> str:
    """Enter `transformers` (generate with its default attention and dynamic cache) in `trial`, and with
    `compile` also `transformers_static` (static cache + torch.compile(forward, mode="reduce-overhead");
    a failure is recorded as its error). Returns the attention implementation transformers chose.

    On a GPU, generate with a static cache compiles its decoding forward itself (CUDA graphs, marking
    each step), so the eager forward stays: a forward compiled here as well had its CUDA-graph outputs
    overwritten by the next step while generate still held them (an H200, torch 2.11, transformers
    5.17). On CPU, where generate compiles nothing, the compiled forward is swapped in for its runs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    ids = torch.tensor(prompts, device=device)
    plain = (sum(map(len, prompts)), len(prompts))  # one prompt per question, whatever minirun's method
    trial.add("transformers", lambda: hf_run(model, ids, new_tokens, {}), workload=plain)
    if compile and torch.device(device).type != "cpu":
        trial.add("transformers_static", lambda: hf_run(model, ids, new_tokens, {"cache_implementation": "static"}),
                  fallible=True, workload=plain)
    elif compile:
        compiled = torch.compile(model.forward, mode="reduce-overhead")

        def static() -> dict[str, float]:
            model.forward = compiled
            try:
                return hf_run(model, ids, new_tokens, {"cache_implementation": "static"})
            finally:
                del model.forward  # the class's eager forward again, for the other engine's turn

        trial.add("transformers_static", static, fallible=True, workload=plain)
    return model.config._attn_implementation


def bandwidth(model: torch.nn.Module, steps_s: list[float], read_rates: dict[str, list[float]]) -> dict[str, Any]:
    """How close decode runs to memory bandwidth: weight bytes read per step ÷ step time ÷ the
    machine's measured bandwidth (CUDA: a 1 GiB copy, read + write; CPU: `torch.sum` over 512 MiB of
    float32, a pure read, as decode is).

    A decode step reads every weight once (the embedding table only when it doubles as lm_head);
    the KV cache read is left out (the issue's definition), so the fraction understates the bytes a step
    moves: ~2 % for SmolLM2-135M at batch 1 after a 128-token prompt, ~37 % at batch 8 after 512 tokens,
    so fractions of different batch sizes or contexts are not comparable. `weight_bytes_per_token` is per
    step, whatever the batch. On
    CPU a model of another dtype also gets `dtype_read_gb_s`, the same sum over its own dtype, and the
    fraction of that: a reduction that converts every element reads slower (bfloat16 on an Intel
    Xeon: ~17 against ~24 GB/s), which no weight-reading kernel of that dtype outruns.

    `steps_s` are the decode step's seconds, one per timed round; on CPU `read_rates` (GB/s by dtype
    name: "float32" and the model's) come from `ReadProbe`s timed in those same rounds
    (`Trial.add_probe`): each round's fraction is its step's rate over its own sum's, and the figure is
    their median. A shared VM's read rate moves by up to 2x within minutes (31-61 GB/s on an AMD EPYC),
    so a best-of sum taken apart from the steps said more about the moment it ran than about the steps.
    """
    config = model.config
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if not config.tie_word_embeddings:
        weight_bytes -= model.embed.weight.numel() * model.embed.weight.element_size()
    achieved = [weight_bytes / s / 1e9 for s in steps_s]
    result: dict[str, Any] = {"weight_bytes_per_token": weight_bytes, "achieved_gb_s": statistics.median(achieved),
                              "achieved_gb_s_rounds": achieved}
    if model.device.type == "cuda":
        measured = _copy_gb_s(model.device)
        return result | {"copy_gb_s": measured, "bandwidth_fraction": result["achieved_gb_s"] / measured}
    dtype = str(model.embed.weight.dtype).removeprefix("torch.")
    result["reference"] = "torch.sum over 512 MiB, timed in turns with the decode steps; median of the rounds' fractions"
    for name, prefix in [("float32", ""), (dtype, "dtype_")] if dtype != "float32" else [("float32", "")]:
        rates = read_rates[name]
        result[f"{prefix}read_gb_s"] = statistics.median(rates)
        result[f"{prefix}read_gb_s_rounds"] = rates
        result[f"{prefix}bandwidth_fraction"] = statistics.median(a / r for a, r in zip(achieved, rates))
    return result


def _copy_gb_s(device: torch.device) -> float:
    src = torch.empty(2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    copies = 10
    start = time.perf_counter()
    for _ in range(copies):
        dst.copy_(src)
    sync(device)
    return 2 * src.numel() * copies / (time.perf_counter() - start) / 1e9  # each copy reads and writes


class ReadProbe:
    """CPU read bandwidth: the median of `SUMS` `torch.sum`s over 512 MiB of `dtype` (beyond most caches) a call.
    One sum (~16 ms) was a single sample a preempted VM could slow 3-5x (7.3 and 11.8 GB/s among 33-50 in one
    float32 run on an AMD EPYC, which put the median fraction at 1.17); five cost ~0.1 s a round. The buffer is
    made at the first call, so the engines' memory runs (`Trial.add`, before any timed round) never count it."""

    BYTES = 512 * 2**20
    SUMS = 5

    def __init__(self, dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.data: torch.Tensor | None = None

    def __call__(self) -> float:
        """Seconds of one sum, the median of `SUMS`."""
        if self.data is None:
            self.data = torch.ones(self.BYTES // torch.finfo(self.dtype).bits * 8, dtype=self.dtype)
            self.data.sum()  # pages touched before any timing
        return statistics.median(_timed(self.data.sum) for _ in range(self.SUMS))

    def gb_s(self, seconds: float) -> float:
        return self.BYTES / seconds / 1e9


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
