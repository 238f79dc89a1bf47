"""Model architectures: one decoder, configured per family (Llama, Qwen2, Qwen3)."""
from minirun.models.decoder import Decoder

__all__ = ["Decoder"]
