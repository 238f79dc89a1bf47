"""Answer-vs-gold matching (answers are taken out of generations by `minirun.text.extract_answer`).

A prediction counts as correct when some gold answer's lemma sequence appears contiguously
inside the prediction's: "the cats" matches "cat", "Paris, France" matches "Paris", but
"Parisian" does not match "Paris" because whole lemmas are compared, never substrings.
"""
from __future__ import annotations

import functools
import re
import string
from dataclasses import dataclass

import numpy as np

from minirun.text import clean, drop_article, fold, normalize, number_value

# Bumped when a verdict can change: a run's rows come from one matcher (its run key holds `matcher_name()`)
MATCHER_VERSION = 5  # 2: numbers keep their sign and decimal point, accents fold, only a leading article goes;
# 3: "’" is an apostrophe, "C++"/"C#" are not "C", every script's dashes and punctuation count, and a prediction
# of stopwords alone ("and") is not found inside a gold by the bidirectional rule, and an answer ends at " Q:", not
# at "Q:" inside a word ("NATO HQ: Brussels"); 4: a comma between digits that groups no thousands is a decimal
# comma ("2,5" is 2.5, not "25"; "1,000" stays 1000), a lone letter's trailing "-" is part of it ("A-" is no "A"),
# and a word the lemmatiser turns into a lone letter keeps its text ("an" is no "A"); 5: letters Unicode does not
# decompose fold too ("Søren" is "Soren", "Łódź" "Lodz", "Straße" "Strasse")
MATCH_RULES = ("lemma", "bidirectional")  # a run's headline rule: `Matcher.match` one way, or both ways
# what `report --match` rescores by: those, lm-evaluation-harness's verdicts (`harness_exact`, or a word problem's
# `harness_gsm8k` strict-match), or a word problem's flexible-extract
SCORING_RULES = (*MATCH_RULES, "harness", "flexible")
HARNESS_STOPS = ("\n", ".", ",")  # lm-evaluation-harness's `until` for triviaqa and nq_open
_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
GSM8K_FINAL = re.compile(r"#### (-?[0-9.,]+)")  # lm-evaluation-harness gsm8k's "strict-match" filter (the first)
GSM8K_ANY = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")  # and its "flexible-extract" filter (the last)
GSM8K_IGNORED = (",", r"\$", r"(?s).*#### ", r"\.$")  # its exact_match's regexes_to_ignore, applied in order


def harness_exact(generated: str, golds: list[str], ignored: str = "") -> bool:
    """lm-evaluation-harness's `exact_match` of its triviaqa and nq_open tasks: the generation cut at its first new
    line, full stop or comma (their stop strings), stripped of surrounding whitespace (`remove_whitespace`), is right
    where it equals some gold once both have lost what the regex `ignored` matches (nq_open's articles), their case
    and ASCII punctuation, compared as the harness compares them (numpy's string arrays). No lemmas, no containment:
    "Paris, France" is right for "Paris" by the cut, "the city of Paris" is not."""
    if not golds:
        return False
    cut = min((i for stop in HARNESS_STOPS if (i := generated.find(stop)) >= 0), default=len(generated))
    prediction = generated[:cut].strip()
    # two arrays, as there: each as wide as its longest text, which lowering can outgrow ("İ" is two letters lowered)
    sides = [np.array([re.sub(ignored, "", t) if ignored else t for t in texts])
             for texts in ([prediction] * len(golds), golds)]
    predictions, references = (np.char.translate(np.char.lower(side), _NO_PUNCTUATION) for side in sides)
    return bool((predictions == references).any())


def harness_gsm8k(generated: str, golds: list[str], stops: tuple[str, ...] = (), flexible: bool = False) -> bool:
    """lm-evaluation-harness's gsm8k verdict under its "strict-match" filter: the generation cut at its stops, the
    number after its first "#### " (no such number: never right), equal to some gold once both have lost their
    commas, dollar signs, anything up to a "#### " and one final full stop, case ignored. "#### 1,250" is right for
    1250; "#### 3.50" is not for 3.5, nor "The answer is 18" for 18 (see `number_right`). `flexible`: its
    "flexible-extract" filter instead, the last run of digits, "$", "." and "," (two characters or more) or digit
    anywhere, so "The answer is 18." is right, and "18 ..." is not (its last run is "...")."""
    for stop in stops:
        generated = generated.split(stop)[0]
    if flexible:
        runs = GSM8K_ANY.findall(generated)  # (run, digits) pairs, one of them empty
        extracted = next(group for group in runs[-1] if group) if runs else None
    else:
        extracted = found[1] if (found := GSM8K_FINAL.search(generated)) else None
    if extracted is None:
        return False

    def bare(text: str) -> str:
        for pattern in GSM8K_IGNORED:
            text = re.sub(pattern, "", text)
        return text.lower()

    return bare(extracted.strip()) in {bare(gold) for gold in golds}


