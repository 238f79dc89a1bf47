"""Answer extraction and text normalisation, shared by the methods (self-consistency, votes, gap items) and
evaluation."""
from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

ARTICLES = frozenset({"a", "an", "the"})
_SYMBOLS = "".join(ch for ch in string.punctuation if unicodedata.category(ch)[0] == "S")  # $ + < = > ^ ` | ~
_APOSTROPHE = str.maketrans({"\u2019": "'", "\u02bc": "'"})  # "Schindler’s" lemmatises as "Schindler's" does
# A lone letter's "++", "+", "#" or trailing "-" is part of a name: "C++", "C#", "F#", "A+", "A-" are not "C", "F",
# "A" (a "-" before a word or number joins, as in "T-shirt" or "B-12", and stays a dash)
_SIGN_NAME = re.compile(r"(?<![\w+#-])([^\W\d_])(\+\+|\+|#|-)(?![\w+#-])")
_SIGN_WORDS = {"++": "plusplus", "+": "plus", "#": "sharp", "-": "minus"}
# "C sharp", "C plus plus" (not "a" or "i": "a sharp knife" is no note)
_SPELT_SIGN = re.compile(r"(?<![\w+#])([b-hj-z])[\s-]+(sharp|plus[\s-]+plus)(?!\w)")
_MINUS, _POINT = "\ue000", "\ue001"  # a number's sign and decimal point, kept through the punctuation pass
_NUMBER_MARKS = (
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),  # a thousands separator: "1,000" is "1000"
    (re.compile(r"(?<=\d),(?=\d)"), _POINT),  # any other comma between digits is a decimal one: "2,5" is 2.5, not 25
    (re.compile(r"(?<![\w.])-(?=\.?\d)"), _MINUS),  # "-40" is not "40"; a hyphen between words is a space
    (re.compile(r"(?<![^\W\d])\.(?=\d)"), _POINT),  # "2.5" is not "25", ".5" not "5"
)


_SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>|</?s>")
THINK_START, THINK_END = "<think>", "</think>"  # a reasoning model's thinking (Qwen3, QwQ, DeepSeek-R1 distills)
THINKING_TOKENS = 256  # fewer new tokens than this seldom see a reasoning model's thinking end: warned of
_LABEL = re.compile(r"^(?:(?:final\s+)?answer|a)\s*:\s*", re.IGNORECASE)
_WRAP = "\"'`*“”‘’ \t"
# A number as a worked solution writes it: a sign, a dollar, thousands in groups of three ("1,250"), a decimal part;
# "1,2,3" is three numbers, not 123; the "-" of "8-3" and of "8 - 3" subtracts; ".5" is a half
_NUMBER = re.compile(r"(?:(?<![\w)])[-\u2212])?(?:\$\s?)?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<!\d)\.\d+)")
_FINAL_MARK = re.compile(r"####\s*")  # GSM8K's solutions end "#### 72"
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")  # a maths-tuned model's "\boxed{72}"


# Latin letters that Unicode does not decompose into a base letter and an accent, spelt as English text spells them
# ("Søren" is written "Soren", "Łódź" "Lodz", "Encyclopædia" "Encyclopaedia")
_UNDECOMPOSED = str.maketrans({"ø": "o", "ł": "l", "đ": "d", "ħ": "h", "ŧ": "t", "ı": "i", "æ": "ae", "œ": "oe",
                               "ß": "ss", "þ": "th", "ð": "d"})


def fold(text: str) -> str:
    """Compatibility-normalised, lowercased, accents dropped ("São" -> "sao", "Søren" -> "soren": gold names carry
    accents that answers often lack), the Unicode minus as "-", a typographic apostrophe as "'", and a lone letter's
    "++"/"+"/"#" (or "♯")/trailing "-" spelt out as one word ("c++", "c plus plus" -> "cplusplus"; "c#", "C sharp" -> "csharp"),
    so that no later pass drops them as punctuation or splits them."""
    decomposed = unicodedata.normalize("NFKD", text.replace("\u2212", "-"))
    folded = unicodedata.normalize("NFKC", "".join(ch for ch in decomposed if not unicodedata.combining(ch)))
    # the music sharp sign: "C♯" is "C#"
    folded = folded.lower().translate(_APOSTROPHE).translate(_UNDECOMPOSED).replace("\u266f", "#")
    folded = _SPELT_SIGN.sub(lambda m: m[1] + re.sub(r"[\s-]", "", m[2]), folded)
    return _SIGN_NAME.sub(lambda m: m[1] + _SIGN_WORDS[m[2]], folded)


def _cleaned(ch: str) -> str:
    """A character after the number marks: every dash and "/" a space, other punctuation and ASCII symbols gone."""
    kind = unicodedata.category(ch)
    if kind == "Pd" or ch == "/":
        return " "
    return "" if kind[0] == "P" or ch in _SYMBOLS else ch


