"""Text normalisation shared by self-consistency (methods) and answer matching (evaluation)."""
from __future__ import annotations

import string
import unicodedata

ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = "".join(ch for ch in string.punctuation if ch not in "-/") + "“”‘’«»…"
_DELETE = str.maketrans("", "", _PUNCT)
_SPACE = str.maketrans("-/–—", "    ")


def clean(token: str) -> str:
    """Lowercase with punctuation removed and hyphens/slashes as spaces ("U.S." -> "us")."""
    return unicodedata.normalize("NFKC", token).lower().translate(_SPACE).translate(_DELETE)


def first_line(text: str) -> str:
    """A generation's first non-blank-edged line: short answers and rewrites end at a newline."""
    return text.strip().split("\n", 1)[0].strip()


def normalize(text: str) -> str:
    """The plain comparator: lowercase, no punctuation, no articles, single spaces."""
    return " ".join(w for w in clean(text).split() if w not in ARTICLES)
