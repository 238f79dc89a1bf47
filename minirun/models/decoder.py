"""The one decoder: RMSNorm, RoPE, GQA attention through FlexAttention, SwiGLU MLP.

Llama, Qwen2 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm, free head_dim) are configurations of
this module, not copies. Shape comments: B batch, T query tokens, S cache slots, H heads,
K kv heads, D head_dim, E hidden size.
"""
from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask

from minirun.layers import flex
from minirun.layers.compiled import Compiled
from minirun.layers.hidden_fusion import HeadMix, HiddenFusion, fuse_newest, mix_states
from minirun.layers.kv_cache import KVCache
from minirun.layers.linear import Linear
from minirun.layers.masks import SHARED, segment_mask
from minirun.layers.ragged import Ragged, last_of_rows, pack, pack_heads, unpack, unpack_heads
from minirun.layers.rope import apply_rope, attention_scale, inv_frequencies, rope_cos_sin
from minirun.models.config import ModelConfig

Keep = Literal["all", "last", "cache"]  # which token states leave a prompt's final block (`Block.forward`)


class Embedding(nn.Module):
    """Token ids to rows of `weight`. Not nn.Embedding: its random initialisation, which runs even on the meta
    device where the decoder is built before its weights are assigned, imports torch's compiler there (~1.5 s
    of every command's start on a 2-core CPU, compiled or not)."""

    def __init__(self, num: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num, dim))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RMSNorm(nn.Module):
    """Normalise in float32, cast back, then scale in the model dtype (transformers' order)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.c = c
        q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        self.wqkv = Linear(c.hidden_size, q_dim + 2 * kv_dim, bias=c.qkv_bias)  # q, k, v fused
        self.wo = Linear(q_dim, c.hidden_size, bias=c.o_bias)
        self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps) if c.qk_norm else None
        self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps) if c.qk_norm else None
        self.kv_cache: KVCache | None = None

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Normalised states [B, T, E] -> q [B, H, T, D] and k, v [B, K, T, D], RoPE applied."""
        c = self.c
        B, T, _ = x.shape
        q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        qkv = self.wqkv(x)
        v = qkv[..., q_dim + kv_dim:].view(B, T, c.num_kv_heads, c.head_dim).transpose(1, 2)  # [B, K, T, D]
        if self.q_norm is None:  # q and k rotated as one tensor: half the small operations of a decode step
            qk = apply_rope(qkv[..., :q_dim + kv_dim].view(B, T, c.num_heads + c.num_kv_heads, c.head_dim), cos, sin)
            q, k = qk.split([c.num_heads, c.num_kv_heads], dim=2)
        else:
            q, k = qkv[..., :q_dim].view(B, T, c.num_heads, c.head_dim), qkv[..., q_dim:q_dim + kv_dim].view(
                B, T, c.num_kv_heads, c.head_dim)
            q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        return q.transpose(1, 2), k.transpose(1, 2), v  # [B, H, T, D], [B, K, T, D] x 2

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: BlockMask,
               slots: torch.Tensor | slice | None, score_mod: Callable | None) -> torch.Tensor:
        """Write k, v at cache `slots` (if any) and attend: [B, H, T, D]."""
        if slots is None:
            return flex.attention(q, k, v, block_mask, score_mod)
        k, v = self.kv_cache.update(slots, k, v)  # [B, K, S, D]
        return flex.attention(q, k, v, block_mask, score_mod, shared=self.kv_cache.shared)

    def out(self, y: torch.Tensor) -> torch.Tensor:
        """Attention output [B, H, T, D] -> [B, T, E]."""
        B, _, T, _ = y.shape
        return self.wo(y.transpose(1, 2).reshape(B, T, self.c.num_heads * self.c.head_dim))


