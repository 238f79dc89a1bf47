"""Ensemble methods behind one interface: `run_method(llm, method, questions, options)`.

origin      the original question only
per_prompt  every paraphrase answered on its own (one batch)
avg, avg_logprob, max, weighted_avg, weighted_max
            paraphrases decoded as one batch, next-token scores fused every step
flex        paraphrases packed into one sequence; isolated in prefill, fused by attention
"""
from minirun.methods.runner import METHODS, EnsembleOptions, MethodResult, Question, run_method

__all__ = ["METHODS", "EnsembleOptions", "MethodResult", "Question", "run_method"]
