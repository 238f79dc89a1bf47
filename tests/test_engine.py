"""The session's chunked prefill: the chunk plan's guarantees, and logits equal to one full forward."""
from __future__ import annotations

import pytest
import torch

import minirun
from minirun.engine.generate import RETIRE_COST, Stopper, decode_loop, left_padded
from minirun.engine.session import CHUNK, CHUNKS, Prefix, Prefixes, Session, cache_size, chunk_plan
from minirun.errors import MinirunError
from minirun.layers import flex
from minirun.layers.kv_cache import KVCache
from minirun.models import Decoder

LOGIT_ATOL = 1e-4


@pytest.mark.parametrize("start", range(0, 1024, CHUNK))
def test_chunk_plan_covers_prompt_in_aligned_chunks(start):
    for length in range(CHUNK, 1600, CHUNK):
        plan = chunk_plan(start, length)
        assert sum(plan) == length and set(plan) <= set(CHUNKS)
        at = start
        for size in plan:
            if size <= flex.BLOCK:  # inside one mask block row
                assert at // flex.BLOCK == (at + size - 1) // flex.BLOCK
            else:  # whole mask block rows
                assert at % flex.BLOCK == 0 and size % flex.BLOCK == 0
            at += size
        if start % flex.BLOCK == 0 and length >= max(CHUNKS):
            assert plan[0] == max(CHUNKS)  # long prompts take the biggest chunks


@pytest.fixture(scope="module")
def llm(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["llama3"])


def test_chunked_prefill_equals_full_forward(llm):
    """Rows of 450 and 200 tokens after a shared 70-token head: several chunk sizes, padding, a head broadcast."""
    g = torch.Generator().manual_seed(0)
    head = torch.randint(3, 320, (70,), generator=g).tolist()
    rows = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (450, 200)]
    layout = left_padded(rows, llm.pad_id, llm.device, start=len(head))
    session = Session(llm.model, 2, cache_size(CHUNK + layout.length + 1))
    with torch.inference_mode():
        session.prefill(torch.tensor([head]), torch.arange(len(head))[None], torch.zeros((1, len(head)), dtype=torch.int32))
        logits = session.prefill(layout.tokens, layout.positions, layout.segments)
        for row, ids in enumerate(rows):
            full = llm.model(torch.tensor([head + ids]))[0, -1]
            assert (logits[row] - full).abs().max().item() <= LOGIT_ATOL
    assert len(chunk_plan(CHUNK, layout.length + -layout.length % CHUNK)) >= 3


def test_a_prompts_final_block_carries_only_each_rows_last_token(llm, monkeypatch):
    """Rows of 530, 300 and 5 tokens, eagerly in a 512-token chunk and the rest (their real tokens packed): the
    first chunk's final block only writes its keys and values, the last chunk's runs its MLP on one token a row
    (then two decode steps, one each), and the logits, with the decode steps that read what both wrote, are
    those of carrying every token through it."""
    g = torch.Generator().manual_seed(2)
    rows = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (530, 300, 5)]
    layout = left_padded(rows, llm.pad_id, llm.device)

    def run() -> tuple[torch.Tensor, list[tuple[int, ...]]]:
        seen = []
        hook = llm.model.layers[-1].mlp.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
        session = Session(llm.model, len(rows), cache_size(layout.length + 2))
        with torch.inference_mode():
            out = [session.prefill(layout.tokens, layout.positions, layout.segments)]
            for step in range(2):
                out.append(session.decode(out[-1].argmax(-1), layout.next_positions + step))
        hook.remove()
        return torch.stack(out), seen

    kept, kept_seen = run()
    original = Decoder.hidden
    monkeypatch.setattr(Decoder, "hidden", lambda self, *args, keep="all", **options: original(self, *args, **options))
    every, every_seen = run()
    E = llm.config.hidden_size
    assert kept_seen == [(3, 1, E)] * 3 and every_seen == [(1, 512 + 282, E), (1, 18 + 18 + 5, E)] + [(3, 1, E)] * 2
    assert (kept - every).abs().max().item() <= 1e-5


def test_empty_prompt_is_a_clear_error(llm):
    session = Session(llm.model, 1, cache_size(8))
    with pytest.raises(MinirunError, match="prompt is empty"):
        session.prefill(torch.zeros((1, 0), dtype=torch.long), torch.zeros((1, 0), dtype=torch.long),
                        torch.zeros((1, 0), dtype=torch.int32))


