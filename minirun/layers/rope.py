"""Rotary position embeddings computed exactly as transformers computes them."""
from __future__ import annotations

import math

import torch


def inv_frequencies(dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies in float32 for head size `dim`, with a config's `rope_scaling` (default, linear,
    llama3, yarn, dynamic), in transformers' order of operations so every bit agrees."""
    scaling = scaling or {}
    kind = scaling.get("rope_type", "default")
    if kind == "dynamic":  # NTK: the base stretched for the context; never longer than max_position_embeddings here
        context = scaling["max_position_embeddings"]
        theta = theta * ((scaling["factor"] * context / context) - (scaling["factor"] - 1)) ** (dim / (dim - 2))
    if kind == "yarn":
        return yarn_frequencies(dim, theta, scaling)
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
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


def yarn_frequencies(dim: int, theta: float, scaling: dict) -> torch.Tensor:
    """YaRN (Peng et al., 2023): frequencies that turn fewer than `beta_slow` times over the original context
    are interpolated by `factor`, those turning more than `beta_fast` times kept, a linear ramp between."""
    powers = theta ** (torch.arange(0, dim, 2).float() / dim)
    factor, context = scaling["factor"], scaling["original_max_position_embeddings"]

    def turned(rotations: float) -> float:  # the dimension whose frequency turns `rotations` times over `context`
        return (dim * math.log(context / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = turned(scaling.get("beta_fast") or 32), turned(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    kept = 1 - torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    return 1.0 / (factor * powers) * (1 - kept) + 1.0 / powers * kept


def attention_scale(scaling: dict | None) -> float:
    """What cos and sin are multiplied by: YaRN's attention temperature (an explicit `attention_factor`, else
    0.1·ln(factor)·mscale + 1, over the same for `mscale_all_dim` where both are given); 1 otherwise."""
    scaling = scaling or {}
    if scaling.get("rope_type") != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return scaling["attention_factor"]

    def mscale(factor: float, weight: float = 1) -> float:
        return 1.0 if factor <= 1 else 0.1 * weight * math.log(factor) + 1.0

    factor, weight, weight_all = scaling["factor"], scaling.get("mscale"), scaling.get("mscale_all_dim")
    return float(mscale(factor, weight) / mscale(factor, weight_all)) if weight and weight_all else mscale(factor)


def rope_cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, dtype: torch.dtype,
                 scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin for explicit position ids [B, T] -> two [B, T, 1, head_dim] tensors in `dtype`
    (broadcast over the heads of [B, T, heads, D]), times `scale` (`attention_scale`) in float32 before the cast.

    transformers rotates with cat(-x2, x1) * sin; here the sign lives in sin instead: cat(x2, x1) *
    cat(-sin, sin) gives the same bits (negation is exact and commutes with rounding), one operation
    fewer per call, computed once per forward rather than in every block."""
    freqs = positions[..., None].float() * inv_freq  # [B, T, D/2], float32
    cos, sin = freqs.cos(), freqs.sin()
    if scale != 1.0:
        cos, sin = cos * scale, sin * scale
    cos, sin = cos.to(dtype), sin.to(dtype)
    return torch.cat((cos, cos), dim=-1)[:, :, None], torch.cat((-sin, sin), dim=-1)[:, :, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, T, heads, D] in the half-split layout HF checkpoints use (`rope_cos_sin`'s tables)."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((x2, x1), dim=-1) * signed_sin
