"""FlexAttention entry points, eager or compiled, chosen once per process.

Eager FlexAttention is a dense reference path (fine for tests and tiny inputs); the compiled one
runs the block-sparse kernels. `set_compiled(True)` switches both attention and mask building.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")

_state = {"compiled": False}
_compiled_flex = torch.compile(flex_attention, dynamic=False)
_compiled_block_mask = torch.compile(create_block_mask)


def set_compiled(enabled: bool) -> None:
    """Use compiled FlexAttention kernels (fast) or the eager reference path.

    Inductor's on-disk cache goes under ~/.cache/minirun so later processes skip most of the
    first compile (unless TORCHINDUCTOR_CACHE_DIR says otherwise).
    """
    _state["compiled"] = enabled
    if enabled:
        default = Path(os.environ.get("MINIRUN_CACHE", Path.home() / ".cache" / "minirun")) / "inductor"
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default))


def is_compiled() -> bool:
    return _state["compiled"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, score_mod: Callable | None = None) -> torch.Tensor:
    """q [B, H, T, D] against k/v [B, Hkv, S, D] under `block_mask`; GQA handled by the kernel."""
    fn = _compiled_flex if _state["compiled"] and not torch.compiler.is_compiling() else flex_attention
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=True)


def block_mask(mask_mod: Callable, batch: int, q_len: int, kv_len: int, device: torch.device) -> BlockMask:
    """Build a BlockMask; compiled on GPU (no dense Q×KV temporary).

    On CPU the builder stays eager: torch 2.13's inductor emits C++ that does not compile for
    these mask_mods (a VecMask int/float mismatch), and the dense temporary is small there.
    """
    use_compiled = _state["compiled"] and torch.device(device).type == "cuda" and not torch.compiler.is_compiling()
    fn = _compiled_block_mask if use_compiled else create_block_mask
    return fn(mask_mod, batch, None, q_len, kv_len, device=device)