def test_truncating_a_prompt_keeps_its_bos_and_its_chat_template(llm, tmp_path):
    """--truncate cut the prompt's ids from the front: Llama 2's <s> went first, a chat prompt's header with it; the
    prompt's text loses its start instead, inside what the model always sees."""
    from checkpoints import write_checkpoint

    llama2 = minirun.load(write_checkpoint("llama_bias", tmp_path / "sp", sentencepiece=True,
                                           max_position_embeddings=64))
    bos = llama2.tokenizer.encode("x")[0]
    long = "The capital of France is Paris. " * 30
    ids = llama2.fit(long, 8, truncate=True, chat=False)
    assert len(ids) <= 56 and ids[0] == bos and ids.count(bos) == 1
    assert ids == llama2.tokenizer.encode(llama2.tokenizer.decode(ids[1:]))  # the text's end, encoded as itself
    assert llama2.tokenizer.decode(ids).endswith("is Paris. ")
    assert llama2.generate(long, 8, chat=False, truncate=True).prompt_tokens == len(ids)
    short = "Who wrote Hamlet?"
    assert llama2.fit(short, 8, truncate=True, chat=False) == llama2.prompt_ids(short, chat=False)  # fits: as is
    limit = llm.config.max_position_embeddings
    wrapped = llm.fit("word " * 600, 4, truncate=True, chat=True)
    whole = llm.prompt_ids("word word", chat=True)
    start, end = whole[:whole.index(llm.tokenizer.encode("word", add_special_tokens=False)[0])], whole[-5:]
    assert limit - 4 - 2 <= len(wrapped) <= limit - 4 and wrapped[:len(start)] == start and wrapped[-5:] == end
    with pytest.raises(MinirunError, match=r"leaves 4 of the model's context of 64 tokens, the prompt's template "
                                           r"takes \d+ of them, and no end of the prompt's text"):
        qwen2 = minirun.load(write_checkpoint("qwen2", tmp_path / "chat", max_position_embeddings=64))
        qwen2.fit(long, 60, truncate=True, chat=True)


def test_eager_step_builds_its_dense_mask_once(llm, monkeypatch):
    """Uncompiled, every layer reuses the step's dense mask: one build per decode step, not one per layer."""
    builds = []
    real = flex.dense_mask
    monkeypatch.setattr(flex, "dense_mask", lambda *a: builds.append(1) or real(*a))
    session = Session(llm.model, 1, 256)
    session.prefill(torch.tensor([[5, 6, 7]]), torch.arange(3)[None], torch.zeros(1, 3, dtype=torch.int32))
    prefill_builds = len(builds)
    for step in range(3):
        session.decode(torch.tensor([8]), torch.tensor([3 + step]))
    assert llm.config.num_layers > 1
    assert prefill_builds == 1 and len(builds) == 4  # one chunk, then three steps


def test_token_bytes_is_what_a_cache_allocates_a_row_and_slot(llm):
    """`token_bytes` (what `sweep --dry-run` plans batch sizes with) is the cache a setup allocates per row and slot,
    in the model's dtype and in bfloat16."""
    from minirun.layers.kv_cache import token_bytes

    c = llm.config
    for dtype in (llm.model.embed.weight.dtype, torch.bfloat16):
        model = Decoder(c).to(dtype)
        model.setup_cache(3, 5)
        held = sum(layer.attn.kv_cache.k.nbytes + layer.attn.kv_cache.v.nbytes for layer in model.layers)
        assert held == 3 * 5 * token_bytes(c.num_layers, c.num_kv_heads, c.head_dim, dtype)


def test_a_reused_compiled_cache_is_cleared(llm):
    """Compiled sessions of one shape share the cache buffers (CUDA graphs replay against them), but
    never an earlier generation's values (a NaN there would reach P @ V through masked slots of a
    partly visible block)."""
    flex.set_compiled(True)
    try:
        first = Session(llm.model, 1, cache_size(8))
        cache = llm.model.layers[0].attn.kv_cache
        cache.k.fill_(float("nan"))
        Session(llm.model, 1, cache_size(8))
    finally:
        flex.set_compiled(False)
    assert llm.model.layers[0].attn.kv_cache is cache and not cache.k.isnan().any()
    assert first.max_slots == cache.k.shape[2]


