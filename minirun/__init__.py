"""minirun: a small LLM inference runtime in plain PyTorch for paraphrase self-ensembles."""
from minirun.errors import MinirunError

__all__ = ["LLM", "MinirunError", "load"]
__version__ = "0.1.0"


def __getattr__(name: str):
    """`minirun.LLM` and `minirun.load` import torch on first use, not on `import minirun`: the command line
    starts through this package, and a Ctrl-C during torch's import would otherwise end in a traceback."""
    if name in ("LLM", "load"):
        from minirun.engine import llm

        return getattr(llm, name)
    raise AttributeError(f"module 'minirun' has no attribute {name!r}")
