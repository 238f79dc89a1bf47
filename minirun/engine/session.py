"""One generation's runtime state: the preallocated cache, per-slot segment ids, the attention mask.

Prefill writes prompt tokens at the next free cache slots, in chunks; decode writes one
token per row at the next slot. Cache slot (where K/V live) and RoPE position (what the model sees)
are separate inputs, so packed paraphrases can share positions but never slots.

The BlockMask is built once over all slots × all slots whenever segment ids change (once per
prefill call) and sliced for every prefill chunk and every decode step. Its mask_mod reads the
segment ids and the query offset from tensors, so nothing compiled depends on the question.

With `flex.set_compiled(True)` the one-token decode step is one compiled graph (CUDA graphs on
GPU), prefill chunks run compiled FlexAttention, the mask builder is compiled, and cache sizes come
in power-of-two buckets: compiled shapes depend on the batch size and the cache bucket only, never
on a prompt's length.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

from minirun.errors import MinirunError
from minirun.layers import calibrate, flex
from minirun.layers.compiled import Captured, Compiled
from minirun.layers.hidden_fusion import HeadMix, HiddenFusion, retain_head_rows, retain_rows
from minirun.layers.linear import packing_available, set_plan
from minirun.layers.masks import PAD, SHARED, offset_queries, segment_bias, segment_mask
from minirun.layers.ragged import real_tokens
from minirun.models import Decoder, Keep

CHUNKS = (512, 256, 128, 64)  # prefill chunk sizes (tokens): few compiled shapes, big GEMMs for long prompts
CHUNK = CHUNKS[-1]  # compiled, prompts are left-padded to a multiple of the smallest


def pad_unit() -> int:
    """What a prompt is left-padded to a multiple of: compiled, whole chunks (few shapes); eager, nothing
    beyond the widest row, as padding is work: an evaluation batch's 15-19-token paraphrase rows padded
    to 24 (a multiple of 8) made its prefill 1.28x slower, padded to 64 it would be 3x bigger."""
    return CHUNK if flex.is_compiled() else 1


def chunk_plan(start: int, length: int, aligned: bool = True) -> list[int]:
    """Chunk sizes covering `length` prompt tokens from cache slot `start`.

    `aligned` (compiled): both are multiples of CHUNK and every chunk is one of CHUNKS, largest
    first, each covering whole mask blocks or lying inside one, so a long prompt takes few calls and
    a short one little padding (bigger chunks prefill up to ~28% faster per token). Not aligned
    (eager, dense attention needs no block structure): chunks of the largest size and one remainder.
    """
    if not aligned:
        return [min(CHUNKS[0], length - done) for done in range(0, length, CHUNKS[0])]
    plan = []
    while length:
        size = next((c for c in CHUNKS if c <= length and start % min(c, flex.BLOCK) == 0 and
                     (c % flex.BLOCK == 0 or flex.BLOCK % c == 0)), None)
        if size is None:
            raise MinirunError(f"a compiled prefill starts and ends on whole {CHUNK}-token chunks, not {length} "
                               f"tokens at slot {start}: prefill before decoding, or run eagerly")
        plan.append(size)
        start, length = start + size, length - size
    return plan


def cache_size(needed: int) -> int:
    """Slots to allocate for `needed` tokens: room for chunk padding, then whole mask blocks
    (a power-of-two count when compiled, so a sweep meets few cache shapes)."""
    needed += 2 * CHUNK  # a shared head and the rows are prefilled separately, each padded to chunks
    if flex.is_compiled():
        return max(flex.BLOCK, 1 << (needed - 1).bit_length())
    return -(-needed // flex.BLOCK) * flex.BLOCK


def _score_mod(segments: torch.Tensor, log_weights: torch.Tensor | None, offset: torch.Tensor) -> Callable | None:
    return None if log_weights is None else segment_bias(segments, log_weights, offset)


def mask_rows(full_mask: BlockMask, segments: torch.Tensor, rows: int, start: torch.Tensor, length: int,
              live: int | None = None) -> BlockMask:
    """The part of `full_mask` for `rows` rows and `length` queries from cache slot `start` (a tensor).

    The queries cover whole mask block rows or lie inside one, taken with a tensor index; the base
    mask_mod is re-attached shifted by `start`, so slicing never depends on Python ints that change.
    `live` (the slots written so far) narrows the key length for dense attention (`flex.attention`).
    """
    block = full_mask.BLOCK_SIZE[0]
    part = full_mask[:rows, :, start // block + torch.arange(-(-length // block), device=start.device)]
    part.mask_mod = offset_queries(segment_mask(segments[:rows]), start)
    part.seq_lengths = (length, live or full_mask.seq_lengths[1])
    return part


def decode_step(model: Decoder, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor,
                full_mask: BlockMask, segments: torch.Tensor, log_weights: torch.Tensor | None,
                fusion: HiddenFusion | None = None, head_mix: HeadMix | None = None,
                live: int | None = None) -> torch.Tensor:
    """One token per row (tokens, positions [B]) written at cache `slot` [1]; logits [B, V] (with
    `head_mix`, one row per group [Q, V]).

    `live` (eager only: a compiled step keeps one shape) narrows dense attention to the slots
    written so far instead of the whole cache, and makes the cache write a slice (slot live - 1)."""
    step_mask = mask_rows(full_mask, segments, tokens.shape[0], slot[0], 1, live)
    slots = slot if live is None else slice(live - 1, live)
    logits = model(tokens[:, None], positions[:, None], step_mask, slots, _score_mod(segments, log_weights, slot[0]),
                   fusion=fusion, head_mix=head_mix)
    return logits[:, -1].float()


def _step_key(model: Decoder, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor,
              full_mask: BlockMask, segments: torch.Tensor, log_weights: torch.Tensor | None,
              fusion: HiddenFusion | None = None, head_mix: HeadMix | None = None) -> tuple:
    return (model.graph_key(), tokens.shape[0], full_mask.seq_lengths[1], log_weights is not None,
            None if fusion is None else fusion.first_block, None if head_mix is None else head_mix.mix.shape[0])


def _step_label(model: Decoder, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor,
                full_mask: BlockMask, segments: torch.Tensor, log_weights: torch.Tensor | None,
                fusion: HiddenFusion | None = None, head_mix: HeadMix | None = None) -> str:
    bias = ", attention bias" if log_weights is not None else ""
    fused = f", hidden states fused from block {fusion.first_block}" if fusion is not None else ""
    mixed = f", {head_mix.mix.shape[0]} groups' states mixed before the head" if head_mix is not None else ""
    return f"batch {tokens.shape[0]}, {full_mask.seq_lengths[1]} cache slots{bias}{fused}{mixed}"


_compiled_steps: dict[str | None, Compiled] = {}
STEP_GRAPHS = ("trees", "captured")
_step_graphs = {"kind": "trees"}


def set_step_graphs(kind: str) -> None:
    """How a compiled decode step becomes a CUDA graph: "trees", torch.compile's "reduce-overhead" (its
    guards and its graph tree's checks on the host at every call), or "captured": the step compiled
    without graphs and recorded once per session, each later step one replay (a greedy loop records its
    token choice with it: `engine.generate.record_loop_step`; a sampler the model's step alone:
    `layers.compiled.Captured`). The second is being measured on a GPU (bench/README.md) before it
    becomes the default."""
    if kind not in STEP_GRAPHS:
        raise MinirunError(f"unknown step graphs {kind!r}: choose one of {', '.join(STEP_GRAPHS)}")
    _step_graphs["kind"] = kind


def step_graphs() -> str:
    return _step_graphs["kind"]


def compiled_decode_step(device: torch.device) -> Compiled:
    """`decode_step` compiled once per process; CUDA graphs on GPU ("reduce-overhead") unless the
    session records the graph itself (`set_step_graphs("captured")`)."""
    mode = "reduce-overhead" if device.type == "cuda" and step_graphs() == "trees" else None
    if mode not in _compiled_steps:
        _compiled_steps[mode] = Compiled(decode_step, "the decode step", _step_key, _step_label, mode=mode,
                                           dynamic=False)
    return _compiled_steps[mode]


def host_memory(pages: str) -> int:
    """Bytes of the machine's memory, "SC_PHYS_PAGES" (all) or "SC_AVPHYS_PAGES" (free); 0 where the
    system does not tell (not Linux), so nothing optional is copied there."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf(pages)
    except (ValueError, OSError, AttributeError):
        return 0


