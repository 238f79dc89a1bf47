"""The benchmark harness on tiny random checkpoints (eager attention, a few tokens: speed is not tested)."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

import minirun.bench.run as bench_run
from minirun.bench.compare import ReadProbe, Trial
from minirun.bench.run import format_table, run_bench, write_json
from minirun.checkpoints.random import SHAPES, random_checkpoint, shape_config
from minirun.errors import MinirunError
from minirun.models.config import ModelConfig

FIGURES = ("decode_tokens_per_s", "prefill_tokens_per_s", "ms_per_token", "peak_memory_mb", "warmup_s", "ttft_s")
TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=256, bos_token_id=1, eos_token_id=2)
FAST = dict(prompt_tokens=24, new_tokens=4, repeats=2, num_paraphrases=3, compile=False)


def _check_figures(entry: dict) -> None:
    for key in FIGURES:
        assert entry[key] > 0, key
    low, high = entry["spread"]["ms_per_token"]
    assert low <= entry["ms_per_token"] <= high


def test_run_bench_defaults_to_the_default_model(checkpoint_dirs, monkeypatch):
    monkeypatch.setenv("MINIRUN_MODEL", str(checkpoint_dirs["llama3"]))  # what every command takes without --model
    assert run_bench(**FAST)["model"] == str(checkpoint_dirs["llama3"])


@pytest.mark.parametrize("method", ["origin", "avg", "hidden_avg", "flex"])
def test_run_bench_reports_every_figure(checkpoint_dirs, method):
    result = run_bench(model=str(checkpoint_dirs["llama3"]), method=method, batch=2, **FAST)
    _check_figures(result["minirun"])
    assert result["method"] == method and result["batch"] == 2 and result["new_tokens"] == 4
    assert result["torch"] and result["device"] and result["dtype"] == "float32"
    assert result["host"]["cpu"] and set(result["host"]["flags"]) >= {"avx512_bf16", "amx_bf16"}
    _check_fraction(result["bandwidth"], "")
    per_prompt = 24 * (1 if method == "origin" else 3)
    assert result["prefill_tokens"] == 2 * (per_prompt if method != "flex" else 3 * 20 + 4)
    if method == "flex":
        packed = result["minirun"]["flex_prefill"]
        assert packed["packed_s"] > 0 and packed["separate_s"] > 0
        assert packed["packed_tokens"] == 3 * 20 + 4 and packed["separate_tokens"] == 3 * 24


@pytest.mark.parametrize("method, answers", [("origin", 2), ("avg", 2), ("per_prompt", 6), ("vote", 6)])
def test_decode_rates_count_every_answer_a_step_makes(checkpoint_dirs, method, answers):
    """per_prompt and vote decode every prompt's answer (2 questions x 3 prompts a step), the fused methods one a
    question: tokens/s is answers per step over the step's time."""
    entry = run_bench(model=str(checkpoint_dirs["llama3"]), method=method, batch=2, **FAST)["minirun"]
    assert entry["decode_tokens_per_s"] * entry["ms_per_token"] / 1e3 == pytest.approx(answers)


def _check_fraction(bandwidth: dict, prefix: str) -> None:
    """The fraction is the median over the timed rounds of each round's step rate over the read rate
    measured in that round."""
    achieved, reads = bandwidth["achieved_gb_s_rounds"], bandwidth[f"{prefix}read_gb_s_rounds"]
    assert len(achieved) == len(reads) == FAST["repeats"] and min(reads) > 0
    assert bandwidth[f"{prefix}read_gb_s"] == pytest.approx(statistics.median(reads))
    assert bandwidth["achieved_gb_s"] == pytest.approx(statistics.median(achieved))
    assert bandwidth[f"{prefix}bandwidth_fraction"] == pytest.approx(
        statistics.median(a / r for a, r in zip(achieved, reads)))


def test_a_bfloat16_bench_also_reports_the_fraction_of_its_own_dtype_read_rate(checkpoint_dirs):
    bandwidth = run_bench(model=str(checkpoint_dirs["llama3"]), dtype="bfloat16", **FAST)["bandwidth"]
    _check_fraction(bandwidth, "dtype_")
    _check_fraction(bandwidth, "")
    assert bandwidth["dtype_read_gb_s_rounds"] != bandwidth["read_gb_s_rounds"]  # two sums: float32 and bfloat16


