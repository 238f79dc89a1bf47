"""Run-time kernel calibration: measured once per machine kind, cached on disk, and both prefill kernels exact."""
from __future__ import annotations

import json

import pytest
import torch

import minirun
from minirun.engine import session as session_module
from minirun.engine.generate import left_padded
from minirun.engine.session import Session, cache_size
from minirun.layers import calibrate, flex, linear


@pytest.fixture
def calibrating(tmp_path, monkeypatch):
    """Calibration on, into an empty cache directory, with no answers remembered in this process."""
    monkeypatch.setenv("MINIRUN_CALIBRATE", "1")
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path))
    monkeypatch.setattr(calibrate, "load_per_core", lambda: 0.9)  # an idle machine: its answers are kept
    calibrate.forget()
    yield tmp_path / "calibration.json"
    calibrate.forget()  # what this test measured stays out of later tests


def test_measured_once_per_machine_and_cached_on_disk(calibrating, monkeypatch):
    calls = []

    def measure():
        calls.append(1)
        return {"value": len(calls), "ms": [1.0]}

    assert calibrate.measured("probe", {"dtype": torch.float32}, measure, default=-1) == 1
    entry = json.loads(calibrating.read_text())
    (key,) = entry
    assert calibrate.cpu_facts()["cpu"] in key and "torch " + torch.__version__ in key and "dtype=torch.float32" in key
    assert entry[key]["ms"] == [1.0] and entry[key]["value"] == 1

    calibrate.forget()  # a later process: reads the file, measures nothing
    assert calibrate.measured("probe", {"dtype": torch.float32}, measure, default=-1) == 1 and calls == [1]

    facts = calibrate.cpu_facts()
    monkeypatch.setattr(calibrate, "cpu_facts", lambda: {**facts, "cpu": "Intel Xeon Platinum"})
    assert calibrate.measured("probe", {"dtype": torch.float32}, measure, default=-1) == 2  # another kind measures again
    assert len(json.loads(calibrating.read_text())) == 2


def test_answers_timed_on_a_busy_machine_serve_this_process_only(calibrating, monkeypatch, caplog):
    monkeypatch.setattr(calibrate, "load_per_core", lambda: 2.0)  # another process as busy as this one
    calibrate.forget()  # a new process: it has not warned yet
    with caplog.at_level("WARNING", logger="minirun"):
        assert calibrate.measured("probe", {"n": 1}, lambda: {"value": 1}, default=-1) == 1
        assert calibrate.measured("probe", {"n": 2}, lambda: {"value": 2}, default=-1) == 2
    assert caplog.text.count("busy while kernels were timed (1-minute load 2.0 per core)") == 1  # once a process
    assert not calibrating.exists()
    assert calibrate.measured("probe", {"n": 1}, lambda: pytest.fail("measured twice"), default=-1) == 1
    calibrate.forget()  # a later process on an idle machine measures again, and keeps it
    monkeypatch.setattr(calibrate, "load_per_core", lambda: 1.0)
    assert calibrate.measured("probe", {"n": 1}, lambda: {"value": 3}, default=-1) == 3
    (entry,) = json.loads(calibrating.read_text()).values()
    assert entry["value"] == 3 and entry["load_per_core"] == 1.0  # the load it was timed under, for a reader


def test_pinned_choices_come_before_the_machines_and_every_choice_is_kept(calibrating):
    """A run pins the choices its rows were made with: they win over the cache and over calibration being off,
    and `chosen` holds every choice taken since, for the run to record."""
    calibrate.measured("dense_attention", {"n": 1}, lambda: {"value": "folded"}, default="sdpa")  # cached: folded
    calibrate.pin({"dense_attention | n=1": "grouped", "dense_attention | n=2": "split", "newer | n=1": "x"})
    assert calibrate.chosen() == {}  # a new record
    assert calibrate.measured("dense_attention", {"n": 1}, lambda: pytest.fail("timed"), default="sdpa") == "grouped"
    assert calibrate.measured("dense_attention", {"n": 3}, lambda: {"value": "folded"}, default="sdpa") == "folded"
    assert calibrate.chosen() == {"dense_attention | n=1": "grouped", "dense_attention | n=3": "folded"}
    calibrate.pin({})
    assert calibrate.measured("dense_attention", {"n": 1}, lambda: pytest.fail("timed"), default="sdpa") == "folded"
    for bad in ({"dense_attention | n=1": "fast"}, {"product_plan | n=1": [[1, "turbo"]]},
                {"product_plan | compiled=False": [[1, "stream"]]}, {"product_plan | n=1": [[0, "library"]]}):
        with pytest.raises(ValueError, match="is no kernel's answer"):
            calibrate.pin(bad)
    calibrate.pin({"product_plan | n=1": [[1, "packed"], [64, "library"]], "prefill_attention | n=1": "flex"})
    assert calibrate.measured("product_plan", {"n": 1}, lambda: pytest.fail("timed"), None) == [[1, "packed"],
                                                                                             [64, "library"]]
    calibrate.pin({})


