"""The compiled path (compiled decode step, FlexAttention and mask builder) against the eager one,
its bounded shapes, and the decode loop's freedom from per-step host syncs."""
from __future__ import annotations

import collections
import contextlib
import gc
import logging
import os
import subprocess
import sys
import weakref
from dataclasses import replace

import pytest
import torch
from op_counts import OpCounts
from torch._dynamo.utils import counters
from torch.utils._python_dispatch import _disable_current_modes

import minirun
from minirun.engine import generate
from minirun.engine import session as engine
from minirun.engine.session import CHUNK, cache_size, chunk_plan
from minirun.layers import flex
from minirun.layers.compiled import Captured, Compiled, capture, recompile_limit
from minirun.methods import EnsembleOptions, Question, run_method, runner
from minirun.methods.packing import encode_question, packed_row
from minirun.methods.runner import METHODS

PARAS = ["France's capital?", "Capital city?"]
OPTIONS = EnsembleOptions(max_new_tokens=12, confidences=[[0.2, 0.5, 0.3]])
FACT = "The capital of France is Paris and the capital of Japan is Tokyo. "
# Five lengths in one cache bucket; the last (longest, the warm-up) needs every chunk size the others do.
QUESTIONS = [FACT * 3 + "Which city?", FACT * 3 + "Who wrote Hamlet? Which city?", FACT * 4 + "Which city?",
             FACT * 4 + "Water boils at 100 degrees. Which city?", FACT * 5 + "Which city?"]


@pytest.fixture(scope="module")
def llm(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["llama3"])


@pytest.fixture
def compiled():
    flex.set_compiled(True)
    yield
    flex.set_compiled(False)


def test_load_switches_the_process_to_compiled_kernels(checkpoint_dirs):
    try:
        assert minirun.load(checkpoint_dirs["llama3"], compile=True) and flex.is_compiled()
        minirun.load(checkpoint_dirs["llama3"])  # None: the mode stays
        assert flex.is_compiled()
    finally:
        minirun.load(checkpoint_dirs["llama3"], compile=False)
    assert not flex.is_compiled()


def run(llm, method: str, question: str) -> list[int]:
    return run_method(llm, method, [Question(question, [question, *PARAS])], OPTIONS)[0].token_ids


def run_two(llm, method: str) -> list[list[list[int]]]:
    """Two questions in one batch, the first asked one way: a compiled hidden_avg step once fused that group
    wrong (its logits off by 2 to 9 from the first decode step) while one question alone was right."""
    questions = [Question("Capital of Japan?", ["Capital of Japan?"]),
                 Question("Capital of France?", ["Capital of France?", *PARAS])]
    options = replace(OPTIONS, confidences=[[1.0], *OPTIONS.confidences])
    return [r.answer_token_ids or [r.token_ids] for r in run_method(llm, method, questions, options)]  # every row's


@pytest.mark.parametrize("method", METHODS)
def test_compiled_tokens_equal_eager(llm, method):
    eager = run_two(llm, method)
    flex.set_compiled(True)
    try:
        assert run_two(llm, method) == eager
    finally:
        flex.set_compiled(False)


@contextlib.contextmanager
def recorded(counts: collections.Counter):
    """Compiled, steps recorded by the session; counts what is recorded: whole loop steps, single decode steps."""
    record, step = generate.capture, engine.Captured

    def loop_capture(*args):
        counts["loop"] += 1
        return record(*args)

    class Counted(Captured):
        def __init__(self, *args):
            counts["step"] += 1
            super().__init__(*args)

    generate.capture, engine.Captured = loop_capture, Counted
    flex.set_compiled(True)
    engine.set_step_graphs("captured")
    try:
        yield
    finally:
        engine.set_step_graphs("trees")
        flex.set_compiled(False)
        generate.capture, engine.Captured = record, step


@pytest.mark.parametrize("method", METHODS)
def test_recorded_loop_steps_answer_as_eager(llm, method):
    """Greedy: the token choice, its write, the positions and the decode step are one recording per session,
    replayed once a token; the answers are eager's."""
    eager = run_two(llm, method)
    counts = collections.Counter()
    with recorded(counts):
        assert run_two(llm, method) == eager
    assert counts == {"loop": 1}


