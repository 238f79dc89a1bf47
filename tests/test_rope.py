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