def test_compare_transformers_fills_entry_and_speedup(tmp_path, monkeypatch):
    path = random_checkpoint("qwen2.5-0.5b", tmp_path / "ckpt", dtype="float32", **TINY)  # no tokenizer files
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # auto: the CPU, on GPU machines too
    result = run_bench(model=str(path), compare="transformers", **{**FAST, "device": "auto"})  # both sides placed
    _check_figures(result["transformers"])
    assert "transformers_static" not in result  # the compiled HF path runs only with compile=True
    assert result["order"] == "alternating"  # on CPU both engines stay loaded and are timed in turns
    assert result["transformers_version"] == __import__("transformers").__version__  # the figures depend on it
    assert result["transformers"]["attention"] and "bandwidth" in result
    assert result["speedup"] == pytest.approx(result["minirun"]["decode_tokens_per_s"]
                                              / result["transformers"]["decode_tokens_per_s"])
    Console(width=200, record=True).print(format_table(result))
    written = json.loads(write_json(result, tmp_path / "out" / "r.json").read_text())
    assert written["speedup"] == pytest.approx(result["speedup"])


def _engine_calls(monkeypatch) -> list[str]:
    """The engines' timed-run functions, wrapped to record which engine ran, in order."""
    import minirun.bench.compare as compare

    calls: list[str] = []
    for module, name, engine in ((bench_run, "run_once", "minirun"), (compare, "hf_run", "transformers")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, original=original, engine=engine: calls.append(engine) or original(*a))
    return calls


def test_compare_on_cpu_times_minirun_and_transformers_in_turns(tmp_path, monkeypatch):
    calls = _engine_calls(monkeypatch)
    path = random_checkpoint("qwen2.5-0.5b", tmp_path / "ckpt", dtype="float32", **TINY)
    run_bench(model=str(path), compare="transformers", **{**FAST, "repeats": 3})
    # each warmed up (1) and run for memory (1) as it is added, then an untimed round and 3 timed ones in turns
    assert calls == ["minirun"] * 2 + ["transformers"] * 2 + ["minirun", "transformers"] * 4


def test_compare_on_a_device_that_holds_one_model_frees_minirun_before_loading_transformers(tmp_path, monkeypatch):
    monkeypatch.setattr(bench_run, "resident_together", lambda device: False)  # as on a GPU
    calls = _engine_calls(monkeypatch)
    path = random_checkpoint("llama-3.2-1b", tmp_path / "ckpt", dtype="float32", **TINY)
    result = run_bench(model=str(path), compare="transformers", **FAST)
    assert result["order"] == "sequential"
    assert calls == ["minirun"] * 4 + ["transformers"] * 4  # warm-up, memory, 2 repeats each; no untimed round
    _check_figures(result["minirun"]), _check_figures(result["transformers"])
    assert result["bandwidth"]["achieved_gb_s"] > 0 and result["speedup"] > 0


def test_compare_captured_times_recorded_steps_in_turns_with_minirun(checkpoint_dirs, monkeypatch):
    """`--compare captured,eager`: minirun again with its decode steps recorded by the session, and
    uncompiled, each timed in turns with minirun as the process runs it, in one process even where
    transformers would be timed apart (a GPU); the process's step graphs are left as they were."""
    from minirun.engine.session import step_graphs
    from minirun.layers import flex

    monkeypatch.setattr(bench_run, "resident_together", lambda device: False)  # as on a GPU
    seen = []

    def fake_run(llm, method, encoded, new_tokens) -> dict[str, float]:
        seen.append((flex.is_compiled(), step_graphs()))
        return {"prefill": 0.1, "ttft": 0.1, "step": 0.01 if step_graphs() == "captured" else 0.02}

    monkeypatch.setattr(bench_run, "run_once", fake_run)
    result = run_bench(model=str(checkpoint_dirs["llama3"]), compare="captured,eager", **{**FAST, "compile": True})
    trees, captured, eager = (True, "trees"), (True, "captured"), (False, "trees")
    # warm-up and memory run of each as it is added, then an untimed round and 2 timed ones in turns
    assert seen == [trees] * 2 + [captured] * 2 + [eager] * 2 + [trees, captured, eager] * 3
    assert result["captured_speedup"] == pytest.approx(2.0) and result["compile_speedup"] == pytest.approx(1.0)
    assert step_graphs() == "trees" and not flex.is_compiled()
    table = format_table(result)
    assert [c.header for c in table.columns] == ["figure", "minirun", "minirun_eager", "minirun_captured"]
    assert "captured_speedup 2.00×" in table.caption


