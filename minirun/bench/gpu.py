"""Every GPU check in one command: `python -m minirun.bench.gpu --out DIR` (or `bench/gpu.sh`).

Correctness first (logits against transformers in float32 and bfloat16 for llama, mistral, qwen2
and qwen3; compiled == eager tokens for every method at batch 1 and 8; no recompilation across five
question lengths; host syncs counted with the profiler), then speed (`run_bench` on the
Llama-3.2-1B and SmolLM2-135M shapes, batch 1 and 8, against transformers; every method at 5
paraphrases) and an eval-like sweep (questions × 6 prompts, 10-token answers) in items/s. Each
section writes one JSON under DIR naming the device, driver, torch and dtype, rewritten as each of
its entries lands (a call cut off by a time limit keeps what finished); a failed entry or section
records its error and the others still run. `--quick` shrinks every size so a CPU can dry-run it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Callable

import torch

from minirun.bench.compare import error_text, sync, transformers_version
from minirun.bench.run import IdTokenizer, random_checkpoint_dir, run_bench, workload
from minirun.checkpoints.loader import load_model
from minirun.checkpoints.random import SHAPES
from minirun.engine.llm import LLM
from minirun.engine.session import STEP_GRAPHS, set_step_graphs, step_graphs
from minirun.errors import MinirunError
from minirun.layers import flex
from minirun.layers.calibrate import cpu_facts
from minirun.layers.compiled import refused_shapes
from minirun.layers.linear import device_stream_rows, set_device_stream_rows
from minirun.methods import METHODS, EnsembleOptions, run_encoded
from minirun.paths import write_atomic

PARITY = {"llama": "llama-3.2-1b", "mistral": "mistral-7b", "qwen2": "qwen2.5-0.5b", "qwen3": "qwen3-0.6b"}
SMALL = dict(num_hidden_layers=2)  # the families' real widths, two blocks: parity is per block
TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            head_dim=16, vocab_size=256)
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}  # bf16: relative to the logit scale, as transformers' tests allow
SECTION_DTYPES = {"parity": "float32 and bfloat16", "compiled": "float32"}  # the others' are bfloat16
TARGETED = ("avg", "max", "hidden_avg", "flex")  # the methods the issue sets answer-rate targets for
SECTIONS = ("parity", "recompiles", "host_syncs", "launches", "compiled", "speed", "sweep")  # the order they run in: quick checks first


def machine(device: torch.device, dtype: str) -> dict[str, Any]:
    """What a results file names: the device it ran on (a CPU dry run says so), torch, transformers and the dtype,
    the host CPU, and on CUDA the GPU, CUDA and driver versions."""
    facts = {"device": str(device), "torch": torch.__version__, "transformers": transformers_version(),
             "dtype": dtype, "host": cpu_facts()}
    if device.type == "cuda":
        facts |= {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
                  "driver": _driver()}
    return facts


def _driver() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Progress(dict):
    """A section's entries, each written to the section's JSON file (marked `partial`) as it lands: a
    device call cut off at its time limit still brings back every entry that finished."""

    def __init__(self, path: Path | None = None, facts: dict | None = None):
        super().__init__()
        self.path, self.facts = path, facts or {}

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        if self.path is not None:
            partial = {"ok": None, "partial": True, "result": dict(self), **self.facts}
            write_atomic(self.path, lambda temp: temp.write_text(json.dumps(partial, indent=2, default=str) + "\n"))


def attempt(run: Callable[[], Any]) -> Any:
    """`run()`, or its error as a failed check: one entry's failure (a method's compile, a CUDA error)
    must not take the rest of its section's figures with it, as device time is scarce."""
    try:
        return run()
    except Exception as e:  # noqa: BLE001 - recorded as a finding; the section's other entries still run
        return {"ok": False, "error": error_text(e)}


