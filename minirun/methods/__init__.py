"""Ensemble methods behind one interface: `run_method(llm, method, questions, options)`.

origin      the original question only
per_prompt  every paraphrase answered on its own (one batch)
vote        as per_prompt, then the answer most paraphrases give (majority vote)
avg, avg_logprob, avg_prob, max, weighted_avg, weighted_max
            paraphrases decoded as one batch, next-token scores fused every step
flex        paraphrases packed into one sequence; isolated in prefill, fused by attention
hidden_avg  rows as for avg; the newest token's hidden state fused across them from a block on

`llm` is anything that satisfies `EnsembleModel` (`minirun.LLM` does); `run_encoded` takes
questions already tokenised, with session hooks for callers that time them. `score_choices`
scores multiple-choice options with the same methods, `score_blanks` options that fill a gap.
"""
import importlib

from minirun.methods.names import METHODS

_HOMES = {"ChoiceResult": "choice", "score_choices": "choice", "score_blanks": "choice",
          "EnsembleModel": "model", "EnsembleOptions": "options",
          "MethodResult": "options", "Question": "options", "run_encoded": "runner", "run_method": "runner"}

__all__ = ["METHODS", *_HOMES]


def __getattr__(name: str):
    """The methods' code imports torch on first use, not with the package: the command line's help and checks
    read `METHODS` alone."""
    if name in _HOMES:
        return getattr(importlib.import_module(f"minirun.methods.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'minirun.methods' has no attribute {name!r}")