def test_run_bench_rejects_bad_arguments(checkpoint_dirs):
    model = str(checkpoint_dirs["llama3"])
    with pytest.raises(MinirunError, match="pass --model or --random-weights, not both"):
        run_bench(model=model, random_weights="smollm2-135m")
    with pytest.raises(MinirunError, match="unknown method"):
        run_bench(model=model, method="nope")
    with pytest.raises(MinirunError, match="--compare"):
        run_bench(model=model, compare="vllm")
    for other in ("eager", "captured"):
        with pytest.raises(MinirunError, match=f"--compare {other} sets another minirun .*: drop --no-compile"):
            run_bench(model=model, compare=f"transformers,{other}", compile=False)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_named_shapes_give_configs_minirun_accepts(shape):
    raw = SHAPES[shape]
    config = ModelConfig.from_dict(shape_config(shape))
    assert (config.num_layers, config.hidden_size, config.vocab_size) == (
        raw["num_hidden_layers"], raw["hidden_size"], raw["vocab_size"])
    assert config.num_kv_heads == raw["num_key_value_heads"]
    assert config.tie_word_embeddings == (shape != "mistral-7b")  # the small ones share their embedding
    assert config.torch_dtype == "bfloat16"
    expected_head_dim = {"qwen3-0.6b": 128}.get(shape, raw["hidden_size"] // raw["num_attention_heads"])
    assert config.head_dim == expected_head_dim
    if shape == "llama-3.2-1b":
        assert config.rope_scaling["rope_type"] == "llama3" and config.rope_scaling["factor"] == 32.0
        assert config.rope_theta == 500000.0


@pytest.mark.parametrize("shape", list(SHAPES))
def test_scaled_down_checkpoint_loads_in_minirun_and_transformers(shape, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from minirun.checkpoints.loader import load_model

    tiny = {**TINY, "head_dim": 16} if "head_dim" in SHAPES[shape] else TINY
    path = random_checkpoint(shape, tmp_path, dtype="float32", **tiny)
    ours = load_model(path, "cpu", "float32")
    theirs = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.randint(0, 256, (1, 12))
    torch.testing.assert_close(ours(ids), theirs(ids).logits, rtol=1e-4, atol=1e-4)


def _engine(calls: list[str], name: str, step: float, fail_at: int | None = None):
    def run() -> dict[str, float]:
        calls.append(name)
        if fail_at is not None and calls.count(name) == fail_at:
            raise RuntimeError(f"{name} broke\nmore detail")
        return {"prefill": 0.5, "ttft": 0.6, "step": step}
    return run


def test_a_trial_times_its_engines_in_turns_after_each_warmed_up():
    calls: list[str] = []
    trial = Trial(torch.device("cpu"), repeats=3, warmup=1, prefill_tokens=100, answers_per_step=2)
    trial.add("a", _engine(calls, "a", 0.01))
    trial.add("b", _engine(calls, "b", 0.02))
    assert calls == ["a", "a", "b", "b"]  # warm-up and memory run of each as it is added
    trial.time()
    assert calls[4:] == ["a", "b"] * 4  # an untimed round first: a later engine's loading may force a recompile
    assert trial.results["a"]["decode_tokens_per_s"] == pytest.approx(200)
    assert trial.results["b"]["ms_per_token"] == pytest.approx(20)
    assert trial.results["a"]["prefill_tokens_per_s"] == pytest.approx(200)
    trial.add("c", _engine(calls, "c", 0.04))
    trial.time()  # only the engines added since the last call run again; alone, no untimed round
    assert calls[12:] == ["c"] * 5 and set(trial.results) == {"a", "b", "c"}


def test_an_engine_with_its_own_workload_is_rated_by_it():
    """transformers answers each question from one plain prompt beside a per_prompt ensemble of 3: its rates are
    its own tokens and answers, not the ensemble's (which made it look 3x faster)."""
    trial = Trial(torch.device("cpu"), repeats=1, warmup=1, prefill_tokens=300, answers_per_step=6)
    trial.add("ensemble", _engine([], "ensemble", 0.03))
    trial.add("plain", _engine([], "plain", 0.01), workload=(100, 2))
    trial.time()
    assert trial.results["ensemble"]["decode_tokens_per_s"] == pytest.approx(200)
    assert trial.results["plain"]["decode_tokens_per_s"] == pytest.approx(200)
    assert trial.results["plain"]["prefill_tokens_per_s"] == pytest.approx(200)  # 100 tokens in 0.5 s


def test_a_probe_is_timed_after_the_engines_in_every_timed_round():
    """A reference (the read rate) meets the same spells of a drifting machine as the engines."""
    calls: list[str] = []
    trial = Trial(torch.device("cpu"), repeats=3, warmup=1, prefill_tokens=10, answers_per_step=1)
    trial.add("a", _engine(calls, "a", 0.01))
    trial.add("b", _engine(calls, "b", 0.03))
    trial.add_probe("read", lambda: calls.append("read") or 0.5)
    trial.time()
    assert calls[4:] == ["a", "b"] + ["a", "b", "read"] * 3  # none in the untimed round
    assert trial.rounds == {"read": [0.5] * 3, "a": [0.01] * 3, "b": [0.03] * 3}
    trial.add("c", _engine(calls, "c", 0.02))
    trial.time()  # a probe serves the call it was added for
    assert calls[15:] == ["c"] * 5 and trial.rounds["c"] == [0.02] * 3


def test_the_read_probe_holds_its_buffer_only_from_its_first_timing():
    """Made up front, its 512 MiB (1 GiB with a bfloat16 one) sat in every engine's peak RSS (974 against 462 MB)."""
    probe = ReadProbe(torch.bfloat16)
    assert probe.data is None  # nothing allocated while the engines make their memory runs
    seconds = probe()
    assert probe.data.numel() * probe.data.element_size() == ReadProbe.BYTES and probe.gb_s(seconds) > 0


def test_the_read_probe_is_the_median_of_its_sums_not_one_preempted_sum(monkeypatch):
    """One sum a round let a preempted VM put a float32 run's bandwidth fraction at 1.17."""
    from minirun.bench import compare

    probe = ReadProbe(torch.bfloat16)
    probe()  # the buffer
    durations = [0.016, 0.070, 0.015, 0.017, 0.016]
    clock = iter([t for i, d in enumerate(durations) for t in (float(i), i + d)])  # each sum's start and end
    monkeypatch.setattr(compare.time, "perf_counter", lambda: next(clock))
    assert probe() == pytest.approx(0.016) and next(clock, None) is None  # all five timed, the slow one left out


def test_a_fallible_engine_that_fails_is_recorded_and_the_others_still_run():
    calls: list[str] = []
    trial = Trial(torch.device("cpu"), repeats=3, warmup=1, prefill_tokens=10, answers_per_step=1)
    trial.add("steady", _engine(calls, "steady", 0.01))
    trial.add("compiled", _engine(calls, "compiled", 0.01, fail_at=4), fallible=True)  # fails in the first timed round
    trial.add("broken", _engine(calls, "broken", 0.01, fail_at=1), fallible=True)  # fails warming up
    trial.time()
    assert trial.results["compiled"] == {"error": "RuntimeError: compiled broke"}
    assert trial.results["broken"] == {"error": "RuntimeError: broken broke"}
    assert calls.count("steady") == 6 and trial.results["steady"]["decode_tokens_per_s"] == pytest.approx(100)
    with pytest.raises(RuntimeError, match="plain broke"):
        trial.add("plain", _engine([], "plain", 0.01, fail_at=1))


def test_transformers_static_on_a_gpu_leaves_compiling_to_generate(tmp_path, monkeypatch):
    """On CUDA, generate compiles its own decoding forward for a static cache (CUDA graphs, each step
    marked); a forward compiled here as well had its graph outputs overwritten while generate held them
    (an H200). On CPU, where generate compiles nothing, the compiled forward is swapped in for the run."""
    import transformers

    import minirun.bench.compare as compare

    class Stub:
        config = type("Config", (), {"_attn_implementation": "sdpa"})()

        def to(self, device):
            return self

        def eval(self):
            return self

        def forward(self, *args, **kwargs):
            raise AssertionError("not called: hf_run is replaced")

    runs, compiled = [], []
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: Stub())
    monkeypatch.setattr(compare, "hf_run", lambda model, ids, n, kwargs: runs.append(
        ("forward" in vars(model), kwargs)) or {"prefill": 1.0, "ttft": 1.0, "step": 1.0})
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: compiled.append(kwargs) or fn)
    trial = Trial(torch.device("cpu"), repeats=1, warmup=1, prefill_tokens=2, answers_per_step=1)
    compare.add_transformers(trial, tmp_path, torch.float32, "meta", [[1, 2]], 2, compile=True)  # not a CPU
    assert compiled == [] and runs.count((False, {"cache_implementation": "static"})) == 2  # warm-up, memory
    runs.clear()
    compare.add_transformers(trial, tmp_path, torch.float32, "cpu", [[1, 2]], 2, compile=True)
    assert compiled == [{"mode": "reduce-overhead"}] and runs.count((True, {"cache_implementation": "static"})) == 2