class MLP(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.w_gate_up = Linear(c.hidden_size, 2 * c.intermediate_size, bias=c.mlp_bias)  # gate, up fused
        self.w_down = Linear(c.intermediate_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.config_key = repr(c)  # what its compiled regions specialise on, made once (a repr costs ~10 us)
        self.attn_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.attn = Attention(c)
        self.mlp_norm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MLP(c)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, block_mask: BlockMask,
                slots: torch.Tensor | slice | None, score_mod: Callable | None,
                ragged: Ragged | None = None, keep: Keep = "all") -> torch.Tensor | None:
        """x [B, T, E], or with `ragged` the batch's real tokens [1, N, E], which attention sees padded.

        `keep` says which states leave the block. "all": every token's. "last": each row's last
        token's [B, 1, E], the only one a prompt's final block must carry past attention (everything
        after it is per token), so the output projection and the MLP run on one token a row. "cache":
        none (returns None): the block only writes its keys and values at `slots`, all a prompt chunk
        before the last needs from the final block.
        """
        before, after = (_compiled_before, _compiled_after) if prefill_regions(x) else (before_attention, after_attention)
        q, k, v = before(self, x, cos, sin)
        if ragged is not None:
            q, k, v = (unpack_heads(t, ragged) for t in (q, k, v))
        if keep == "cache":
            self.attn.kv_cache.update(slots, k, v)
            return None
        y = self.attn.attend(q, k, v, block_mask, slots, score_mod)
        if keep == "last":
            x = x[:, -1:] if ragged is None else x[0, last_of_rows(ragged)][:, None]  # [B, 1, E]
            return after_attention(self, x, y[:, :, -1:])
        return after(self, x, y if ragged is None else pack_heads(y, ragged))


def before_attention(block: Block, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A block up to attention: norm, q/k/v projection, q/k norm, RoPE."""
    return block.attn.project(block.attn_norm(x), cos, sin)


def after_attention(block: Block, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A block after attention: output projection, residual, norm, MLP, residual."""
    x = x + block.attn.out(y)
    return x + block.mlp(block.mlp_norm(x))


def prefill_regions(x: torch.Tensor) -> bool:
    """Whether a prompt chunk runs a block's code around attention as two compiled graphs.

    Eager, the ~40 small operations of a block (RMSNorm's six, RoPE's twelve, SiLU·up, residuals)
    each cost a dispatch and a pass over memory; compiled, they fuse into a few loops between the
    matrix products. Attention and the cache write stay outside, so the graphs depend on the chunk's
    shape only, never on the cache size, and serve every block of the model. On CPU; the decode step
    is compiled whole instead.
    """
    return flex.is_compiled() and x.device.type == "cpu" and x.shape[1] > 1 and not torch.compiler.is_compiling()


def _region_key(block: Block, x: torch.Tensor, *rest: torch.Tensor) -> tuple:
    return block.config_key, x.shape[0], x.shape[1], x.dtype, x.device


def _region_label(block: Block, x: torch.Tensor, *rest: torch.Tensor) -> str:
    return f"{x.shape[0]} rows of {x.shape[1]} tokens, {str(x.dtype).removeprefix('torch.')}"


_compiled_before = Compiled(before_attention, "a block's projections before attention", _region_key, _region_label,
                            dynamic=False)
_compiled_after = Compiled(after_attention, "a block's MLP after attention", _region_key, _region_label, dynamic=False)


class Decoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.config_key = repr(config)  # made once: the compiled decode step asks for `graph_key` every token
        self.embed = Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        with torch.device("cpu"):  # as transformers computes them; on the meta device they import torch's compiler
            inv_freq = inv_frequencies(config.head_dim, config.rope_theta, config.rope_scaling)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.rope_scale = attention_scale(config.rope_scaling)  # YaRN's, on cos and sin; 1 for the other kinds

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.weight.dtype

    def graph_key(self) -> tuple:
        """What a compiled graph of this model specialises on: its configuration, dtype and device, not
        the object. A second load of one checkpoint runs the graphs the first compiled (torch guards on
        shapes and constants, not identity), so counting objects would spend the recompile budget on
        graphs that are never built and then run them eagerly."""
        return self.config_key, self.dtype, self.device

    def calibration_weights(self) -> list[torch.Tensor]:
        """What CPU product kernels are timed on (`layers.calibrate`): every matrix of every third block,
        a decode step's mix of shapes and a working set far beyond the cache, in a third of the time."""
        return [m.weight for layer in self.layers[::3]
                for m in (layer.attn.wqkv, layer.attn.wo, layer.mlp.w_gate_up, layer.mlp.w_down)]

    def setup_cache(self, batch: int, max_seq_len: int, exact: bool = True) -> None:
        """Give every layer a KV cache for a whole generation of `batch` rows x `max_seq_len` slots.

        The buffers of the previous generation are kept where they can hold this one (`KVCache.reset`:
        `exact` keeps only the same shape and zeroes it, for compiled steps; otherwise any larger
        allocation is viewed as it is). A new allocation that is not exact covers both the old and the
        new shape, so alternating batch shapes settle on one allocation.
        """
        c, w = self.config, self.embed.weight
        for layer in self.layers:
            cache = layer.attn.kv_cache
            if cache is not None and cache.k.dtype == w.dtype and cache.k.device == w.device and \
                    cache.reset(batch, max_seq_len, exact):
                continue
            rows, slots = batch, max_seq_len
            if cache is not None and not exact:
                rows, slots = max(rows, cache.allocation[0].shape[0]), max(slots, cache.allocation[0].shape[2])
            layer.attn.kv_cache = KVCache(rows, c.num_kv_heads, slots, c.head_dim, w.dtype, w.device)
            layer.attn.kv_cache.reset(batch, max_seq_len, exact)

    def release_cache(self) -> None:
        """Drop every layer's KV cache: after an allocation failed, the next `setup_cache` allocates only
        what its own batch needs, not the union with the batch that did not fit."""
        for layer in self.layers:
            layer.attn.kv_cache = None

    def mark_shared(self, length: int) -> None:
        """Every row's first `length` cache slots now hold the same keys and values (a head written once
        for all rows): dense attention reads them from one row for the whole batch."""
        for layer in self.layers:
            layer.attn.kv_cache.shared = length

    def cached_slots(self, start: int, end: int, rows: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the keys and values in cache slots [start, end) of the first `rows` rows (default:
        all), per layer [rows, K, end - start, D]."""
        return [(layer.attn.kv_cache.k[:rows, :, start:end].clone(), layer.attn.kv_cache.v[:rows, :, start:end].clone())
                for layer in self.layers]

    def restore_slots(self, start: int, saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Write `cached_slots`'s copies back from cache slot `start`; a one-row copy goes into every row."""
        for layer, (k, v) in zip(self.layers, saved):
            layer.attn.kv_cache.update(slice(start, start + k.shape[2]), k, v)

    def copy_rows(self, sources: torch.Tensor, start: int, end: int) -> None:
        """Every layer's cache row r takes row `sources[r]`'s keys and values in slots [start, end)."""
        for layer in self.layers:
            layer.attn.kv_cache.copy_rows(sources, start, end)

    def retain_rows(self, rows: list[int], length: int) -> None:
        """Keep only batch rows `rows` (ascending) of every layer's cache, their first `length` slots."""
        for layer in self.layers:
            layer.attn.kv_cache.retain(rows, length)

    def hidden(self, tokens: torch.Tensor, positions: torch.Tensor | None = None, block_mask: BlockMask | None = None,
               slots: torch.Tensor | slice | None = None, score_mod: Callable | None = None,
               fusion: HiddenFusion | None = None, ragged: Ragged | None = None,
               keep: Keep = "all") -> torch.Tensor | None:
        """Final-norm hidden states [B, T, E]; with `keep="last"` each row's last token's [B, 1, E], and
        with `keep="cache"` none (the keys and values written at `slots` are all that is wanted), which
        spares the final block's output projection and MLP for the tokens not kept (`Block.forward`).

        Without `slots` the tokens attend to each other only (no cache); with `slots` ([T] indices, or
        a slice of T consecutive slots) their keys/values are written at those cache slots and
        attention runs over the whole cache.
        With `fusion`, the last token's state is fused across rows after each block from
        `fusion.first_block` on, so later blocks (and the cache) see the fused state.
        With `ragged` (where the real tokens are), every per-token step runs on those only, and the
        padding's states come out as zeros; its keys and values in the cache are zeros, which the
        mask hides from every other token.
        """
        B, T = tokens.shape
        if positions is None:
            positions = torch.arange(T, device=tokens.device).expand(B, T)
        if block_mask is None:
            segments = torch.full((B, T), SHARED, device=tokens.device)
            block_mask = flex.block_mask(segment_mask(segments), B, T, T, tokens.device)
        if ragged is not None:
            tokens, positions = pack(tokens, ragged), pack(positions, ragged)  # [1, N]
        x = self.embed(tokens)  # [B, T, E], or [1, N, E]
        cos, sin = rope_cos_sin(self.inv_freq, positions, x.dtype, self.rope_scale)
        final = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, block_mask, slots, score_mod, ragged, keep if i == final else "all")
            if x is None:
                return None
            if i == final and keep == "last":
                ragged = None  # the kept states are one a row, [B, 1, E]
            if fusion is not None and i + 1 >= fusion.first_block:
                x = fuse_newest(x, fusion) if ragged is None else pack(fuse_newest(unpack(x, ragged), fusion), ragged)
        return self.norm(x if ragged is None else unpack(x, ragged))

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None, block_mask: BlockMask | None = None,
                slots: torch.Tensor | slice | None = None, score_mod: Callable | None = None, last_only: bool = False,
                fusion: HiddenFusion | None = None, ragged: Ragged | None = None,
                head_mix: HeadMix | None = None) -> torch.Tensor:
        """Logits [B, T, V] (or [B, 1, V] with `last_only`, skipping the vocab matmul elsewhere).

        With `head_mix`, the last token's states of each group of rows are mixed first: [Q, 1, V]."""
        h = self.hidden(tokens, positions, block_mask, slots, score_mod, fusion, ragged)
        if head_mix is not None:
            return self.last_logits(h[:, -1], head_mix)[:, None]
        return self.lm_head(h[:, -1:] if last_only else h)

    def last_logits(self, states: torch.Tensor, head_mix: HeadMix | None = None) -> torch.Tensor:
        """Logits [B, V] from each row's last final-norm state [B, E]; with `head_mix`, each group's
        states mixed first: [Q, V]."""
        return self.lm_head(states if head_mix is None else mix_states(states, head_mix))
