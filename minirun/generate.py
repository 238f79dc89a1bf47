"""Prompt layouts and the decode loop shared by every method."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from minirun.engine import Session
from minirun.masks import PAD, SHARED
from minirun.tokenizer import Tokenizer


@dataclass
class Layout:
    """Prompt tokens laid out in cache slots: tokens, RoPE positions and segment ids, all [B, L]."""

    tokens: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    next_positions: torch.Tensor  # [B] RoPE position of each row's first generated token

    @property
    def length(self) -> int:
        return self.tokens.shape[1]


def left_padded(prompts: list[list[int]], pad_id: int, device: torch.device, start: int = 0) -> Layout:
    """Rows of different lengths right-aligned in slots, so all rows decode at the same slot.

    `start` is the RoPE position of each row's first token (a shared prefix's length).
    """
    width = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(prompts), width), dtype=torch.long)
    segments = torch.full((len(prompts), width), PAD, dtype=torch.int32)
    for row, ids in enumerate(prompts):
        n = len(ids)
        tokens[row, width - n:] = torch.tensor(ids, dtype=torch.long)
        positions[row, width - n:] = torch.arange(start, start + n)
        segments[row, width - n:] = SHARED
    next_positions = torch.tensor([start + len(p) for p in prompts])
    return Layout(tokens.to(device), positions.to(device), segments.to(device), next_positions.to(device))


@dataclass
class Stopper:
    """When a row is done: an eos id, or a stop string in its text (text is cut before it)."""

    tokenizer: Tokenizer
    eos_ids: set[int]
    stop_strings: tuple[str, ...] = ()

    def finish(self, ids: list[int]) -> tuple[list[int], str, str] | None:
        """(ids, text, reason) when `ids` is finished, else None."""
        for i, token in enumerate(ids):
            if token in self.eos_ids:
                return ids[: i + 1], self.text(ids[:i]), "eos"
        text = self.text(ids)
        cut = min((text.find(s) for s in self.stop_strings if s in text), default=-1)
        if cut >= 0:
            return ids, text[:cut], "stop"
        return None

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


@dataclass
class Completion:
    """One generated answer: text (cut at eos/stop), generated ids, and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int = 0
    extra: dict = field(default_factory=dict)


def decode_loop(session: Session, logits: torch.Tensor, next_positions: torch.Tensor,
                choose: Callable[[torch.Tensor], torch.Tensor], max_new_tokens: int, stopper: Stopper,
                outputs: int | None = None, check_every: int = 1,
                on_text: Callable[[str], None] | None = None) -> list[Completion]:
    """Pick a token per row with `choose`, feed it back, until every tracked row is done.

    `outputs` rows (default all) are tracked; fusion methods track one because every row carries
    the same fused token. Finished rows keep decoding harmlessly until all are done. Tokens stay on
    the device and are copied to the host every `check_every` steps only.
    """
    rows = session.batch if outputs is None else outputs
    generated = torch.empty((session.batch, max_new_tokens), dtype=torch.long, device=session.device)
    done: dict[int, Completion] = {}
    shown = ""
    steps = 0
    for step in range(max_new_tokens):
        token = choose(logits)  # [B]
        generated[:, step] = token
        steps = step + 1
        if steps % check_every == 0 or steps == max_new_tokens:
            host = generated[:rows, :steps].tolist()
            for row in range(rows):
                if row not in done and (finished := stopper.finish(host[row])):
                    done[row] = Completion(finished[1], finished[0], finished[2])
            if on_text is not None:
                current = done[0].text if 0 in done else stopper.text(host[0])
                if current.startswith(shown) and len(current) > len(shown):
                    on_text(current[len(shown):])
                    shown = current
            if len(done) == rows:
                break
        if steps < max_new_tokens:
            logits = session.decode(token, next_positions + step)
    host = generated[:rows, :steps].tolist()
    return [done.get(r) or Completion(stopper.text(host[r]), host[r], "length") for r in range(rows)]
