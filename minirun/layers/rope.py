"""Rotary position embeddings computed exactly as transformers computes them."""
from __future__ import annotations

import math

import torch


def inv_frequencies(dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies in float32 for head size `dim`, with a config's `rope_scaling`
    (default, linear, llama3)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    scaling = scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
        old_ctx = scaling["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_ctx / low, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_ctx / high) * ~(wavelen > old_ctx / low)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin for explicit position ids [B, T] -> two [B, T, 1, head_dim] tensors in `dtype`
    (broadcast over the heads of [B, T, heads, D]).

    transformers rotates with cat(-x2, x1) * sin; here the sign lives in sin instead: cat(x2, x1) *
    cat(-sin, sin) gives the same bits (negation is exact and commutes with rounding), one operation
    fewer per call, computed once per forward rather than in every block."""
    freqs = positions[..., None].float() * inv_freq  # [B, T, D/2], float32
    cos, sin = freqs.cos().to(dtype), freqs.sin().to(dtype)
    return torch.cat((cos, cos), dim=-1)[:, :, None], torch.cat((-sin, sin), dim=-1)[:, :, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, T, heads, D] in the half-split layout HF checkpoints use (`rope_cos_sin`'s tables)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, x1), dim=-1) * signed_sin
