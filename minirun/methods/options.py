"""The data a method takes and returns: a question with its paraphrases, options, results."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from minirun.engine.generate import stop_strings
from minirun.errors import MinirunError, whole_number
from minirun.methods.names import CHOICE_SCORES


@dataclass
class Question:
    question: str
    paraphrases: list[str] = field(default_factory=list)
    prefix: str = ""  # instruction / few-shot examples before each paraphrase
    suffix: str = ""  # text after each paraphrase (e.g. "\nA:"); flex shares it across paraphrases

    def __post_init__(self) -> None:
        """A str of paraphrases would run one paraphrase per character, an empty one a bare template."""
        if not isinstance(self.question, str) or not self.question.strip():
            raise MinirunError(f"the question must be non-empty text, got {self.question!r}")
        for name in ("prefix", "suffix"):
            if not isinstance(getattr(self, name), str):
                raise MinirunError(f"the question's {name} must be text ('' for none), got {getattr(self, name)!r}")
        given = self.paraphrases  # a list, or a column or an array of texts, taken as a list
        if not isinstance(given, str) and hasattr(given, "__iter__"):
            self.paraphrases = list(given)
        if isinstance(given, str) or not isinstance(self.paraphrases, list) or not all(
                isinstance(p, str) for p in self.paraphrases):
            raise MinirunError(f"paraphrases must be a list of strings, got {given!r}: e.g. "
                               "Question(q, [q, 'a rewording'])")
        if empty := [i for i, p in enumerate(self.paraphrases) if not p.strip()]:
            raise MinirunError(f"paraphrase {empty[0]} of {self.question!r} is empty: give its text or drop it")


@dataclass
class EnsembleOptions:
    max_new_tokens: int = 32
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    # Templates with a reasoning switch (Qwen3's enable_thinking): False renders the empty think block, so the
    # answer starts at once, as a short answer fused across paraphrases needs; True, the model reasons first.
    thinking: bool = False
    stop: tuple[str, ...] = ()
    share_prefix: bool = True  # encode the common head once instead of once per paraphrase (flex: see packed_row)
    positions: str = "right"  # flex position scheme: right, restart, sequential
    flex_bias: float | str | None = None  # flex: log(w) added to suffix/answer->paraphrase scores; "inv_n" = 1/N
    temperature: float = 0.0
    seed: int | None = 0  # the sampling draws (temperature, confidences); None: unseeded
    num_samples: int = 100  # self-consistency samples per paraphrase (weighted methods)
    confidence_temperature: float = 0.7
    confidence_tokens: int = 16
    confidences: list[list[float]] | None = None  # precomputed, one list per question
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)
    fusion_layer: int | None = None  # hidden_avg: first fused block, 1-based (None: round(0.75 x layers))
    fusion_alpha: float = 1.0  # hidden_avg: weight of the group mean in the fused state
    choice_score: str = "mean"  # multiple choice: CHOICE_SCORES' rule for an option's log-likelihood
    # Multiple choice without a chat template: options spaced as lm-evaluation-harness scores them (as given, after
    # its space, a prompt's trailing whitespace moved before that space: "  Water" for HellaSwag's "[step] Water"
    # ending) instead of minirun's rule (options stripped, a prompt's trailing whitespace in place of the space)
    harness_spacing: bool = False
    worked: bool = False  # answers are worked solutions (maths): a vote compares their final numbers

    def __post_init__(self) -> None:
        """Refuse values that would crash deep inside a run or silently do something else, naming the field."""
        self.stop = stop_strings(self.stop)
        for name in ("max_new_tokens", "num_samples", "confidence_tokens", "fusion_layer", "seed"):
            if getattr(self, name) is not None or name not in ("fusion_layer", "seed"):  # numpy's integers as Python's
                setattr(self, name, whole_number(getattr(self, name), name))
        for name, least in (("max_new_tokens", 1), ("num_samples", 1), ("confidence_tokens", 1)):
            if getattr(self, name) < least:
                raise MinirunError(f"{name} must be at least {least}, got {getattr(self, name)}: pass {name} >= {least}")
        for name in ("temperature", "confidence_temperature", "fusion_alpha"):  # "0.7" would fail in a comparison
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise MinirunError(f"{name} must be a number, got {value!r}")
        if self.confidences is not None and not (isinstance(self.confidences, list) and all(
                isinstance(c, (list, tuple)) for c in self.confidences)):
            raise MinirunError(f"confidences must be one list per question, got {self.confidences!r}: e.g. "
                               "[[0.9, 0.6, 0.7]] for one question of three prompts")
        if not self.temperature >= 0:
            raise MinirunError(f"temperature must be 0 (greedy) or more, got {self.temperature}: pass temperature >= 0")
        if not self.confidence_temperature > 0:
            raise MinirunError(f"confidence_temperature must be above 0 (self-consistency samples), "
                               f"got {self.confidence_temperature}: pass a positive value")
        bias = self.flex_bias
        if bias is not None and bias != "inv_n" and not (isinstance(bias, (int, float)) and 0 < bias < math.inf):
            raise MinirunError(f"flex_bias must be a positive finite weight or 'inv_n', got {bias!r}: pass a weight "
                               "above 0 on the paraphrases' attention (1 changes nothing) or inv_n (1 over their "
                               "count)")
        if self.choice_score not in CHOICE_SCORES:
            raise MinirunError(f"unknown --choice-score {self.choice_score!r}: choose {', '.join(CHOICE_SCORES)}")


@dataclass
class MethodResult:
    method: str
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int  # tokens prefilled (a shared head counted once)
    prompts: list[str]
    answers: list[str] | None = None  # per_prompt and vote: one answer per paraphrase
    confidences: list[float] | None = None
    answer_token_ids: list[list[int]] | None = None  # per_prompt and vote: generated ids per paraphrase
    fusion_layer: int | None = None  # hidden_avg: the first fused block used
    chosen: int | None = None  # vote: the prompt whose answer won (`text` is its completion)
    finish_reasons: list[str] | None = None  # per_prompt and vote: why each paraphrase's answer ended