def test_a_rank_of_a_sharded_run_times_nothing_new(calibrating):
    """Ranks timing side by side would time a busy machine and choose apart: they take the cache, else defaults."""
    calibrate.measured("probe", {"n": 1}, lambda: {"value": 1}, default=-1)
    calibrate.forget()
    calibrate.time_new(False)
    try:
        assert calibrate.measured("probe", {"n": 1}, lambda: pytest.fail("timed"), default=-1) == 1  # cached
        assert calibrate.measured("probe", {"n": 2}, lambda: pytest.fail("timed"), default=-1) == -1
    finally:
        calibrate.time_new(True)
    assert len(json.loads(calibrating.read_text())) == 1  # the default is not saved as an answer
    assert calibrate.measured("probe", {"n": 2}, lambda: {"value": 2}, default=-1) == 2  # nor remembered: timed now


def test_load_per_core_is_the_load_average_over_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(calibrate.os, "getloadavg", lambda: (3.0, 0.0, 0.0))
    monkeypatch.setattr(calibrate.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert calibrate.load_per_core() == 1.5


@pytest.mark.parametrize("content, told", [('{"cut sh', "is unreadable"), ("", "is unreadable"),
                                           ("[1, 2]", "holds no answers"), ("\xff\xfe", "is unreadable")])
def test_an_unreadable_cache_file_is_measured_over_not_a_crash(calibrating, content, told, caplog):
    """A file cut short by a crash or edited by hand stopped every model from running."""
    calibrating.write_bytes(content.encode("latin-1"))
    with caplog.at_level("WARNING", logger="minirun"):
        assert calibrate.measured("probe", {}, lambda: {"value": 7}, default=-1) == 7
    assert told in caplog.text and json.loads(calibrating.read_text())  # rewritten whole
    calibrate.forget()
    assert calibrate.measured("probe", {}, lambda: pytest.fail("measured twice"), default=-1) == 7


@pytest.mark.parametrize("name, shape, bad, good", [
    ("product_plan", {"compiled": False}, [[1, "bogus"]], [[1, "library"]]),
    ("product_plan", {"compiled": False}, [[1, "stream"]], [[1, "packed"]]),  # eager products cannot stream
    ("product_plan", {"compiled": True}, "library", [[1, "stream"]]),
    ("dense_attention", {"rows": 4}, "fast", "split"),
])
def test_a_cached_answer_no_kernel_gives_is_measured_over_not_a_crash(calibrating, name, shape, bad, good):
    """A plan edited by hand (or written by another minirun) reached `linear.set_plan`, which raised, in every run;
    a bogus attention kernel ran silently as SDPA and was recorded, for a resume to refuse."""
    calibrate.measured(name, shape, lambda: {"value": bad}, default=None)  # no check on a fresh measurement
    calibrate.forget()
    assert calibrate.measured(name, shape, lambda: {"value": good}, default=None) == good
    assert [entry["value"] for entry in json.loads(calibrating.read_text()).values()] == [good]  # rewritten


def test_an_unwritable_cache_keeps_the_answer_in_the_process(tmp_path, monkeypatch, caplog):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("MINIRUN_CALIBRATE", "1")
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path / "a-file" / "cache"))  # cannot be made a folder
    monkeypatch.setattr(calibrate, "load_per_core", lambda: 0.9)  # an idle machine's answer, which it would keep
    calibrate.forget()
    try:
        with caplog.at_level("WARNING", logger="minirun"):
            assert calibrate.measured("probe", {}, lambda: {"value": 3}, default=-1) == 3
        assert "cannot write the kernel calibration" in caplog.text and "MINIRUN_CACHE" in caplog.text
        assert calibrate.measured("probe", {}, lambda: pytest.fail("measured twice"), default=-1) == 3
    finally:
        calibrate.forget()


