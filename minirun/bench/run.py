"""The benchmark behind `minirun bench`: prefill/decode speed, time to first token, peak memory.

Every method runs its real path (`methods.run_encoded`) on random token ids, so the figures are what
a user's query costs, not what a stripped-down loop could reach. Session hooks passed in stamp the
clock when prefill ends and when a decode step starts; nothing else is replaced.
"""
from __future__ import annotations

import gc
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from minirun.bench.compare import ReadProbe, Trial, bandwidth, sync, transformers_version
from minirun.checkpoints.loader import auto_device, load_model
from minirun.engine.generate import plain_row, stack_rows
from minirun.engine.llm import LLM
from minirun.engine.session import Hooks, set_step_graphs, step_graphs
from minirun.errors import MinirunError
from minirun.layers import flex
from minirun.layers.calibrate import cpu_facts, device_name
from minirun.methods import METHODS, EnsembleOptions, run_encoded
from minirun.methods.names import WEIGHTED
from minirun.methods.packing import Encoded, packed_row
from minirun.paths import cache_root, write_atomic

if TYPE_CHECKING:
    from rich.table import Table

TAIL_TOKENS = 4  # a shared suffix, like a chat template's generation prompt; flex needs one
COMPARES = ("transformers", "eager", "captured")


class IdTokenizer:
    """Stand-in for checkpoints without tokenizer files: ids in, no text out (the stopper never fires)."""

    eos_token_id = pad_token_id = chat_template = None

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return ""

    def special_id(self, text: str) -> int | None:
        return None


def clock_hooks(marks: dict[str, float], device: torch.device) -> Hooks:
    """Hooks that stamp `marks["prefill"]` when a prefill is done (synchronised) and
    `marks["first_decode"]` when the first decode step begins."""
    def after_prefill() -> None:
        sync(device)
        marks["prefill"] = time.perf_counter()

    return Hooks(after_prefill=after_prefill, before_decode=lambda: marks.setdefault("first_decode", time.perf_counter()))


def random_checkpoint_dir(shape: str, dtype: str, **overrides: Any) -> Path:
    """A random checkpoint of `shape` (config `overrides` applied), written once under
    $MINIRUN_CACHE and reused (0.5 GB+ each at full size). Written beside it and renamed into place;
    a process that finds another one's finished first keeps that one, and one interrupted leaves
    nothing behind (a cut-short Llama-3.2-1B is 2.4 GB no later run would ever reuse or remove)."""
    from minirun.checkpoints.random import random_checkpoint

    root = cache_root() / "random"
    name = f"{shape}-{dtype}" + "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
    out = root / name
    if not (out / "model.safetensors").is_file():
        tmp = root / f".{name}.{os.getpid()}"
        try:
            random_checkpoint(shape, tmp, dtype=dtype, **overrides)
            tmp.rename(out)
        except OSError:
            if not (out / "model.safetensors").is_file():  # not another process's rename first: a real failure
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def workload(method: str, batch: int, num_paraphrases: int, prompt_tokens: int, vocab: int, seed: int = 0) -> list[Encoded]:
    """Per question: N paraphrases (1 for origin) of random ids + a shared tail; each full prompt is prompt_tokens long."""
    if prompt_tokens <= TAIL_TOKENS:
        raise MinirunError(f"--prompt-tokens must exceed {TAIL_TOKENS} (the shared suffix)")
    g = torch.Generator().manual_seed(seed)
    n = 1 if method == "origin" else num_paraphrases
    ids = lambda k: torch.randint(0, vocab, (k,), generator=g).tolist()  # noqa: E731
    return [Encoded([], [ids(prompt_tokens - TAIL_TOKENS) for _ in range(n)], ids(TAIL_TOKENS)) for _ in range(batch)]


