"""The data a method takes and returns: a question with its paraphrases, options, results."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Question:
    question: str
    paraphrases: list[str] = field(default_factory=list)
    prefix: str = ""  # instruction / few-shot examples before each paraphrase
    suffix: str = ""  # text after each paraphrase (e.g. "\nA:"); flex shares it across paraphrases


@dataclass
class EnsembleOptions:
    max_new_tokens: int = 32
    chat: bool | None = None  # None: use the chat template when the tokenizer has one
    stop: tuple[str, ...] = ()
    share_prefix: bool = True  # encode the common head once instead of once per paraphrase
    positions: str = "right"  # flex position scheme: right, restart, sequential
    flex_bias: float | str | None = None  # flex: w added as log(w) to generated->paraphrase scores; "inv_n" = 1/N
    temperature: float = 0.0
    seed: int = 0
    num_samples: int = 100  # self-consistency samples per paraphrase (weighted methods)
    confidence_temperature: float = 0.7
    confidence_tokens: int = 16
    confidences: list[list[float]] | None = None  # precomputed, one list per question
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)


@dataclass
class MethodResult:
    method: str
    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int  # tokens prefilled (a shared head counted once)
    prompts: list[str]
    answers: list[str] | None = None  # per_prompt: one answer per paraphrase
    confidences: list[float] | None = None
    answer_token_ids: list[list[int]] | None = None  # per_prompt: generated ids per paraphrase