def out_of_memory(error: BaseException) -> str | None:
    """What an allocation that failed for want of memory asked for ("20.00 MiB were asked for"), or None where
    `error` is no such failure. The GPU's is a `torch.OutOfMemoryError`; the host's a plain RuntimeError."""
    if not isinstance(error, torch.OutOfMemoryError) and not (
            isinstance(error, RuntimeError) and "can't allocate memory" in str(error)):
        return None
    asked = re.search(r"[Tt]ried to allocate ([\d.]+ ?[KMGT]?i?B|\d+ bytes)", str(error))
    return f"{asked.group(1)} were asked for" if asked else "no memory was left"


def fits_twice(model: Decoder) -> bool:
    """Whether a second copy of the weights (packed for oneDNN) leaves half the machine's memory free."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return 0 < 2 * weights <= host_memory("SC_PHYS_PAGES") / 2


def tune(model: Decoder) -> None:
    """Set the machine-dependent kernel choices for a CPU model (measured once per machine, cached on
    disk: `layers.calibrate`): dense attention's kernel per shape, and which kernel runs its matrix
    products at each row count, eager and (for a compiled model, before its first compile, which
    bakes the choice in) compiled; packed weights only where a second copy fits."""
    if model.device.type != "cpu":
        return
    flex.set_dense_kernel(calibrate.dense_attention)
    packable = fits_twice(model) and packing_available(model.dtype)
    weights = model.calibration_weights()
    for compiled in (False, True) if flex.is_compiled() else (False,):
        set_plan(model.dtype, compiled, calibrate.product_plan(weights, compiled, packable))


def dense_prefill(model: Decoder, rows: int, queries: int) -> bool:
    """Whether a prefill chunk runs SDPA with a dense mask over the written slots rather than compiled
    FlexAttention: always when eager; on a compiled CPU model, whichever this machine runs faster."""
    if not flex.is_compiled():
        return True
    if model.device.type != "cpu":
        return False
    c = model.config
    return calibrate.prefill_attention(model.dtype, rows, c.num_heads, c.num_kv_heads, c.head_dim, queries) == "sdpa"


@dataclass(frozen=True)
class Hooks:
    """Callbacks that observe a session from outside (the benchmark's clock) without subclassing it."""

    after_prefill: Callable[[], None] | None = None  # a prefill call has returned its logits
    before_decode: Callable[[], None] | None = None  # a decode step is about to run


NO_HOOKS = Hooks()


@dataclass(frozen=True)
class Prefix:
    """A shared head's cache contents: its segment ids [L] and every layer's keys and values [1, K, L, D]."""

    segments: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class OwnHeads:
    """Each question's own head, between the batch's shared head and its prompts' rows, encoded once for
    the question instead of once per prompt: tokens, RoPE positions and segment ids [Q, G] (left-padded,
    one row per question) and `owners`, each batch row's question. A question's prompts differ only
    after its head, so its keys and values there are the same in every one of its rows."""

    tokens: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    owners: list[int]


@dataclass(frozen=True)
class Prompt:
    """Every row's prompt after a shared head (its question's own head included), as a prefill left it: segment
    ids [B, L], every layer's keys and values [B, K, L, D], the rows' last final-norm states [B, E], and the seconds
    it took."""

    segments: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]]
    last: torch.Tensor
    seconds: float


