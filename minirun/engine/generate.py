"""Prompt layouts and the decode loop shared by every method."""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Callable

import torch

from minirun.checkpoints.tokenizer import Tokenizer
from minirun.engine.session import Session
from minirun.errors import MinirunError
from minirun.layers.compiled import capture
from minirun.layers.masks import PAD, SHARED
from minirun.text import answer_start


@dataclass
class Layout:
    """Prompt tokens laid out in cache slots: tokens, RoPE positions and segment ids, all [B, L]."""

    tokens: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    next_positions: torch.Tensor  # [B] RoPE position of each row's first generated token

    @property
    def length(self) -> int:
        return self.tokens.shape[1]


@dataclass
class Row:
    """One row's prompt before padding: token ids, RoPE positions, segment ids."""

    tokens: list[int]
    positions: list[int]
    segments: list[int]
    next_position: int


def plain_row(ids: list[int], start: int = 0) -> Row:
    """An ordinary prompt: contiguous positions from `start`, all SHARED (plain causal)."""
    return Row(list(ids), list(range(start, start + len(ids))), [SHARED] * len(ids), start + len(ids))


def stack_rows(rows: list[Row], pad_id: int, device: torch.device) -> Layout:
    """Left-pad rows so every row ends at the same slot and all decode at the same slot."""
    width = max(len(r.tokens) for r in rows)
    tokens = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.full((len(rows), width), PAD, dtype=torch.int32)
    for i, r in enumerate(rows):
        n = len(r.tokens)
        if n:
            tokens[i, width - n:] = torch.tensor(r.tokens)
            positions[i, width - n:] = torch.tensor(r.positions)
            segments[i, width - n:] = torch.tensor(r.segments, dtype=torch.int32)
    next_positions = torch.tensor([r.next_position for r in rows])
    return Layout(tokens.to(device), positions.to(device), segments.to(device), next_positions.to(device))


def left_padded(prompts: list[list[int]], pad_id: int, device: torch.device, start: int = 0) -> Layout:
    """Independent prompts of different lengths as one batch; `start` = a shared prefix's length."""
    return stack_rows([plain_row(p, start) for p in prompts], pad_id, device)


def stop_strings(stop: str | tuple[str, ...] | list[str] | None) -> tuple[str, ...]:
    """`stop` as a tuple of stop strings: a lone str is one stop string (not its characters), None none;
    an empty one would end every row at once, so it is refused."""
    if not (stop is None or isinstance(stop, (str, list, tuple))):
        raise MinirunError(f"stop must be a string or a list of strings, got {stop!r}: pass e.g. stop=['\\n']")
    stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
    if not all(isinstance(s, str) and s for s in stop):
        raise MinirunError(f"stop strings must be non-empty text, got {stop!r}: give one such as a newline "
                           "(--stop $'\\n', or stop=['\\n'] from Python)")
    return stop