def clean(token: str) -> str:
    """`fold` with punctuation (any script's) removed and dashes/slashes as spaces ("U.S." -> "us",
    "Jean‐Paul" -> "jean paul"), a number's sign and decimal point kept ("-2.5" stays, "1,000" -> "1000", "2,5" -> "2.5")."""
    text = fold(token)
    for pattern, mark in _NUMBER_MARKS:
        text = pattern.sub(mark, text)
    return "".join(map(_cleaned, text)).replace(_MINUS, "-").replace(_POINT, ".")


def first_line(text: str) -> str:
    """A generation's first non-blank-edged line: short answers and rewrites end at a newline."""
    return text.strip().split("\n", 1)[0].strip()


def drop_article(words: list[str]) -> list[str]:
    """Without a leading article ("The Beatles" = "Beatles"); one inside ("Vitamin A") or alone ("A") stays."""
    return words[1:] if len(words) > 1 and words[0] in ARTICLES else words


def normalize(text: str) -> str:
    """The plain comparator: `clean`ed words without a leading article, single spaces."""
    return " ".join(drop_article(clean(text).split()))


def answer_start(text: str, reasoning: bool = False) -> int | None:
    """Where the answer starts in generated text: past the thinking a reasoning model writes first — a block the
    prompt left open (`reasoning`: DeepSeek-R1's template ends in <think>) or one the text opens with <think>
    (Qwen3 thinking) — and the blank lines after its </think>; else at 0. None while that thinking goes on."""
    if not (reasoning or text.lstrip().startswith(THINK_START)):
        return 0
    end = text.find(THINK_END)
    if end < 0:
        return None
    after = text[end + len(THINK_END):]
    return len(text) - len(after.lstrip())


def extract_answer(text: str, stop: Iterable[str] = ("\n", " Q:"), reasoning: bool = False) -> str:
    """The answer part of a generation: after any thinking (`answer_start`, `reasoning` as there; a </think> in the
    text ends thinking too; no answer if it never ended), text before the first stop string, without special
    tokens, "A:"/"Answer:" labels, wrapping quotes or markdown, and trailing punctuation."""
    start = answer_start(text, reasoning or THINK_END in text)
    if start is None:
        return ""
    text = _SPECIAL_TOKEN.sub("", text[start:]).lstrip()
    # a stop with a leading space (" Q:") also stops at the very start, where the space went with the lstrip (or
    # with a SentencePiece decode of the first token): an answer that is a next question is no answer
    starts = (0 for s in stop if s[:1] == " " and s.strip() and text.startswith(s.strip()))
    cut = min((*starts, *(i for s in stop if s and (i := text.find(s)) >= 0)), default=len(text))
    text = text[:cut].strip()
    while m := _LABEL.match(text):
        text = text[m.end():].lstrip()
    return text.strip(_WRAP).rstrip(".,;:!").strip(_WRAP)


def number_value(text: str) -> str | None:
    """A number's canonical text, so that equal numbers compare equal whatever their form: "$1,250.00" -> "1250",
    "3.50" -> "3.5", "−4" -> "-4", "-0" -> "0"; None where `text` is not one number."""
    if not (m := _NUMBER.fullmatch(text.strip().rstrip("."))):
        return None
    try:
        value = Decimal(re.sub(r"[$,\s]", "", m[0]).replace("\u2212", "-"))
    except InvalidOperation:
        return None
    return format(value.normalize() + 0, "f")  # + 0: "-0" is "0"


def number_values(text: str) -> set[str]:
    """Every number `text` writes in digits, as `number_value`s ("$1,200 for 3.50 kg" -> {"1200", "3.5"})."""
    return {value for found in _NUMBER.findall(text) if (value := number_value(found)) is not None}


def final_number(text: str, reasoning: bool = False) -> str | None:
    """A worked solution's final answer as `number_value`: the number after its first "####" (GSM8K's mark), else in
    its last "\\boxed{…}", else its last number; looked for past any thinking (`answer_start`); None when there is
    none. What maths answers are judged and voted on: "… so she has $18.\n#### 18" and "The answer is 18.00."
    agree."""
    start = answer_start(text, reasoning or THINK_END in text)
    if start is None:
        return None
    text = text[start:]
    marked = _FINAL_MARK.search(text)
    if marked and (m := _NUMBER.match(text, marked.end())):
        return number_value(m[0])
    boxed = _BOXED.findall(text)
    found = _NUMBER.findall(boxed[-1] if boxed and _NUMBER.search(boxed[-1]) else text)
    return number_value(found[-1]) if found else None


def blank_parts(text: str, blank: str) -> tuple[str, str]:
    """A sentence with one gap split around it: (the text before the gap, the text after it); ValueError where the gap
    is not there exactly once or nothing follows it (an option scored by what follows has nothing to be scored by)."""
    if text.count(blank) != 1:
        raise ValueError(f"{text!r} must hold the blank {blank!r} once, got {text.count(blank)}")
    before, after = text.split(blank)
    if not after.strip():
        raise ValueError(f"{text!r} must go on after its blank {blank!r}: the words after it are what is scored")
    return before, after
