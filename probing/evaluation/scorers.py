"""Answer scoring: is a model's completion correct for a question?

``is_correct`` picks the rule from the question: ``meta["answer_type"]`` when a loader set it
(``"number"``, ``"choice"``, ``"text"``), else multiple choice when ``meta["choices"]`` is
present, numeric when the gold answer is a number, text otherwise.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

from probing.errors import LirefError
from probing.questions.record import Question

__all__ = [
    "ANSWER_TYPES",
    "DEFAULT_STOPS",
    "answer_type",
    "cut_completion",
    "extract_choice",
    "extract_number",
    "is_correct",
    "normalize_text",
    "numbers_equal",
    "score_completions",
]

ANSWER_TYPES: tuple[str, ...] = ("number", "choice", "text")
#: A base model prompted with "Q: ...\nA: " tends to go on with the next "Q:"; cut it there.
DEFAULT_STOPS: tuple[str, ...] = ("\nQ:",)
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

# a number with well-formed thousands groups first ("1,000.5"), else plain digits ("1000.5")
_NUMBER = re.compile(r"(?<!\d)-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation + "\u2018\u2019\u201c\u201d"})


def normalize_text(text: str) -> str:
    """Unicode-normalize, lowercase, drop punctuation and articles, collapse whitespace."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def cut_completion(text: str, stops: Sequence[str] = DEFAULT_STOPS) -> str:
    """``text`` up to the first stop string."""
    for stop in stops:
        i = text.find(stop)
        if i >= 0:
            text = text[:i]
    return text


def extract_number(text: str) -> str | None:
    """The first number in ``text``, thousands commas stripped (``"$1,000."`` -> ``"1000"``);
    ``None`` when there is none."""
    m = _NUMBER.search(text)
    return m.group(0).replace(",", "") if m else None


def numbers_equal(a: str, b: str, tol: float = 1e-6) -> bool:
    """Numeric equality of two number strings (``"18"`` == ``"18.0"``)."""
    try:
        x, y = float(a.replace(",", "")), float(b.replace(",", ""))
    except ValueError:
        return False
    return abs(x - y) <= tol * max(1.0, abs(y))


_CHOICE_PATTERNS = (
    re.compile(r"answer is:?\s*\(?([A-Z])\b", re.IGNORECASE),
    re.compile(r"^\s*\(?([A-Z])(?:[).:,]|\s*$|\s*\n)"),
    re.compile(r"\(([A-Z])\)"),
)


def extract_choice(text: str, n_choices: int = 10) -> str | None:
    """The option letter a completion picks (``"B. Paris"``, ``"(B)"``, ``"the answer is B"``,
    ``"B"``); ``None`` when none of the first ``n_choices`` letters is found."""
    valid = _LETTERS[:n_choices]
    for pattern in _CHOICE_PATTERNS:
        m = pattern.search(text)
        if m and m.group(1).upper() in valid and m.group(1).isupper():
            return m.group(1)
    return None


def _is_number(text: str) -> bool:
    m = _NUMBER.fullmatch(text.strip())
    return m is not None


def answer_type(question: Question) -> str:
    """``"number"``, ``"choice"`` or ``"text"`` for ``question`` (see the module doc)."""
    declared = question.meta.get("answer_type")
    if declared is not None:
        if declared not in ANSWER_TYPES:
            raise LirefError(
                f"question {question.id!r}: answer_type {declared!r}; allowed: {ANSWER_TYPES}"
            )
        return declared
    if question.meta.get("choices"):
        return "choice"
    if question.answers and _is_number(question.answers[0]):
        return "number"
    return "text"


def is_correct(completion: str, question: Question, stops: Sequence[str] = DEFAULT_STOPS) -> bool:
    """Whether ``completion`` (cut at ``stops``) answers ``question`` correctly.

    - number: the first number in the completion equals the gold number;
    - choice: the picked letter equals the gold letter (``answers[0]``, else from
      ``meta["answer_index"]``);
    - text: some normalized answer alias occurs in the normalized completion as whole words
      (case-insensitive).
    A question without answers is never answered correctly.
    """
    text = cut_completion(completion, stops)
    kind = answer_type(question)
    if kind == "choice":
        choices = question.meta.get("choices") or []
        if "answer_index" in question.meta:
            gold = _LETTERS[int(question.meta["answer_index"])]
        elif question.answers:
            gold = question.answers[0].strip().upper()
        else:
            return False
        return extract_choice(text, len(choices) or len(_LETTERS)) == gold
    if not question.answers:
        return False
    if kind == "number":
        got = extract_number(text)
        return got is not None and any(numbers_equal(got, a) for a in question.answers)
    padded = f" {normalize_text(text)} "
    for alias in question.answers:
        norm = normalize_text(alias)
        if norm and f" {norm} " in padded:
            return True
    return False


def score_completions(completions: Sequence[str], questions: Sequence[Question]) -> list[bool]:
    """``is_correct`` over paired lists (same length)."""
    if len(completions) != len(questions):
        raise LirefError(
            f"{len(completions)} completions for {len(questions)} questions; need one each"
        )
    return [is_correct(c, q) for c, q in zip(completions, questions, strict=True)]