def run_once(llm: LLM, method: str, encoded: list[Encoded], new_tokens: int) -> dict[str, float]:
    """One real method call; seconds for prefill, first token, and per decode step."""
    # Weighted rules get uniform confidences: self-consistency sampling is a separate, cached cost.
    confidences = [[1.0] * len(e.paraphrases) for e in encoded] if method in WEIGHTED else None
    options = EnsembleOptions(max_new_tokens=new_tokens, confidences=confidences, ignore_eos=True)
    marks: dict[str, float] = {}
    start = time.perf_counter()
    results = run_encoded(llm, method, encoded, options, hooks=clock_hooks(marks, llm.device))
    sync(llm.device)
    end = time.perf_counter()
    if any(len(r.token_ids) != new_tokens for r in results):
        raise MinirunError("generation stopped early: the benchmark needs exactly new_tokens per answer")
    first = marks["first_decode"]
    return {"prefill": marks["prefill"] - start, "ttft": first - start, "step": (end - first) / (new_tokens - 1)}


def _flex_prefill(llm: LLM, enc: Encoded, repeats: int) -> dict[str, float]:
    """Packed N-paraphrase prefill vs N separate batch-1 prefills of the same prompts (one question)."""
    marks: dict[str, float] = {}
    hooks = clock_hooks(marks, llm.device)

    def prefill(rows: list) -> float:
        layout = stack_rows(rows, llm.pad_id, llm.device)
        session = llm.session(1, layout.length + 1, hooks)
        start = time.perf_counter()
        session.prefill(layout.tokens, layout.positions, layout.segments)
        return marks["prefill"] - start

    packed = [packed_row(enc)]
    separate = [[plain_row(enc.full(i))] for i in range(len(enc.paraphrases))]
    with torch.inference_mode():
        prefill(packed), [prefill(r) for r in separate]  # warm-up: compiled kernels for both shapes
        packed_s = statistics.median(prefill(packed) for _ in range(repeats))
        separate_s = statistics.median(sum(prefill(r) for r in separate) for _ in range(repeats))
    return {"packed_s": packed_s, "separate_s": separate_s, "packed_tokens": len(packed[0].tokens),
            "separate_tokens": sum(len(r[0].tokens) for r in separate), "packed_over_separate": packed_s / separate_s}


