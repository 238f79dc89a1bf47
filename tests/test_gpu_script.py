"""The one-command GPU check (`bench/gpu.sh`): it refuses cleanly without CUDA, and the sections
that are quick on a CPU run here at tiny sizes. (The whole `--quick` dry run takes ~3 minutes on 2
cores with warm compile caches, too long for this suite; its other sections call the functions the
other tests cover: run_encoded, run_bench, the loader.)"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from minirun.bench import gpu
from minirun.bench.run import random_checkpoint_dir
from minirun.errors import MinirunError

ROOT = Path(__file__).resolve().parents[1]


def test_refuses_without_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on a GPU machine too: the check itself is tested
    with pytest.raises(MinirunError, match="no CUDA GPU is visible: run this on the GPU machine"):
        gpu.main(["--out", str(tmp_path)])
    with pytest.raises(MinirunError, match="full-size checks need a GPU"):
        gpu.main(["--device", "cpu", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


def test_the_shell_command_refuses_in_one_line(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), str(tmp_path / "out")], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "error: no CUDA GPU is visible: run this on the GPU machine, or pass --device cpu --quick for a dry run"]


def test_failed_checks_finds_every_false_verdict():
    result = {"llama-float32": {"ok": True}, "qwen2-bfloat16": {"ok": False, "max_abs_diff": 0.5},
              "flex-batch8": {"equal": False}, "host": {"ok": None}, "speed": {"tokens_per_s": 3.0}}
    assert gpu.failed_checks(result) == ["qwen2-bfloat16", "flex-batch8"]
    assert gpu.failed_checks({"ok": False}) == ["result"]
    assert gpu.failed_checks([1, 2]) == []


def test_parity_section_passes_on_tiny_checkpoints(tmp_path):
    result = gpu.parity(torch.device("cpu"), gpu.TINY)
    assert set(result) == {f"{f}-{d}" for f in gpu.PARITY for d in gpu.TOLERANCE}
    assert gpu.failed_checks(result) == []
    assert result["llama-float32"]["bound"] == 1e-4


def test_per_step_counts_cancel_prefill_out():
    llm = gpu.llm_for(random_checkpoint_dir("smollm2-135m", "float32", **gpu.TINY), torch.device("cpu"), "float32")
    syncs = gpu.host_syncs(llm, 2)
    assert syncs["new_tokens"] == [2, 4] and syncs["ok"] is None  # the verdicts are CUDA's
    assert syncs["profiler_saw_cuda"] is False  # no launch and no kernel seen: zero syncs would prove nothing
    assert set(syncs["per_step"]) == set(gpu.SYNCS) | set(gpu.LAUNCHES) | {"gpu_kernels"}
    assert syncs["per_step"]["cudaStreamSynchronize"] == 0
    launched = gpu.launches(llm, 2)
    assert launched["per_step"] == {"graph_launches": 0, "kernel_launches": 0, "gpu_kernels": 0}
    assert launched["ok"] is None and launched["model_step_is_one_replay"] is None
    assert set(launched["step_time"]) == {"wall_us", "gpu_busy_us", "kernels", "host_us"}
    assert launched["step_time"]["kernels"] == [] and launched["step_time"]["gpu_busy_us"] == 0  # no GPU events on CPU
    assert launched["step_time"]["host_us"] is None  # no graph launches to time the host by


def test_step_time_splits_a_step_into_kernels_and_gaps():
    """From two profiles n tokens apart: per step, the wall time, the time kernels ran, the costliest kernels."""
    from types import SimpleNamespace

    def event(name, us, device=torch.autograd.DeviceType.CUDA):
        return SimpleNamespace(name=name, device_type=device, time_range=SimpleNamespace(elapsed_us=lambda: us))

    short = gpu.device_time_by_name([event("gemv", 5.0), event("norm", 1.0), event("aten::mm", 9.0, None)])
    long = gpu.device_time_by_name([event("gemv", 5.0)] * 5 + [event("norm", 1.0)] * 3 + [event("argmax", 2.0)] * 2)
    assert short == {"gemv": [1, 5.0], "norm": [1, 1.0]}  # CPU-side events are not the GPU's time
    split = gpu.step_time(short, long, extra_s=100e-6, steps=2, top=2)
    assert split["wall_us"] == pytest.approx(50.0) and split["gpu_busy_us"] == pytest.approx((20.0 + 2.0 + 4.0) / 2)
    assert split["kernels"] == [{"name": "gemv", "per_step": 2.0, "us": 10.0},
                                {"name": "argmax", "per_step": 1.0, "us": 2.0}]


def test_host_step_us_is_the_median_gap_between_graph_launches():
    """The host's time to issue a step: the gap from one replay's launch to the next, the stop check's wait dropped."""
    from types import SimpleNamespace

    def event(name, start):
        return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start))

    launches = [event("cudaGraphLaunch", t) for t in (0.0, 300.0, 600.0, 1900.0, 2200.0, 2500.0)]  # a sync at 600
    assert gpu.host_step_us(launches + [event("cudaLaunchKernel", 650.0)]) == pytest.approx(300.0)
    assert gpu.host_step_us(launches[:2]) is None


