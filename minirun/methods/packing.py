"""Prompt encoding for ensembles and the packed single-sequence layout of `flex`.

Every prompt is encoded whole, exactly as a tokenizer encodes it alone (merges across the joins
of prefix, paraphrase and suffix included), then split into head (the tokens all of a question's
prompts share before the paraphrase: chat header and prefix), paraphrase, and tail (the tokens
they share after it: suffix and the chat template's generation prompt), so the head can be stored
once and, in `flex`, the tail is shared: its tokens attend to every paraphrase, so even the first
answer token is predicted from all of them. Every method uses the same split, so sharing is exact.
"""
from __future__ import annotations

from dataclasses import dataclass

from minirun.engine.generate import Row
from minirun.errors import MinirunError
from minirun.layers.masks import SHARED
from minirun.methods.model import EnsembleModel

POSITION_SCHEMES = ("right", "restart", "sequential")
_SENTINEL = "\u2063MINIRUN_PARAPHRASE\u2063"


@dataclass
class Encoded:
    """One question's prompts as token ids: common head and tail around each paraphrase."""

    head: list[int]
    paraphrases: list[list[int]]
    tail: list[int]

    def body(self, i: int) -> list[int]:
        """Paraphrase i with the tail: one row of the logit methods after a shared head."""
        return self.paraphrases[i] + self.tail

    def full(self, i: int) -> list[int]:
        return self.head + self.paraphrases[i] + self.tail


def encode_question(llm: EnsembleModel, paraphrases: list[str], prefix: str = "", suffix: str = "", chat: bool | None = None,
                    thinking: bool = False) -> Encoded:
    """Encode each `template(prefix + paraphrase + suffix)` whole and split the ids around the
    paraphrases: head + paraphrases[i] + tail is what the tokenizer gives prompt i alone. The head is
    the longest run of the prefix's own tokens every prompt starts with (a merge across the join, as
    "Q: " + "What" into "ĠWhat", keeps the last ones with the paraphrase), the tail likewise at the end.
    `thinking` is the template's `enable_thinking` (templates without the switch ignore it)."""
    if chat is None:
        chat = llm.tokenizer.chat_template is not None
    tok = llm.tokenizer
    if chat:
        def render(content: str) -> str:
            return tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                           enable_thinking=thinking)

        parts = render(prefix + _SENTINEL + suffix).split(_SENTINEL)
        if len(parts) != 2:  # a template that drops, edits or repeats the message: no head and tail to share
            raise MinirunError(f"the chat template renders the user's message {len(parts) - 1} times, not once, so "
                               "its prompts cannot share a head: use --raw (chat=False) for this model")
        head, tail = parts
        wholes = [tok.encode(render(prefix + p + suffix), add_special_tokens=False) for p in paraphrases]
        head_ids = tok.encode(head, add_special_tokens=False)
    else:
        tail = suffix
        wholes = [tok.encode(prefix + p + suffix) for p in paraphrases]
        head_ids = tok.encode(prefix)  # the head carries BOS where the tokenizer adds one
    tail_ids = tok.encode(tail, add_special_tokens=False) if tail else []
    h = _common_prefix([head_ids, *wholes])
    room = min(len(w) for w in wholes) - h - 1  # every paraphrase keeps a token of its own
    t = min(_common_prefix([ids[::-1] for ids in (tail_ids, *wholes)]), max(room, 0))
    return Encoded(wholes[0][:h], [w[h:len(w) - t] for w in wholes], wholes[0][len(wholes[0]) - t:] if t else [])


def no_shared_tail(reader: str) -> MinirunError:
    """flex's refusal of prompts that end in no common token: nothing after the paraphrases could see them all
    (`reader`: what must). A suffix can be given and still share nothing, where the tokenizer joins it to each
    paraphrase's last characters ("?" + ":" is one token "?:"), so the message says that too."""
    return MinirunError(f"flex needs tokens shared after the paraphrases so {reader} sees all of them, and these "
                        "prompts end in none: give a suffix (e.g. --suffix '\\nA:') or use the chat template; a "
                        "suffix the tokenizer joins to the paraphrases' last characters (\":\" after \"?\" is one "
                        "token) shares none: start it with a space or a newline")


def common_head(encoded: list[Encoded]) -> int:
    """How many head tokens all of a batch's questions share."""
    return _common_prefix([e.head for e in encoded])


def _common_prefix(sequences: list[list[int]]) -> int:
    """How many leading ids all `sequences` share."""
    n = 0
    for column in zip(*sequences):
        if any(x != column[0] for x in column):
            break
        n += 1
    return n


def packed_row(enc: Encoded, scheme: str = "right", share_head: bool = True, prefilled: int = 0) -> Row:
    """All paraphrases of one question in one row, segment k = paraphrase k.

    Positions: `right` right-aligns every segment to end at P-1 (generation starts at P), so every
    generated token sees each paraphrase at the distances a single-prompt decode would; with a shared
    head a shorter paraphrase then sits (longest - its length) positions after the head, unlike alone
    (without `share_head` each segment carries its own head, contiguous); `restart` starts every segment at the same position
    (Parallel Context Windows); `sequential` numbers the packed sequence 0..L-1.
    With `share_head` the head is one SHARED segment (stored once, seen by all); otherwise every
    segment is its own head + paraphrase, isolated from the others. A shared head's first `prefilled`
    tokens are left out of the row (the batch prefilled them once) but keep their positions; the rest of
    the head, where questions' heads differ, stays in the row as shared tokens.
    The tail follows as SHARED tokens, so it and every generated token see all paraphrases.
    """
    if scheme not in POSITION_SCHEMES:
        raise ValueError(f"unknown position scheme {scheme!r}: choose {', '.join(POSITION_SCHEMES)}")
    if prefilled and not (share_head and prefilled <= len(enc.head)):
        raise ValueError(f"{prefilled} head tokens prefilled apart, but the row shares a head of "
                         f"{len(enc.head) if share_head else 0}")
    h = len(enc.head) if share_head else 0
    segments_ids = enc.paraphrases if share_head else [enc.head + p for p in enc.paraphrases]  # the tail: once, below
    longest = max(len(s) for s in segments_ids)
    tokens, positions, segments = [], [], []
    if share_head:
        tokens += enc.head[prefilled:]
        positions += list(range(prefilled, h))
        segments += [SHARED] * (h - prefilled)
    cursor = h
    for k, ids in enumerate(segments_ids, start=1):
        n = len(ids)
        start = {"right": h + longest - n, "restart": h, "sequential": cursor}[scheme]
        tokens += ids
        positions += list(range(start, start + n))
        segments += [k] * n
        cursor += n
    start = cursor if scheme == "sequential" else h + longest
    tokens += enc.tail
    positions += list(range(start, start + len(enc.tail)))
    segments += [SHARED] * len(enc.tail)
    return Row(tokens, positions, segments, start + len(enc.tail))
