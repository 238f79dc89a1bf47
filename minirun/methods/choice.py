"""Multiple-choice scoring: each option's log-likelihood as a continuation of the prompts.

Every method scores with the same machinery it generates with. Row methods prefill one row per
prompt, then feed all options of every question in one more call (`Session.extend`), each option
its own segment so it sees the prompt and itself but no other option. The option's next-token
scores are fused across the question's rows at every option token with the method's rule
(hidden_avg fuses the states instead), and its log-probabilities are read from the fused
distribution. flex lays its options after the packed prompt the same way, as branch segments:
each option attends to every paraphrase and to itself, never to another option. The prompt is
never re-run per option. A gap item (Winogrande's) is the other way round: each option fills the gap and what
follows the gap, the same in every wording, is scored after it (`score_blanks`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Callable

import torch

from minirun.engine.generate import Row, stack_rows
from minirun.engine.session import CHUNK, NO_HOOKS, Hooks, Session
from minirun.errors import MinirunError
from minirun.layers.masks import branch
from minirun.methods.choice_rules import method_pick
from minirun.methods.fusion import RULES, confidence_weights
from minirun.methods.model import EnsembleModel
from minirun.methods.names import EVERY_ANSWER
from minirun.methods.options import EnsembleOptions, Question
from minirun.methods.packing import Encoded, no_shared_tail
from minirun.methods.runner import (
    check_method,
    checked_call,
    encode_batch,
    flex_log_weights,
    flex_rows,
    method_prompts,
    open_session,
    plan_rows,
)
from minirun.text import blank_parts


@dataclass
class ChoiceResult:
    method: str
    choice: int  # the best-scoring option (per_prompt: the first prompt's pick; vote: the most prompts' pick)
    scores: list[float]  # every option's score under `choice_score` (per token, summed or per character; vote:
    # its share of the prompts' picks)
    prompts: list[str]
    prompt_tokens: int
    per_prompt_choices: list[int] | None = None  # per_prompt and vote: each prompt's pick
    per_prompt_logprobs: list[list[float]] | None = None  # per_prompt and vote: each prompt's summed log-likelihoods
    fusion_layer: int | None = None
    logprobs: list[float] | None = None  # every option's summed log-likelihood (vote: the prompts' mean)
    option_tokens: list[int] | None = None  # every option's token count
    option_chars: list[int] | None = None  # every option's length in characters, as scored
    confidences: list[float] | None = None  # the weighted methods' per-paraphrase confidences


def option_texts(choices: list[str], as_given: bool = False) -> list[str]:
    """The options as scored: surrounding whitespace dropped, or `as_given` (lm-evaluation-harness's spacing,
    `EnsembleOptions.harness_spacing`); refused in one line when one is not text or empty."""
    if bad := [i for i, c in enumerate(choices) if not isinstance(c, str) or not c.strip()]:
        kind = "empty" if isinstance(choices[bad[0]], str) else "not text"
        raise MinirunError(f"answer option {bad[0]} of {choices!r} is {kind}: every option needs some text")
    return list(choices) if as_given else [c.strip() for c in choices]


def shared_spacing(texts: list[str]) -> str:
    """The trailing whitespace every one of `texts` ends with (" " of "for " and "for  "; none where one ends in a
    word): what prompts that end otherwise can share before what follows them."""
    return os.path.commonprefix([text[len(text.rstrip()):][::-1] for text in texts])[::-1]


def plain_context(question: Question, asked: list[str], harness: bool = False) -> tuple[Question, str]:
    """The prompt/option split without a chat template: every option starts with a space, as
    lm-evaluation-harness's delimiter does, unless whitespace already ends the prompts (`asked`, those the method
    asks: "A: "), which then starts the option instead, as the text would be written (" Paris"); with `harness` (its
    spacing) that whitespace goes before the space, as the harness moves it ("  Paris"). Taken off the prompts (each
    prompt's own, where they end otherwise, whose options then follow the whitespace they share) and returned with
    the space: what comes between the prompts and each option."""
    if question.suffix:
        kept = question.suffix.rstrip()
        spacing = question.suffix[len(kept):]
        question = replace(question, suffix=kept)
    else:
        spacing = shared_spacing(asked)
        question = replace(question, question=question.question.rstrip(),
                           paraphrases=[p.rstrip() for p in question.paraphrases])
    return question, spacing + " " if harness else spacing or " "


def templated(llm: EnsembleModel, options: EnsembleOptions) -> bool:
    """Whether prompts are written in the chat template: as `options.chat` says, by default where the model has one."""
    return options.chat if options.chat is not None else llm.tokenizer.chat_template is not None


def asked_options(llm: EnsembleModel, choices: list[str], options: EnsembleOptions) -> list[str]:
    """A question's options as `options` scores them (`option_texts`): as given where the harness's spacing applies
    (without a chat template), else stripped."""
    return option_texts(choices, options.harness_spacing and not templated(llm, options))


def option_ids(llm: EnsembleModel, enc: Encoded, choices: list[str], lead: str | None) -> list[list[int]]:
    """Each option's token ids as the tokenizer splits the prompt's text followed by `lead` and the option:
    the ids of the whole after those of the prompt alone (the harness's rule). Encoding " Paris" alone would
    differ where the tokenizer treats a text's start apart (Llama 2's SentencePiece adds "▁" there).
    `lead` None: a space unless the prompt ends in whitespace (a chat template's generation prompt)."""
    tok = llm.tokenizer
    context = tok.decode(enc.tail or enc.paraphrases[-1])
    if lead is None:
        lead = "" if context[-1:].isspace() else " "
    start = len(tok.encode(context, add_special_tokens=False))
    out = [tok.encode(context + lead + c, add_special_tokens=False)[start:] for c in choices]
    if empty := [c for c, ids in zip(choices, out) if not ids]:
        raise MinirunError(f"answer option {empty[0]!r} adds no token after the prompt: give it some text")
    return out


def laid_out(llm: EnsembleModel, method: str, questions: list[Question], options: EnsembleOptions,
             texts: list[list[str]] | None = None
             ) -> tuple[list[list[str]], list[Encoded], list[list[list[int]]] | None]:
    """Each question's prompts as `method` asks them (without a chat template, an option's leading whitespace taken
    off the prompt: `plain_context`), their encoding and, with the options' `texts` (`asked_options`), each option's
    ids."""
    leads: list[str | None] = [None] * len(questions)  # the option is the answer after the generation prompt
    if texts is not None and not templated(llm, options):
        questions, leads = map(list, zip(*[plain_context(q, asked, options.harness_spacing)
                                           for q, asked in zip(questions, method_prompts(method, questions))]))
    prompts = method_prompts(method, questions)
    encoded = encode_batch(llm, method, questions, prompts, options)
    if texts is None:
        return prompts, encoded, None
    return prompts, encoded, [option_ids(llm, e, c, lead) for e, c, lead in zip(encoded, texts, leads)]


def asked_ids(llm: EnsembleModel, method: str, question: Question, options: EnsembleOptions,
              choices: list[str] | None = None) -> tuple[list[list[int]], list[list[int]] | None]:
    """The token ids of each prompt `method` asks `question` with, exactly as it encodes them (template, head, the
    prompt, tail; flex packs them into one sequence, each seeing the head, itself and the tail), and each of
    `choices`' ids scored after them (None without choices): what `eval --show-prompts` shows."""
    texts = None if choices is None else [asked_options(llm, choices, options)]
    _, (enc,), targets = laid_out(llm, method, [question], options, texts)
    return [enc.head + p + enc.tail for p in enc.paraphrases], None if targets is None else targets[0]


def score_choices(llm: EnsembleModel, method: str, questions: list[Question], choices: list[list[str]],
                  options: EnsembleOptions | None = None, hooks: Hooks = NO_HOOKS) -> list[ChoiceResult]:
    """Score every question's options with `method`; `options.choice_score` picks mean or sum."""
    options = checked_call(questions, options)
    check_method(method, options)
    if isinstance(choices, str) or any(isinstance(c, str) for c in choices):
        raise MinirunError("choices must be one list of option strings per question, e.g. [['Paris', 'Lyon']]")
    if len(questions) != len(choices) or not all(choices):
        raise MinirunError("every question needs its list of answer options")
    texts = [asked_options(llm, c, options) for c in choices]
    prompts, encoded, targets = laid_out(llm, method, questions, options, texts)
    with torch.inference_mode():
        if method == "flex":
            return _score_flex(llm, encoded, targets, texts, prompts, options, hooks)
        return _score_rows(llm, method, encoded, targets, texts, prompts, options, hooks)


def score_blanks(llm: EnsembleModel, method: str, questions: list[Question], choices: list[list[str]], blank: str,
                 options: EnsembleOptions | None = None, hooks: Hooks = NO_HOOKS) -> list[ChoiceResult]:
    """Score gap items as lm-evaluation-harness scores Winogrande (partial scoring): every prompt holds `blank` once;
    each option is written into the gap and the words after it, the same in every prompt, are scored after it; the
    option under which they are likeliest is picked. Each question and option becomes one question of
    `score_choices` whose one option is those words, the option its prompts' shared suffix (so flex fuses the
    paraphrases in it), and every method fuses as it does there: its pick and every option's score are then read
    from the options' scores of those words; flex over a filled question of one wording without a suffix (its gap
    opening every prompt) is origin's score (`lone_wording`), any other it cannot fuse is refused first
    (`check_gap_flex`). `options.confidences` (the weighted methods'), one list per question, serve each of its
    options."""
    options = checked_call(questions, options)
    check_method(method, options)
    if len(questions) != len(choices) or isinstance(choices, str) or any(isinstance(c, str) or len(c) < 2
                                                                         for c in choices):
        raise MinirunError("every gap question needs its list of at least 2 options, e.g. [['the trophy', 'the case']]")
    if bad := next((q for q in questions if q.suffix), None):
        raise MinirunError(f"a gap question is scored by the words after its gap, so it takes no suffix: got "
                           f"{bad.suffix!r}")
    if method == "flex":
        check_gap_flex(llm, questions, choices, blank, options)
    filled, tails = [], []
    for q, texts in zip(questions, choices):
        written, tail = gap_filled(q, texts, blank)
        filled += written
        tails += [tail] * len(written)
    counts = [len(c) for c in choices]
    confidences = None if options.confidences is None else \
        [c for c, n in zip(options.confidences, counts) for _ in range(n)]
    lone = {i for i, q in enumerate(filled) if method == "flex" and lone_wording(q)}
    each: list[ChoiceResult | None] = [None] * len(filled)
    for method_of, picked in (("origin", sorted(lone)), (method, [i for i in range(len(filled)) if i not in lone])):
        if picked:
            asked = [replace(filled[i], question=filled[i].paraphrases[0]) if method_of != method else filled[i]
                     for i in picked]
            told = replace(options, confidences=None if confidences is None else [confidences[i] for i in picked])
            for i, r in zip(picked, score_choices(llm, method_of, asked, [[tails[i]] for i in picked], told, hooks)):
                each[i] = replace(r, method=method)
    results, start = [], 0
    for q, n in zip(questions, counts):
        part, start = each[start:start + n], start + n
        per_prompt = None if part[0].per_prompt_logprobs is None else \
            [[r.per_prompt_logprobs[p][0] for r in part] for p in range(len(part[0].per_prompt_logprobs))]
        results.append(_scored(method, [r.logprobs[0] for r in part], [r.option_tokens[0] for r in part],
                               [r.option_chars[0] for r in part], options.choice_score,
                               method_prompts(method, [q])[0], sum(r.prompt_tokens for r in part), per_prompt,
                               fusion_layer=part[0].fusion_layer, confidences=part[0].confidences))
    return results


def gap_filled(question: Question, choices: list[str], blank: str) -> tuple[list[Question], str]:
    """A gap question as `score_choices` asks it of each of its `choices` (`score_blanks`): the option, as given,
    written into every prompt's gap and ending it as the prompts' shared suffix, with the whitespace before the gap
    that every prompt ends with (" Rachel" is the tokenizer's word inside a sentence, "Rachel" alone is not), or in
    the text where the gap opens a prompt (none before it); and the words after the gap, the one text scored."""
    option_texts(choices)  # each option some text
    try:
        wordings = [blank_parts(text, blank) for text in (question.question, *question.paraphrases)]
    except ValueError as e:
        raise MinirunError(f"{e}: every prompt of a gap question holds its gap once") from None
    after = wordings[0][1].strip()
    if changed := next((b + blank + a for b, a in wordings if a.strip() != after), None):
        raise MinirunError(f"{changed!r} goes on after the gap {blank!r} otherwise than {question.question!r}: every "
                           "prompt is scored by the same words after it")
    befores = [b for b, _ in wordings]
    if not all(b.strip() for b in befores):
        return [Question(befores[0] + option, [b + option for b in befores[1:]], question.prefix)
                for option in choices], after
    joint = shared_spacing(befores)
    kept = [b[:len(b) - len(joint)] for b in befores]
    return [Question(kept[0], kept[1:], question.prefix, joint + option) for option in choices], after


def lone_wording(question: Question) -> bool:
    """Whether a filled gap question (`gap_filled`) has no suffix and one wording: a gap opening its prompts leaves no
    shared tokens for flex to fuse in, and flex over one wording is origin, which scores it."""
    return not question.suffix and len(set(question.paraphrases)) == 1


def check_gap_flex(llm: EnsembleModel, questions: list[Question], choices: list[list[str]], blank: str,
                   options: EnsembleOptions) -> None:
    """Refuse, before any scoring, a gap question whose filled prompts flex cannot fuse: of several wordings, encoded
    as flex scores them (`laid_out`), and ending in no token they share (a gap opening some prompt, an option the
    tokenizer joins to the words before the gap, spacing before the gap the prompts do not share)."""
    for q, texts in zip(questions, choices):
        filled, tail = gap_filled(q, texts, blank)
        for option, each in zip(texts, filled):
            if not lone_wording(each) and not laid_out(llm, "flex", [each], options, [[tail]])[1][0].tail:
                raise MinirunError(f"flex fuses a gap question's wordings in the tokens all its prompts end with, and "
                                   f"those of {q.question!r} with {option!r} in the gap end in none (a gap opening a "
                                   "prompt, an option the tokenizer joins to the words before it, or spacing before "
                                   "the gap they do not share): ask it in a chat template (--chat, a model that has "
                                   "one), give its wordings the same spacing before the gap, or leave flex out")


def option_row(targets: list[list[int]], start: int, segment: Callable[[int], int]) -> Row:
    """All options after a prompt ending at position start-1, one after another, each fed without
    its last token (only its predecessors' states are needed); option k is segment `segment(k)`."""
    tokens, positions, segments = [], [], []
    for k, ids in enumerate(targets):
        tokens += ids[:-1]
        positions += range(start, start + len(ids) - 1)
        segments += [segment(k)] * (len(ids) - 1)
    return Row(tokens, positions, segments, start)


def option_reach(targets: list[list[list[int]]]) -> list[int]:
    """Positions each question's options need past its prompt: its longest option's (they share their start)."""
    return [max(map(len, question)) for question in targets]


def option_room(targets: list[list[list[int]]], option_rows: list[Row]) -> tuple[int, int]:
    """(positions, slots) the options need past each prompt: an option reaches as far as the longest
    one (they share their start position), while its row holds all of them one after another and is
    left-padded by up to CHUNK, which the cache must hold but the context need not."""
    longest = max(option_reach(targets))
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
    if not layout.length:  # single-token options (letters): the prompt's last logits are all they need
        return layout.tokens.new_zeros((len(option_rows), 0, llm.config.hidden_size), dtype=llm.dtype)
    return session.extend(layout.tokens, layout.positions, layout.segments)


def _option_logprobs(predictors: list[torch.Tensor], targets: list[list[int]], rule,
                     weights: torch.Tensor | None) -> list[float]:
    """Each option's summed log-likelihood under the fused distribution (rows fused per token with `rule`;
    None: one row), read to the host at once: one wait for the device per call, not one per option."""
    sums = []
    for logits, ids in zip(predictors, targets):
        fused = logits[0] if rule is None else torch.stack([rule(logits[:, j], weights) for j in range(len(ids))])
        logp = fused.log_softmax(-1).gather(-1, torch.tensor(ids, device=fused.device)[:, None])[:, 0]
        sums.append(logp.sum())
    return torch.stack(sums).tolist()


def _counts(targets: list[list[int]], texts: list[str]) -> tuple[list[int], list[int]]:
    """The options' token counts and lengths in characters, as scores divide by them."""
    return [len(ids) for ids in targets], [len(t) for t in texts]


def _scored(method: str, logprobs: list[float], tokens: list[int], chars: list[int], mode: str,
            prompts: list[str], prompt_tokens: int, per_prompt: list[list[float]] | None = None,
            **extra) -> ChoiceResult:
    """A question's result from its options' summed log-likelihoods (and, `per_prompt`, each prompt's), token counts
    and lengths: the pick under `mode`, and what any other mode's pick is recomputed from."""
    choice, scores, picks = method_pick(method, logprobs, tokens, chars, mode, per_prompt)
    if per_prompt is not None:
        extra |= {"per_prompt_choices": picks, "per_prompt_logprobs": per_prompt}
    return ChoiceResult(method, choice, scores, prompts, prompt_tokens, logprobs=logprobs, option_tokens=tokens,
                        option_chars=chars, **extra)


def _shown_logprobs(method: str, each: list[list[float]]) -> list[float]:
    """The options' log-likelihoods a result of prompts scored alone carries: origin's and per_prompt's the first
    prompt's, vote's the prompts' mean."""
    return [sum(sums) / len(each) for sums in zip(*each)] if method == "vote" else each[0]


def scored_as(result: ChoiceResult, method: str, mode: str) -> ChoiceResult:
    """A per_prompt or vote result as the other method's: both score every prompt alone, the same numbers, and
    differ only in the pick they show (an evaluation running both scores the prompts once)."""
    each = result.per_prompt_logprobs
    if result.method not in EVERY_ANSWER or method not in EVERY_ANSWER or each is None:
        raise ValueError(f"only per_prompt and vote results are each other's, not {result.method} as {method}")
    return _scored(method, _shown_logprobs(method, each), result.option_tokens, result.option_chars, mode,
                   result.prompts, result.prompt_tokens, per_prompt=each)


def _score_rows(llm: EnsembleModel, method: str, encoded: list[Encoded], targets: list[list[list[int]]],
                texts: list[list[str]], prompts: list[list[str]], options: EnsembleOptions,
                hooks: Hooks) -> list[ChoiceResult]:
    from minirun.methods.confidence import weights_for

    confidences = weights_for(llm, method, encoded, options)  # before our session: measuring opens sessions
    plan = plan_rows(llm, method, encoded, options)
    option_rows = [option_row(targets[q], plan.rows[r].next_position, lambda k: k + 1)
                   for q, g in enumerate(plan.groups) for r in g]
    longest, slots = option_room(targets, option_rows)
    per_question = option_reach(targets)
    reach = [0] * len(plan.rows)  # each row's own question's longest option
    for q, g in enumerate(plan.groups):
        for r in g:
            reach[r] = per_question[q]
    session, _, first = open_session(llm, plan.rows, plan.head, longest, hooks, fusion=plan.fusion, extra_slots=slots,
                                     reach=reach, owners=plan.owners, own=plan.own)
    states = _options_pass(llm, session, option_rows)  # [B, T, E]
    mode, results = options.choice_score, []
    for q, group in enumerate(plan.groups):
        rows = torch.tensor(group, device=llm.device)
        chunk = session.logits(states.index_select(0, rows))  # [R, T, V]
        predictors = _predictors(first.index_select(0, rows), chunk, targets[q])
        tokens = plan.prompt_tokens(q)
        if method in ("origin", *EVERY_ANSWER):
            each = [_option_logprobs([p[i:i + 1] for p in predictors], targets[q], None, None) for i in range(len(group))]
            shown = _shown_logprobs(method, each)
            results.append(_scored(method, shown, *_counts(targets[q], texts[q]), mode, prompts[q], tokens,
                                   per_prompt=each if method in EVERY_ANSWER else None))
            continue
        weights = torch.tensor(confidence_weights(method, confidences[q]), device=llm.device) if confidences else None
        rule = RULES["avg" if method == "hidden_avg" else method]
        results.append(_scored(method, _option_logprobs(predictors, targets[q], rule, weights),
                               *_counts(targets[q], texts[q]), mode, prompts[q], tokens, fusion_layer=plan.layer,
                               confidences=list(confidences[q]) if confidences else None))
    return results


def _score_flex(llm: EnsembleModel, encoded: list[Encoded], targets: list[list[list[int]]], texts: list[list[str]],
                prompts: list[list[str]], options: EnsembleOptions, hooks: Hooks) -> list[ChoiceResult]:
    """One packed row per question (as flex generates), then its options as branch segments."""
    if not all(e.tail for e in encoded):
        raise no_shared_tail("every answer option")
    head, rows = flex_rows(encoded, options)
    option_rows = [option_row(t, r.next_position, branch) for t, r in zip(targets, rows)]
    longest, slots = option_room(targets, option_rows)
    weights = flex_log_weights(encoded, options.flex_bias, llm.device)
    session, _, first = open_session(llm, rows, head, longest, hooks, weights, extra_slots=slots,
                                     reach=option_reach(targets))
    states = _options_pass(llm, session, option_rows)
    results = []
    for q, (t, r) in enumerate(zip(targets, rows)):
        predictors = _predictors(first[q:q + 1], session.logits(states[q:q + 1]), t)
        tokens = (len(head) if head else 0) + len(r.tokens)
        results.append(_scored("flex", _option_logprobs(predictors, t, None, None), *_counts(t, texts[q]),
                               options.choice_score, prompts[q], tokens))
    return results