def test_the_cpu_sweep_script_names_an_unknown_method_before_loading_anything():
    script = Path(__file__).resolve().parent.parent / "bench" / "sweep_cpu.py"
    done = subprocess.run([sys.executable, str(script), "--methods", "origin,bogus"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert "unknown method 'bogus': choose from origin, per_prompt, vote, avg, max, hidden_avg, flex" in done.stderr


def test_a_cpu_is_named_with_its_family_and_model_numbers(monkeypatch):
    """Results files from a Zen 3 and a Zen 4 VM both said "AMD EPYC (2 cores, …)"; benchmarks and eval rows name a
    machine alike."""
    from minirun.layers import calibrate

    facts = {"cpu": "AMD EPYC", "cores": 2, "torch_threads": 2, "flags": {"avx512f": True, "amx": False}}
    monkeypatch.setattr(calibrate, "cpu_facts", lambda: {**facts, "cpu_id": "family 25 model 17 stepping 1"})
    assert calibrate.device_name(torch.device("cpu")) == (
        f"AMD EPYC (family 25 model 17 stepping 1) [avx512f] x2 torch {torch.__version__}")
    monkeypatch.setattr(calibrate, "cpu_facts", lambda: facts)
    assert calibrate.device_name(torch.device("cpu")) == f"AMD EPYC [avx512f] x2 torch {torch.__version__}"


def test_the_cpu_sweep_hand_loop_asks_for_last_logits_only_and_answers_alike(checkpoint_dirs):
    """The baseline computed the vocabulary head over every prompt position (`model(ids).logits[:, -1]`),
    work a careful loop (and transformers' own `generate`) skips: it was a slower baseline than the issue's."""
    import importlib.util

    from transformers import AutoModelForCausalLM

    script = Path(__file__).resolve().parent.parent / "bench" / "sweep_cpu.py"
    spec = importlib.util.spec_from_file_location("sweep_cpu", script)
    sweep_cpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep_cpu)
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dirs["llama3"], dtype=torch.float32).eval()
    kept = []
    model.register_forward_pre_hook(lambda module, args, kwargs: kept.append(kwargs.get("logits_to_keep")),
                                    with_kwargs=True)
    rows = [[5, 9, 17, 33, 41, 7], [5, 9, 20, 33], [5, 12, 17, 60, 41]]

    def stop_at_3(ids: list[int]) -> bool:  # a row's stop rule (the script's: eval's end tokens and stop texts)
        return ids[-1] == 3

    for method in ("per_prompt", "avg", "max", "hidden_avg"):
        kept.clear()
        last = sweep_cpu.hand_loop(model, rows, method, 0, stop_at_3, 1, head="last")
        assert kept and set(kept) == {1}
        kept.clear()
        full = sweep_cpu.hand_loop(model, rows, method, 0, stop_at_3, 1, head="all")
        assert set(kept) == {None}
        assert last == full and all(len(tokens) == sweep_cpu.NEW_TOKENS or tokens[-1] == 3 for tokens in last)
    # vote's loop decodes every prompt on its own, as per_prompt's: the majority is taken from those answers
    voted = sweep_cpu.hand_loop(model, rows, "vote", 0, stop_at_3, 1)
    assert voted == sweep_cpu.hand_loop(model, rows, "per_prompt", 0, stop_at_3, 1)