def test_sections_runs_the_subset_named_and_refuses_unknown_names(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRUN_RECOMPILE_LIMIT", "256")  # what main sets, undone after the test
    gpu.main(["--device", "cpu", "--quick", "--sections", "parity", "--out", str(tmp_path)])
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["gpu-parity.json"]
    with pytest.raises(MinirunError, match="unknown --sections speeds: choose from parity, recompiles"):
        gpu.main(["--device", "cpu", "--quick", "--sections", "parity,speeds", "--out", str(tmp_path)])


def test_a_section_whose_shapes_ran_uncompiled_fails(tmp_path, monkeypatch, capsys):
    """Past MINIRUN_RECOMPILE_LIMIT a compiled function runs eagerly: a figure measured so is not the
    compiled path's, so the section must say so instead of passing."""
    import json

    from minirun.layers.compiled import Compiled

    monkeypatch.setenv("MINIRUN_RECOMPILE_LIMIT", "1")
    twice = Compiled(lambda x: x * 2, "twice", lambda x: tuple(x.shape), dynamic=False)
    monkeypatch.setattr(gpu, "parity", lambda *args: {"shapes": [twice(torch.ones(n)).shape[0] for n in (2, 3)]})
    gpu.main(["--device", "cpu", "--quick", "--sections", "parity", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu-parity.json").read_text())
    assert result["uncompiled"] == {"twice": 1} and result["failed_checks"] == ["uncompiled"]
    assert (result["device"], result["dtype"]) == ("cpu", "float32 and bfloat16")  # a dry run's file says so; parity
    # checks both dtypes
    assert "parity: FAILED uncompiled" in capsys.readouterr().out


def test_a_failing_entry_is_recorded_and_its_section_goes_on(monkeypatch):
    """Device time is scarce: one method's failure (a compile error, a CUDA fault) must leave the
    section's other figures standing and show up among its failed checks."""
    calls = []

    def bench(**settings):
        calls.append(settings.get("method", "origin"))
        if settings.get("method") == "flex":
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore")
        return {"decode_tokens_per_s": 1.0}

    monkeypatch.setattr(gpu, "run_bench", bench)
    monkeypatch.setattr(gpu, "random_checkpoint_dir", lambda *args, **overrides: Path("unused"))
    out = gpu.speed("cpu", ("llama-3.2-1b",), (1,), {}, True)
    assert len(calls) == len(gpu.METHODS)
    assert out["llama-3.2-1b-avg-5"] == {"decode_tokens_per_s": 1.0, "model": "llama-3.2-1b", "random_weights": True}
    assert out["llama-3.2-1b-flex-5"] == {"ok": False,
                                          "error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
    assert gpu.failed_checks(out) == ["llama-3.2-1b-flex-5"]


def test_error_text_keeps_the_first_line_and_the_compiler_error_after_it():
    from minirun.bench.compare import error_text

    dump = RuntimeError("C++ compile error\n#include <x>\n/tmp/k.cpp:3:1: error: 'Vec' was not declared\nmore")
    assert error_text(dump) == "RuntimeError: C++ compile error | /tmp/k.cpp:3:1: error: 'Vec' was not declared"
    assert error_text(RuntimeError("CUDA error: out of memory")) == "RuntimeError: CUDA error: out of memory"


def test_a_section_cut_off_mid_way_keeps_the_entries_that_finished(tmp_path, monkeypatch):
    """A device call ends at its time limit: each section's file is rewritten as every entry lands."""
    import json

    calls = []

    def bench(**settings):
        calls.append(settings)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a killed call looks like from inside: not an error to record
        return {"decode_tokens_per_s": 1.0}

    monkeypatch.setenv("MINIRUN_RECOMPILE_LIMIT", "256")
    monkeypatch.setattr(gpu, "run_bench", bench)
    monkeypatch.setattr(gpu, "random_checkpoint_dir", lambda *args, **overrides: Path("unused"))
    with pytest.raises(KeyboardInterrupt):
        gpu.main(["--device", "cpu", "--quick", "--sections", "speed", "--out", str(tmp_path)])
    partial = json.loads((tmp_path / "gpu-speed.json").read_text())
    assert partial["partial"] is True and partial["ok"] is None and partial["dtype"] == "bfloat16"
    assert partial["device"] == "cpu" and sorted(p.name for p in tmp_path.iterdir()) == ["gpu-speed.json"]  # no temp
    assert partial["result"] == {"llama-3.2-1b-origin-batch1": {"decode_tokens_per_s": 1.0}}


def test_compiled_against_eager_counts_the_answers_that_agree_and_where_the_others_part(monkeypatch):
    from types import SimpleNamespace as Result

    from minirun.layers import flex

    def run_encoded(llm, method, encoded, options):
        second = [5, 6, 9] if flex.is_compiled() else [5, 6, 7]
        return [Result(token_ids=ids, answer_token_ids=None) for ids in ([1, 2, 3], second)]

    monkeypatch.setattr(gpu, "run_encoded", run_encoded)
    checked = gpu.eager_against_compiled(None, "avg", [], None)
    assert checked == {"equal": False, "answers_equal": "1/2", "first_difference_at": [2]}
    assert not flex.is_compiled()  # eager again afterwards
    monkeypatch.setattr(gpu, "run_encoded", lambda *args: [Result(token_ids=[4], answer_token_ids=None)])
    assert gpu.eager_against_compiled(None, "avg", [], None)["equal"] is True

    def every_answer(llm, method, encoded, options):  # the shown answer agrees, the second prompt's does not
        return [Result(token_ids=[4], answer_token_ids=[[4], [8, 9 if flex.is_compiled() else 7]])]

    monkeypatch.setattr(gpu, "run_encoded", every_answer)
    checked = gpu.eager_against_compiled(None, "per_prompt", [], None)
    assert checked == {"equal": False, "answers_equal": "1/2", "first_difference_at": [1]}


def test_the_speed_plan_measures_what_the_targets_need_first():
    plan = gpu.speed_plan(("llama-3.2-1b", "smollm2-135m"), (1, 8))
    assert plan[:6] == [("llama-3.2-1b", "origin", 1), ("smollm2-135m", "origin", 1), ("llama-3.2-1b", "avg", 1),
                        ("llama-3.2-1b", "max", 1), ("llama-3.2-1b", "hidden_avg", 1), ("llama-3.2-1b", "flex", 1)]
    assert plan[6:8] == [("llama-3.2-1b", "origin", 8), ("smollm2-135m", "origin", 8)]
    assert len(plan) == len(set(plan)) == 2 * len(gpu.METHODS) + 2  # every method on each shape, origin twice
    assert gpu.by_priority(gpu.METHODS)[:5] == ["origin", "avg", "max", "hidden_avg", "flex"]
    assert sorted(gpu.by_priority(gpu.METHODS)) == sorted(gpu.METHODS)


def test_speed_entries_run_only_what_the_patterns_match(monkeypatch):
    """A later device call measures what an earlier one did not reach, not the first entries again."""
    calls = []
    monkeypatch.setattr(gpu, "run_bench", lambda **settings: calls.append(settings) or {"decode_tokens_per_s": 1.0})
    monkeypatch.setattr(gpu, "random_checkpoint_dir", lambda *args, **overrides: Path("unused"))
    out = gpu.speed("cpu", ("llama-3.2-1b", "smollm2-135m"), (1, 8), {}, True,
                    only=("llama-3.2-1b-*-5", "smollm2-135m-origin-batch1"))
    assert list(out)[:5] == ["smollm2-135m-origin-batch1", "llama-3.2-1b-avg-5", "llama-3.2-1b-max-5",
                             "llama-3.2-1b-hidden_avg-5", "llama-3.2-1b-flex-5"]
    assert len(out) == len(calls) == len(gpu.METHODS)  # one origin, every other method on the first shape
    assert calls[0]["compare"] == "transformers" and "compare" not in calls[1]



def test_speed_entries_reach_the_section_from_the_command_line(tmp_path, monkeypatch):
    import json

    monkeypatch.setenv("MINIRUN_RECOMPILE_LIMIT", "256")
    monkeypatch.setattr(gpu, "run_bench", lambda **settings: {"decode_tokens_per_s": 1.0})
    monkeypatch.setattr(gpu, "random_checkpoint_dir", lambda *args, **overrides: Path("unused"))
    gpu.main(["--device", "cpu", "--quick", "--sections", "speed", "--speed-entries", " smollm2-135m-origin-*, ",
              "--out", str(tmp_path)])
    result = json.loads((tmp_path / "gpu-speed.json").read_text())["result"]
    assert sorted(result) == ["smollm2-135m-origin-batch1", "smollm2-135m-origin-batch8"]


def test_speed_compare_reaches_the_origin_entries(tmp_path, monkeypatch):
    """`--speed-compare transformers,captured` times origin against recorded steps too; other methods compare
    with nothing."""
    monkeypatch.setenv("MINIRUN_RECOMPILE_LIMIT", "256")
    asked = {}
    monkeypatch.setattr(gpu, "run_bench", lambda **settings: asked.setdefault(
        (settings.get("method", "origin"), settings["batch"] if "batch" in settings else 1), settings.get("compare")) and {})
    monkeypatch.setattr(gpu, "random_checkpoint_dir", lambda *args, **overrides: Path("unused"))
    gpu.main(["--device", "cpu", "--quick", "--sections", "speed", "--speed-entries", "smollm2-135m-origin-batch1,"
              "smollm2-135m-avg-5", "--speed-compare", "transformers,captured", "--out", str(tmp_path)])
    assert asked == {("origin", 1): "transformers,captured", ("avg", 1): None}


def test_a_time_bounded_sweep_projects_the_whole_sweep_from_its_rate(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(gpu, "run_encoded", lambda *args: time.sleep(0.01))
    llm = SimpleNamespace(config=SimpleNamespace(vocab_size=100), device=torch.device("cpu"))
    one = gpu.sweep_method(llm, "avg", questions=2000, batch=64, new_tokens=10, seconds=0.05)
    assert 1 <= one["questions"] // 64 < 2000 // 64 and one["batch"] == 64  # stopped by the time, not the questions
    assert one["projected_s"] == pytest.approx(one["warmup_s"] + 2000 / one["items_per_s"])
    swept = gpu.eval_sweep(llm, 2000, 64, 10, seconds=0.02)
    assert swept["total"]["projected_s"] == pytest.approx(sum(swept[m]["projected_s"] for m in gpu.SWEEP_METHODS))
    assert list(gpu.eval_sweep(llm, 2000, 64, 10, seconds=0.02, methods=("flex",))) == ["flex"]  # no total from one
    with pytest.raises(gpu.MinirunError, match="unknown --sweep-methods beam"):
        gpu.main(["--device", "cpu", "--quick", "--sweep-methods", "flex,beam", "--out", "unused"])
    assert swept["total"]["ok"] is True and gpu.failed_checks(swept) == []  # 5 x ~0.3 s, far inside 10 minutes
    monkeypatch.setattr(gpu, "SWEEP_LIMIT_S", 0.1)
    assert gpu.failed_checks(gpu.eval_sweep(llm, 2000, 64, 10, seconds=0.02)) == ["total"]


def test_the_sweep_takes_the_batch_asked_for(tmp_path, monkeypatch):
    """`--sweep-batch N` times the sweep at N questions a batch (eval's default on a GPU against wider ones), and each
    method's record says which; 0 is refused before anything runs."""
    asked = []
    monkeypatch.setattr(gpu, "llm_for", lambda path, device, dtype: None)
    monkeypatch.setattr(gpu, "eval_sweep", lambda llm, questions, batch, *args, **kwargs: asked.append(batch) or {})
    gpu.main(["--device", "cpu", "--quick", "--sections", "sweep", "--sweep-batch", "3", "--out", str(tmp_path)])
    gpu.main(["--device", "cpu", "--quick", "--sections", "sweep", "--out", str(tmp_path)])
    assert asked == [3, 8]
    with pytest.raises(gpu.MinirunError, match="--sweep-batch must be 1 or more questions, not 0"):
        gpu.main(["--device", "cpu", "--quick", "--sweep-batch", "0", "--out", "unused"])


def test_launches_profiles_the_shape_asked_for(tmp_path, monkeypatch):
    """`--launches-shape llama-3.2-1b` profiles the 1B step (the bandwidth target's) instead of SmolLM2's;
    an unknown shape is refused before anything runs."""
    asked = []
    monkeypatch.setattr(gpu, "random_checkpoint_dir", lambda shape, *args, **overrides: asked.append(shape) or shape)
    monkeypatch.setattr(gpu, "llm_for", lambda path, device, dtype: path)
    monkeypatch.setattr(gpu, "launches", lambda llm, new_tokens: {"shape": llm})
    gpu.main(["--device", "cpu", "--quick", "--sections", "launches", "--launches-shape", "llama-3.2-1b",
              "--out", str(tmp_path)])
    assert "llama-3.2-1b" in asked and asked.count("smollm2-135m") == 0
    with pytest.raises(gpu.MinirunError, match="unknown --launches-shape llama-70b: choose from smollm2-135m"):
        gpu.main(["--device", "cpu", "--quick", "--launches-shape", "llama-70b", "--out", "unused"])


def test_the_sweep_runs_eager_when_asked(monkeypatch):
    """`--sweep-eager` times the sweep as eval runs by default (no compiled kernels), and says so per method."""
    from types import SimpleNamespace

    seen = []
    monkeypatch.setattr(gpu, "run_encoded", lambda *args: seen.append(gpu.flex.is_compiled()))
    llm = SimpleNamespace(config=SimpleNamespace(vocab_size=100), device=torch.device("cpu"))
    eager = gpu.eval_sweep(llm, 128, 64, 10, seconds=0.01, methods=("avg",), compiled=False)
    assert eager["avg"]["compiled"] is False and seen and not any(seen)
    seen.clear()
    assert gpu.eval_sweep(llm, 128, 64, 10, seconds=0.01, methods=("avg",))["avg"]["compiled"] is True
    assert seen and all(seen) and not gpu.flex.is_compiled()


def test_step_graphs_apply_to_the_sections_run_and_are_recorded(tmp_path, monkeypatch):
    """`--step-graphs captured` records each session's decode step itself while the sections run, says so in
    every results file, and leaves the process as it found it."""
    seen = []
    monkeypatch.setattr(gpu, "parity", lambda *args: seen.append(gpu.step_graphs()) or {"ok": True})
    gpu.main(["--device", "cpu", "--quick", "--sections", "parity", "--step-graphs", "captured", "--out", str(tmp_path)])
    assert seen == ["captured"] and gpu.step_graphs() == "trees"
    assert json.loads((tmp_path / "gpu-parity.json").read_text())["step_graphs"] == "captured"
    with pytest.raises(SystemExit):
        gpu.main(["--device", "cpu", "--quick", "--step-graphs", "cudagraphs", "--out", str(tmp_path)])


def test_stream_rows_apply_to_the_sections_run_and_are_recorded(tmp_path, monkeypatch):
    """`--stream-rows 1` streams one-row products in compiled graphs on the GPU while the sections run,
    says so in every results file, leaves the process as it found it, and refuses a negative count."""
    seen = []
    monkeypatch.setattr(gpu, "parity", lambda *args: seen.append(gpu.device_stream_rows()) or {"ok": True})
    gpu.main(["--device", "cpu", "--quick", "--sections", "parity", "--stream-rows", "1", "--out", str(tmp_path)])
    assert seen == [1] and gpu.device_stream_rows() == 0
    assert json.loads((tmp_path / "gpu-parity.json").read_text())["stream_rows"] == 1
    with pytest.raises(MinirunError, match="--stream-rows must be 0 or more"):
        gpu.main(["--device", "cpu", "--quick", "--stream-rows", "-1", "--out", str(tmp_path)])


def test_results_name_the_transformers_they_compare_with():
    import transformers

    facts = gpu.machine(torch.device("cpu"), "bfloat16")
    assert facts["transformers"] == transformers.__version__ and facts["torch"] == torch.__version__