def run_bench(model: str | None = None, random_weights: str | None = None, method: str = "origin", prompt_tokens: int = 128,
              new_tokens: int = 64, batch: int = 1, num_paraphrases: int = 5, repeats: int = 5, warmup: int = 1,
              dtype: str | None = None, device: str = "cpu", compile: bool = True, compare: str | None = None) -> dict:
    """Benchmark `method` on a checkpoint (or a random one of a named shape); see bench/README.md for each figure.

    `compare`: comma-separated `transformers` (HF generate on the same files, same process), `eager`
    (minirun again with uncompiled FlexAttention, to show what compilation buys) and/or `captured` (minirun
    again, compiled, its decode steps recorded by the session: `engine.session.set_step_graphs`), the last
    two timed in turns with minirun as the process runs it, so the comparison sits in one process.
    """
    if model is not None and random_weights is not None:
        raise MinirunError("pass --model or --random-weights, not both")
    if method not in METHODS:
        raise MinirunError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if new_tokens < 2 or repeats < 1:
        raise MinirunError("--new-tokens must be at least 2 and --repeats at least 1: decode speed needs a decode step")
    device = auto_device(device)  # transformers' side is moved there too
    compares = [c.strip() for c in compare.split(",")] if compare else []
    if unknown := [c for c in compares if c not in COMPARES]:
        raise MinirunError(f"unknown --compare {unknown[0]!r}: choose from {', '.join(COMPARES)}")
    if not compile and (beside := [c for c in compares if c in ("eager", "captured")]):
        raise MinirunError(f"--compare {beside[0]} sets another minirun beside the compiled one: drop --no-compile")
    if random_weights is not None:
        path = random_checkpoint_dir(random_weights, dtype or "bfloat16")
    else:
        from minirun.checkpoints.hub import resolve_model

        path = resolve_model(model)  # None: $MINIRUN_MODEL or the default model, as every command
    if (path / "tokenizer.json").is_file():
        from minirun.checkpoints.tokenizer import Tokenizer

        tokenizer = Tokenizer(path)
    else:
        tokenizer = IdTokenizer()
    llm = LLM(load_model(path, device, dtype), tokenizer, path)
    encoded = workload(method, batch, num_paraphrases, prompt_tokens, llm.config.vocab_size)
    rows_per_question = 1 if method == "flex" else len(encoded[0].paraphrases)
    prefill_tokens = sum(len(e.paraphrases) * (prompt_tokens - TAIL_TOKENS) + TAIL_TOKENS * rows_per_question
                         for e in encoded)
    answers = batch * len(encoded[0].paraphrases) if method in ("per_prompt", "vote") else batch  # every prompt answers
    torch_dtype = llm.model.embed.weight.dtype
    result: dict[str, Any] = {
        "device": device_name(llm.device), "torch": torch.__version__, "dtype": str(torch_dtype).removeprefix("torch."),
        "model": random_weights or str(model or path), "random_weights": random_weights is not None, "method": method,
        "batch": batch, "num_paraphrases": 1 if method == "origin" else num_paraphrases, "prompt_tokens": prompt_tokens,
        "prefill_tokens": prefill_tokens, "new_tokens": new_tokens, "repeats": repeats, "compile": compile,
        "load_avg_1m": os.getloadavg()[0], "host": cpu_facts()}  # CPU figures are only as good as the machine was idle
    trial = Trial(llm.device, repeats, warmup, prefill_tokens, answers)
    reads = _read_probes(llm, trial)
    freed = "transformers" in compares and not resident_together(llm.device)
    result["order"] = "sequential" if freed else "alternating"
    if "transformers" in compares:
        result["transformers_version"] = transformers_version()
    previous = flex.is_compiled()
    try:
        flex_prefill = _add_minirun(trial, llm, method, encoded, new_tokens, compile,
                                    [c for c in compares if c in ("eager", "captured")])
        prompts = ([e.full(0) for e in workload("origin", batch, 1, prompt_tokens, llm.config.vocab_size)]
                   if "transformers" in compares else [])  # made before minirun may be freed
        if freed:
            trial.time()
            result.update(_bandwidth(llm, trial, reads))
            del llm
            gc.collect()
        if "transformers" in compares:
            from minirun.bench.compare import add_transformers

            attention = add_transformers(trial, path, torch_dtype, device, prompts, new_tokens, compile)
        trial.time()
        if not freed:
            result.update(_bandwidth(llm, trial, reads))
    finally:
        flex.set_compiled(previous)
    result.update(trial.results)
    for key, figures in flex_prefill.items():
        if "error" not in result[key]:
            result[key]["flex_prefill"] = figures
    if "transformers" in compares:
        result["transformers"]["attention"] = attention
    if _measured(result, "minirun", "minirun_eager"):
        result["compile_speedup"] = result["minirun"]["decode_tokens_per_s"] / result["minirun_eager"]["decode_tokens_per_s"]
    if _measured(result, "minirun", "minirun_captured"):
        result["captured_speedup"] = (result["minirun_captured"]["decode_tokens_per_s"]
                                      / result["minirun"]["decode_tokens_per_s"])
    if _measured(result, "minirun", "transformers"):
        result["speedup"] = result["minirun"]["decode_tokens_per_s"] / result["transformers"]["decode_tokens_per_s"]
    return result


def resident_together(device: torch.device) -> bool:
    """Whether minirun and transformers stay loaded together and are timed in turns: on CPU, where a shared
    VM drifts by 10-40 % over minutes; on a GPU one model at a time, so that one which fills it is never
    resident twice (a GPU is not shared, and drifts little)."""
    return device.type == "cpu"


