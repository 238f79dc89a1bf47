"""Multiple-choice scoring: each option's log-likelihood as a continuation of the prompts.

Every method scores with the same machinery it generates with. Row methods prefill one row per
prompt, then feed all options of every question in one more call (`Session.extend`), each option
its own segment so it sees the prompt and itself but no other option. The option's next-token
scores are fused across the question's rows at every option token with the method's rule
(hidden_avg fuses the states instead), and its log-probabilities are read from the fused
distribution. flex lays its options after the packed prompt the same way, as branch segments:
each option attends to every paraphrase and to itself, never to another option. The prompt is
never re-run per option.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from minirun.engine.generate import Row, stack_rows
from minirun.engine.session import CHUNK, NO_HOOKS, Hooks, Session
from minirun.errors import MinirunError
from minirun.layers.masks import branch
from minirun.methods.fusion import RULES, WEIGHTED
from minirun.methods.model import EnsembleModel
from minirun.methods.options import EnsembleOptions, Question
from minirun.methods.packing import Encoded, packed_row
from minirun.methods.runner import (
    check_method,
    checked_call,
    encode_batch,
    flex_log_weights,
    open_session,
    plan_rows,
    shared_head,
)



@dataclass
class ChoiceResult:
    method: str
    choice: int  # the best-scoring option (per_prompt: the first prompt's pick)
    scores: list[float]  # every option's score: mean or summed log-probability
    prompts: list[str]
    prompt_tokens: int
    per_prompt_choices: list[int] | None = None  # per_prompt: each prompt's pick
    per_prompt_scores: list[list[float]] | None = None
    fusion_layer: int | None = None


def option_ids(llm: EnsembleModel, enc: Encoded, choices: list[str]) -> list[list[int]]:
    """Each option's token ids as a continuation of the prompt: a space first unless the prompt
    already ends in whitespace (a chat template's generation prompt ends with a newline)."""
    tail = llm.tokenizer.decode(enc.tail or enc.paraphrases[-1])
    sep = "" if tail[-1:].isspace() else " "
    out = [llm.tokenizer.encode(sep + c.strip(), add_special_tokens=False) for c in choices]
    if any(not ids for ids in out):
        raise MinirunError("an answer option is empty: every option needs some text")
    return out


def score_choices(llm: EnsembleModel, method: str, questions: list[Question], choices: list[list[str]],
                  options: EnsembleOptions | None = None, hooks: Hooks = NO_HOOKS) -> list[ChoiceResult]:
    """Score every question's options with `method`; `options.choice_score` picks mean or sum."""
    options = checked_call(questions, options)
    check_method(method, options)
    if isinstance(choices, str) or any(isinstance(c, str) for c in choices):
        raise MinirunError("choices must be one list of option strings per question, e.g. [['Paris', 'Lyon']]")
    if len(questions) != len(choices) or not all(choices):
        raise MinirunError("every question needs its list of answer options")
    prompts = [[q.question] if method == "origin" else list(q.paraphrases) for q in questions]
    encoded = encode_batch(llm, questions, prompts, options)
    targets = [option_ids(llm, e, c) for e, c in zip(encoded, choices)]
    with torch.inference_mode():
        if method == "flex":
            return _score_flex(llm, encoded, targets, prompts, options, hooks)
        return _score_rows(llm, method, encoded, targets, prompts, options, hooks)


def option_row(targets: list[list[int]], start: int, segment: Callable[[int], int]) -> Row:
    """All options after a prompt ending at position start-1, one after another, each fed without
    its last token (only its predecessors' states are needed); option k is segment `segment(k)`."""
    tokens, positions, segments = [], [], []
    for k, ids in enumerate(targets):
        tokens += ids[:-1]
        positions += range(start, start + len(ids) - 1)
        segments += [segment(k)] * (len(ids) - 1)
    return Row(tokens, positions, segments, start)


def option_room(targets: list[list[list[int]]], option_rows: list[Row]) -> tuple[int, int]:
    """(positions, slots) the options need past each prompt: an option reaches as far as the longest
    one (they share their start position), while its row holds all of them one after another and is
    left-padded by up to CHUNK, which the cache must hold but the context need not."""
    longest = max(len(ids) for question in targets for ids in question)
    width = max(len(r.tokens) for r in option_rows)
    return longest, max(0, width - longest) + CHUNK


def _predictors(first: torch.Tensor, chunk: torch.Tensor, targets: list[list[int]]) -> list[torch.Tensor]:
    """Per option, the logits [R, n, V] that predict its n tokens: the prompt's last logits `first`
    [R, V], then the chunk's logits [R, T, V] at the option's own earlier tokens (the chunk is
    left-padded, so the options end at its right edge)."""
    out, offset = [], chunk.shape[1] - sum(len(t) - 1 for t in targets)
    for ids in targets:
        n = len(ids) - 1
        out.append(torch.cat([first[:, None], chunk[:, offset:offset + n]], dim=1))
        offset += n
    return out


def _options_pass(llm: EnsembleModel, session: Session, option_rows: list[Row]) -> torch.Tensor:
    """Every row's options in one call over the prompt's cache: final-norm states [B, T, E]."""
    layout = stack_rows(option_rows, llm.pad_id, llm.device)
    if not layout.length:  # single-token options: the prompt's last logits are all they need
        return layout.tokens.new_zeros((len(option_rows), 0, llm.config.hidden_size), dtype=torch.float32)
    return session.extend(layout.tokens, layout.positions, layout.segments)


def _option_scores(predictors: list[torch.Tensor], targets: list[list[int]], rule, weights: torch.Tensor | None,
                   mode: str) -> list[float]:
    """Each option's fused log-likelihood (rows fused per token with `rule`; None: one row)."""
    scores = []
    for logits, ids in zip(predictors, targets):
        fused = logits[0] if rule is None else torch.stack([rule(logits[:, j], weights) for j in range(len(ids))])
        logp = fused.log_softmax(-1).gather(-1, torch.tensor(ids, device=fused.device)[:, None])[:, 0]
        total = logp.sum().item()
        scores.append(total / len(ids) if mode == "mean" else total)
    return scores


def _best(scores: list[float]) -> int:
    return max(range(len(scores)), key=scores.__getitem__)


def _score_rows(llm: EnsembleModel, method: str, encoded: list[Encoded], targets: list[list[list[int]]],
                prompts: list[list[str]], options: EnsembleOptions, hooks: Hooks) -> list[ChoiceResult]:
    confidences = None
    if method in WEIGHTED:  # before our session: computing them opens sessions of their own
        from minirun.methods.confidence import confidences_for

        confidences = options.confidences or confidences_for(llm, encoded, options)
    plan = plan_rows(llm, method, encoded, options)
    option_rows = [option_row(targets[q], plan.rows[r].next_position, lambda k: k + 1)
                   for q, g in enumerate(plan.groups) for r in g]
    longest, slots = option_room(targets, option_rows)
    session, _, first = open_session(llm, plan.rows, plan.head, longest, hooks, fusion=plan.fusion, extra_slots=slots)
    states = _options_pass(llm, session, option_rows)  # [B, T, E]
    results = []
    for q, group in enumerate(plan.groups):
        rows = torch.tensor(group, device=llm.device)
        chunk = session.logits(states.index_select(0, rows))  # [R, T, V]
        predictors = _predictors(first.index_select(0, rows), chunk, targets[q])
        weights = torch.tensor(confidences[q], device=llm.device) if confidences else None
        tokens = sum(len(plan.rows[r].tokens) for r in group) + (len(plan.head) if plan.head else 0)
        if method in ("origin", "per_prompt"):
            each = [_option_scores([p[i:i + 1] for p in predictors], targets[q], None, None, options.choice_score)
                    for i in range(len(group))]
            per_prompt = method == "per_prompt"
            results.append(ChoiceResult(method, _best(each[0]), each[0], prompts[q], tokens,
                                        [_best(s) for s in each] if per_prompt else None, each if per_prompt else None))
            continue
        rule = RULES["avg" if method == "hidden_avg" else method]
        scores = _option_scores(predictors, targets[q], rule, weights, options.choice_score)
        results.append(ChoiceResult(method, _best(scores), scores, prompts[q], tokens, fusion_layer=plan.layer))
    return results


def _score_flex(llm: EnsembleModel, encoded: list[Encoded], targets: list[list[list[int]]], prompts: list[list[str]],
                options: EnsembleOptions, hooks: Hooks) -> list[ChoiceResult]:
    """One packed row per question (as flex generates), then its options as branch segments."""
    if not all(e.tail for e in encoded):
        raise MinirunError("flex needs a shared suffix after the paraphrases so the options see all of them: "
                           "use the chat template or give a suffix (e.g. '\\nA:')")
    head = shared_head(encoded, options)
    rows = [packed_row(e, options.positions, share_head=options.share_prefix, head_in_row=head is None)
            for e in encoded]
    option_rows = [option_row(t, r.next_position, branch) for t, r in zip(targets, rows)]
    longest, slots = option_room(targets, option_rows)
    weights = flex_log_weights(encoded, options.flex_bias, llm.device)
    session, _, first = open_session(llm, rows, head, longest, hooks, weights, extra_slots=slots)
    states = _options_pass(llm, session, option_rows)
    results = []
    for q, (t, r) in enumerate(zip(targets, rows)):
        predictors = _predictors(first[q:q + 1], session.logits(states[q:q + 1]), t)
        scores = _option_scores(predictors, t, None, None, options.choice_score)
        tokens = (len(head) if head else 0) + len(r.tokens)
        results.append(ChoiceResult("flex", _best(scores), scores, prompts[q], tokens))
    return results