def test_answers_written_by_another_process_meanwhile_are_kept(calibrating):
    def measure_while_another_process_writes():
        calibrating.write_text(json.dumps({"other key": {"value": 1}}))
        return {"value": 2}

    assert calibrate.measured("probe", {}, measure_while_another_process_writes, default=-1) == 2
    entries = json.loads(calibrating.read_text())
    assert len(entries) == 2 and entries["other key"] == {"value": 1}


def test_seconds_spent_measuring_are_counted_and_a_cached_answer_adds_none(calibrating):
    import time

    before = calibrate.seconds_measuring()
    assert calibrate.measured("slow", {"n": 1}, lambda: time.sleep(0.2) or {"value": 7}, default=0) == 7
    spent = calibrate.seconds_measuring() - before
    calibrate.forget()
    assert calibrate.measured("slow", {"n": 1}, lambda: {"value": 8}, default=0) == 7  # read from the file
    assert 0.2 <= spent == calibrate.seconds_measuring() - before


ZEN = "processor\t: {n}\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: {model}\nmodel name\t: AMD EPYC\n" \
      "stepping\t: 1\nflags\t\t: fpu avx2 {extra}\n\n"


def test_cpuinfo_names_family_and_model_where_the_model_name_is_bare():
    """Zen 3 and Zen 4 VMs are both "AMD EPYC": their model numbers tell them apart (the second processor's
    block, here a different model, is not read)."""
    text = ZEN.format(n=0, model=17, extra="avx512f avx512_bf16") + ZEN.format(n=1, model=1, extra="")
    assert calibrate.parse_cpuinfo(text) == ("AMD EPYC", "family 25 model 17 stepping 1",
                                             {"avx2": True, "avx512f": True, "avx512_bf16": True,
                                              "amx_tile": False, "amx_bf16": False})
    name, ident, flags = calibrate.parse_cpuinfo("processor\t: 0\nmodel name\t: Apple M2\n")  # no numbers told
    assert (name, ident, any(flags.values())) == ("Apple M2", None, False)


def test_family_and_model_key_the_measurements(calibrating, monkeypatch):
    facts = {"cpu": "AMD EPYC", "torch_threads": 2, "flags": {"avx2": True}, "l3_mib": 32}
    monkeypatch.setattr(calibrate, "cpu_facts", lambda: {**facts, "cpu_id": "family 25 model 1 stepping 1"})
    assert "AMD EPYC (family 25 model 1 stepping 1) [avx2] L3 32 MiB" in calibrate.machine_key()
    assert calibrate.measured("probe", {}, lambda: {"value": 1}, default=-1) == 1
    monkeypatch.setattr(calibrate, "cpu_facts", lambda: {**facts, "cpu_id": "family 25 model 17 stepping 1"})
    assert calibrate.measured("probe", {}, lambda: {"value": 17}, default=-1) == 17  # the other kind measures


def test_l3_size_is_read_from_sysfs_and_keys_the_measurements(tmp_path, calibrating, monkeypatch):
    for name, level, size in (("index0", "1", "48K"), ("index2", "2", "2048K"), ("index3", "3", "491520K")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "level").write_text(level + "\n")
        (tmp_path / name / "size").write_text(size + "\n")
    assert calibrate.l3_mib(tmp_path) == 480
    assert calibrate.l3_mib(tmp_path / "absent") is None

    facts = {"cpu": "Intel(R) Xeon(R) Processor", "torch_threads": 2, "flags": {"amx_bf16": True}}
    monkeypatch.setattr(calibrate, "cpu_facts", lambda: {**facts, "l3_mib": 105})
    assert "L3 105 MiB" in calibrate.machine_key()
    assert calibrate.measured("probe", {}, lambda: {"value": 105}, default=-1) == 105
    monkeypatch.setattr(calibrate, "cpu_facts", lambda: {**facts, "l3_mib": 480})  # same name and flags, larger L3
    assert calibrate.measured("probe", {}, lambda: {"value": 480}, default=-1) == 480


def test_disabled_calibration_uses_defaults_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRUN_CALIBRATE", "0")
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path))
    assert calibrate.measured("probe", {}, lambda: pytest.fail("measured while disabled"), default=7) == 7
    assert not (tmp_path / "calibration.json").exists()