@dataclass
class Stopper:
    """When a row is done: an eos id, or a stop string in its text (text is cut before it). A stop string
    that is a special token (`<|endoftext|>`) is matched by its id in `stop_ids`, as the text skips it. Stop
    strings are looked for in the answer only, past a reasoning model's thinking (`text.answer_start`;
    `reasoning`: the prompt left a <think> block open), whose lines would otherwise end it at once."""

    tokenizer: Tokenizer
    eos_ids: set[int]
    stop_strings: tuple[str, ...] = ()
    stop_ids: frozenset[int] = frozenset()
    reasoning: bool = False

    def finish(self, ids: list[int]) -> tuple[list[int], str, str] | None:
        """(ids, text, reason) when `ids` is finished, else None: whichever comes first of an eos id and
        a stop string (ids checked several steps at a time, as on a GPU, may hold both, and tokens past
        them); the ids end with the eos, or with the token that completes the stop string."""
        end = next((i for i, token in enumerate(ids) if token in self.eos_ids or token in self.stop_ids), None)
        before = ids if end is None else ids[:end]  # an eos or a special-token stop
        if self.stop_strings and self.stop_at(self.text(before)) is not None:
            last = bisect.bisect_left(range(1, len(before) + 1), True,  # the fewest ids whose text holds one
                                      key=lambda n: self.stop_at(self.text(before[:n])) is not None)
            text = self.text(before[:last + 1])  # the same cut however many steps were checked at once
            return before[:last + 1], text[:self.stop_at(text)], "stop"
        if end is None:
            return None
        return ids[:end + 1], self.text(before), "eos" if ids[end] in self.eos_ids else "stop"

    def stop_at(self, text: str) -> int | None:
        """Where the first stop string in `text`'s answer starts, if one does."""
        if not self.stop_strings:  # checked first: a row without stop strings skips the thinking's scan
            return None
        start = answer_start(text, self.reasoning)
        if start is None:
            return None
        return min((i for s in self.stop_strings if (i := text.find(s, start)) >= 0), default=None)

    def streamable(self, text: str) -> str:
        """What of an unfinished row's text can be shown: not a trailing character whose bytes are still
        arriving (decoded as U+FFFD), nor an ending that may turn out to start a stop string. A tokenizer
        that cleans up spaces (WordPiece's " n ' t" -> "n't"; no BPE one does) may rewrite any of the last
        words, so its text shows when the row is done."""
        if getattr(self.tokenizer, "clean_up_spaces", False):
            return ""
        text = text.rstrip("\ufffd")
        held = max((k for s in self.stop_strings for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return text[:len(text) - held]

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)


@dataclass
class Completion:
    """One generated answer: text (cut at eos/stop), generated ids, and why it ended."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int = 0


Chooser = Callable[[torch.Tensor, tuple[int, ...]], torch.Tensor]
# Retiring rows moves each kept row's cache once: ~1/8 of a decode row-step in eval batches, measured on an
# Intel Xeon and on an AMD EPYC Zen 4 (bfloat16 avg and per_prompt sweeps: 0.155 and 0.132).
RETIRE_COST = 0.125


def record_loop_step(session: Session, logits: torch.Tensor, next_positions: torch.Tensor, choose: Chooser,
                     rows: tuple[int, ...], generated: torch.Tensor,
                     steps: int) -> tuple[Callable[[], None], torch.Tensor]:
    """One replay per token for a session that records its steps: the token choice, its write into
    `generated` [B, steps], the next positions and cache slot, and the decode step, as one recording
    (`layers.compiled.capture`) that advances a step counter on the device. The recording's warm-up ran
    the step for real; the counter and the logits are put back, and the cache slots it wrote are
    rewritten by the replays before any query can see them (keys past a query's own slot are masked).
    `choose` must be deterministic: a recorded sampler would replay the same random draw. Returns the
    replay and the logits it leaves [B, V] (the last token is chosen from them outside the recording)."""
    start = session.length
    if start + max(steps - 1, 2) > session.max_slots:  # the replays' slots, and the two a CUDA warm-up writes
        raise MinirunError(f"the cache is full ({session.max_slots} slots): lower max_new_tokens")
    step = torch.zeros(1, dtype=torch.long, device=session.device)
    scores = logits.clone()

    def one() -> torch.Tensor:
        token = choose(scores, rows)
        generated.index_copy_(1, step, token[:, None])
        scores.copy_(session.decode_at(token, next_positions + step, step + start))
        return step.add_(1)

    replay, _ = capture(one, session.device)
    step.zero_()
    scores.copy_(logits)
    return replay, scores


def decode_loop(session: Session, logits: torch.Tensor, next_positions: torch.Tensor, choose: Chooser,
                max_new_tokens: int, stopper: Stopper, groups: list[list[int]] | None = None,
                on_text: Callable[[str], None] | None = None,
                deterministic: bool = False) -> list[Completion]:
    """Pick a token per row with `choose`, feed it back, until every group's answer is done.

    `groups` are rows that decode together, each answered by its first row (default: every row
    alone); fusion methods group a question's rows, which all carry its fused token. Where the
    session can shrink (eager), finished groups' rows leave the batch, so later steps compute only
    rows still decoding: as soon as the finished rows carried so far (row-steps) outweigh moving the
    others (`RETIRE_COST` per kept row), which keeps the total within twice the best schedule's
    (a per_prompt sweep retired rows at nearly every step, at ~14 ms each for 150 rows, to save
    ~1.2 ms a row). `choose(logits [b, V], rows)` is told which of the original rows the b rows
    are. Tokens stay on the device and are copied to the host every step on CPU, where the copy is
    free, and every 8 on a GPU, where it stalls. Where the
    session records its steps and `choose` is `deterministic` (greedy), every step but the last is one
    replay of `record_loop_step`.
    """
    check_every = 8 if session.device.type == "cuda" else 1
    if groups is None:
        groups = [[r] for r in range(session.batch)]
    rows = tuple(range(session.batch))  # the original index of each row still in the batch
    index = None  # rows as a device tensor, once some have left
    generated = torch.empty((session.batch, max_new_tokens), dtype=torch.long, device=session.device)
    done: dict[int, Completion] = {}
    shown = ""
    steps = 0
    carried = 0  # finished rows decoded since the batch last shrank, summed over steps
    replay = None
    if deterministic and session.records_steps and max_new_tokens > 1:
        replay, logits = record_loop_step(session, logits, next_positions, choose, rows, generated, max_new_tokens)
    for step in range(max_new_tokens):
        if replay is not None and step < max_new_tokens - 1:  # chooses, writes and decodes this step's token
            if session.hooks.before_decode is not None:
                session.hooks.before_decode()
            replay()
            session.length += 1
        else:
            token = choose(logits, rows)  # [b]
            if index is None:
                generated[:, step] = token
            else:
                generated[index, step] = token
        steps = step + 1
        if steps % check_every == 0 or steps == max_new_tokens:
            host = generated[:, :steps].tolist()
            for group in groups:
                first = group[0]
                if first not in done and (finished := stopper.finish(host[first])):
                    done[first] = Completion(finished[1], finished[0], finished[2])
            if on_text is not None:
                first = groups[0][0]
                current = done[first].text if first in done else stopper.streamable(stopper.text(host[first]))
                if current.startswith(shown) and len(current) > len(shown):
                    on_text(current[len(shown):])
                    shown = current
            if len(done) == len(groups):
                break
            live = {r for group in groups if group[0] not in done for r in group} if session.resizable else rows
            carried += len(rows) - len(live)
            if len(live) < len(rows) and carried >= RETIRE_COST * len(live):
                carried = 0
                kept = [i for i, r in enumerate(rows) if r in live]
                keep = session.retain(kept)
                token, next_positions = token.index_select(0, keep), next_positions.index_select(0, keep)
                rows = tuple(rows[i] for i in kept)
                index = torch.tensor(rows, device=session.device)
        if steps < max_new_tokens and replay is None:
            logits = session.decode(token, next_positions + step)
    host = generated[:, :steps].tolist()
    results = [done.get(g[0]) or Completion(stopper.text(host[g[0]]), host[g[0]], "length") for g in groups]
    if on_text is not None and results[0].text.startswith(shown) and len(results[0].text) > len(shown):
        on_text(results[0].text[len(shown):])  # what was held back while the row could still change it
    return results
