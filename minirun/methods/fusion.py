"""Logit-fusion rules: pure functions from the rows' next-token logits [N, V] to fused scores [V].

The fused scores are logit-like (argmax = the fused greedy choice; softmax = a distribution to
sample from), so every rule plugs into the same decode step.
"""
from __future__ import annotations

from typing import Callable

import torch


def fuse_avg(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the raw logits."""
    return logits.mean(0)


def fuse_avg_logprob(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the log-probabilities (a geometric mean of the distributions)."""
    return logits.log_softmax(-1).mean(0)


def fuse_max(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Element-wise maximum of the rows' probabilities (returned as log-probabilities)."""
    return logits.softmax(-1).amax(0).log()


def fuse_weighted_avg(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Logits summed with weights = confidences normalised over the paraphrases."""
    w = normalised(weights)
    return (w[:, None] * logits).sum(0)


def fuse_weighted_max(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The single most confident paraphrase's logits (ties: the first); index_select, not int(),
    so the decode loop never waits for the device."""
    return logits.index_select(0, weights.argmax().reshape(1))[0]


def normalised(weights: torch.Tensor) -> torch.Tensor:
    """Confidences -> weights summing to 1; all-zero confidences fall back to uniform (no host sync)."""
    total = weights.sum()
    return torch.where(total > 0, weights / total.clamp(min=torch.finfo(weights.dtype).tiny), 1.0 / len(weights))


RULES: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "avg": fuse_avg,
    "avg_logprob": fuse_avg_logprob,
    "max": fuse_max,
    "weighted_avg": fuse_weighted_avg,
    "weighted_max": fuse_weighted_max,
}
WEIGHTED = ("weighted_avg", "weighted_max")