def test_candidates_are_timed_in_turns_so_a_slow_spell_cannot_pick_the_winner(monkeypatch):
    """"fast" takes 1 tick, "slow" 2; every call in the first 40 % of the timed ones takes twice as
    long (a neighbour on the VM). Timed one after the other, "fast" would sit inside that spell and
    tie with "slow"; timed in turns, both see it alike and "fast" wins by its real margin."""
    clock, calls = [0.0], []
    monkeypatch.setattr(calibrate.time, "perf_counter", lambda: clock[0])

    def candidate(name: str, cost: float):
        def run() -> None:
            calls.append(name)
            timed = len(calls) - 6  # after 3 warm-up calls of each
            clock[0] += cost * (2 if 0 < timed <= 8 else 1)
        return run

    times = calibrate.race({"fast": candidate("fast", 1), "slow": candidate("slow", 2)}, repeats=10)
    assert calls[:6] == ["fast"] * 3 + ["slow"] * 3 and calls[6:] == ["fast", "slow"] * 10
    assert times == {"fast": 1, "slow": 2}


@pytest.mark.parametrize("compiled", [False, True])
def test_product_plan_is_measured_on_the_weights(calibrating, compiled):
    """Every candidate timed at every row count the way it runs (compiled or eager); each count takes the
    fastest; streaming only compiled and for few rows, packed weights only where they may be packed."""
    weights = [torch.randn(96, 64) for _ in range(3)]
    packable = linear.packing_available()
    plan = calibrate.product_plan(weights, compiled, packable, rows=(1, 32))
    (key, entry), = json.loads(calibrating.read_text()).items()
    assert f"compiled={compiled}" in key and set(entry["ms"]) == {"1", "32"}
    expected = {"library"} | ({"packed"} if packable else set())
    assert set(entry["ms"]["1"]) == expected | ({"stream"} if compiled else set())
    assert set(entry["ms"]["32"]) == expected  # beyond STREAM_ROWS: never streamed
    assert plan == {m: min(times, key=times.get) for m, times in ((int(m), t) for m, t in entry["ms"].items())}


def test_uncalibrated_plans_are_the_amd_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRUN_CALIBRATE", "0")
    weights = [torch.randn(96, 64) for _ in range(3)]
    assert calibrate.product_plan(weights, True, True) == {linear.STREAM_MAX_ROWS: "stream",
                                                           linear.STREAM_MAX_ROWS + 1: "packed"}
    assert calibrate.product_plan(weights, False, False) == {1: "library"}


def test_tune_installs_the_measured_plans_and_packs_only_what_fits(checkpoint_dirs, monkeypatch):
    llm = minirun.load(checkpoint_dirs["llama3"])
    asked = []

    def plan(weights, compiled, packable):
        asked.append((compiled, packable))
        return {1: "library", 8: "packed" if packable else "library"} if not compiled else {4: "stream", 5: "library"}

    monkeypatch.setattr(calibrate, "product_plan", plan)
    before = {compiled: linear.current_plan(torch.float32, compiled) for compiled in (False, True)}
    try:
        for fits in (True, False):
            monkeypatch.setattr(session_module, "fits_twice", lambda model, fits=fits: fits)
            asked.clear()
            session_module.tune(llm.model)  # eager: the eager plan only
            packable = fits and linear.packing_available()
            assert asked == [(False, packable)]
            assert linear.current_plan(torch.float32, False) == {1: "library", 8: "packed" if packable else "library"}
        flex.set_compiled(True)
        session_module.tune(llm.model)
        assert asked[-1][0] is True and linear.current_plan(torch.float32, True) == {4: "stream", 5: "library"}
    finally:
        flex.set_compiled(False)
        for compiled, previous in before.items():
            linear.set_plan(torch.float32, compiled, previous)


def test_a_small_model_fits_twice(checkpoint_dirs):
    assert session_module.fits_twice(minirun.load(checkpoint_dirs["llama3"]).model)