def test_a_random_checkpoint_written_by_two_processes_at_once_or_interrupted_leaves_one_and_no_leftovers(
        tmp_path, monkeypatch):
    """Two benchmarks meeting a fresh cache both wrote the checkpoint, and the second's rename onto the first's
    failed ("Directory not empty"); an interrupted write left its partial copy (GBs) in the cache for good."""
    import minirun.checkpoints.random as random_module

    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path))
    write = random_module.random_checkpoint

    def raced(shape: str, out: Path, **kwargs) -> Path:  # another process renames its copy in first
        write(shape, out.with_name(out.name[1:].rsplit(".", 1)[0]), **kwargs)  # out: .<name>.<pid>
        return write(shape, out, **kwargs)

    monkeypatch.setattr(random_module, "random_checkpoint", raced)
    path = bench_run.random_checkpoint_dir("qwen2.5-0.5b", "float32", **TINY)
    assert (path / "model.safetensors").is_file()
    assert [p.name for p in (tmp_path / "random").iterdir()] == [path.name]

    def interrupted(shape: str, out: Path, **kwargs) -> Path:
        write(shape, out, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(random_module, "random_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench_run.random_checkpoint_dir("llama-3.2-1b", "float32", **TINY)
    assert [p.name for p in (tmp_path / "random").iterdir()] == [path.name]