def test_an_eager_session_views_a_larger_cache_and_reads_none_of_its_stale_slots(llm):
    """Eager sessions take the first rows and slots of any larger earlier allocation as they are, not
    cleared: dense attention reads only the slots this generation wrote, so stale NaNs never show."""
    tokens = torch.tensor([[5, 6, 7], [9, 10, 11]])

    def generate() -> torch.Tensor:
        session = Session(llm.model, 2, 128)
        first = session.prefill(tokens, torch.arange(3).expand(2, -1), torch.zeros_like(tokens, dtype=torch.int32))
        return torch.cat([first, session.decode(torch.tensor([8, 12]), torch.tensor([3, 3]))])

    for layer in llm.model.layers:
        layer.attn.kv_cache = None
    fresh = generate()
    Session(llm.model, 3, 512)
    allocations = [layer.attn.kv_cache.allocation for layer in llm.model.layers]
    for k, v in allocations:
        k.fill_(float("nan"))
        v.fill_(float("nan"))
    reused = generate()
    assert all(layer.attn.kv_cache.allocation[0] is k for layer, (k, _) in zip(llm.model.layers, allocations))
    assert llm.model.layers[0].attn.kv_cache.k.shape[::2] == (2, 128)
    assert torch.isfinite(reused).all() and (reused - fresh).abs().max().item() <= 1e-5


def test_prefixes_keep_the_newest_heads():
    store = Prefixes(capacity=2)
    heads = {name: Prefix(torch.zeros(8, dtype=torch.int32), []) for name in "abc"}
    for name, prefix in heads.items():
        store.put((name,), prefix)
    assert store.get(("a",)) is None and store.get(("b",)) is heads["b"] and store.get(("c",)) is heads["c"]
    store.clear()  # a benchmark's fresh run: every head encoded again
    assert store.get(("b",)) is None and store.get(("c",)) is None


def test_a_head_goes_first(llm):
    session = llm.session(1, 64)
    session.prefill_head([5, 6, 7])
    with pytest.raises(MinirunError, match="shared head goes first"):
        session.prefill_head([5, 6, 7])


def test_a_head_marks_its_slots_shared_until_the_next_session(llm):
    """What lets attention read the head from one row: set after the head (encoded or copied from an
    earlier batch), kept when rows retire, cleared when the cache is set up for another generation."""
    caches = lambda: [layer.attn.kv_cache for layer in llm.model.layers]
    prefixes = Prefixes()
    for _ in range(2):  # encoded, then copied
        session = Session(llm.model, 3, 64, prefixes=prefixes)
        assert {cache.shared for cache in caches()} == {0}
        session.prefill_head([5, 6, 7, 8])
        assert {cache.shared for cache in caches()} == {session.length} and session.length >= 4
        assert all(torch.equal(c.k[0, :, :4], c.k[2, :, :4]) for c in caches())
    tokens = torch.tensor([[9, 10]] * 3)
    session.prefill(tokens, torch.arange(4, 6).expand(3, -1), torch.zeros_like(tokens, dtype=torch.int32))
    session.retain([1, 2])
    assert {cache.shared for cache in caches()} == {session.length - 2}
    Session(llm.model, 3, 64)
    assert {cache.shared for cache in caches()} == {0}


def test_retaining_rows_moves_only_those_out_of_place():
    cache = KVCache(4, 2, 6, 3, torch.float32, torch.device("cpu"))
    for buffer in (cache.k, cache.v):
        buffer.copy_(torch.arange(buffer.numel(), dtype=torch.float32).view(buffer.shape))
    before_k, before_v = cache.k.clone(), cache.v.clone()
    cache.retain([0, 2, 3], length=4)
    assert cache.k.shape == (3, 2, 6, 3)
    for now, before in ((cache.k, before_k), (cache.v, before_v)):
        assert torch.equal(now[:, :, :4], before[[0, 2, 3], :, :4])  # the written slots, renumbered
    cache.retain([0, 1], length=4)  # the last row leaves: nothing to move
    assert cache.k.shape[0] == 2 and torch.equal(cache.k[:, :, :4], before_k[[0, 2], :, :4])