class Prefixes:
    """Encodings made by earlier sessions of one model, newest `capacity` kept, so a later session
    copies keys and values instead of computing them again. Heads (`Prefix`): an evaluation prefills
    each dataset's few-shot head once per run, not once per batch and method. Whole prompts
    (`Prompt`): methods that lay a batch's prompts out alike (per_prompt, avg, max, ...) run back to
    back on one batch prefill it once; `reused_seconds` sums the prefill time copies saved. The model's
    weights must not change while entries are kept (an `LLM` never changes its own)."""

    def __init__(self, capacity: int = 4):
        self.capacity = capacity
        self.reused_seconds = 0.0
        self._entries: dict[tuple, Prefix | Prompt] = {}

    def get(self, key: tuple) -> Prefix | Prompt | None:
        return self._entries.get(key)

    def clear(self) -> None:
        """Forget every encoding kept: the next session computes its head again (a benchmark of a fresh run)."""
        self._entries.clear()

    def put(self, key: tuple, entry: Prefix | Prompt) -> None:
        self._entries.pop(key, None)
        self._entries[key] = entry
        while len(self._entries) > self.capacity:
            del self._entries[next(iter(self._entries))]


def room_for(nbytes: int, device: torch.device) -> bool:
    """Whether `nbytes` more leave at least three quarters of the device's free memory free: a copy
    kept for reuse must never be what runs a machine out of memory."""
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else host_memory("SC_AVPHYS_PAGES")
    return 4 * nbytes <= free