def _add_minirun(trial: Trial, llm: LLM, method: str, encoded: list[Encoded], new_tokens: int, compile: bool,
                 others: list[str]) -> dict[str, dict[str, float]]:
    """Enter `minirun` (compiled as `compile` says, its steps as the process has them) and the `others` named
    (`compile` only): `minirun_eager` (uncompiled), `minirun_captured` (steps recorded by the session), in
    `trial`; for flex also time its packed prefill against separate ones. Returns those figures by engine."""
    flex_prefill = {}
    engines = [("minirun", compile, step_graphs())]
    engines += [(f"minirun_{other}", other != "eager", "captured" if other == "captured" else step_graphs())
                for other in others]
    for key, compiled, graphs in engines:
        def run(compiled: bool = compiled, graphs: str = graphs) -> dict[str, float]:
            flex.set_compiled(compiled)
            previous = step_graphs()
            set_step_graphs(graphs)
            try:
                return run_once(llm, method, encoded, new_tokens)
            finally:
                set_step_graphs(previous)

        trial.add(key, run, fallible=compiled)  # a compiler failure is a finding; eager failures are bugs
        if method == "flex" and key not in trial.results:
            flex_prefill[key] = _flex_prefill(llm, encoded[0], trial.repeats)
    return flex_prefill


def _read_probes(llm: LLM, trial: Trial) -> dict[str, ReadProbe]:
    """On CPU, the read-rate references of the bandwidth fraction (sums over float32 and the model's
    dtype), entered in `trial` so that each is timed in every round beside the engines."""
    if llm.device.type != "cpu":
        return {}
    names = {"float32", str(llm.model.embed.weight.dtype).removeprefix("torch.")}
    probes = {name: ReadProbe(getattr(torch, name)) for name in sorted(names)}
    for name, probe in probes.items():
        trial.add_probe(f"read_{name}", probe)
    return probes


def _bandwidth(llm: LLM, trial: Trial, reads: dict[str, ReadProbe]) -> dict[str, dict]:
    """{"bandwidth": `compare.bandwidth` of minirun's decode step} if it was measured, against the read
    probes of the same rounds."""
    if not _measured(trial.results, "minirun"):
        return {}
    rates = {name: [probe.gb_s(s) for s in trial.rounds[f"read_{name}"]] for name, probe in reads.items()}
    return {"bandwidth": bandwidth(llm.model, trial.rounds["minirun"], rates)}


def _measured(result: dict, *keys: str) -> bool:
    return all("decode_tokens_per_s" in result.get(k, {}) for k in keys)


def write_json(result: dict, path: str | Path) -> Path:
    """A results file, whole or not at all: a benchmark stopped while writing keeps the file it had."""
    path = Path(path)
    write_atomic(path, lambda tmp: tmp.write_text(json.dumps(result, indent=2) + "\n"))
    return path


def format_table(result: dict) -> Table:
    """A rich Table: one column per engine measured, one row per figure."""
    from rich.table import Table

    engines = [k for k in ("minirun", "minirun_eager", "minirun_captured", "transformers", "transformers_static")
               if k in result]
    title = (f"{result['model']} · {result['method']} · {result['dtype']} · batch {result['batch']} · "
             f"{result['prompt_tokens']}+{result['new_tokens']} tokens · {result['device']}")
    table = Table(title=title)
    table.add_column("figure")
    for engine in engines:
        table.add_column(engine, justify="right")
    rows = [("decode tokens/s", "decode_tokens_per_s", "{:.1f}"), ("ms/token", "ms_per_token", "{:.2f}"),
            ("prefill tokens/s", "prefill_tokens_per_s", "{:.0f}"), ("time to first token (s)", "ttft_s", "{:.3f}"),
            ("peak memory (MB)", "peak_memory_mb", "{:.0f}"), ("warm-up (s)", "warmup_s", "{:.1f}")]
    for label, key, fmt in rows:
        table.add_row(label, *(fmt.format(result[e][key]) if key in result[e] else result[e].get("error", "-")[:40]
                               for e in engines))
    table.add_row("ms/token min–max", *("{:.2f}–{:.2f}".format(*result[e]["spread"]["ms_per_token"])
                                         if "spread" in result[e] else "-" for e in engines))
    for key in ("speedup", "compile_speedup", "captured_speedup"):
        if key in result:
            table.caption = (table.caption + " · " if table.caption else "") + f"{key} {result[key]:.2f}×"
    return table