def test_retaining_rows_leaves_the_shared_slots_where_they_are():
    """Every row holds the same head in its shared slots, so only the slots after it move."""
    cache = KVCache(3, 1, 5, 2, torch.float32, torch.device("cpu"))
    cache.k.copy_(torch.arange(cache.k.numel(), dtype=torch.float32).view(cache.k.shape))
    before = cache.k.clone()
    cache.shared = 2
    cache.retain([2], length=4)
    assert torch.equal(cache.k[0, :, :2], before[0, :, :2])  # not copied from row 2
    assert torch.equal(cache.k[0, :, 2:4], before[2, :, 2:4])


class ScriptedSession:
    """A session whose row r emits eos (token 1) from step `finish[r]` on and token 2 before; it
    records the batch size of every decode step."""

    device, resizable = torch.device("cpu"), True

    def __init__(self, finish: list[int]):
        self.finish, self.rows, self.steps, self.batches = finish, list(range(len(finish))), 0, []

    @property
    def batch(self) -> int:
        return len(self.rows)

    def retain(self, kept: list[int]) -> torch.Tensor:
        self.rows = [self.rows[i] for i in kept]
        return torch.tensor(kept)

    def logits(self) -> torch.Tensor:
        out = torch.zeros(self.batch, 4)
        for i, r in enumerate(self.rows):
            out[i, 1 if self.steps >= self.finish[r] else 2] = 1.0
        return out

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        self.batches.append(self.batch)
        return self.logits()


class ListTokenizer:
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return " ".join(map(str, ids))


@pytest.mark.parametrize("finish, batches", [
    ([1] + [6] * 15, [16, 16, 15, 15, 15, 15]),  # one finished row of 16 rides along until it outweighs a retire
    ([1] * 8 + [6] * 8, [16, 8, 8, 8, 8, 8]),  # half the batch done at once: retired at the next step
])
def test_finished_rows_leave_once_carrying_them_outweighs_moving_the_rest(finish, batches):
    assert RETIRE_COST * 15 > 1  # what the first case relies on
    session = ScriptedSession(finish)
    done = decode_loop(session, session.logits(), torch.zeros(len(finish), dtype=torch.long),
                       lambda logits, rows: logits.argmax(-1), 10, Stopper(ListTokenizer(), {1}))
    assert session.batches == batches
    assert [len(c.token_ids) for c in done] == [f + 1 for f in finish]


def test_an_eager_session_shrinks_and_a_compiled_one_refuses(llm):
    session = llm.session(3, 64)
    tokens = torch.tensor([[5, 6, 7]] * 3)
    session.prefill(tokens, torch.arange(3).expand(3, -1), torch.zeros_like(tokens, dtype=torch.int32))
    full = session.decode(torch.tensor([8, 9, 10]), torch.tensor([3, 3, 3]))
    session.retain([0, 2])
    assert session.batch == 2 and session.segments.shape[0] == 2
    shrunk = session.decode(torch.tensor([11, 12]), torch.tensor([4, 4]))
    again = llm.session(3, 64)
    again.prefill(tokens, torch.arange(3).expand(3, -1), torch.zeros_like(tokens, dtype=torch.int32))
    again.decode(torch.tensor([8, 9, 10]), torch.tensor([3, 3, 3]))
    whole = again.decode(torch.tensor([11, 0, 12]), torch.tensor([4, 4, 4]))
    assert full.shape[0] == 3 and torch.allclose(shrunk, whole[[0, 2]], atol=LOGIT_ATOL)
    flex.set_compiled(True)
    try:
        with pytest.raises(MinirunError, match="keeps its batch size"):
            session.retain([0])
    finally:
        flex.set_compiled(False)


def test_a_cpu_model_keeps_large_temporaries_in_the_heap(llm, monkeypatch):
    """Every CPU LLM asks glibc to keep big blocks in its heap (once per process; it takes on glibc)."""
    import platform

    from minirun.engine import allocator
    from minirun.engine import llm as llm_module

    asked = []
    monkeypatch.setattr(llm_module, "keep_large_allocations", lambda: asked.append(1) or True)
    llm_module.LLM(llm.model, llm.tokenizer, llm.path)
    assert asked == [1]
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert allocator.keep_large_allocations() is True


def _resident() -> int:
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) * 1024


