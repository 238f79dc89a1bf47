"""User-facing errors, one line naming the problem and the fix, and the checks shared by every layer that raises
them."""
import operator


class MinirunError(Exception):
    """A user-facing error: its message names the problem and the fix."""


def whole_number(value: object, name: str) -> int:
    """`value` as an int where it is a whole number of any integer type (numpy's and torch's included: a notebook's
    counts come from arrays), else a one-line error naming `name`; True and 4.0 are not counts."""
    if not isinstance(value, bool) and "bool" not in str(getattr(value, "dtype", "")):  # numpy's and torch's too
        try:
            return operator.index(value)  # type: ignore[arg-type]
        except TypeError:
            pass
    raise MinirunError(f"{name} must be a whole number, got {value!r}")


def is_texts(value: object) -> bool:
    """Whether a value read from JSON is a list of texts (a config's layer kinds, a run's prompts or item ids)."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def is_number(value: object) -> bool:
    """Whether a value read from JSON is a number: an int or a float, not a boolean (JSON's true is no 1)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def error_line(error: BaseException, limit: int = 200) -> str:
    """An exception as one line of a user-facing message: its type and its first line (the Hub's errors run to
    several), at most `limit` characters of it."""
    return f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0][:limit]}"


class HubDataUnavailable(MinirunError):
    """A Hub dataset split that could not be read (no `datasets` package, offline, a bad name): `what` names the
    split, `reason` why, so a caller reading it for another purpose (few-shot examples) can name its own fix."""

    def __init__(self, message: str, what: str, reason: str):
        super().__init__(message)
        self.what, self.reason = what, reason


class PromptTooLong(MinirunError):
    """A prompt that leaves no room in the model's context. `question` is its index among the questions asked
    together, so a caller that knows their names (eval's item ids, among thousands) can say which one it is."""

    def __init__(self, message: str, question: int):
        super().__init__(message)
        self.question = question
