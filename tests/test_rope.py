"""RoPE against transformers' own functions, bit for bit: the sign moved into the sin table must not
change a single rounding."""
import pytest
import torch
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from minirun.layers.rope import apply_rope, inv_frequencies, rope_cos_sin


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_matches_transformers_bit_for_bit(dtype):
    torch.manual_seed(0)
    B, T, H, K, D = 2, 7, 4, 2, 16
    positions = torch.randint(0, 4000, (B, T))
    inv_freq = inv_frequencies(D, 10000.0)
    freqs = positions[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    cos_ref, sin_ref = emb.cos().to(dtype), emb.sin().to(dtype)  # [B, T, D], as transformers' rotary embedding
    q, k = torch.randn(B, H, T, D).to(dtype), torch.randn(B, K, T, D).to(dtype)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos_ref, sin_ref)  # [B, heads, T, D]
    cos, sin = rope_cos_sin(inv_freq, positions, dtype)
    assert cos.shape == sin.shape == (B, T, 1, D)
    both = apply_rope(torch.cat((q, k), dim=1).transpose(1, 2), cos, sin).transpose(1, 2)  # q and k as one tensor
    assert torch.equal(both[:, :H], q_ref) and torch.equal(both[:, H:], k_ref)


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}
SCALED = [
    ("qwen3", YARN),  # Qwen's long-context setting: the default betas, the attention factor from the factor
    ("qwen3", {**YARN, "beta_fast": 16, "beta_slow": 2, "truncate": False}),
    ("llama", {**YARN, "factor": 8.0, "mscale": 0.707, "mscale_all_dim": 1.0}),  # DeepSeek's temperature ratio
    ("qwen2", {**YARN, "attention_factor": 0.9}),
    ("qwen3", {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 128}),  # the growth: 4
    ("llama", {"rope_type": "dynamic", "factor": 2.0}),
    ("llama", {"rope_type": "dynamic", "factor": 1.3}),  # a factor whose arithmetic rounds
]


@pytest.mark.parametrize("model_type, rope", SCALED)
def test_scaled_frequencies_match_transformers_bit_for_bit(model_type, rope):
    """yarn and dynamic rope: transformers' own init function on the same config.json gives the same inverse
    frequencies and cos/sin factor, to the bit (dynamic: within the context, where it is fixed)."""
    from transformers import AutoConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from minirun.layers.rope import attention_scale
    from minirun.models.config import ModelConfig

    raw = dict(model_type=model_type, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=320,
               max_position_embeddings=512, rope_parameters={**rope, "rope_theta": 1000000.0})
    theirs = AutoConfig.for_model(**raw)
    expected, expected_scale = ROPE_INIT_FUNCTIONS[rope["rope_type"]](theirs, "cpu")
    ours = ModelConfig.from_dict(theirs.to_dict())
    inv_freq = inv_frequencies(ours.head_dim, ours.rope_theta, ours.rope_scaling)
    assert inv_freq.dtype == expected.dtype and torch.equal(inv_freq, expected)
    assert attention_scale(ours.rope_scaling) == expected_scale
    assert not torch.equal(inv_freq, inv_frequencies(ours.head_dim, ours.rope_theta)) or rope["rope_type"] == "dynamic"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_scaled_cos_sin_match_transformers_rotary_embedding(dtype):
    """YaRN's attention factor multiplies cos and sin in float32 before the cast, as transformers' rotary
    embedding does: the same bits in either dtype."""
    from transformers import AutoConfig
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    from minirun.layers.rope import attention_scale
    from minirun.models.config import ModelConfig

    config = AutoConfig.for_model("qwen3", hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                                  vocab_size=320, max_position_embeddings=512,
                                  rope_parameters={**YARN, "rope_theta": 1000000.0})
    positions = torch.randint(0, 512, (2, 9), generator=torch.Generator().manual_seed(0))
    cos_ref, sin_ref = Qwen3RotaryEmbedding(config)(torch.zeros(1, dtype=dtype), positions)
    ours = ModelConfig.from_dict(config.to_dict())
    scale = attention_scale(ours.rope_scaling)
    assert scale > 1.0
    cos, sin = rope_cos_sin(inv_frequencies(ours.head_dim, ours.rope_theta, ours.rope_scaling), positions, dtype, scale)
    assert torch.equal(cos[:, :, 0], cos_ref) and torch.equal(sin[:, :, 0, 16:], sin_ref[..., 16:])
    assert torch.equal(-sin[:, :, 0, :16], sin_ref[..., :16])
