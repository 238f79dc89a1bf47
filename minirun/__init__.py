"""minirun: a small LLM inference runtime in plain PyTorch for paraphrase self-ensembles."""
from minirun.errors import MinirunError
from minirun.llm import LLM, load

__all__ = ["LLM", "MinirunError", "load"]
__version__ = "0.1.0"