def test_prefill_attention_kernel_is_measured(calibrating):
    flex.set_compiled(True)
    try:
        kernel = calibrate.prefill_attention(torch.float32, 3, 4, 2, 16, 64)
    finally:
        flex.set_compiled(False)
    # its SDPA candidate measures the dense kernel inside: both answers are kept (the inner one used to be lost)
    (key, entry), = [(k, e) for k, e in json.loads(calibrating.read_text()).items() if "| prefill_attention |" in k]
    assert kernel in ("sdpa", "flex") and entry["value"] == kernel and set(entry["ms"]) == {"sdpa", "flex"}
    assert "rows=4" in key  # rows are measured at the next power of two


@pytest.mark.parametrize("kernel", ["sdpa", "flex"])
def test_both_prefill_kernels_give_the_eager_logits(checkpoint_dirs, monkeypatch, kernel):
    """A shared head then two padded rows: SDPA over the written slots and block-sparse FlexAttention agree."""
    llm = minirun.load(checkpoint_dirs["qwen3"])
    g = torch.Generator().manual_seed(1)
    head = torch.randint(3, 320, (70,), generator=g).tolist()
    rows = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (150, 40)]
    layout = left_padded(rows, llm.pad_id, llm.device, start=len(head))

    def prefill() -> torch.Tensor:
        session = Session(llm.model, 2, cache_size(len(head) + layout.length + 1))
        session.prefill(torch.tensor([head]), torch.arange(len(head))[None], torch.zeros((1, len(head)), dtype=torch.int32))
        return session.prefill(layout.tokens, layout.positions, layout.segments)

    eager = prefill()
    monkeypatch.setattr(calibrate, "prefill_attention", lambda *shape: kernel)
    flex.set_compiled(True)
    try:
        compiled = prefill()
    finally:
        flex.set_compiled(False)
    assert (compiled - eager).abs().max().item() <= 1e-4


def test_split_attention_is_timed_for_decode_steps_over_a_shared_head(calibrating):
    """One query per row over a shared head: split attention is a candidate, timed up to SPLIT_ROWS
    rows; a prompt chunk's queries never take it."""
    calibrate.dense_attention(torch.float32, 300, 4, 2, 16, 1, 100, shared=70)
    calibrate.dense_attention(torch.float32, 300, 4, 2, 16, 8, 100, shared=70)
    entries = json.loads(calibrating.read_text())
    (decode_key, decode), = ((k, e) for k, e in entries.items() if "queries=1," in k)
    (chunk_key, chunk), = ((k, e) for k, e in entries.items() if "queries=8," in k)
    assert set(decode["ms"]) == {"sdpa", "folded", "grouped", "split"} and f"rows={calibrate.SPLIT_ROWS}," in decode_key
    assert set(chunk["ms"]) == {"sdpa", "folded", "grouped"} and f"rows={calibrate.DENSE_ROWS}," in chunk_key
    assert "shared=64" in decode_key


def test_a_shared_head_and_the_rows_own_slots_are_rounded_apart(calibrating):
    """A 129-slot head and 25 own slots are timed as 128 + 32 keys, not 128 of 256 (where the own
    slots would weigh as much as the head); a head alone rounds down, and no head rounds the keys up."""
    calibrate.dense_attention(torch.float32, 5, 4, 2, 16, 1, 154, shared=129)
    calibrate.dense_attention(torch.float32, 5, 4, 2, 16, 4, 129, shared=129)
    calibrate.dense_attention(torch.float32, 1, 4, 2, 16, 1, 154, shared=129)  # one row: nothing to share
    keys = sorted(k.split(" | ")[-1] for k in json.loads(calibrating.read_text()))
    assert any("keys=160," in k and "queries=1," in k and "shared=128" in k for k in keys)
    assert any("keys=128," in k and "queries=4," in k and "shared=128" in k for k in keys)
    assert any("keys=256," in k and "rows=1" in k and "shared" not in k for k in keys)


def test_dense_attention_is_timed_at_no_more_than_dense_rows(calibrating):
    """Wide batches take the answer measured at DENSE_ROWS rows: one measurement serves them all."""
    for rows in (200, 500):
        kernel = calibrate.dense_attention(torch.float32, rows, 4, 2, 16, 1, 40)
    (key, entry), = json.loads(calibrating.read_text()).items()
    assert key.endswith(f"rows={calibrate.DENSE_ROWS}") and entry["value"] == kernel
    calibrate.dense_attention(torch.float32, 3, 4, 2, 16, 1, 40)
    assert any(k.endswith("rows=4") for k in json.loads(calibrating.read_text()))
