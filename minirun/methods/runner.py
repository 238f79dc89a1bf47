"""Run any method over a batch of questions with one prefill and one decode loop."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from minirun.engine.generate import Completion, Layout, Row, Stopper, decode_loop, left_padded, plain_row, stack_rows
from minirun.engine.sampling import SamplingParams, sample
from minirun.engine.session import NO_HOOKS, Hooks, OwnHeads, Session, pad_unit
from minirun.errors import MinirunError, PromptTooLong
from minirun.layers.hidden_fusion import HeadMix, HiddenFusion, group_fusion, head_mix
from minirun.methods.fusion import ROW_WEIGHTS, RULES, confidence_weights
from minirun.methods.model import EnsembleModel
from minirun.methods.options import EnsembleOptions, MethodResult, Question
from minirun.methods.packing import (
    POSITION_SCHEMES,
    Encoded,
    common_head,
    encode_question,
    no_shared_tail,
    packed_row,
)
from minirun.methods.names import EVERY_ANSWER, METHODS, OPTION_READERS
from minirun.methods.vote import answer_key, plurality

FUSED_ROWS = (*RULES, "hidden_avg")  # one row per prompt, one fused token per question
# Every prompt its own row after the shared head, nothing fused into the cache: these methods prefill a batch
# alike, so run back to back on one batch the later ones copy the first one's prefill (`Session.prefill`).
PROMPT_ROWS = (*EVERY_ANSWER, *RULES)


def default_fusion_layer(num_layers: int) -> int:
    """round(0.75 x depth), halves up: where the reference results found hidden fusion best
    (21 of 28, 24 of 32, 12 of 16, 27 of 36; 23 of SmolLM2's 30)."""
    return math.floor(0.75 * num_layers + 0.5)


def fusion_layer(options: EnsembleOptions, num_layers: int) -> int:
    """The block hidden_avg fuses from: the option, checked against the model's depth, or the default."""
    layer = options.fusion_layer if options.fusion_layer is not None else default_fusion_layer(num_layers)
    if not 1 <= layer <= num_layers:
        raise MinirunError(f"--fusion-layer {layer} is outside the model's blocks 1..{num_layers}: pick one in range")
    return layer


def run_method(llm: EnsembleModel, method: str, questions: list[Question], options: EnsembleOptions | None = None,
               hooks: Hooks = NO_HOOKS) -> list[MethodResult]:
    """Answer every question with `method`; one batched generation for the whole list."""
    options = checked_call(questions, options)
    check_method(method, options)
    prompts = method_prompts(method, questions)
    for q, p in zip(questions, prompts):
        if not p:
            raise MinirunError(f"method {method} needs at least one paraphrase for {q.question!r}: give one (-p on "
                               "the command line, Question's paraphrases in Python)")
    return run_encoded(llm, method, encode_batch(llm, method, questions, prompts, options), options, prompts, hooks)


def method_prompts(method: str, questions: list[Question]) -> list[list[str]]:
    """Each question's prompts as `method` asks them: origin its question alone, the others its paraphrases."""
    return [[q.question] if method == "origin" else list(q.paraphrases) for q in questions]


def encode_batch(llm: EnsembleModel, method: str, questions: list[Question], prompts: list[list[str]],
                 options: EnsembleOptions) -> list[Encoded]:
    """Each question's `prompts` encoded (`encode_question`); how a batch shares their heads is the method's
    layout (`plan_rows`, `flex_rows`)."""
    return [encode_question(llm, p, q.prefix, q.suffix, options.chat, options.thinking)
            for q, p in zip(questions, prompts)]


def check_options_used(methods: list[str] | tuple[str, ...], options: EnsembleOptions) -> None:
    """Refuse a field of `options` set away from its default that none of `methods` reads: a setting the
    user believes is in effect, silently ignored, would misdescribe the run (and its results' key)."""
    default = EnsembleOptions()
    for name, readers in OPTION_READERS.items():
        if getattr(options, name) != getattr(default, name) and not set(methods) & set(readers):
            raise MinirunError(f"--{name.replace('_', '-')} only applies to {', '.join(readers)}, not to "
                               f"{', '.join(methods)}: drop it, or run one of those methods")


def checked_call(questions: list[Question], options: EnsembleOptions | None) -> EnsembleOptions:
    """The options a method runs with, once `questions` is a non-empty list of Question and `options` an
    EnsembleOptions (or None: the defaults)."""
    if not isinstance(questions, (list, tuple)) or not questions or not all(isinstance(q, Question) for q in questions):
        raise MinirunError(f"questions must be a non-empty list of Question, got {type(questions).__name__}: "
                           "e.g. [Question(q, [q, 'a rewording'])]")
    if options is not None and not isinstance(options, EnsembleOptions):
        raise MinirunError(f"options must be an EnsembleOptions, got {type(options).__name__}: "
                           "e.g. EnsembleOptions(max_new_tokens=8)")
    return options or EnsembleOptions()


def check_method(method: str, options: EnsembleOptions) -> None:
    if method not in METHODS:
        raise MinirunError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    if options.positions not in POSITION_SCHEMES:
        raise MinirunError(f"unknown position scheme {options.positions!r}: choose {', '.join(POSITION_SCHEMES)}")
    if not 0.0 <= options.fusion_alpha <= 1.0:
        raise MinirunError(f"--fusion-alpha {options.fusion_alpha} is outside [0, 1]: 1 replaces each state by the mean")


def run_encoded(llm: EnsembleModel, method: str, encoded: list[Encoded], options: EnsembleOptions,
                prompts: list[list[str]] | None = None, hooks: Hooks = NO_HOOKS) -> list[MethodResult]:
    """`run_method` on questions already tokenised (`encode_question`); `prompts` only label the results.

    `hooks` observe every session the method opens (the benchmark stamps its clock there).
    """
    check_method(method, options)
    if prompts is None:
        prompts = [[""] * len(e.paraphrases) for e in encoded]
    if method == "flex" and not all(e.tail for e in encoded):
        raise no_shared_tail("the first answer token")
    with torch.inference_mode():
        if method == "flex":
            return _run_flex(llm, encoded, prompts, options, hooks)
        from minirun.methods.confidence import weights_for

        confidences = weights_for(llm, method, encoded, options)
        return _run_rows(llm, method, encoded, prompts, options, confidences, hooks)


def flex_rows(encoded: list[Encoded], options: EnsembleOptions) -> tuple[list[int] | None, list[Row]]:
    """flex's packed row per question and the head the batch prefills once for them: the tokens every question's
    head starts with, when sharing is on. The rest of a question's head stays in its row as shared tokens
    (`packed_row`), so a question's packed row reads the same whatever else is in its batch."""
    n = common_head(encoded) if options.share_prefix else 0
    head = encoded[0].head[:n] if n else None
    return head, [packed_row(e, options.positions, options.share_prefix, prefilled=n) for e in encoded]


OWN_HEAD_MIN = 8  # tokens: a shorter own head costs about as much apart (one more prefill call) as in its rows


def own_heads_apart(encoded: list[Encoded], shared: int) -> bool:
    """Whether the questions' own heads (what each question's prompts share beyond the batch's `shared` head:
    few-shot examples drawn per question, a passage to read) are prefilled once per question rather than in
    each of its prompts' rows: where a question of several prompts has a head long enough (one prompt each, as
    origin asks, would only pay a second prefill call, ~5 % of origin's time). Compiled, a head shorter than a
    prefill chunk would be padded to one: it stays in the rows. Either way every row's keys and values are the
    same in float32 (tests pin the answers token for token)."""
    least = max(OWN_HEAD_MIN, pad_unit())
    return any(len(e.paraphrases) > 1 and len(e.head) - shared >= least for e in encoded)


@dataclass
class RowPlan:
    """One row per prompt, grouped by question, as every row method (all but flex) lays them out."""

    head: list[int] | None  # a head shared by every row, prefilled once
    own: list[list[int]] | None  # each question's own head after it, prefilled once for its rows; None: in the rows
    rows: list[Row]
    groups: list[list[int]]  # row indices of each question
    layer: int | None  # hidden_avg: the first fused block
    fusion: HiddenFusion | None

    @property
    def owners(self) -> list[int]:
        """Each row's question (`groups` take the rows in order)."""
        return [q for q, group in enumerate(self.groups) for _ in group]

    def prompt_tokens(self, q: int) -> int:
        """Tokens prefilled for question `q`: the shared head and its own head once, then each prompt's row."""
        heads = len(self.head or []) + (len(self.own[q]) if self.own else 0)
        return heads + sum(len(self.rows[r].tokens) for r in self.groups[q])


def plan_rows(llm: EnsembleModel, method: str, encoded: list[Encoded], options: EnsembleOptions) -> RowPlan:
    """Each prompt a row after the head every question of the batch starts with (with sharing on), each
    question's own head before its rows where it is long enough to encode apart (`own_heads_apart`)."""
    n = common_head(encoded) if options.share_prefix else 0
    head = encoded[0].head[:n] or None
    apart = options.share_prefix and own_heads_apart(encoded, n)
    rows, groups = [], []
    for enc in encoded:
        start = len(rows)
        for i in range(len(enc.paraphrases)):
            rows.append(plain_row(enc.body(i), len(enc.head)) if apart else plain_row(enc.full(i)[n:], n))
        groups.append(list(range(start, len(rows))))
    layer = fusion_layer(options, llm.config.num_layers) if method == "hidden_avg" else None
    # alpha 0 is avg by definition: no fusion at all, rather than a mix that rounds back to the same states
    fusion = group_fusion(groups, options.fusion_alpha, layer, llm.device) if layer and options.fusion_alpha else None
    return RowPlan(head, [e.head[n:] for e in encoded] if apart else None, rows, groups, layer, fusion)


class Opened(NamedTuple):
    """A session with its rows prefilled: their layout and last logits [B, V] (one row per group
    when the session mixes the head)."""
    session: Session
    layout: Layout
    logits: torch.Tensor


def open_session(llm: EnsembleModel, rows: list[Row], head: list[int] | None, max_new: int, hooks: Hooks,
                 log_weights: torch.Tensor | None = None, fusion: HiddenFusion | None = None,
                 mixing: HeadMix | None = None, extra_slots: int = 0, reach: list[int] | None = None,
                 owners: list[int] | None = None, own: list[list[int]] | None = None) -> Opened:
    """Allocate the cache, prefill a shared head once (batch 1; copied when an earlier batch encoded
    it), the questions' `own` heads once each (`RowPlan.own`, with `owners`), then all rows. `max_new`
    tokens follow each row's prompt at the next positions (checked against the context; `owners` names
    each row's question in the error, by default row i is question i, as flex packs them); scoring passes
    `reach`, each row's own answer options' length (a long prompt and another question's long option need
    not fit together); `extra_slots` are cache room without positions (a later call's padding)."""
    limit = llm.config.max_position_embeddings
    scoring = reach is not None
    furthest = [r.next_position + n for r, n in zip(rows, reach or [max_new] * len(rows), strict=True)]
    row = furthest.index(max(furthest))
    if furthest[row] > limit:
        after, fix = ("the longest answer option", "shorter options") if scoring else ("max_new_tokens", "fewer new tokens")
        raise PromptTooLong(f"prompt + {after} reaches position {furthest[row]}, beyond the model's context of "
                            f"{limit}: shorten the prompts (fewer or shorter paraphrases, fewer few-shot examples) or "
                            f"give {fix}", owners[row] if owners is not None else row)
    layout = stack_rows(rows, llm.pad_id, llm.device)
    h = len(head) if head else 0
    heads = None
    if own is not None:
        if owners is None:
            raise ValueError("own heads need each row's question (owners)")
        own_layout = left_padded(own, llm.pad_id, llm.device, start=h)
        heads = OwnHeads(own_layout.tokens, own_layout.positions, own_layout.segments, owners)
        extra_slots += own_layout.length + pad_unit() - 1  # a third region padded to whole chunks
    session = llm.session(len(rows), h + layout.length + max_new + extra_slots, hooks, reuse=True,  # methods may share it
                          log_weights=log_weights, fusion=fusion, head_mix=mixing)
    if head:
        session.prefill_head(head)
    return Opened(session, layout, session.prefill(layout.tokens, layout.positions, layout.segments, heads))


@dataclass
class GroupLayout:
    """Where each question still decoding has its rows in the current batch."""

    questions: list[int]  # the questions' indices
    members: list[torch.Tensor]  # per question, its rows' positions in the batch
    row_group: torch.Tensor  # [b] each row's position in `questions`
    size: int | None  # the rows per question when all have as many, one question after another


def group_layout(groups: list[list[int]], rows: tuple[int, ...], device: torch.device) -> GroupLayout:
    """The layout of `groups` (original row indices) in a batch of original rows `rows` (whole groups).
    Index tensors are made here once, not per step: indexing with lists copies them to the device."""
    position = {r: i for i, r in enumerate(rows)}
    questions = [q for q, g in enumerate(groups) if g[0] in position]
    members = [torch.tensor([position[r] for r in groups[q]], device=device) for q in questions]
    row_group = torch.tensor([k for k, q in enumerate(questions) for _ in groups[q]], device=device)
    order = [position[r] for q in questions for r in groups[q]]
    sizes = {len(groups[q]) for q in questions}
    size = sizes.pop() if len(sizes) == 1 and order == list(range(len(rows))) else None
    return GroupLayout(questions, members, row_group, size)


def _run_rows(llm: EnsembleModel, method: str, encoded: list[Encoded], prompts: list[list[str]],
              options: EnsembleOptions, confidences: list[list[float]] | None, hooks: Hooks) -> list[MethodResult]:
    """origin / per_prompt / vote / logit fusion: one row per prompt, rows of a question fused per step (the
    fusion rules) or once their answers are done (vote)."""
    plan = plan_rows(llm, method, encoded, options)
    head, groups, layer = plan.head, plan.groups, plan.layer
    fused = method in FUSED_ROWS
    name = "avg" if method == "hidden_avg" else method
    rule = RULES[name] if fused else None
    weights = [torch.tensor(confidence_weights(method, c), device=llm.device) for c in confidences] if confidences \
        else [None] * len(groups)
    mixing = None  # a weighted sum of the rows' logits: the vocabulary head once per question, not per row
    if fused and name in ROW_WEIGHTS:
        mixing = head_mix(groups, [ROW_WEIGHTS[name](len(g), w) for g, w in zip(groups, weights)], llm.device)
    session, layout, logits = open_session(llm, plan.rows, head, options.max_new_tokens, hooks, fusion=plan.fusion,
                                           mixing=mixing, owners=plan.owners, own=plan.own)
    params = SamplingParams(options.temperature, seed=options.seed)
    generator = params.generator(llm.device)
    layouts: dict[tuple[int, ...], tuple[GroupLayout, torch.Tensor | None]] = {}  # with the questions' weights [Q, N]

    def choose(step_logits: torch.Tensor, rows: tuple[int, ...]) -> torch.Tensor:
        if not fused:
            return sample(step_logits, params, generator)
        if rows not in layouts:  # once per batch composition: the loop drops finished questions' rows
            where = group_layout(groups, rows, llm.device)
            stacked = torch.stack([weights[q] for q in where.questions]) if confidences and where.size else None
            layouts[rows] = where, stacked
        where, stacked = layouts[rows]
        if mixing is not None:  # the session's logits are already one row per question: the rule's, fused
            return sample(step_logits, params, generator)[where.row_group]
        if where.size is not None:  # every question at once: [Q, N, V] -> [Q, V], the same bits
            scores = rule(step_logits.view(len(where.questions), where.size, -1), stacked)
        else:
            scores = torch.stack([rule(step_logits.index_select(0, m), weights[q])
                                  for q, m in zip(where.questions, where.members)])  # [Q, V]
        return sample(scores, params, generator)[where.row_group]  # every row carries its question's token

    completions = decode_loop(session, logits, layout.next_positions, choose, options.max_new_tokens,
                              stopper(llm, options), groups=groups if fused else None,
                              deterministic=params.greedy)
    results, reasoning = [], llm.opens_reasoning(options.chat, options.thinking)
    for qi, (g, p) in enumerate(zip(groups, prompts)):
        mine = [completions[qi]] if fused else [completions[r] for r in g]
        results.append(_result(method, mine, p, plan.prompt_tokens(qi), confidences[qi] if confidences else None,
                               layer, reasoning, options.worked))
    return results


def stopper(llm: EnsembleModel, options: EnsembleOptions) -> Stopper:
    """The rows' stop rule: eos or `options.stop` in the answer, past any thinking their prompts leave open."""
    return llm.stopper(options.stop, options.ignore_eos, reasoning=llm.opens_reasoning(options.chat, options.thinking))


def _run_flex(llm: EnsembleModel, encoded: list[Encoded], prompts: list[list[str]], options: EnsembleOptions,
              hooks: Hooks) -> list[MethodResult]:
    """One packed row per question: segment-isolated prefill, fused decode."""
    head, rows = flex_rows(encoded, options)
    log_weights = flex_log_weights(encoded, options.flex_bias, llm.device)
    session, layout, logits = open_session(llm, rows, head, options.max_new_tokens, hooks, log_weights)
    params = SamplingParams(options.temperature, seed=options.seed)
    generator = params.generator(llm.device)
    completions = decode_loop(session, logits, layout.next_positions, lambda l, rows: sample(l, params, generator),
                              options.max_new_tokens, stopper(llm, options),
                              deterministic=params.greedy)
    return [_result("flex", [c], p, (len(head) if head else 0) + len(r.tokens))
            for c, p, r in zip(completions, prompts, rows)]


def flex_log_weights(encoded: list[Encoded], bias: float | str | None, device: torch.device) -> torch.Tensor | None:
    """[B, N_max+1] log-weights by segment id (index 0, the shared segment, unbiased)."""
    if bias is None:
        return None
    widest = max(len(e.paraphrases) for e in encoded)
    out = torch.zeros((len(encoded), widest + 1), device=device)
    for b, e in enumerate(encoded):
        n = len(e.paraphrases)
        w = 1.0 / n if bias == "inv_n" else float(bias)
        if w <= 0:
            raise MinirunError(f"flex bias must be positive (got {bias}): pass a weight > 0 or 'inv_n'")
        out[b, 1:n + 1] = math.log(w)
    return out


def _result(method: str, completions: list[Completion], prompts: list[str], prompt_tokens: int,
            confidences: list[float] | None = None, layer: int | None = None, reasoning: bool = False,
            worked: bool = False) -> MethodResult:
    """A question's result: its one completion, per_prompt's first prompt's, or the vote's winner (answers compared
    past the thinking a `reasoning` prompt left open; `worked` solutions by their final numbers), with every prompt's
    answer kept where each was decoded alone."""
    every = method in EVERY_ANSWER
    chosen = plurality([answer_key(c.text, reasoning, worked) for c in completions]) if method == "vote" else None
    shown = completions[chosen or 0]
    return MethodResult(method, shown.text, shown.token_ids, shown.finish_reason, prompt_tokens, prompts,
                        [c.text for c in completions] if every else None, confidences,
                        [c.token_ids for c in completions] if every else None, layer, chosen,
                        [c.finish_reason for c in completions] if every else None)


def answered_as(result: MethodResult, method: str, reasoning: bool = False, worked: bool = False) -> MethodResult:
    """A per_prompt or vote result as the other method's: both decode every prompt alone, the same tokens, and
    differ only in the answer they show (an evaluation running both decodes the prompts once; `reasoning` and
    `worked` as for `_result`)."""
    if result.method not in EVERY_ANSWER or method not in EVERY_ANSWER:
        raise ValueError(f"only per_prompt and vote results are each other's, not {result.method} as {method}")
    completions = [Completion(*c) for c in zip(result.answers, result.answer_token_ids, result.finish_reasons,
                                               strict=True)]
    return _result(method, completions, result.prompts, result.prompt_tokens, result.confidences, result.fusion_layer,
                   reasoning, worked)
