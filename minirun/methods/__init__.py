"""Ensemble methods behind one interface: `run_method(llm, method, questions, options)`.

origin      the original question only
per_prompt  every paraphrase answered on its own (one batch)
vote        as per_prompt, then the answer most paraphrases give (majority vote)
avg, avg_logprob, max, weighted_avg, weighted_max
            paraphrases decoded as one batch, next-token scores fused every step
flex        paraphrases packed into one sequence; isolated in prefill, fused by attention
hidden_avg  rows as for avg; the newest token's hidden state fused across them from a block on

`llm` is anything that satisfies `EnsembleModel` (`minirun.LLM` does); `run_encoded` takes
questions already tokenised, with session hooks for callers that time them. `score_choices`
scores multiple-choice options with the same methods.
"""
from minirun.methods.choice import ChoiceResult, score_choices
from minirun.methods.model import EnsembleModel
from minirun.methods.options import EnsembleOptions, MethodResult, Question
from minirun.methods.runner import METHODS, run_encoded, run_method

__all__ = ["METHODS", "ChoiceResult", "EnsembleModel", "EnsembleOptions", "MethodResult", "Question", "run_encoded",
           "run_method", "score_choices"]
