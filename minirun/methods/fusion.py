"""Logit-fusion rules: pure functions from the rows' next-token logits [..., N, V] to fused scores [..., V].

The fused scores are logit-like (argmax = the fused greedy choice; softmax = a distribution to
sample from), so every rule plugs into the same decode step. Leading dimensions are questions fused
at once (each with its own weights [..., N]): one call per decode step instead of one per question,
with the same bits as fusing each question alone.
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def fuse_avg(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the raw logits."""
    return logits.mean(-2)


def fuse_avg_logprob(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the log-probabilities (a geometric mean of the distributions)."""
    return logits.log_softmax(-1).mean(-2)


def fuse_avg_prob(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the rows' probabilities (a mixture: the classic prompt ensemble, where one confident row can carry a
    token the others doubt), as log-probabilities, added up row by row in log space so that no row's small
    probabilities underflow (one `logaddexp` a row runs over contiguous memory: ~2× faster on a CPU than a
    `logsumexp` across the rows' dimension)."""
    logprobs = logits.log_softmax(-1)
    total = logprobs.select(-2, 0)
    for row in range(1, logits.shape[-2]):
        total = torch.logaddexp(total, logprobs.select(-2, row))
    return total - math.log(logits.shape[-2])


def fuse_max(logits: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Element-wise maximum of the rows' probabilities (returned as log-probabilities)."""
    return logits.softmax(-1).amax(-2).log()


def fuse_weighted_avg(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Logits summed with weights = confidences normalised over the paraphrases."""
    return (normalised(weights)[..., None] * logits).sum(-2)


def fuse_weighted_max(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The single most confident paraphrase's logits (ties: the first); a gather, not int(),
    so the decode loop never waits for the device."""
    return logits.take_along_dim(weights.argmax(-1)[..., None, None], dim=-2).squeeze(-2)


def normalised(weights: torch.Tensor) -> torch.Tensor:
    """Confidences [..., N] -> weights summing to 1; all-zero confidences fall back to uniform (no host sync)."""
    total = weights.sum(-1, keepdim=True)
    return torch.where(total > 0, weights / total.clamp(min=torch.finfo(weights.dtype).tiny), 1.0 / weights.shape[-1])


def confidence_weights(method: str, confidences: list[float]) -> list[float]:
    """A question's confidences as the weights its rule takes, worked out in Python's doubles before any float32
    tensor holds them: `weighted_max` a one-hot on the first most confident prompt (confidences that differ
    in float64 may be equal in float32), the others shares summing to 1, uniform when all are 0 (confidences
    near float32's range end would overflow its sum or become subnormal, and the fused logits with them)."""
    if method == "weighted_max":
        best = max(range(len(confidences)), key=lambda i: (confidences[i], -i))
        return [float(i == best) for i in range(len(confidences))]
    total = math.fsum(confidences)
    return [x / total for x in confidences] if total > 0 else [1 / len(confidences)] * len(confidences)


RULES: dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]] = {
    "avg": fuse_avg,
    "avg_logprob": fuse_avg_logprob,
    "avg_prob": fuse_avg_prob,
    "max": fuse_max,
    "weighted_avg": fuse_weighted_avg,
    "weighted_max": fuse_weighted_max,
}

# Rules that are a weighted sum Σ_r w_r·logits_r of a question's n rows: (n, confidences [n]) -> w [n].
# Logits are a linear function of the final states, so these equal the vocabulary head applied once to
# Σ_r w_r·state_r (`layers.hidden_fusion.HeadMix`); max, avg_logprob and avg_prob take a softmax first.
ROW_WEIGHTS: dict[str, Callable[[int, torch.Tensor | None], torch.Tensor]] = {
    "avg": lambda n, confidences: torch.full((n,), 1.0 / n),
    "weighted_avg": lambda n, confidences: normalised(confidences.float()),
    "weighted_max": lambda n, confidences: one_hot(confidences.argmax(), n),  # the first of equals, as the rule
}


def one_hot(index: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(n, device=index.device).index_fill_(0, index.reshape(1), 1.0)