def test_sampled_tokens_record_the_decode_step_alone(llm):
    """A sampler is not recorded (a replay would repeat its random draw): each step replays the decode step
    recorded once, and a seeded answer is the unrecorded compiled one."""
    sampled = EnsembleOptions(max_new_tokens=12, temperature=0.8, seed=3)
    question = [Question("Capital of France?", ["Capital of France?", *PARAS])]
    flex.set_compiled(True)
    try:
        plain = run_method(llm, "avg", question, sampled)[0].token_ids
    finally:
        flex.set_compiled(False)
    counts = collections.Counter()
    with recorded(counts):
        assert run_method(llm, "avg", question, sampled)[0].token_ids == plain
    assert counts == {"step": 1}


def test_a_prefill_after_decoding_records_the_step_again(llm):
    """New segment ids rebuild the session's mask, so a step recorded over the old one is recorded again
    (a chat turn prefilled after an answer); the logits are the unrecorded compiled step's."""
    def turns() -> list[torch.Tensor]:  # compiled prefills start on a whole chunk: 64 slots, 64 steps, 64 more
        session = llm.session(1, 256)
        out = [session.prefill(torch.tensor([[5, 6, 7]]), torch.arange(3)[None], torch.zeros(1, 3, dtype=torch.int32))]
        out += [session.decode(torch.tensor([8 + i]), torch.tensor([3 + i])) for i in range(CHUNK)]
        out.append(session.prefill(torch.tensor([[9, 10]]), torch.tensor([[67, 68]]), torch.ones(1, 2, dtype=torch.int32)))
        out.append(session.decode(torch.tensor([11]), torch.tensor([69])))
        return out

    flex.set_compiled(True)
    try:
        plain = turns()
    finally:
        flex.set_compiled(False)
    counts = collections.Counter()
    with recorded(counts), torch.inference_mode():
        for mine, theirs in zip(turns(), plain, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    assert counts == {"step": 2}


def test_a_session_with_a_recorded_step_is_freed_without_a_collection(llm, monkeypatch):
    """A recorded step holds the tensors it reads (on CUDA its graph's private pool holds the step's intermediates,
    the logits among them), so neither it nor its session may sit in a reference cycle: torch 2.11 no longer
    collects before a recording, and a sampled run's dead sessions kept their graphs until Python's next full
    collection."""
    made = []

    class Watched(Captured):
        def __init__(self, *args):
            super().__init__(*args)
            made.append(weakref.ref(self))

    def sampled() -> weakref.ref:
        session = llm.session(1, 64)
        session.prefill(torch.tensor([[5, 6, 7]]), torch.arange(3)[None], torch.zeros(1, 3, dtype=torch.int32))
        session.decode(torch.tensor([8]), torch.tensor([3]))
        return weakref.ref(session)

    monkeypatch.setattr(engine, "Captured", Watched)
    flex.set_compiled(True)
    engine.set_step_graphs("captured")
    gc.collect()
    gc.disable()
    try:
        with torch.inference_mode():
            session = sampled()
        assert len(made) == 1 and made[0]() is None and session() is None
    finally:
        gc.enable()
        engine.set_step_graphs("trees")
        flex.set_compiled(False)


def test_a_compiled_prefill_off_the_chunk_grid_is_refused_in_one_line():
    with pytest.raises(minirun.MinirunError, match="starts and ends on whole 64-token chunks, not 64 tokens at slot 4"):
        chunk_plan(4, 64)


def test_a_recording_refuses_a_generation_past_the_cache(llm):
    """The replays' cache slots are checked before recording, as `decode` checks each step's."""
    session = engine.Session(llm.model, 1, 64)
    session.length = 58  # 8 tokens: 7 replays write slots 58..64, one past the cache
    with pytest.raises(minirun.MinirunError, match=r"the cache is full \(64 slots\): lower max_new_tokens"):
        generate.record_loop_step(session, torch.zeros(1, 5), torch.zeros(1, dtype=torch.long),
                                  lambda logits, rows: logits.argmax(-1), (0,), torch.zeros(1, 8, dtype=torch.long), 8)


def test_a_replay_reads_its_changing_inputs_and_in_place_updates_and_returns_a_copy():
    """What a CUDA graph's replay sees: the recorded tensors' contents at replay time, never new objects."""
    scale = torch.tensor([2.0])
    step = Captured(lambda x, s: x * s, (torch.tensor([1.0, 2.0]), scale), (0,), torch.device("cpu"))
    first = step(torch.tensor([3.0, 4.0]))
    scale.fill_(10.0)  # an argument that is not copied in must be updated in place to count
    second = step(torch.tensor([1.0, 1.0]))
    assert first.tolist() == [6.0, 8.0] and second.tolist() == [10.0, 10.0]
    second.zero_()  # the caller's copy, not the recorded output
    assert step(torch.tensor([1.0, 2.0])).tolist() == [10.0, 20.0]


def test_unknown_step_graphs_are_refused():
    with pytest.raises(minirun.MinirunError, match="unknown step graphs 'cudagraphs'"):
        engine.set_step_graphs("cudagraphs")


def _chunks(llm, method: str, question: str) -> tuple[int, int, list[int]]:
    """(prompt tokens, cache size, prefill chunk sizes) of one question, as the runner lays it out."""
    enc = encode_question(llm, [question] if method == "origin" else [question, *PARAS], "", "", None)
    head, row = len(enc.head), len(packed_row(enc, prefilled=len(enc.head)).tokens)
    padded_head = -(-head // CHUNK) * CHUNK
    plan = chunk_plan(0, padded_head) + chunk_plan(padded_head, -(-row // CHUNK) * CHUNK)
    return head + row, cache_size(head + row + OPTIONS.max_new_tokens), plan


@pytest.mark.parametrize("method", ["origin", "hidden_avg", "flex"])
def test_no_recompilation_across_questions(llm, compiled, method):
    """Compiled shapes depend on batch, cache bucket and chunk size (one of CHUNKS), never on length."""
    layouts = [_chunks(llm, method, q) for q in QUESTIONS]
    lengths, caches, plans = zip(*layouts)
    assert len(set(lengths)) == len(QUESTIONS) and len({len(p) for p in plans}) >= 2, layouts
    assert len(set(caches)) == 1 and set().union(*plans) <= set(plans[-1]), layouts
    run(llm, method, QUESTIONS[-1])  # warm-up: compiles prefill chunks, decode and the mask builder once
    before = counters["stats"]["unique_graphs"]
    for question in QUESTIONS[:-1]:
        run(llm, method, question)
    assert counters["stats"]["unique_graphs"] == before


def test_cache_sizes_come_in_few_buckets(compiled):
    sizes = {cache_size(n) for n in range(1, 4000)}
    assert sizes == {256, 512, 1024, 2048, 4096, 8192}
    assert all(cache_size(n) >= n + 2 * CHUNK for n in range(1, 4000))


def test_the_seconds_a_first_call_compiles_are_counted_apart(monkeypatch):
    """What eval's rows and generate's tokens/s leave out (`calibrate.seconds_set_aside`): a compiled function's first
    call at each new shape, not its later calls."""
    from types import SimpleNamespace

    from minirun.layers import compiled as compiled_module

    now = [0.0]
    monkeypatch.setattr(compiled_module, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def slow(x: torch.Tensor) -> torch.Tensor:
        now[0] += 1.0  # a second a call
        return x + 1

    fn = Compiled(slow, "slow", lambda x: tuple(x.shape), dynamic=False)
    fn.compiled = slow  # the compile itself stubbed: the bookkeeping is what is tested
    start = compiled_module.seconds_compiling()
    fn(torch.ones(2)), fn(torch.ones(2)), fn(torch.ones(3))
    assert compiled_module.seconds_compiling() - start == 2.0  # one first call per shape, not the repeat


def test_recompile_budget_warns_and_runs_eagerly(monkeypatch, caplog):
    monkeypatch.setenv("MINIRUN_RECOMPILE_LIMIT", "1")
    calls = []

    def double(x: torch.Tensor) -> torch.Tensor:
        calls.append(torch.compiler.is_compiling())
        return x * 2

    fn = Compiled(double, "double", lambda x: tuple(x.shape), dynamic=False)
    with caplog.at_level(logging.INFO, logger="minirun"):
        assert torch.equal(fn(torch.ones(2)), torch.full((2,), 2.0))
        assert torch.equal(fn(torch.ones(3)), torch.full((3,), 2.0))
        fn(torch.ones(3))
    assert calls == [True, False, False]  # the first shape traced (compiled), the second ran eagerly twice
    assert any("compiling double for (2,)" in r.getMessage() for r in caplog.records)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "(3,) runs uncompiled" in warnings[0] and "MINIRUN_RECOMPILE_LIMIT=1" in warnings[0]


def test_a_second_load_of_a_checkpoint_spends_no_recompile_budget(llm, checkpoint_dirs, compiled):
    """torch runs a second model object of the same checkpoint through the first one's decode graph,
    so minirun's shape budget must not count it either: keyed by the object, a process that loads a
    checkpoint 16 times (a benchmark per method) ran the 17th decode step eagerly with a warning."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    step = engine.compiled_decode_step(torch.device("cpu"))
    run(llm, "origin", "Capital of France?")
    shapes, refused = set(step.shapes), set(step.refused)
    entries = len(_debug_get_cache_entry_list(engine.decode_step.__code__))
    assert run(minirun.load(checkpoint_dirs["llama3"]), "origin", "Capital of France?") == run(llm, "origin",
                                                                                              "Capital of France?")
    assert step.shapes == shapes and step.refused == refused
    assert len(_debug_get_cache_entry_list(engine.decode_step.__code__)) == entries  # torch compiled nothing new


def test_compiled_mode_lifts_torch_limit_above_minirun(compiled):
    assert torch._dynamo.config.recompile_limit >= 4 * 16


@pytest.mark.parametrize("value", ["abc", "0", "-3", ""])
def test_a_bad_recompile_limit_is_one_line(monkeypatch, value):
    monkeypatch.setenv("MINIRUN_RECOMPILE_LIMIT", value)
    with pytest.raises(minirun.MinirunError, match="set it to a whole number of at least 1, or unset it"):
        recompile_limit()


@pytest.mark.parametrize("method", ["origin", "per_prompt", "avg", "max", "weighted_avg", "weighted_max", "hidden_avg",
                                    "flex"])
def test_decode_loop_reads_no_scalars_from_the_device(llm, monkeypatch, method):
    """Fusion, sampling and slot bookkeeping never wait for the device; only the model step is excluded."""
    recorder = OpCounts()
    real_step, real_loop = engine.decode_step, runner.decode_loop

    def step(*args, **kwargs):
        with _disable_current_modes():
            return real_step(*args, **kwargs)

    def loop(*args, **kwargs):
        with recorder:
            return real_loop(*args, **kwargs)

    monkeypatch.setattr(engine, "decode_step", step)
    monkeypatch.setattr(runner, "decode_loop", loop)
    run(llm, method, "Capital of France?")
    assert sum(recorder.count.values()) > 0  # the recorder saw the loop's work
    assert recorder.scalar_reads() == 0


def test_prefill_regions_serve_every_block_with_one_graph(checkpoint_dirs, compiled):
    """A compiled CPU prefill runs each block's code around attention as compiled graphs: one graph
    per chunk shape for all blocks (no recompile per layer), logits equal to eager."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from minirun.models import decoder

    llm = minirun.load(checkpoint_dirs["qwen2"])
    tokens = torch.randint(3, 320, (7, 2 * CHUNK))
    positions = torch.arange(2 * CHUNK).expand(7, -1)
    segments = torch.zeros((7, 2 * CHUNK), dtype=torch.int32)
    for f in (decoder.before_attention, decoder.after_attention):  # whatever earlier tests compiled there
        torch._dynamo.reset_code(f.__code__)
    before = [len(_debug_get_cache_entry_list(f.__code__)) for f in (decoder.before_attention, decoder.after_attention)]
    logits = llm.session(7, cache_size(2 * CHUNK)).prefill(tokens, positions, segments)
    after = [len(_debug_get_cache_entry_list(f.__code__)) for f in (decoder.before_attention, decoder.after_attention)]
    assert llm.config.num_layers == 2 and [a - b for a, b in zip(after, before)] == [1, 1]
    flex.set_compiled(False)
    eager = llm.session(7, cache_size(2 * CHUNK)).prefill(tokens, positions, segments)
    assert (logits - eager).abs().max().item() <= 1e-4


def test_a_new_head_length_does_not_recompile_the_decode_step(llm, compiled):
    """The cache's count of shared head slots steers eager attention only: were the compiled step to
    depend on it, every new head length would be a recompile. Heads of one and two chunks, one graph."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    entries = []
    for chunks, head in ((1, 40), (2, 100)):
        session = llm.session(3, 512)
        session.prefill_head(torch.randint(3, 320, (head,)).tolist())
        start = session.length
        assert start == chunks * CHUNK and {layer.attn.kv_cache.shared for layer in llm.model.layers} == {start}
        tokens = torch.randint(3, 320, (3, 5))
        segments = torch.zeros_like(tokens, dtype=torch.int32)
        session.prefill(tokens, torch.arange(start, start + 5).expand(3, -1), segments)
        session.decode(tokens[:, -1], torch.full((3,), start + 5))
        entries.append(len(_debug_get_cache_entry_list(engine.decode_step.__code__)))
    assert entries[0] == entries[1] >= 1


def test_inductors_tf32_hint_is_not_shown():
    """Printed on a GPU at the first compile (torch 2.11, H200), bfloat16 or not: minirun keeps float32 exact.
    In a fresh interpreter, as pytest resets warning filters around each test."""
    import subprocess
    import sys

    code = ("import warnings, minirun.layers.compiled\n"
            "warnings.warn('TensorFloat32 tensor cores for float32 matrix multiplication available but not enabled. "
            "Consider setting `torch.set_float32_matmul_precision(\"high\")` for better performance.')\n"
            "warnings.warn('another warning')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "another warning" in done.stderr and "TensorFloat32" not in done.stderr


def test_a_cuda_replay_keeps_the_tensors_its_recording_uses_alive(monkeypatch):
    """A CUDA graph reads and writes its tensors by address, so its replay must hold them: a tensor only the
    recorded function held (the greedy loop's step counter) was freed once recorded, its block went to the
    next allocation, and the next replay indexed with whatever that wrote (an H200: `index_copy_(): index out
    of bounds` at batch 8). CUDA's streams and graph are stubbed, so the CUDA branch runs here on CPU."""
    class Graph:
        replays = 0

        def replay(self) -> None:
            Graph.replays += 1

    class Stream:
        def __init__(self, device=None):
            pass

        def wait_stream(self, other) -> None:
            pass

    made, used = [], {}

    def new_stream(device=None) -> Stream:
        made.append(Stream())
        return made[-1]

    def warm_up_on(stream: Stream) -> contextlib.nullcontext:
        used["warm-up"] = stream
        return contextlib.nullcontext()

    def record_on(graph: Graph, stream: Stream | None = None) -> contextlib.nullcontext:
        used["capture"] = stream
        return contextlib.nullcontext()

    monkeypatch.setattr(torch.cuda, "Stream", new_stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "stream", warm_up_on)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", Graph)
    monkeypatch.setattr(torch.cuda, "graph", record_on)

    def record():
        counter, output = torch.zeros(1), torch.zeros(1)
        replay, recorded = capture(lambda: output.copy_(counter.add_(1)), torch.device("cuda"))
        return replay, weakref.ref(counter), recorded

    replay, counter, output = record()
    gc.collect()
    assert counter() is not None  # alive while the replay is
    replay()
    assert Graph.replays == 1 and output.item() == 3  # two warm-ups and the recording's call ran here
    assert used == {"warm-up": made[0], "capture": made[0]}  # recorded on its own stream, not torch's default one
    del replay
    gc.collect()
    assert counter() is None  # and freed with it


def test_compiled_kernels_are_cached_under_minirun_s_cache_root(tmp_path):
    """torch fixes inductor's directory when the first function is compiled: the default must be in place by then
    (it was set later, and kernels went to /tmp), so it is set when the attention layer's compiled functions are
    made."""
    show = "import os, minirun.layers.flex; print(os.environ['TORCHINDUCTOR_CACHE_DIR'])"
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    ours = subprocess.run([sys.executable, "-c", show], env=env | {"MINIRUN_CACHE": str(tmp_path)},
                          capture_output=True, text=True, check=True)
    assert ours.stdout.strip() == str(tmp_path / "inductor")
    theirs = subprocess.run([sys.executable, "-c", show], env=env | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "t")},
                            capture_output=True, text=True, check=True)
    assert theirs.stdout.strip() == str(tmp_path / "t")  # a directory the user chose is kept


def test_questions_own_heads_compiled_answer_as_eager(llm, monkeypatch):
    """Heads of their own a prefill chunk long or more are encoded once per question when compiled too (padded
    to whole chunks, in a cache with room for that third region): the same tokens as eager, for every row
    method, per_prompt's every prompt included."""
    shots = [FACT * 5, "Water boils at 100 degrees and ice melts at 0 degrees. " * 6]
    questions = [Question("Which city?", ["Which city?", *PARAS], shots[0]),
                 Question("Which degrees?", ["Which degrees?", "How hot?"], shots[1])]
    options = replace(OPTIONS, confidences=None)
    rows = []
    original = minirun.models.Decoder.hidden
    monkeypatch.setattr(minirun.models.Decoder, "hidden", lambda self, tokens, *rest, **kw: rows.append(
        tuple(tokens.shape)) or original(self, tokens, *rest, **kw))
    for method in ("per_prompt", "avg", "hidden_avg"):
        eager = [r.answer_token_ids or [r.token_ids] for r in run_method(llm, method, questions, options)]
        flex.set_compiled(True)
        try:
            rows.clear()
            compiled = [r.answer_token_ids or [r.token_ids] for r in run_method(llm, method, questions, options)]
        finally:
            flex.set_compiled(False)
        assert compiled == eager
        assert (2, CHUNK) in rows  # the own heads' chunks, one row per question
