"""Self-consistency confidence of each paraphrase, for the weighted fusion methods.

confidence = fraction of S sampled answers whose first line matches the greedy answer. The S
samples of a paraphrase share one prefill: the prompt is encoded once (batch 1) and broadcast
into S cache rows. Results are cached on disk per (model, prompt, settings).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Callable

from minirun.checkpoints.loader import quick_digest
from minirun.engine.generate import decode_loop, plain_row, stack_rows
from minirun.engine.sampling import SamplingParams, sample
from minirun.errors import MinirunError, PromptTooLong
from minirun.methods.names import WEIGHTED
from minirun.methods.model import EnsembleModel
from minirun.methods.options import EnsembleOptions
from minirun.methods.packing import Encoded
from minirun.paths import cache_root, read_cache, write_atomic
from minirun.text import first_line, normalize

SameAnswer = Callable[[str, str], bool]
log = logging.getLogger("minirun")


def normalised_equal(a: str, b: str) -> bool:
    """Fallback comparison of two samples' first lines under `normalize` (accents, case, punctuation and a
    leading article dropped); the evaluation pipeline's lemma matcher replaces it."""
    return normalize(first_line(a)) == normalize(first_line(b))


# What a comparator's verdicts are keyed by in the cache: a comparator may carry its own (`cache_name`, e.g. the
# matcher's version), so confidences counted under other rules are not reused
normalised_equal.cache_name = "normalised_equal v4"  # type: ignore[attr-defined]  (2: numbers keep sign and point;
# 3: "’" is an apostrophe, "C++" is not "C", every script's dashes and punctuation; 4: "ø", "ł", "ß"… fold)


def cache_dir() -> Path:
    return cache_root() / "confidence"


def _key(llm: EnsembleModel, weights: str, ids: list[int], options: EnsembleOptions, same: SameAnswer) -> str:
    """The cache's name for one prompt's confidence: the model (its path and `weights`, so other weights saved there
    are another model), dtype, device, the prompt's ids and the sampling settings."""
    settings = [str(llm.path.resolve()), weights, str(llm.dtype), llm.device.type, ids, options.num_samples,
                options.confidence_temperature, options.confidence_tokens, options.seed,
                getattr(same, "cache_name", getattr(same, "__qualname__", repr(same)))]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()


def paraphrase_confidence(llm: EnsembleModel, ids: list[int], options: EnsembleOptions, same: SameAnswer) -> float:
    """Greedy answer vs S samples drawn from one shared prefill of `ids`."""
    n = options.num_samples
    max_new = options.confidence_tokens
    greedy = llm.generate_ids([ids], max_new, SamplingParams(), stop=("\n",))[0].text
    layout = stack_rows([plain_row(ids)], llm.pad_id, llm.device)
    session = llm.session(n, layout.length + max_new)
    logits = session.prefill(layout.tokens, layout.positions, layout.segments).expand(n, -1)
    params = SamplingParams(options.confidence_temperature, seed=options.seed)
    generator = params.generator(llm.device)
    samples = decode_loop(session, logits, layout.next_positions.expand(n),
                          lambda l, rows: sample(l, params, generator), max_new, llm.stopper(("\n",)))
    return sum(same(s.text, greedy) for s in samples) / n


def weights_for(llm: EnsembleModel, method: str, encoded: list[Encoded],
                options: EnsembleOptions) -> list[list[float]] | None:
    """A weighted method's confidences, per question and prompt: those given in `options` (checked: one
    finite number >= 0 per prompt, since a wrong count or a negative one would fuse silently wrong), else
    measured (`confidences_for`); None for the other methods."""
    if method not in WEIGHTED:
        return None
    given = options.confidences
    if given is None:
        return confidences_for(llm, encoded, options)
    if len(given) != len(encoded) or any(len(c) != len(e.paraphrases) for c, e in zip(given, encoded)):
        raise MinirunError(f"confidences: give one list per question ({len(encoded)}) with one number per prompt "
                           f"({[len(e.paraphrases) for e in encoded]}), got lengths {[len(c) for c in given]}")
    if bad := [x for c in given for x in c if isinstance(x, bool) or not isinstance(x, (int, float))
               or not math.isfinite(x) or x < 0]:
        raise MinirunError(f"confidences must be finite numbers >= 0, got {bad[0]!r}: a fraction of agreeing samples")
    return [[float(x) for x in c] for c in given]


def confidences_for(llm: EnsembleModel, encoded: list[Encoded], options: EnsembleOptions, same: SameAnswer = normalised_equal) -> list[list[float]]:
    """Per question, per paraphrase confidence, read from / written to the on-disk cache."""
    if options.thinking or llm.opens_reasoning(options.chat, options.thinking):
        raise MinirunError(f"the weighted methods measure each prompt's confidence on {options.confidence_tokens}"
                           "-token samples of its answer, and a reasoning model thinks first: turn thinking off, or "
                           "give the confidences (EnsembleOptions.confidences)")
    limit = llm.config.max_position_embeddings
    longest = [max(len(enc.full(i)) for i in range(len(enc.paraphrases))) for enc in encoded]
    worst = longest.index(max(longest))
    if longest[worst] + options.confidence_tokens > limit:  # before any sampling, and not in --max-new-tokens' words
        raise PromptTooLong(f"a weighted method samples {options.confidence_tokens} tokens after each prompt to "
                            f"measure its confidence, and a prompt of {longest[worst]} tokens leaves no room for them "
                            f"in the model's context of {limit}: shorten the prompts (fewer few-shot examples), or "
                            "from Python give EnsembleOptions.confidences or a smaller confidence_tokens", worst)
    directory, weights = cache_dir(), quick_digest(llm.path)
    out = []
    for enc in encoded:
        row = []
        for i in range(len(enc.paraphrases)):
            ids = enc.full(i)
            path = directory / f"{_key(llm, weights, ids, options, same)}.json"
            value = _cached(path)
            if value is None:
                value = paraphrase_confidence(llm, ids, options, same)
                try:
                    write_atomic(path, lambda tmp: tmp.write_text(json.dumps({"confidence": value,
                                                                              "samples": options.num_samples})))
                except OSError as e:
                    log.warning("cannot cache a confidence in %s (%s): it is sampled again next time; point "
                                "MINIRUN_CACHE at a writable folder", directory, e.strerror or e)
            row.append(value)
        out.append(row)
    return out


def _cached(path: Path) -> float | None:
    """A cached confidence, or None when there is none to trust (missing, unreadable, or no fraction in it)."""
    data = read_cache(path, "the cached confidence")
    value = data.get("confidence") if isinstance(data, dict) else None
    if data is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1):
        log.warning("cached confidence %s holds %r, not a fraction: sampling it again", path, value)
        return None
    return None if value is None else float(value)