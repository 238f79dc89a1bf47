"""Named model shapes and random-weight checkpoints of them, for benchmarks without downloads.

Speed depends on a model's shapes, not its weights, so a random checkpoint of the real shape
benchmarks as the real model would; it is written in HF layout so minirun and transformers both
load the very same files.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from minirun.checkpoints.loader import DTYPES
from minirun.errors import MinirunError

_LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
          "attention_bias": False, "mlp_bias": False, "rms_norm_eps": 1e-5}
_MISTRAL = {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_act": "silu",
            "rms_norm_eps": 1e-5, "sliding_window": None}
_QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
          "rms_norm_eps": 1e-6, "use_sliding_window": False}
_QWEN3 = {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
          "attention_bias": False, "rms_norm_eps": 1e-6, "use_sliding_window": False}

SHAPES: dict[str, dict[str, Any]] = {
    "smollm2-135m": {**_LLAMA, "num_hidden_layers": 30, "hidden_size": 576, "num_attention_heads": 9,
                     "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
                     "tie_word_embeddings": True, "rope_theta": 100000.0, "max_position_embeddings": 8192,
                     "bos_token_id": 0, "eos_token_id": 0},
    "llama-3.2-1b": {**_LLAMA, "num_hidden_layers": 16, "hidden_size": 2048, "num_attention_heads": 32,
                     "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192, "vocab_size": 128256,
                     "tie_word_embeddings": True, "rope_theta": 500000.0, "max_position_embeddings": 131072,
                     "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                     "bos_token_id": 128000, "eos_token_id": 128001},
    "mistral-7b": {**_MISTRAL, "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
                   "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32768,
                   "tie_word_embeddings": False, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
                   "bos_token_id": 1, "eos_token_id": 2},  # Mistral-7B-Instruct-v0.3
    "qwen2.5-0.5b": {**_QWEN2, "num_hidden_layers": 24, "hidden_size": 896, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
                     "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
                     "bos_token_id": 151643, "eos_token_id": 151643},
    "qwen3-0.6b": {**_QWEN3, "num_hidden_layers": 28, "hidden_size": 1024, "num_attention_heads": 16,
                   "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072, "vocab_size": 151936,
                   "tie_word_embeddings": True, "rope_theta": 1000000.0, "max_position_embeddings": 40960,
                   "bos_token_id": 151643, "eos_token_id": 151645},
}



def shape_config(shape: str | dict[str, Any], dtype: str = "bfloat16", **overrides: Any) -> dict[str, Any]:
    """HF-style config.json dict of a named shape (or a full dict), with `overrides` applied.

    Overrides let tests build a scaled-down model of the same family without materialising the big one.
    """
    if isinstance(shape, str):
        if shape not in SHAPES:
            raise MinirunError(f"unknown shape {shape!r}: choose one of {', '.join(SHAPES)}")
        shape = SHAPES[shape]
    if dtype not in DTYPES:
        raise MinirunError(f"unsupported dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    return {**shape, **overrides, "torch_dtype": dtype}


def _tensor_shapes(c: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """HF tensor names -> shapes, the layout both loaders expect."""
    E, heads, kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
    D = c.get("head_dim") or E // heads
    I, V = c["intermediate_size"], c["vocab_size"]
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (V, E), "model.norm.weight": (E,)}
    for i in range(c["num_hidden_layers"]):
        p = f"model.layers.{i}."
        out |= {p + "self_attn.q_proj.weight": (heads * D, E), p + "self_attn.k_proj.weight": (kv * D, E),
                p + "self_attn.v_proj.weight": (kv * D, E), p + "self_attn.o_proj.weight": (E, heads * D),
                p + "mlp.gate_proj.weight": (I, E), p + "mlp.up_proj.weight": (I, E), p + "mlp.down_proj.weight": (E, I),
                p + "input_layernorm.weight": (E,), p + "post_attention_layernorm.weight": (E,)}
        if c["model_type"] == "qwen2":
            out |= {p + "self_attn.q_proj.bias": (heads * D,), p + "self_attn.k_proj.bias": (kv * D,),
                    p + "self_attn.v_proj.bias": (kv * D,)}
        if c["model_type"] == "qwen3":
            out |= {p + "self_attn.q_norm.weight": (D,), p + "self_attn.k_norm.weight": (D,)}
    if not c.get("tie_word_embeddings", False):
        out["lm_head.weight"] = (V, E)
    return out


def random_checkpoint(shape: str | dict[str, Any], out_dir: str | Path, dtype: str = "bfloat16", seed: int = 0,
                      **overrides: Any) -> Path:
    """Write config.json + model.safetensors with N(0, 0.02) weights (norm weights 1.0); return the dir."""
    config = shape_config(shape, dtype, **overrides)
    torch_dtype = DTYPES[dtype]
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, size in _tensor_shapes(config).items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(size, dtype=torch_dtype)
        else:
            tensors[name] = torch.empty(size).normal_(0.0, 0.02, generator=generator).to(torch_dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2))
    return out
