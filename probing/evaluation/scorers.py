"""Answer scoring: is a model's completion correct for a question?

``is_correct`` picks the rule from the question: ``meta["answer_type"]`` when a loader set it
(``"number"``, ``"choice"``, ``"text"``), else multiple choice when ``meta["choices"]`` is
present, numeric when the gold answer is a number, text otherwise (numbers: the first number).

``score_answer`` scores per source (``SOURCE_RULES``) and says when nothing could be parsed:
GSM8K and MGSM take the *last* number (a chain of thought ends with its result), MMLU-Pro the
letter after "answer is" (else a leading letter; a parse failure is wrong, counted, never a random
guess), PopQA any answer alias as whole words, the organism the exact first word.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from probing.errors import LirefError
from probing.questions.record import Question

__all__ = [
    "ANSWER_TYPES",
    "DEFAULT_STOPS",
    "RULES",
    "SOURCE_RULES",
    "AnswerScore",
    "answer_type",
    "extract_choice_cot",
    "extract_first_word",
    "extract_last_number",
    "gives_answer",
    "score_answer",
    "scoring_rule",
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


# ----------------------------------------------------------------------------- per source

#: Scoring rules of ``score_answer``.
RULES: tuple[str, ...] = ("last_number", "first_number", "choice", "any_alias", "first_word")
#: Question source -> rule (other sources: from ``answer_type``: number -> last_number,
#: choice -> choice, text -> any_alias). ``meta["scoring"]`` overrides both.
SOURCE_RULES: dict[str, str] = {
    "gsm8k": "last_number",
    "mgsm": "last_number",
    "mmlu_pro": "choice",
    "popqa": "any_alias",
    "organism": "first_word",
}
_BY_TYPE = {"number": "last_number", "choice": "choice", "text": "any_alias"}
_COT_CHOICE = (
    re.compile(r"answer is:?\s*\(?([A-Z])\)?(?![A-Za-z])"),
    re.compile(r"[Aa]nswer:\s*\(?([A-Z])\)?(?![A-Za-z])"),
)


@dataclass(frozen=True)
class AnswerScore:
    """One scored completion: ``parsed`` is the extracted answer (number, letter, first word,
    matched alias) or ``None``; ``parse_failed`` when nothing answer-like was found (then
    ``correct`` is False: a failure is counted, never replaced by a guess)."""

    correct: bool
    parsed: str | None
    parse_failed: bool


def scoring_rule(question: Question) -> str:
    """The rule ``score_answer`` uses for ``question`` (see ``SOURCE_RULES``)."""
    rule = question.meta.get("scoring") or SOURCE_RULES.get(question.source)
    if rule is None:
        rule = _BY_TYPE[answer_type(question)]
    if rule not in RULES:
        raise LirefError(f"question {question.id!r}: scoring rule {rule!r}; allowed: {RULES}")
    return rule


def extract_last_number(text: str) -> str | None:
    """The last number in ``text``, thousands commas stripped (``"... = 1,200."`` -> ``"1200"``,
    negatives and decimals kept); ``None`` when there is none."""
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def extract_choice_cot(text: str, n_choices: int = 10) -> str | None:
    """The letter of the *last* "answer is (X)" / "Answer: X" in a chain of thought, else a
    letter as ``extract_choice`` finds it; ``None`` when there is none among the first
    ``n_choices`` letters."""
    valid = _LETTERS[:n_choices]
    for pattern in _COT_CHOICE:
        hits = [m.group(1) for m in pattern.finditer(text) if m.group(1) in valid]
        if hits:
            return hits[-1]
    return extract_choice(text, n_choices)


def extract_first_word(text: str) -> str | None:
    """The first whitespace-separated word of ``text``; ``None`` for blank text."""
    words = text.split()
    return words[0] if words else None


def _gold_letter(question: Question) -> str | None:
    if "answer_index" in question.meta:
        return _LETTERS[int(question.meta["answer_index"])]
    return question.answers[0].strip().upper() if question.answers else None


def _parse(text: str, rule: str, question: Question) -> str | None:
    if rule == "last_number":
        return extract_last_number(text)
    if rule == "first_number":
        return extract_number(text)
    if rule == "choice":
        n = len(question.meta.get("choices") or []) or len(_LETTERS)
        return extract_choice_cot(text, n)
    if rule == "first_word":
        return extract_first_word(text)
    return text  # any_alias: the whole (normalised) text is searched


def gives_answer(completion: str, answer: str, rule: str, stops: Sequence[str] = DEFAULT_STOPS,
                 question: Question | None = None) -> bool:
    """Whether ``completion`` (cut at ``stops``) gives ``answer`` under ``rule`` (e.g. the rate of
    a stale or a rule answer)."""
    text = cut_completion(completion, stops)
    q = question or Question(id="-", question="", answers=(answer,), label="reasoning", source="")
    got = _parse(text, rule, q)
    return got is not None and _same(got, answer, rule)


def _same(got: str, answer: str, rule: str) -> bool:
    if rule in ("last_number", "first_number"):
        return numbers_equal(got, answer)
    if rule == "choice":
        return got == answer.strip().upper()
    if rule == "first_word":
        return got == answer.strip()
    norm = normalize_text(answer)
    return bool(norm) and f" {norm} " in f" {normalize_text(got)} "


def score_answer(completion: str, question: Question, rule: str | None = None,
                 stops: Sequence[str] = DEFAULT_STOPS) -> AnswerScore:
    """Score ``completion`` (cut at ``stops``) for ``question`` with its source's rule.

    Any of ``question.answers`` counts (multiple choice: the gold letter). A completion with no
    parsable answer is wrong with ``parse_failed=True``; ``any_alias`` never fails to parse
    except on blank text.
    """
    rule = rule or scoring_rule(question)
    if rule not in RULES:
        raise LirefError(f"unknown scoring rule {rule!r}; allowed: {RULES}")
    text = cut_completion(completion, stops)
    got = _parse(text, rule, question)
    if got is None or (rule == "any_alias" and not got.strip()):
        return AnswerScore(False, None, True)
    if rule == "choice":
        gold = _gold_letter(question)
        return AnswerScore(gold is not None and got == gold, got, False)
    correct = any(_same(got, a, rule) for a in question.answers)
    if rule == "any_alias":
        hit = next((a for a in question.answers if _same(got, a, rule)), None)
        return AnswerScore(correct, hit, False)
    return AnswerScore(correct, got, False)