def parity(device: torch.device, shape: dict, out: dict | None = None) -> dict[str, Any]:
    """Max logit difference minirun vs transformers on random tokens, per family and dtype, into `out`.

    The checkpoints go to minirun's cache (`random_checkpoint_dir`), never under the results folder:
    the device tool brings back only a few small files from there (Llama's float32 embedding is 1 GB)."""
    out = {} if out is None else out
    for family, name in PARITY.items():
        path = random_checkpoint_dir(name, "float32", **shape)
        tokens = torch.randint(3, 250, (2, 48), generator=torch.Generator().manual_seed(0)).to(device)
        for dtype, tolerance in TOLERANCE.items():
            out[f"{family}-{dtype}"] = attempt(lambda: logit_parity(path, device, dtype, tolerance, tokens))
    return out


def logit_parity(path: Path, device: torch.device, dtype: str, tolerance: float, tokens: torch.Tensor) -> dict:
    """One family and dtype: minirun's logits against transformers' on the same checkpoint and tokens."""
    from transformers import AutoModelForCausalLM

    ours = load_model(path, device, dtype)
    theirs = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device).eval()
    with torch.inference_mode():
        expected, got = theirs(tokens).logits.float(), ours(tokens).float()
    diff = (expected - got).abs().max().item()
    bound = tolerance * (expected.abs().max().item() if dtype == "bfloat16" else 1.0)
    return {"max_abs_diff": diff, "bound": bound, "ok": diff <= bound}


def llm_for(path: Path, device: torch.device, dtype: str) -> LLM:
    return LLM(load_model(path, device, dtype), IdTokenizer(), path)


def compiled_vs_eager(llm: LLM, batches: tuple[int, ...], new_tokens: int, out: dict | None = None) -> dict[str, Any]:
    """Greedy tokens of every method, eager and compiled (CUDA graphs on GPU), must be equal; into `out`.

    Run in float32, as the CPU tests are: in bfloat16 compiled kernels round differently from eager
    ones (Inductor keeps fused intermediates in float32, FlexAttention against SDPA), and at a real
    vocabulary's width the top two logits of random weights sit closer than bfloat16's step, so
    greedy tokens would part over chance ties, not bugs."""
    out = {} if out is None else out
    for method in by_priority(METHODS):
        for batch in batches:
            encoded = workload(method, batch, 5, 40, llm.config.vocab_size)
            options = EnsembleOptions(max_new_tokens=new_tokens, ignore_eos=True,
                                      confidences=[[1.0] * len(e.paraphrases) for e in encoded])
            out[f"{method}-batch{batch}"] = attempt(lambda: eager_against_compiled(llm, method, encoded, options))
    return out


def eager_against_compiled(llm: LLM, method: str, encoded: list, options: EnsembleOptions) -> dict[str, Any]:
    """`equal`: whether `method`'s greedy tokens are the same eager and compiled; `answers_equal`: how
    many answers agree (where they part, a first difference late in an answer reads as a near tie, an
    early one in every answer as a bug); eager again afterwards."""
    runs = []
    try:
        for compiled in (False, True):
            flex.set_compiled(compiled)
            # every prompt's answer where the method keeps them (per_prompt, vote), not only the one it shows
            results = run_encoded(llm, method, encoded, options)
            runs.append([ids for r in results for ids in r.answer_token_ids or [r.token_ids]])
    finally:
        flex.set_compiled(False)
    parted = [next((i for i, (a, b) in enumerate(zip(e, c)) if a != b), None) for e, c in zip(*runs)]
    return {"equal": runs[0] == runs[1], "answers_equal": f"{parted.count(None)}/{len(parted)}",
            "first_difference_at": [i for i in parted if i is not None]}


