"""Text normalisation shared by self-consistency (methods) and answer matching (evaluation)."""
from __future__ import annotations

import re
import string
import unicodedata

ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = "".join(ch for ch in string.punctuation if ch not in "-/") + "“”‘’«»…"
_DELETE = str.maketrans("", "", _PUNCT)
_SPACE = str.maketrans("-/–—", "    ")
_MINUS, _POINT = "\ue000", "\ue001"  # a number's sign and decimal point, kept through the punctuation pass
_NUMBER_MARKS = (
    (re.compile(r"(?<=\d),(?=\d{3}(?!\d))"), ""),  # a thousands separator: "1,000" is "1000"
    (re.compile(r"(?<![\w.])-(?=\.?\d)"), _MINUS),  # "-40" is not "40"; a hyphen between words is a space
    (re.compile(r"(?<![^\W\d])\.(?=\d)"), _POINT),  # "2.5" is not "25", ".5" not "5"
)


def fold(text: str) -> str:
    """Compatibility-normalised, lowercased, accents dropped ("São" -> "sao": gold names carry accents that
    answers often lack), the Unicode minus as "-"."""
    decomposed = unicodedata.normalize("NFKD", text.replace("\u2212", "-"))
    return unicodedata.normalize("NFKC", "".join(ch for ch in decomposed if not unicodedata.combining(ch))).lower()


def clean(token: str) -> str:
    """`fold` with punctuation removed and hyphens/slashes as spaces ("U.S." -> "us"), a number's sign and
    decimal point kept ("-2.5" stays, "1,000" -> "1000")."""
    text = fold(token)
    for pattern, mark in _NUMBER_MARKS:
        text = pattern.sub(mark, text)
    return text.translate(_SPACE).translate(_DELETE).replace(_MINUS, "-").replace(_POINT, ".")


def first_line(text: str) -> str:
    """A generation's first non-blank-edged line: short answers and rewrites end at a newline."""
    return text.strip().split("\n", 1)[0].strip()


def drop_article(words: list[str]) -> list[str]:
    """Without a leading article ("The Beatles" = "Beatles"); one inside ("Vitamin A") or alone ("A") stays."""
    return words[1:] if len(words) > 1 and words[0] in ARTICLES else words


def normalize(text: str) -> str:
    """The plain comparator: `clean`ed words without a leading article, single spaces."""
    return " ".join(drop_article(clean(text).split()))