def number_right(answer: str | None, golds: list[str]) -> bool:
    """Whether a worked solution's final number (`final_number`'s canonical text) equals a gold number as a number:
    "1250" is right for "1,250", "3.5" for "3.50"."""
    return answer is not None and answer in {number_value(gold) for gold in golds}


@dataclass(frozen=True)
class MatchResult:
    exact: bool  # normalised string equal to some gold
    lemma: bool  # some gold's lemmas contained in the prediction's (the headline "correct")


def _contains(seq: tuple[str, ...], sub: tuple[str, ...]) -> bool:
    n = len(sub)
    return n > 0 and any(seq[i:i + n] == sub for i in range(len(seq) - n + 1))


@functools.cache
def _load_nlp():
    """A full English pipeline when one is installed, else the offline lookup lemmatizer; loaded once
    per process (0.4 s), as a sweep evaluates many runs and each makes a Matcher."""
    import spacy

    for name in ("en_core_web_lg", "en_core_web_sm"):
        if spacy.util.is_package(name):
            return spacy.load(name, disable=["parser", "ner"])
    nlp = spacy.blank("en")
    nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
    nlp.initialize()  # loads the tables from spacy-lookups-data, no network
    return nlp


def matcher_name() -> str:
    """The matcher a run's verdicts come from: its version and spaCy pipeline (a full English model
    lemmatises some words otherwise than the lookup tables)."""
    meta = _load_nlp().meta
    installed = f"{meta['lang']}_{meta['name']}-{meta['version']}" if meta.get("name") != "pipeline" else "lookup"
    return f"v{MATCHER_VERSION} {installed}"


class Matcher:
    """Lemma matcher; lemmatises unseen strings in batches and caches them, because sweeps
    compare the same gold answers and frequent predictions many times."""

    BATCH = 256  # strings per spaCy pipe call

    def __init__(self) -> None:
        self.nlp = _load_nlp()
        self._cache: dict[str, tuple[str, ...]] = {}

    def lemmas(self, texts: list[str]) -> list[tuple[str, ...]]:
        """Lemma sequences without punctuation or a leading article, in input order."""
        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        docs = self.nlp.pipe([fold(t) for t in todo], batch_size=self.BATCH) if todo else ()
        for text, doc in zip(todo, docs):
            self._cache[text] = tuple(drop_article([
                part
                for tok in doc
                if not tok.is_punct and not tok.is_space
                # a lone letter is a name ("Vitamin D", "Plan B"), never a word the lemmatiser knows ("d" -> "have"),
                # nor what a word lemmatises to ("an" -> "a": a gold "A" was found in "an apple")
                for part in clean(tok.text if len(tok.text) == 1 or len(tok.lemma_) == 1 else tok.lemma_ or tok.text)
                .split()
            ]))
        return [self._cache[t] for t in texts]

    def match(self, predictions: list[str], golds: list[list[str]], bidirectional: bool = False) -> list[MatchResult]:
        """One result per prediction against its gold aliases; `bidirectional` also accepts a
        prediction contained in a gold ("Bell" for "Alexander Graham Bell") unless it is stopwords alone."""
        if len(predictions) != len(golds):
            raise ValueError(f"{len(predictions)} predictions but {len(golds)} gold lists")
        if any(isinstance(gs, str) for gs in golds):  # a string would be read as its characters' list
            raise ValueError("golds must hold one list of gold answers per prediction, not strings")
        lemmas = self.lemmas(predictions + [g for gs in golds for g in gs])  # one batch for both
        pred_lemmas, gold_lemmas = lemmas[:len(predictions)], iter(lemmas[len(predictions):])
        results = []
        for pred, pl, gs in zip(predictions, pred_lemmas, golds):
            gls = [next(gold_lemmas) for _ in gs]
            norm = normalize(pred)
            exact = bool(norm) and any(norm == normalize(g) for g in gs)
            inside = bidirectional and any(t not in self.nlp.Defaults.stop_words for t in pl)  # not "and", "of"
            lemma = any(_contains(pl, gl) or (inside and _contains(gl, pl)) for gl in gls)
            results.append(MatchResult(exact=exact, lemma=exact or lemma))
        return results