def recompiles(llm: LLM, new_tokens: int) -> dict[str, Any]:
    """Graphs compiled for five prompt lengths after a warm-up on the longest: must be none.

    The packed lengths (234–314 tokens) share one cache bucket and the longest needs every
    prefill chunk size the others do, so any new graph is a real recompile."""
    from torch._dynamo.utils import counters

    flex.set_compiled(True)
    try:
        options = EnsembleOptions(max_new_tokens=new_tokens, ignore_eos=True)
        lengths = (66, 50, 54, 58, 62)
        for n in lengths:
            if n == lengths[1]:
                before = counters["stats"]["unique_graphs"]
            run_encoded(llm, "flex", workload("flex", 1, 5, n, llm.config.vocab_size), options)
        new = counters["stats"]["unique_graphs"] - before
        return {"lengths": lengths, "new_graphs_after_warmup": new, "ok": new == 0}
    finally:
        flex.set_compiled(False)


SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::item", "aten::_local_scalar_dense")
LAUNCHES = {"graph_launches": ("cudaGraphLaunch",), "kernel_launches": ("cudaLaunchKernel", "cuLaunchKernel",
                                                                      "cuLaunchKernelEx")}


def per_step_counts(llm: LLM, method: str, new_tokens: int, names: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """Profiler event counts per compiled decode step: two generations of `new_tokens` and
    2 × `new_tokens` tokens, their difference divided by the extra steps, so prefill and set-up
    cancel out. `names` maps a label to the event names it counts; `gpu_kernels` is always added,
    with where a step's time goes on the GPU (`step_time`)."""
    flex.set_compiled(True)
    try:
        encoded = workload(method, 1, 5, 64, llm.config.vocab_size)
        counts, kernels, walls, hosts = [], [], [], []
        for n in (new_tokens, 2 * new_tokens):
            options = EnsembleOptions(max_new_tokens=n, ignore_eos=True)
            run_encoded(llm, method, encoded, options)  # compile outside the profile
            with torch.profiler.profile() as prof:
                start = time.perf_counter()
                run_encoded(llm, method, encoded, options)
                sync(llm.device)
                walls.append(time.perf_counter() - start)
            events = prof.events()
            count = {label: sum(e.name in group for e in events) for label, group in names.items()}
            count["gpu_kernels"] = sum(e.device_type == torch.autograd.DeviceType.CUDA for e in events)
            counts.append(count)
            kernels.append(device_time_by_name(events))
            hosts.append(host_step_us(events))
        return {"method": method, "new_tokens": [new_tokens, 2 * new_tokens], "counts": counts,
                "per_step": {k: (counts[1][k] - counts[0][k]) / new_tokens for k in counts[0]},
                "step_time": step_time(kernels[0], kernels[1], walls[1] - walls[0], new_tokens) | {"host_us": hosts[1]}}
    finally:
        flex.set_compiled(False)


def device_time_by_name(events: list) -> dict[str, list[float]]:
    """[count, total µs] of the profiler's GPU events (kernels, copies) per name."""
    out: dict[str, list[float]] = {}
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            entry = out.setdefault(e.name, [0, 0.0])
            entry[0] += 1
            entry[1] += e.time_range.elapsed_us()
    return out


def host_step_us(events: list) -> float | None:
    """The host's time to issue one decode step: the median gap between consecutive `cudaGraphLaunch` calls
    (the gaps that hold the every-8-steps stop check's wait are outliers the median drops). Where it is near
    the step's GPU busy time, the step is host-bound and the GPU idles; None without graph launches (CPU)."""
    starts = sorted(e.time_range.start for e in events if e.name == "cudaGraphLaunch")
    return statistics.median(b - a for a, b in zip(starts, starts[1:])) if len(starts) > 2 else None


def step_time(short: dict[str, list[float]], long: dict[str, list[float]], extra_s: float, steps: int,
              top: int = 12) -> dict[str, Any]:
    """Where a decode step's time goes, from the GPU events of a generation `steps` tokens shorter than
    another (`extra_s` seconds shorter): the wall time a step, the time kernels ran (`gpu_busy_us`: the
    rest is gaps between kernels, launch-bound where it is large), and the `top` kernels by time, with
    their count a step. Profiled, so the wall time carries the profiler's own cost."""
    per_step = {name: [(long[name][0] - short.get(name, [0, 0.0])[0]) / steps,
                       (long[name][1] - short.get(name, [0, 0.0])[1]) / steps] for name in long}
    ranked = sorted(per_step.items(), key=lambda item: -item[1][1])[:top]
    return {"wall_us": extra_s / steps * 1e6, "gpu_busy_us": sum(us for _, us in per_step.values()),
            "kernels": [{"name": name[:120], "per_step": count, "us": us} for name, (count, us) in ranked]}


def host_syncs(llm: LLM, new_tokens: int) -> dict[str, Any]:
    """Synchronising calls per decode step of a compiled avg generation: at most the stop check's,
    one in 8 steps on CUDA. No verdict where the profiler saw no CUDA activity at all (no launch, no
    kernel: a sandbox without CUPTI), as zero syncs would then prove nothing."""
    out = per_step_counts(llm, "avg", new_tokens, {name: (name,) for name in SYNCS} | LAUNCHES)
    syncs = out["per_step"]["cudaStreamSynchronize"] + out["per_step"]["cudaDeviceSynchronize"]
    seen = all(c["gpu_kernels"] + c["graph_launches"] + c["kernel_launches"] > 0 for c in out["counts"])
    out["profiler_saw_cuda"] = seen
    out["ok"] = syncs <= 1 / 8 + 1e-9 if llm.device.type == "cuda" and seen else None
    return out


def launches(llm: LLM, new_tokens: int) -> dict[str, Any]:
    """Launches per compiled decode step of origin: on CUDA the whole step must be one graph replay
    (one `cudaGraphLaunch`, no loose kernel launch); `gpu_kernels` is the kernels that replay runs.
    With torch.compile's graph trees (the default) the token choice (argmax), its write into the answers
    and the next positions are eager operations beside the replay (3 launches a step on an H200), so
    this fails there; with `--step-graphs captured` a greedy step is one recording of all of them
    (`engine.generate.record_loop_step`). `model_step_is_one_replay` tells the model's part apart."""
    out = per_step_counts(llm, "origin", new_tokens, LAUNCHES)
    steps = out["per_step"]
    cuda = llm.device.type == "cuda"
    out["model_step_is_one_replay"] = steps["graph_launches"] == 1 if cuda else None
    out["ok"] = steps["graph_launches"] == 1 and steps["kernel_launches"] == 0 if cuda else None
    return out


def by_priority(methods: tuple[str, ...]) -> list[str]:
    """origin, then the methods with targets, then the rest: the order a time-limited call measures them in."""
    return sorted(methods, key=lambda m: (m != "origin", m not in TARGETED))


def speed_plan(shapes: tuple[str, ...], batches: tuple[int, ...]) -> list[tuple[str, str, int]]:
    """(shape, method, batch) in the order the targets need them, so a call cut off at its time limit
    has measured the first shape's origin against transformers at batch 1 (the 10x and bandwidth
    targets), the second's (one replay a step), the targeted methods at 5 paraphrases, and only then
    the wider batches and the other methods."""
    first, *others = shapes
    plan = [(shape, "origin", batches[0]) for shape in shapes]
    plan += [(first, method, batches[0]) for method in TARGETED]
    plan += [(shape, "origin", batch) for batch in batches[1:] for shape in shapes]
    plan += [(first, method, batches[0]) for method in by_priority(METHODS)[1 + len(TARGETED):]]
    plan += [(shape, method, batches[0]) for shape in others for method in by_priority(METHODS)[1:]]
    return plan


def speed_key(shape: str, method: str, batch: int) -> str:
    """An entry's name in `gpu-speed.json`, and what `--speed-entries` patterns match."""
    return f"{shape}-origin-batch{batch}" if method == "origin" else f"{shape}-{method}-5"


def speed(device: str, shapes: tuple[str, ...], batches: tuple[int, ...], overrides: dict, quick: bool,
          out: dict | None = None, only: tuple[str, ...] = (), compare: str = "transformers") -> dict:
    """`run_bench` by `speed_plan`: origin against `compare` (transformers; with "captured" also minirun's
    recorded steps, timed in turns with it) at each batch, every other method at 5 paraphrases (batch 1),
    into `out`; with `only` (shell patterns), just the entries they match, so a later device call measures
    what an earlier one did not reach."""
    out = {} if out is None else out
    settings = dict(new_tokens=8, repeats=2, prompt_tokens=40) if quick else {}
    for shape, method, batch in speed_plan(shapes, batches):
        key = speed_key(shape, method, batch)
        if only and not any(fnmatch(key, pattern) for pattern in only):
            continue
        path = random_checkpoint_dir(shape, "bfloat16", **overrides)
        if method == "origin":
            out[key] = attempt(lambda: run_bench(model=str(path), batch=batch, dtype="bfloat16", device=device,
                                                 compare=compare, **settings))
        else:
            out[key] = attempt(lambda: run_bench(model=str(path), method=method, dtype="bfloat16", device=device,
                                                 **settings))
        if "error" not in out[key]:  # run on the random checkpoint's directory: say which shape it was
            out[key].update(model=shape, random_weights=True)
    return out


SWEEP_METHODS = ("origin", "avg", "max", "hidden_avg", "flex")
SWEEP_LIMIT_S = 600  # the bound on the 2,000-question sweep of five methods


def sweep_method(llm: LLM, method: str, questions: int, batch: int, new_tokens: int,
                 seconds: float | None = None) -> dict[str, Any]:
    """One method's items/s: a warm-up batch (the compiles, timed apart), then batches of `batch` questions
    until `questions` are done or `seconds` have passed, median time; `projected_s` is `questions` at that
    rate plus the warm-up, what the whole sweep of this method would take."""
    encoded = workload(method, batch, 6, 96, llm.config.vocab_size)
    options = EnsembleOptions(max_new_tokens=new_tokens, ignore_eos=True)
    start = time.perf_counter()
    run_encoded(llm, method, encoded, options)
    sync(llm.device)
    warmup_s = time.perf_counter() - start
    times: list[float] = []
    while len(times) < max(1, questions // batch) and (seconds is None or not times or sum(times) < seconds):
        start = time.perf_counter()
        run_encoded(llm, method, encoded, options)
        sync(llm.device)
        times.append(time.perf_counter() - start)
    rate = batch / statistics.median(times)
    return {"items_per_s": rate, "seconds": sum(times), "questions": batch * len(times), "batch": batch,
            "warmup_s": warmup_s, "projected_s": warmup_s + questions / rate}


def eval_sweep(llm: LLM, questions: int, batch: int, new_tokens: int, seconds: float | None = None,
               out: dict | None = None, methods: tuple[str, ...] = SWEEP_METHODS, compiled: bool = True) -> dict[str, Any]:
    """Items/s of an eval-like sweep: `questions` × 6 prompts, `new_tokens`-token answers, compiled (or
    eager, as `eval` runs by default, with `compiled` False: the two rates and the compiled warm-up decide
    eval's default on a GPU), into `out`. With `seconds`, each method times batches for about that long
    and projects the whole sweep (a device call has 10 minutes, the whole sweep up to 10 by itself);
    `methods` picks some of the five (one a previous call did not reach); `total` once all five ran: their
    projected time, `ok` if within SWEEP_LIMIT_S."""
    flex.set_compiled(compiled)
    out = {} if out is None else out
    try:
        for method in methods:
            out[method] = attempt(lambda: sweep_method(llm, method, questions, batch, new_tokens, seconds)
                                  | {"compiled": compiled})
    finally:
        flex.set_compiled(False)
    projected = [out[m].get("projected_s") for m in SWEEP_METHODS if m in out]
    if len(projected) == len(SWEEP_METHODS) and None not in projected:
        out["total"] = {"projected_s": sum(projected), "limit_s": SWEEP_LIMIT_S, "ok": sum(projected) <= SWEEP_LIMIT_S}
    return out


def failed_checks(result: Any, where: str = "") -> list[str]:
    """Paths of every check in a section's result that came out false (`ok` or `equal` is False;
    None means the check does not apply on this device)."""
    if not isinstance(result, dict):
        return []
    failed = [where or "result" for key in ("ok", "equal") if result.get(key) is False]
    return failed + [f for key, value in result.items() for f in failed_checks(value, f"{where}/{key}".lstrip("/"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the JSON results")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a dry run that also works on CPU")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)}, run in that order (split a run "
                             "across calls that each have a time limit)")
    parser.add_argument("--sweep-seconds", type=float, default=None,
                        help="time each sweep method for about this long and project the 2,000 questions from its "
                             "rate (default: run them all)")
    parser.add_argument("--sweep-methods", default=",".join(SWEEP_METHODS),
                        help=f"comma-separated subset of {','.join(SWEEP_METHODS)} for the sweep (default: all five)")
    parser.add_argument("--speed-entries", default="",
                        help="comma-separated shell patterns of speed entries to run, e.g. 'llama-3.2-1b-*-5,"
                             "smollm2-135m-origin-batch1' (default: all, in the order the targets need them)")
    parser.add_argument("--sweep-batch", type=int, default=None,
                        help="questions a sweep batch (default 64; --quick 8): where eval's default on a GPU is "
                             "measured against wider batches")
    parser.add_argument("--sweep-eager", action="store_true",
                        help="run the sweep eager, as eval does by default (default: compiled)")
    parser.add_argument("--launches-shape", default="smollm2-135m",
                        help="random-weight shape whose decode step `launches` profiles (default smollm2-135m, the "
                             "launch-bound one the one-replay target names; llama-3.2-1b shows the 1B step's split)")
    parser.add_argument("--step-graphs", default="trees", choices=STEP_GRAPHS,
                        help="how compiled decode steps become CUDA graphs: torch.compile's graph trees (default) "
                             "or recorded once per session and replayed (engine.session.set_step_graphs)")
    parser.add_argument("--speed-compare", default="transformers",
                        help="what `speed` times origin against: transformers, and with 'transformers,captured' also "
                             "minirun with its decode steps recorded by the session, in turns in one process")
    parser.add_argument("--stream-rows", type=int, default=0,
                        help="compiled products of at most this many rows run as Inductor's own reduction instead "
                             "of cuBLAS (layers.linear.set_device_stream_rows; default 0: cuBLAS for all)")
    args = parser.parse_args(argv)
    if args.sweep_batch is not None and args.sweep_batch < 1:
        raise MinirunError(f"--sweep-batch must be 1 or more questions, not {args.sweep_batch}")
    if args.stream_rows < 0:
        raise MinirunError(f"--stream-rows must be 0 or more, not {args.stream_rows}: 0 keeps cuBLAS for every product")
    chosen = [name.strip() for name in args.sections.split(",") if name.strip()]
    if unknown := [name for name in chosen if name not in SECTIONS]:
        raise MinirunError(f"unknown --sections {', '.join(unknown)}: choose from {', '.join(SECTIONS)}")
    sweep_methods = tuple(m.strip() for m in args.sweep_methods.split(",") if m.strip())
    if unknown := [m for m in sweep_methods if m not in SWEEP_METHODS]:
        raise MinirunError(f"unknown --sweep-methods {', '.join(unknown)}: choose from {', '.join(SWEEP_METHODS)}")
    if args.launches_shape not in SHAPES:
        raise MinirunError(f"unknown --launches-shape {args.launches_shape}: choose from {', '.join(SHAPES)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MinirunError("no CUDA GPU is visible: run this on the GPU machine, or pass --device cpu --quick "
                           "for a dry run")
    if device.type != "cuda" and not args.quick:
        raise MinirunError("full-size checks need a GPU: pass --device cuda, or --quick for a CPU dry run")
    args.out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":  # the profiler set up before any CUDA graph exists: graphs made earlier and replayed
        with torch.profiler.profile():  # under it have failed to profile (pytorch/pytorch#100441, its workaround)
            pass
    os.environ.setdefault("MINIRUN_RECOMPILE_LIMIT", "256")  # many shapes on purpose: every method, 2 batches, 2 models
    shape = TINY if args.quick else SMALL
    overrides = TINY if args.quick else {}
    new_tokens = 6 if args.quick else 24
    path = random_checkpoint_dir("llama-3.2-1b", "bfloat16", **overrides)
    sections: dict[str, Callable[[Progress], Any]] = {  # each gets its Progress to fill, where it has entries
        "parity": lambda out: parity(device, shape, out),
        "compiled": lambda out: compiled_vs_eager(llm_for(path, device, "float32"), (1, 8), new_tokens, out),
        "recompiles": lambda out: recompiles(llm_for(path, device, "bfloat16"), new_tokens),
        "host_syncs": lambda out: host_syncs(llm_for(path, device, "bfloat16"), new_tokens),
        "launches": lambda out: launches(llm_for(random_checkpoint_dir(args.launches_shape, "bfloat16", **overrides),
                                                 device, "bfloat16"), new_tokens),
        "speed": lambda out: speed(args.device, ("llama-3.2-1b", "smollm2-135m"), (1, 8), overrides, args.quick, out,
                                   tuple(p.strip() for p in args.speed_entries.split(",") if p.strip()),
                                   args.speed_compare),
        "sweep": lambda out: eval_sweep(llm_for(path, device, "bfloat16"), 16 if args.quick else 2000,
                                        args.sweep_batch or (8 if args.quick else 64), 10, args.sweep_seconds, out,
                                        sweep_methods,
                                        compiled=not args.sweep_eager),
    }
    previous_graphs, previous_rows = step_graphs(), device_stream_rows()
    set_step_graphs(args.step_graphs)
    set_device_stream_rows(args.stream_rows)
    facts = machine(device, "bfloat16") | {"step_graphs": args.step_graphs, "stream_rows": args.stream_rows}
    try:
        for name in chosen:
            facts["dtype"] = SECTION_DTYPES.get(name, "bfloat16")
            start, refused = time.perf_counter(), refused_shapes()
            try:
                checked = sections[name](Progress(args.out / f"gpu-{name}.json", facts))
                result = {"ok": True, "result": checked, "failed_checks": failed_checks(checked)}
            except Exception as e:  # noqa: BLE001 - a failing check is a finding to record; the others still run
                result = {"ok": False, "error": error_text(e)}
            if uncompiled := {k: n - refused.get(k, 0) for k, n in refused_shapes().items() if n > refused.get(k, 0)}:
                result["uncompiled"] = uncompiled  # shapes past MINIRUN_RECOMPILE_LIMIT ran eagerly: not what was asked
                result.setdefault("failed_checks", []).append("uncompiled")
            result |= {"seconds": time.perf_counter() - start, **facts}
            write_atomic(args.out / f"gpu-{name}.json",
                         lambda temp: temp.write_text(json.dumps(result, indent=2, default=str) + "\n"))
            if not result["ok"]:
                verdict = result["error"]
            else:
                verdict = "FAILED " + ", ".join(result["failed_checks"]) if result["failed_checks"] else "ok"
            print(f"{name}: {verdict} ({result['seconds']:.0f} s)", flush=True)
    finally:
        set_step_graphs(previous_graphs)
        set_device_stream_rows(previous_rows)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except MinirunError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
