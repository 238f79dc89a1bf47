"""Next-token choice: greedy or temperature / top-k / top-p sampling, without host syncs."""
from __future__ import annotations

import numbers
import secrets
from dataclasses import dataclass

import torch

from minirun.errors import MinirunError, whole_number


MIN_TEMPERATURE = 1e-30  # float32 logits (|x| up to ~1e4) divided by less can overflow to inf, and softmax to NaN


@dataclass
class SamplingParams:
    temperature: float = 0.0  # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        """Refuse values that would crash mid-generation (top-k 0) or silently mean something else
        (a negative temperature decoding greedily, a top-p above 1 keeping everything)."""
        for name in ("temperature", "top_p"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (isinstance(value, numbers.Real) or (value is None and name == "top_p")):
                raise MinirunError(f"{name} must be a number, got {value!r}")
        for name in ("top_k", "seed"):  # numpy's and torch's integers as Python's
            if getattr(self, name) is not None:
                setattr(self, name, whole_number(getattr(self, name), name))
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:  # what torch's generators take
            raise MinirunError(f"seed must be in [-2**63, 2**64), got {self.seed}: pass a smaller seed")
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature < float("inf")):
            raise MinirunError(f"temperature must be 0 (greedy) or a finite number from {MIN_TEMPERATURE:g}, got "
                               f"{self.temperature}: below it the scaled logits overflow (pass 0 for greedy)")
        if self.top_k is not None and self.top_k < 1:
            raise MinirunError(f"top_k must be at least 1, got {self.top_k}: pass top_k >= 1, or leave it unset")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise MinirunError(f"top_p must be in (0, 1], got {self.top_p}: pass 0 < top_p <= 1, or leave it unset")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def generator(self, device: torch.device) -> torch.Generator | None:
        if self.greedy:
            return None
        g = torch.Generator(device=device)
        # unseeded: a fresh draw from the OS, not torch.seed(), which would reseed the caller's global generator
        g.manual_seed(self.seed if self.seed is not None else secrets.randbits(63))
        return g


def generation_params(temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                      seed: int | None = None) -> SamplingParams:
    """`generate`'s sampling settings: there, top_k or top_p with temperature 0 is a mistake, not greedy decoding."""
    params = SamplingParams(temperature, top_k, top_p, seed)
    if params.greedy and (top_k is not None or top_p is not None):
        raise MinirunError("top_k and top_p shape sampling, but temperature 0 decodes greedily: set a temperature "
                           "(e.g. 0.7) or drop them")
    return params


def filter_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature-scaled logits [B, V] with everything outside top-k / top-p set to -inf."""
    logits = logits / params.temperature
    if params.top_k is not None and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        # transformers' rule, to the bit and the tie: in ascending order, drop the tokens whose mass up to and
        # including them is at most 1 - top_p (the smallest set holding top_p stays), never the most likely
        sorted_logits, order = torch.sort(logits, dim=-1)
        drop = sorted_logits.softmax(-1).cumsum(-1) <= 1 - params.top_p
        drop[:, -1] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Token ids [B] from logits [B, V]; exponential-race sampling needs no device-to-host copy."""
    if params.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits.float(), params).softmax(-1)
    race = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / race).argmax(-1)
