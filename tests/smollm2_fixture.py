"""Session fixtures for the real SmolLM2 GGUF and its conversions, and `write_tiny_gguf` for small ones.

The GGUF is pip-downloaded once into `<repo>/models/.cache`, so CI runs and later sessions reuse it.
`write_tiny_gguf` writes random-weight Llama/Qwen2/Qwen3 models the way llama.cpp's convert script does
(its tensor names, metadata keys, Llama q/k row permutation), independently of `minirun.checkpoints.convert`.
"""
from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import minirun.checkpoints.convert
import minirun.checkpoints.gguf_tokenizer
from minirun.checkpoints.convert import convert_gguf
from minirun.checkpoints.hub import DEFAULT_MODEL, fetch_smollm2_gguf, is_complete, pull

__all__ = ["smollm2_gguf", "smollm2_f32_dir", "smollm2_dir"]

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "models" / ".cache"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    return fetch_smollm2_gguf(CACHE, progress=False)


@pytest.fixture(scope="session")
def smollm2_f32_dir(smollm2_gguf: Path) -> Path:
    """Float32 conversion, cached under a hash of the converter's source so code changes re-convert."""
    sources = b"".join(Path(m.__file__).read_bytes() for m in (minirun.checkpoints.convert, minirun.checkpoints.gguf_tokenizer))
    target = CACHE / f"smollm2-f32-{hashlib.sha256(sources).hexdigest()[:10]}"
    if not is_complete(target):
        for stale in CACHE.glob("smollm2-f32-*"):
            shutil.rmtree(stale)
        convert_gguf(smollm2_gguf, target, dtype="float32")
    return target


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf: Path) -> Path:
    """The default model as `minirun pull` leaves it (bfloat16), in `<repo>/models`."""
    return pull(DEFAULT_MODEL, REPO / "models", progress=False)


SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["Ġ t", "h e", "Ġt he", "i n", "Ġ a", "r e", "o n", "Ġ i", "e r", "a t"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TINY = {
    "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, tie_word_embeddings=True,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    "qwen3": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=32, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
}
PRE = {"llama": "llama-bpe", "qwen2": "qwen2", "qwen3": "qwen2"}
GGUF_NAMES = {  # HF suffix -> llama.cpp name, as in llama.cpp's gguf-py tensor map
    "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
}


def tiny_vocab() -> tuple[list[str], list[int]]:
    """3 control tokens, the 256 byte-level symbols, then one token per merge."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = SPECIALS + [bytes_to_unicode()[b] for b in range(256)] + [m.replace(" ", "") for m in MERGES]
    return tokens, [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))


def tiny_model(arch: str, seed: int = 0, **changes):
    """A random-weight transformers model (weights scaled up so logits are not flat); `changes` replace
    TINY's config fields."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(arch, vocab_size=len(tiny_vocab()[0]), max_position_embeddings=256,
                                  rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, **{**TINY[arch], **changes})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2 if p.dim() > 1 else 0.5).add_(1.0 if p.dim() == 1 else 0.0)
    return model


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf `permute` for Llama attn_q/attn_k rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_name(hf: str) -> str:
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
           "lm_head.weight": "output.weight"}
    if hf in top:
        return top[hf]
    _, _, layer, rest = hf.split(".", 3)
    stem, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{GGUF_NAMES[stem]}.{kind}"


def llama_cpp_rope_factors(rope: dict, head_dim: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf for llama3 rope scaling: no metadata key, a `rope_freqs.weight`
    tensor of per-frequency divisors (its context length read from the config's top level, so 8192)."""
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    factor, low, high, context = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"], 8192
    out = []
    for wavelen in 2 * math.pi / freqs:
        if wavelen < context / high:
            out.append(1.0)
        elif wavelen > context / low:
            out.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_tiny_gguf(path: Path, model, qtype: str = "F32", arch: str | None = None,
                    metadata: dict[str, str | float] | None = None) -> Path:
    """Write `model` as llama.cpp would: 2-D weights in `qtype` (F32 or Q8_0), norms and biases in F32;
    `metadata` adds keys (text, uint32 or float32 values)."""
    import gguf

    c = model.config
    arch = arch or c.model_type
    rope = c.rope_parameters
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_freq_base(rope["rope_theta"])
    if rope["rope_type"] in ("linear", "yarn"):
        w.add_rope_scaling_type(gguf.RopeScalingType(rope["rope_type"]))
        w.add_rope_scaling_factor(rope["factor"])
    if rope["rope_type"] == "yarn":
        w.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])
    for key, value in (metadata or {}).items():
        add = w.add_string if isinstance(value, str) else w.add_uint32 if isinstance(value, int) else w.add_float32
        add(key, value)
    if rope["rope_type"] == "llama3":
        w.add_tensor("rope_freqs.weight", llama_cpp_rope_factors(rope, head_dim))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    tokens, types = tiny_vocab()
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE.get(c.model_type, "gpt2"))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(MERGES)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(0)
    w.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        data = tensor.float().numpy()
        if c.model_type == "llama" and ("q_proj.weight" in name or "k_proj.weight" in name):
            data = llama_cpp_permute(data, c.num_attention_heads if "q_proj" in name else c.num_key_value_heads)
        if qtype != "F32" and data.ndim == 2:
            quant = gguf.GGMLQuantizationType[qtype]
            w.add_tensor(_gguf_name(name), gguf.quants.quantize(data, quant), raw_dtype=quant)
        else:
            w.add_tensor(_gguf_name(name), np.ascontiguousarray(data, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
