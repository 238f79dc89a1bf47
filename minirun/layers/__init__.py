"""Building blocks under the decoder: attention entry points (FlexAttention or dense masks for SDPA),
mask_mods, the KV cache, `Linear`, RoPE, and the bounded `torch.compile` wrapper they use."""