def test_memory_freed_into_the_kept_heap_goes_back_to_the_system():
    """glibc keeps what a model frees in its heap (`keep_large_allocations`), so the host's available memory, which
    the next model's load is checked against, would not count it: a sweep returns it between models."""
    import platform

    from minirun.engine import allocator

    if not (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"):
        allocator.return_freed_memory()  # a no-op elsewhere
        return
    assert allocator.keep_large_allocations() is True
    blocks = [torch.ones(16 << 20) for _ in range(12)]  # 12 x 64 MB, each below the heap's limit of 1 GiB
    held = _resident()
    del blocks
    allocator.return_freed_memory()
    assert held - _resident() > 600e6


def test_under_torchrun_each_rank_takes_its_own_gpu():
    from minirun.engine.llm import rank_device

    two = {"WORLD_SIZE": "2", "LOCAL_RANK": "1", "RANK": "3"}
    assert rank_device("cuda", two, visible_gpus=2) == "cuda:1"  # LOCAL_RANK, not the global RANK
    assert rank_device("cuda:0", two, visible_gpus=2) == "cuda:0"  # an explicit index is the user's choice
    assert rank_device("cpu", two, visible_gpus=2) == "cpu"
    assert rank_device("cuda", {"WORLD_SIZE": "1", "LOCAL_RANK": "0"}, visible_gpus=2) == "cuda"  # not torchrun
    assert rank_device("cuda", two, visible_gpus=0) == "cuda"  # no GPU: the loader says so in its own words
    with pytest.raises(MinirunError, match=r"local rank 1, 1 GPU visible\): pass --nproc_per_node 1 or fewer"):
        rank_device("cuda", two, visible_gpus=1)


def test_load_places_a_torchrun_rank_before_touching_the_gpu(tmp_path, monkeypatch):
    """`load` asks `rank_device` first: a rank with no GPU of its own fails in one line, before any
    CUDA call or weight read."""
    from minirun.engine import llm as engine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(MinirunError, match="more processes on this node than it has GPUs"):
        engine.load(tmp_path, device="cuda")
    placed = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: placed.append(("current", device)))

    def load_model(checkpoint, device, dtype):
        placed.append(("weights", device))
        raise MinirunError("stop here")

    monkeypatch.setattr(engine, "load_model", load_model)
    with pytest.raises(MinirunError, match="stop here"):
        engine.load(tmp_path, device="cuda")
    assert placed == [("current", "cuda:1"), ("weights", "cuda:1")]


def test_a_prompt_is_kept_only_where_it_leaves_three_quarters_of_free_memory(llm, monkeypatch):
    from minirun.engine import session as engine

    free = engine.host_memory("SC_AVPHYS_PAGES")
    assert free > 0 and engine.host_memory("SC_NO_SUCH_NAME") == 0
    cpu = torch.device("cpu")
    assert engine.room_for(free // 8, cpu) and not engine.room_for(free // 2, cpu)
    rows = left_padded([[5, 6, 7], [8, 9]], llm.pad_id, llm.device)
    prefill = lambda: llm.session(2, 16, reuse=True).prefill(rows.tokens, rows.positions, rows.segments)
    with llm.reusing_prompts() as prompts:
        monkeypatch.setattr(engine, "room_for", lambda nbytes, device: False)
        prefill(), prefill()
        assert prompts.reused_seconds == 0  # nothing was kept to copy
        monkeypatch.undo()
        prefill()
        copied = prefill()
    assert prompts.reused_seconds > 0
    assert torch.equal(copied, llm.session(2, 16).prefill(rows.tokens, rows.positions, rows.segments))


def test_a_session_holds_its_rows_last_states_not_the_whole_chunk(llm):
    """The rows' last states a prefill leaves (copied into later sessions within `reusing_prompts`) are their own
    [rows, E] tensor, not a view that keeps the prefill chunk's states [rows, T, E] alive as long as the session."""
    rows = left_padded([[5, 6, 7, 8, 9, 10], [8, 9]], llm.pad_id, llm.device)
    session = llm.session(2, 16)
    session.prefill(rows.tokens, rows.positions, rows.segments)
    last = session.last_states
    assert last.shape == (2, llm.config.hidden_size)
    assert last.untyped_storage().nbytes() == last.numel() * last.element_size()
