"""How a multiple-choice method picks from its options' log-likelihoods, and how sure it is: pure functions on
plain floats, no torch, so `report` re-picks a run's rows under another scoring and measures calibration without
loading the model code (the scoring itself is `methods.choice`)."""
from __future__ import annotations

import math

from minirun.methods.vote import plurality, vote_shares


def option_scores(logprobs: list[float], tokens: list[int], chars: list[int], mode: str) -> list[float]:
    """Summed log-likelihoods as `mode` scores them: per token, summed, or per character of the option
    (lm-evaluation-harness's acc_norm divides by the option text's length)."""
    if mode == "sum":
        return list(logprobs)
    return [lp / n for lp, n in zip(logprobs, tokens if mode == "mean" else chars)]


def best_option(scores: list[float]) -> int:
    """The highest score's index, the first on a tie (as numpy's argmax)."""
    return max(range(len(scores)), key=scores.__getitem__)


def pick(logprobs: list[float], tokens: list[int], chars: list[int], mode: str) -> tuple[int, list[float]]:
    """The option `mode` picks from the options' summed log-likelihoods, and every option's score."""
    scores = option_scores(logprobs, tokens, chars, mode)
    return best_option(scores), scores


def method_pick(method: str, logprobs: list[float], tokens: list[int], chars: list[int], mode: str,
                per_prompt: list[list[float]] | None = None) -> tuple[int, list[float], list[int] | None]:
    """A method's pick and every option's score under `mode`, and each prompt's pick where `per_prompt` holds each
    prompt's summed log-likelihoods: vote takes the option most prompts pick (`plurality`), scored by its share of
    the picks; every other method the best score of its (fused) `logprobs`."""
    each = [pick(lp, tokens, chars, mode)[0] for lp in per_prompt] if per_prompt is not None else None
    if method == "vote":
        if each is None:
            raise ValueError("vote picks from each prompt's log-likelihoods: pass per_prompt")
        return each[plurality(each)], vote_shares(each, len(logprobs)), each
    choice, scores = pick(logprobs, tokens, chars, mode)
    return choice, scores, each


def option_probabilities(method: str, scores: list[float]) -> list[float]:
    """How sure a method is of each option, for calibration: the softmax of the scores it picked by (under the run's
    `choice_score`: the options' summed, per-token or per-character log-likelihoods, normalised over the options),
    vote's the shares of the prompts' picks its scores already are."""
    if method == "vote":
        return list(scores)
    top = max(scores)  # shifted, as a softmax is computed: exp of a large log-likelihood sum would overflow
    weights = [math.exp(s - top) for s in scores]
    total = sum(weights)
    return [w / total for w in weights]


def true_mass(logprobs: list[float], rights: list[int]) -> float:
    """TruthfulQA's MC2 of one item: the probability the options' summed log-likelihoods, normalised over the
    options, put on its right options (lm-evaluation-harness's formula, whatever the run's choice score)."""
    probabilities = option_probabilities("origin", logprobs)
    return sum(probabilities[i] for i in rights)
