"""One generation's runtime state: the preallocated cache, per-slot segment ids, the decode mask.

Prefill writes a chunk of tokens at the next free cache slots; decode writes one token per row at
the next slot. Cache slot (where K/V live) and RoPE position (what the model sees) are separate
inputs, so packed paraphrases can share positions but never slots.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask

from minirun import flex
from minirun.errors import MinirunError
from minirun.masks import SHARED, offset_queries, segment_bias, segment_mask
from minirun.models import Decoder

SLOT_BUCKET = 128  # cache sizes are rounded up to this, so compiled shapes repeat across prompts


def cache_size(needed: int, limit: int | None = None) -> int:
    """Slots to allocate: `needed` rounded up to a bucket (never above `limit` when given)."""
    size = -(-needed // SLOT_BUCKET) * SLOT_BUCKET
    return max(needed, min(size, limit)) if limit else size


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

    def prefill(self, tokens: torch.Tensor, positions: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        """Encode tokens [b, T] (b = batch, or 1 for a chunk shared by every row); last logits [b, V]."""
        rows, T = tokens.shape
        if self.length + T > self.max_slots:
            raise MinirunError(f"prompt needs {self.length + T} cache slots but the cache holds {self.max_slots}: "
                               "shorten the prompt or lower max_new_tokens")
        slots = torch.arange(self.length, self.length + T, device=self.device)
        self.segments[:, slots] = segments.to(self.segments)
        offset = torch.tensor(self.length, device=self.device)
        mask_mod = offset_queries(segment_mask(self.segments[:rows]), offset)
        block_mask = flex.block_mask(mask_mod, rows, T, self.max_slots, self.device)
        logits = self.model(tokens, positions, block_mask, slots, self._score_mod(offset, rows), last_only=True)
        self.length += T
        self._decode_mask = None
        return logits[:, -1].float()

    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One token per row (tokens, positions [B]) at the next slot; logits [B, V]."""
        if self.length >= self.max_slots:
            raise MinirunError(f"the cache is full ({self.max_slots} slots): lower max_new_tokens")
        slot = torch.tensor([self.length], device=self.device)
        block_mask = self._step_mask(slot)
        logits = self.model(tokens[:, None], positions[:, None], block_mask, slot, self._score_mod(slot[0], self.batch))
        self.length += 1
        return logits[:, -1].float()

    def _score_mod(self, offset: torch.Tensor, rows: int) -> Callable | None:
        if self.log_weights is None:
            return None
        return segment_bias(self.segments[:rows], self.log_weights[:rows], offset)

    def _step_mask(self, slot: torch.Tensor) -> BlockMask:
        """Slice this step's query row out of a mask built once over all slots."""
        base = segment_mask(self.segments)
        if self._decode_mask is None:
            self._decode_mask = flex.block_mask(base, self.batch, self.max_slots, self.max_slots, self.device)
        step = self._decode_mask[:, :, slot // self._decode_mask.BLOCK_SIZE[0]]
        step.mask_mod = offset_queries(base, slot[0])
        step.seq_lengths = (1, self.max_slots)
        return step