class Session:
    """Cache + masks for `batch` rows of at most `max_slots` tokens each."""

    def __init__(self, model: Decoder, batch: int, max_slots: int, log_weights: torch.Tensor | None = None,
                 hooks: Hooks = NO_HOOKS, fusion: HiddenFusion | None = None, prefixes: Prefixes | None = None,
                 prompts: Prefixes | None = None, head_mix: HeadMix | None = None):
        self.model, self.batch, self.max_slots, self.hooks = model, batch, max_slots, hooks
        self.prefixes = prefixes  # where `prefill_head` finds and leaves shared heads
        self.prompts = prompts  # where `prefill` finds and leaves whole batches' prompts
        self._head: tuple = ()  # the shared head's key and length, once prefilled
        self.last_states: torch.Tensor | None = None  # the rows' last final-norm states after a prefill [rows, E]
        self.device = model.device
        tune(model)
        model.setup_cache(batch, max_slots, exact=flex.is_compiled())
        # Slots not yet written default to SHARED: that is what generated tokens are.
        self.segments = torch.full((batch, max_slots), SHARED, dtype=torch.int32, device=self.device)
        self.log_weights = log_weights  # [B, N+1] attention bias per segment, see masks.segment_bias
        self.fusion = fusion  # rows' newest token fused across groups (prefill's last token, every decode step)
        self.head_mix = head_mix  # rows' last states mixed per group: logits [Q, V] (prefill, decode)
        self.length = 0
        self.slot = torch.zeros(1, dtype=torch.long, device=self.device)  # decode's cache slot, updated in place
        self._mask: BlockMask | None = None  # over all slots; None once segment ids change
        self._captured: Captured | None = None  # the recorded decode step, over the tensors of `_mask`

    def _forget_mask(self) -> None:
        """Segment ids changed: the mask is rebuilt at the next step, and a step recorded over the old one
        is recorded again."""
        self._mask = None
        self._captured = None

    def full_mask(self) -> BlockMask:
        """The BlockMask over every slot of every row, built once per change of segment ids."""
        if self._mask is None:
            self._mask = flex.block_mask(segment_mask(self.segments), self.batch, self.max_slots, self.max_slots,
                                         self.device)
        return self._mask

    @torch.inference_mode()  # grad mode is part of a compiled graph's guards: keep it fixed
    def prefill(self, tokens: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor,
                own: OwnHeads | None = None) -> torch.Tensor:
        """Encode tokens [b, T] (b = batch, or 1 for a chunk shared by every row); last logits [b, V]
        (with `head_mix`, the whole batch's rows mixed per group: [Q, V]). With `own`, the questions'
        own heads go first, one row per question, then into each of its rows (`OwnHeads`).

        Left-padded to a multiple of `pad_unit()` (padding is a PAD segment, invisible); compiled,
        run in chunks of the sizes in CHUNKS, so compiled shapes never depend on the prompt's length. With
        `fusion`, the rows' last token (the one that predicts the first answer token) is fused; a
        chunk shared by every row is never fused. Eager, the per-token work of a chunk skips its padding
        (`layers.ragged`); compiled, it keeps the padded shape, which is what its graphs are compiled for.

        With `prompts`, the batch's first prefill after its head is copied from an earlier session's where
        that one laid out the same tokens (own heads too) after the same head in the same way, without fusion or an
        attention bias (which change the cache): the same keys, values and last states, bit for bit, so
        the same logits, whatever this session's `head_mix`; otherwise it is kept for a later session.
        """
        key = self._prompt_key(tokens, positions, segments, own)
        saved = None if key is None else self.prompts.get(key)
        if saved is not None and self.length + saved.segments.shape[1] <= self.max_slots:
            logits = self._restore_prompt(saved)
        else:
            start = time.perf_counter()
            if own is not None:
                self._encode_own(own)
            logits = self._encode(tokens, positions, segments, keep="last")
            if key is not None:
                self._keep_prompt(key, start)
        if self.hooks.after_prefill is not None:
            self.hooks.after_prefill()
        return logits

    def _prompt_key(self, tokens: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor,
                    own: OwnHeads | None) -> tuple | None:
        """What a batch's prompt prefill depends on, where it may be copied: None otherwise."""
        if self.prompts is None or self.fusion is not None or self.log_weights is not None or \
                tokens.shape[0] != self.batch or self.length != (self._head[1] if self._head else 0):
            return None
        parts = (tokens, positions, segments) if own is None else \
            (tokens, positions, segments, own.tokens, own.positions, own.segments)
        layout = tuple((tuple(t.shape), t.cpu().numpy().tobytes()) for t in parts)  # at a batch's start: no stall
        owners = None if own is None else tuple(own.owners)
        return ("prompt", self._head, pad_unit(), flex.is_compiled(), layout, owners)

    def _encode_own(self, own: OwnHeads) -> None:
        """The questions' own heads, one row each in the cache's first rows, then copied into every row of
        their question (a single question's is written to every row at once)."""
        if len(own.owners) != self.batch or max(own.owners) >= own.tokens.shape[0]:
            raise ValueError(f"own heads for {own.tokens.shape[0]} questions, owners {own.owners} for "
                             f"{self.batch} rows")
        start = self.length
        self._encode(own.tokens, own.positions, own.segments, keep="cache")
        if own.tokens.shape[0] > 1 and own.owners != list(range(self.batch)):
            sources = torch.tensor(own.owners, device=self.device)
            self.model.copy_rows(sources, start, self.length)
            self.segments[:, start:self.length] = self.segments[sources, start:self.length]
            self._forget_mask()

    def _keep_prompt(self, key: tuple, start: float) -> None:
        first = self._head[1] if self._head else 0
        if not room_for(self._prompt_bytes(first), self.device):
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the prefill's own time, not its launch
        seconds = time.perf_counter() - start
        self.prompts.put(key, Prompt(self.segments[:, first:self.length].clone(), self.model.cached_slots(
            first, self.length), self.last_states, seconds))  # `last_states` is this session's own copy, never written

    def _prompt_bytes(self, first: int) -> int:
        cache = self.model.layers[0].attn.kv_cache
        per_slot = 2 * cache.k.shape[1] * cache.k.shape[3] * cache.k.element_size() * len(self.model.layers)
        return self.batch * (self.length - first) * per_slot

    def _restore_prompt(self, saved: Prompt) -> torch.Tensor:
        start, length = self.length, saved.segments.shape[1]
        self.model.restore_slots(start, saved.kv)
        self.segments[:, start:start + length] = saved.segments
        self.length += length
        self._forget_mask()
        self.last_states = saved.last
        self.prompts.reused_seconds += saved.seconds
        return self.model.last_logits(saved.last, self.head_mix).float()

    @torch.inference_mode()
    def prefill_head(self, ids: list[int]) -> None:
        """Encode a head shared by every row (batch 1, written to all rows) at the start of the cache,
        or copy it from `prefixes` where an earlier session of this model encoded the same head in the
        same way (padding unit, compiled or not, with or without an attention bias): the same keys
        and values, bit for bit, without the forward pass. The cache then marks the head's slots as
        shared, which eager attention reads once for all rows."""
        if self.length:
            raise MinirunError("a shared head goes first: this session has already prefilled tokens")
        fused = self.fusion is not None and self.batch == 1  # a one-row session fuses its head (see `prefill`)
        key = (tuple(ids), pad_unit(), flex.is_compiled(), self.log_weights is not None, fused)
        saved = None if self.prefixes is None else self.prefixes.get(key)
        if saved is None:
            tokens = torch.tensor([ids], device=self.device)
            positions = torch.arange(len(ids), device=self.device)[None]
            self._encode(tokens, positions, torch.zeros_like(tokens, dtype=torch.int32), keep="last")
            if self.hooks.after_prefill is not None:
                self.hooks.after_prefill()
            if self.prefixes is not None:
                segments = self.segments[0, :self.length].clone()
                self.prefixes.put(key, Prefix(segments, self.model.cached_slots(0, self.length, rows=1)))
        else:
            self.model.restore_slots(0, saved.kv)
            self.length = saved.segments.shape[0]
            self.segments[:, :self.length] = saved.segments
            self._forget_mask()
        self._head = (key, self.length)
        self.model.mark_shared(self.length)

    @torch.inference_mode()
    def extend(self, tokens: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Encode tokens [B, T] after what is cached and return every token's final-norm state [B, T, E].

        Teacher forcing: scoring continuations needs a distribution at each of their tokens. With
        `fusion`, every token of the call is fused across its group (the rows must lay their tokens
        out alike within a group). `logits(states)` turns states into next-token logits.
        """
        return self._encode(tokens, positions, segments, keep="all")

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Next-token logits [..., V] in float32 from final-norm states [..., E]."""
        return self.model.lm_head(states).float()

    def _encode(self, tokens: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor,
                keep: Keep) -> torch.Tensor | None:
        """Write tokens [rows, T] into the cache from the next slot: rows = batch, 1 (every row's), or fewer
        (the first rows'); return every token's states ("all"), the last logits ("last") or nothing ("cache":
        unfused, a question's own head before its rows)."""
        if tokens.shape[1] == 0:
            raise MinirunError("nothing to prefill: the prompt is empty")
        pad = -tokens.shape[1] % pad_unit()
        tokens, positions = F.pad(tokens, (pad, 0)), F.pad(positions, (pad, 0))
        segments = F.pad(segments, (pad, 0), value=PAD)
        rows, T = tokens.shape
        if self.length + T > self.max_slots:
            raise MinirunError(f"prompt needs {self.length + T} cache slots but the cache holds {self.max_slots}: "
                               "shorten the prompt or lower max_new_tokens")
        written = self.segments if rows == 1 else self.segments[:rows]  # one row is every row's
        written[:, self.length:self.length + T] = segments.to(self.segments)
        self._forget_mask()
        full_mask = self.full_mask()
        log_weights = None if self.log_weights is None else self.log_weights[:rows]
        fusion, head_mix = (self.fusion, self.head_mix) if rows == self.batch and keep != "cache" else (None, None)
        done, states = 0, []
        for size in chunk_plan(self.length, T, aligned=flex.is_compiled()):
            start = torch.tensor(self.length, device=self.device)
            slots = slice(self.length, self.length + size)
            chunk = slice(done, done + size)
            live = self.length + size if dense_prefill(self.model, rows, size) else None
            mask = mask_rows(full_mask, self.segments, rows, start, size, live)
            score_mod = _score_mod(self.segments[:rows], log_weights, start)
            ragged = None if flex.is_compiled() else real_tokens(segments[:, chunk] != PAD)
            done += size
            if keep == "all":
                chunk_fusion = None if fusion is None else replace(fusion, span=size)
                states.append(self.model.hidden(tokens[:, chunk], positions[:, chunk], mask, slots, score_mod,
                                                chunk_fusion, ragged))
            elif done < T or keep == "cache":  # only the last chunk's last token needs logits
                self.model.hidden(tokens[:, chunk], positions[:, chunk], mask, slots, score_mod, ragged=ragged,
                                  keep="cache")
            else:
                chunk_states = self.model.hidden(tokens[:, chunk], positions[:, chunk], mask, slots, score_mod, fusion,
                                                 ragged, keep="last")
                self.last_states = chunk_states[:, -1].clone()  # [rows, E]: a view would hold the whole chunk's states
                logits = self.model.last_logits(self.last_states, head_mix)
            self.length += size
        if keep == "all":
            return torch.cat(states, dim=1)[:, pad:]
        return logits.float() if keep == "last" else None

    @property
    def resizable(self) -> bool:
        """Whether `retain` may shrink the batch: eager only, as a compiled step keeps one shape."""
        return not flex.is_compiled()

    @torch.inference_mode()
    def retain(self, rows: list[int]) -> torch.Tensor:
        """Decode only batch rows `rows` (ascending) from now on, renumbered 0..b-1: rows whose answers
        are finished stop costing a step. Their cache, segment ids, attention bias and fusion go with them;
        returns `rows` as a device tensor, for the caller's own per-row state."""
        if not self.resizable:
            raise MinirunError("a compiled session keeps its batch size: retain rows only in eager mode")
        index = torch.tensor(rows, device=self.device)
        self.model.retain_rows(rows, self.length)
        self.segments = self.segments.index_select(0, index)
        if self.log_weights is not None:
            self.log_weights = self.log_weights.index_select(0, index)
        if self.fusion is not None:
            self.fusion = retain_rows(self.fusion, index)
        if self.head_mix is not None:
            self.head_mix = retain_head_rows(self.head_mix, index)
        self.batch = len(rows)
        self._forget_mask()
        return index

    @property
    def records_steps(self) -> bool:
        """Whether compiled decode steps become CUDA graphs recorded here (`set_step_graphs("captured")`),
        so a caller may record a whole loop step around `decode_at`."""
        return flex.is_compiled() and step_graphs() == "captured"

    def decode_at(self, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """The compiled step's device work for tokens, positions [B] at cache `slot` [1], a tensor the caller
        advances: no host bookkeeping (`length`, hooks), so a recording of it replays as it is."""
        return compiled_decode_step(self.device)(*self.step_args(tokens, positions, slot))

    def step_args(self, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor) -> tuple:
        """`decode_step`'s arguments: tokens, positions and slot at 1-3, the session's tensors around them."""
        return (self.model, tokens, positions, slot, self.full_mask(), self.segments, self.log_weights, self.fusion,
                self.head_mix)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token per row (tokens, positions [B]) at the next slot; logits [B, V], or [Q, V] with `head_mix`."""
        if self.length >= self.max_slots:
            raise MinirunError(f"the cache is full ({self.max_slots} slots): lower max_new_tokens")
        if self.hooks.before_decode is not None:
            self.hooks.before_decode()
        self.slot.fill_(self.length)  # a scalar fill, not a host-to-device copy: no sync on GPU
        if self.records_steps:
            if self._captured is None:  # `decode_at`'s call by its arguments: a bound method would hold the session
                args = self.step_args(tokens, positions, self.slot)
                self._captured = Captured(compiled_decode_step(self.device), args, (1, 2), self.device)
            logits = self._captured(tokens, positions)
        elif flex.is_compiled():
            logits = self.decode_at(tokens, positions, self.slot)
        else:
            logits = decode_step(self.model, tokens, positions, self.slot, self.full_mask(), self.segments,
                                 self.log_weights, self.fusion, self.head_mix, live=self.length + 1)
        self.length += 1
        return logits
