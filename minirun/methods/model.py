"""What a method needs from a loaded model, written down as a Protocol.

`minirun.LLM` satisfies it; anything else that does (a benchmark's or a test's wrapper) can be
passed to `run_method` too. Methods never reach past these members into the model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from minirun.checkpoints.tokenizer import Tokenizer
from minirun.engine.generate import Completion, Stopper
from minirun.engine.sampling import SamplingParams
from minirun.engine.session import NO_HOOKS, Hooks, Session
from minirun.layers.hidden_fusion import HeadMix, HiddenFusion
from minirun.models.config import ModelConfig


class EnsembleModel(Protocol):
    config: ModelConfig
    tokenizer: Tokenizer
    path: Path  # identifies the weights in on-disk caches (confidences)

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    @property
    def pad_id(self) -> int: ...

    def session(self, batch: int, slots: int, hooks: Hooks = NO_HOOKS, reuse: bool = False, *,
                log_weights: torch.Tensor | None = None, fusion: HiddenFusion | None = None,
                head_mix: HeadMix | None = None) -> Session: ...

    def stopper(self, stop: tuple[str, ...] | list[str] = (), ignore_eos: bool = False,
                reasoning: bool = False) -> Stopper: ...

    def opens_reasoning(self, chat: bool | None, thinking: bool | None) -> bool: ...

    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams,
                     stop: tuple[str, ...] | list[str] = ()) -> list[Completion]: ...
