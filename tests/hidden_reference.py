"""A test-only hidden_avg without a KV cache, as the reference project computes it: every step
re-runs the whole sequences and fuses only the current last position, so earlier answer tokens
are recomputed unfused."""
from __future__ import annotations

from typing import Callable

import torch

from minirun.engine.generate import plain_row, stack_rows
from minirun.layers import flex
from minirun.layers.hidden_fusion import group_fusion
from minirun.layers.masks import SHARED, segment_mask
from minirun.methods.packing import Encoded


@torch.inference_mode()
def recompute_hidden_avg(llm, enc: Encoded, first_block: int, alpha: float, max_new_tokens: int,
                         stop: Callable[[list[int]], bool] | None = None) -> list[int]:
    """Greedy answer ids of one question; stops at an eos id or when `stop(ids)` says so."""
    layout = stack_rows([plain_row(enc.full(i)) for i in range(len(enc.paraphrases))], llm.pad_id, llm.device)
    rows = layout.tokens.shape[0]
    fusion = group_fusion([list(range(rows))], alpha, first_block, llm.device)
    tokens, positions, segments = layout.tokens, layout.positions, layout.segments
    answer: list[int] = []
    for step in range(max_new_tokens):
        length = tokens.shape[1]
        mask = flex.block_mask(segment_mask(segments), rows, length, length, llm.device)
        logits = llm.model(tokens, positions, mask, None, None, last_only=True, fusion=fusion)[:, -1].float()
        token = int(logits.mean(0).argmax())
        answer.append(token)
        if token in llm.eos_ids or (stop is not None and stop(answer)):
            break
        column = torch.full((rows, 1), token, device=llm.device)
        tokens = torch.cat([tokens, column], 1)
        positions = torch.cat([positions, (layout.next_positions + step)[:, None]], 1)
        segments = torch.cat([segments, torch.full((rows, 1), SHARED, dtype=segments.dtype, device=llm.device)], 1)
    return answer
