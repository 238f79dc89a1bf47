"""minirun: a small LLM inference runtime in plain PyTorch for paraphrase self-ensembles."""
from minirun.engine.llm import LLM, load
from minirun.errors import MinirunError

__all__ = ["LLM", "MinirunError", "load"]
__version__ = "0.1.0"
