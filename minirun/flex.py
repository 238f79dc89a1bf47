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
from torch.nn.attention.flex_attention import _DEFAULT_SPARSE_BLOCK_SIZE, BlockMask, create_block_mask, flex_attention

from minirun.compiled import Compiled, raise_torch_limit

warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")

BLOCK = _DEFAULT_SPARSE_BLOCK_SIZE  # BlockMask granularity (128): masks are built over whole blocks

_state = {"compiled": False}
_compiled_flex = Compiled(
    flex_attention, "FlexAttention",
    lambda q, k, v, score_mod=None, block_mask=None, **_: (f"q {'x'.join(map(str, q.shape))}, "
                                                           f"kv {'x'.join(map(str, k.shape))}{', bias' if score_mod else ''}"),
    dynamic=False)
_compiled_block_mask = Compiled(
    create_block_mask, "create_block_mask",
    lambda mask_mod, batch, heads, q_len, kv_len, device=None: f"batch {batch}, {q_len}x{kv_len} slots", dynamic=False)


def set_compiled(enabled: bool) -> None:
    """Use compiled FlexAttention kernels (fast) or the eager reference path.

    Inductor's on-disk cache goes under ~/.cache/minirun so later processes skip most of the
    first compile (unless TORCHINDUCTOR_CACHE_DIR says otherwise).
    """
    _state["compiled"] = enabled
    if enabled:
        raise_torch_limit()
        default = Path(os.environ.get("MINIRUN_CACHE", Path.home() / ".cache" / "minirun")) / "inductor"
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(default))


def is_compiled() -> bool:
    return _state["compiled"]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask, score_mod: Callable | None = None) -> torch.Tensor:
    """q [B, H, T, D] against k/v [B, Hkv, S, D] under `block_mask`; GQA handled by the kernel."""
    fn = _compiled_flex if _state["compiled"] and not torch.compiler.is_compiling() else flex_attention
    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=True)


def block_mask(mask_mod: Callable, batch: int, q_len: int, kv_len: int, device: torch.device) -> BlockMask:
    """Build a BlockMask; compiled (no dense Q×KV temporary) when q_len is whole blocks.

    torch 2.13's Inductor emits C++ that does not compile for a partial query block on CPU (a
    VecMask<int>/VecMask<float> mismatch), so the session always builds over whole blocks.
    """
    use_compiled = _state["compiled"] and q_len % BLOCK == 0 and not torch.compiler.is_compiling()
    fn = _compiled_block_mask if use_compiled else create_block_mask
    return fn(mask_mod, batch, None, q_len, kv_len, device=device)
