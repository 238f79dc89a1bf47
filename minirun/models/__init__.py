"""Model architectures: one decoder, configured per family (Llama, Qwen2, Qwen3)."""
from minirun.models.decoder import Decoder, Keep

__all__ = ["Decoder", "Keep"]
