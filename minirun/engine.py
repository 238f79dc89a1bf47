"""One generation's runtime state: the preallocated cache, per-slot segment ids, the decode mask.

Prefill writes a chunk of tokens at the next free cache slots; decode writes one token per row at
the next slot. Cache slot (where K/V live) and RoPE position (what the model sees) are separate
inputs, so packed paraphrases can share positions but never slots.

With `flex.set_compiled(True)` the one-token decode step runs as one compiled graph (CUDA graphs
on GPU). Its inputs are tensors of fixed shape (slot, positions, segment ids, the cache buffers),
so one graph serves every step and every question of the same batch and cache size; prefill
chunks are left-padded to a multiple of PREFILL_BUCKET so varied prompts reuse a few shapes.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask

from minirun import flex
from minirun.errors import MinirunError
from minirun.masks import PAD, SHARED, offset_queries, segment_bias, segment_mask
from minirun.models import Decoder

SLOT_BUCKET = 128  # cache sizes are rounded up to this, so compiled shapes repeat across prompts
PREFILL_BUCKET = 64  # compiled prefill chunks are padded to a multiple of this


def cache_size(needed: int) -> int:
    """Slots to allocate: `needed` rounded up to a bucket, plus room for padded prefill chunks."""
    if flex.is_compiled():
        needed += 2 * PREFILL_BUCKET
    return -(-needed // SLOT_BUCKET) * SLOT_BUCKET


def _score_mod(segments: torch.Tensor, log_weights: torch.Tensor | None, offset: torch.Tensor) -> Callable | None:
    return None if log_weights is None else segment_bias(segments, log_weights, offset)


def decode_step(model: Decoder, tokens: torch.Tensor, positions: torch.Tensor, slot: torch.Tensor,
                full_mask: BlockMask, segments: torch.Tensor, log_weights: torch.Tensor | None) -> torch.Tensor:
    """One token per row (tokens, positions [B]) written at cache `slot` [1]; logits [B, V].

    The step's BlockMask is the row of `full_mask` (built once over all slots) holding `slot`,
    with the mask_mod shifted by the slot tensor: nothing here depends on Python ints that change.
    """
    step_mask = full_mask[:, :, slot // full_mask.BLOCK_SIZE[0]]
    step_mask.mask_mod = offset_queries(segment_mask(segments), slot[0])
    step_mask.seq_lengths = (1, full_mask.seq_lengths[1])
    logits = model(tokens[:, None], positions[:, None], step_mask, slot, _score_mod(segments, log_weights, slot[0]))
    return logits[:, -1].float()


_compiled_steps: dict[str, Callable] = {}


def compiled_decode_step(device: torch.device) -> Callable:
    """`decode_step` compiled once per process; CUDA graphs on GPU ("reduce-overhead")."""
    mode = "reduce-overhead" if device.type == "cuda" else None
    if mode not in _compiled_steps:
        _compiled_steps[mode] = torch.compile(decode_step, mode=mode, dynamic=False)
    return _compiled_steps[mode]


class Session:
    """Cache + masks for `batch` rows of at most `max_slots` tokens each."""

    def __init__(self, model: Decoder, batch: int, max_slots: int, log_weights: torch.Tensor | None = None):
        self.model, self.batch, self.max_slots = model, batch, max_slots
        self.device = model.device
        model.setup_cache(batch, max_slots)
        # Slots not yet written default to SHARED: that is what generated tokens are.
        self.segments = torch.full((batch, max_slots), SHARED, dtype=torch.int32, device=self.device)
        self.log_weights = log_weights  # [B, N+1] attention bias per segment, see masks.segment_bias
        self.length = 0
        self._decode_mask: BlockMask | None = None

    @torch.inference_mode()  # grad mode is part of a compiled graph's guards: keep it fixed
    def prefill(self, tokens: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Encode tokens [b, T] (b = batch, or 1 for a chunk shared by every row); last logits [b, V]."""
        if flex.is_compiled():
            pad = -tokens.shape[1] % PREFILL_BUCKET
            tokens, positions = F.pad(tokens, (pad, 0)), F.pad(positions, (pad, 0))
            segments = F.pad(segments, (pad, 0), value=PAD)
        rows, T = tokens.shape
        if self.length + T > self.max_slots:
            raise MinirunError(f"prompt needs {self.length + T} cache slots but the cache holds {self.max_slots}: "
                               "shorten the prompt or lower max_new_tokens")
        slots = torch.arange(self.length, self.length + T, device=self.device)
        self.segments[:, slots] = segments.to(self.segments)
        offset = torch.tensor(self.length, device=self.device)
        mask_mod = offset_queries(segment_mask(self.segments[:rows]), offset)
        block_mask = flex.block_mask(mask_mod, rows, T, self.max_slots, self.device)
        score_mod = _score_mod(self.segments[:rows], None if self.log_weights is None else self.log_weights[:rows], offset)
        logits = self.model(tokens, positions, block_mask, slots, score_mod, last_only=True)
        self.length += T
        self._decode_mask = None
        return logits[:, -1].float()

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token per row (tokens, positions [B]) at the next slot; logits [B, V]."""
        if self.length >= self.max_slots:
            raise MinirunError(f"the cache is full ({self.max_slots} slots): lower max_new_tokens")
        if self._decode_mask is None:  # built once per prompt, then sliced every step
            self._decode_mask = flex.block_mask(segment_mask(self.segments), self.batch, self.max_slots,
                                                self.max_slots, self.device)
        slot = torch.tensor([self.length], device=self.device)
        step = compiled_decode_step(self.device) if flex.is_compiled() else decode_step
        logits = step(self.model, tokens, positions, slot, self._decode_mask, self.segments, self.log_weights)
        self.length += 1
        return logits
