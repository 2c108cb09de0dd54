"""Answer scorers: normalization, number and letter extraction, per-question correctness."""

from __future__ import annotations

import pytest

from probing.errors import LirefError
from probing.evaluation.scorers import (
    answer_type,
    cut_completion,
    extract_choice,
    extract_number,
    is_correct,
    normalize_text,
    numbers_equal,
    score_completions,
)
from probing.questions import Question


def mk(answers: tuple[str, ...], label: str = "memory", **meta: object) -> Question:
    return Question(id="x/0", question="?", answers=answers, label=label, source="x", meta=meta)


GSM = mk(("1000",), "reasoning", answer_type="number")
MC = mk(("C", "Washington"), choices=["Lincoln", "Jefferson", "Washington"], answer_index=2)
POP = mk(("politician", "political leader", "pol"), answer_type="text")


def test_normalize_text() -> None:
    assert normalize_text("  The Beatles!  ") == "beatles"
    assert normalize_text("C. G.\tJung") == "c g jung"
    assert normalize_text("Ｐａｒｉｓ, France") == "paris france"  # NFKC full-width
    assert normalize_text("") == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("She makes $18 every day.", "18"),
        ("The total is 1,000 pens, not 2,000.", "1000"),
        ("1,450,000 dollars", "1450000"),
        ("It drops to -3 degrees", "-3"),
        ("about 2.5 hours", "2.5"),
        ("answer: 42.", "42"),
        ("no digits here", None),
        ("16 - 3 - 4 = 9", "16"),  # the first number, as specified
    ],
)
def test_extract_number(text: str, expected: str | None) -> None:
    assert extract_number(text) == expected


def test_numbers_equal() -> None:
    assert numbers_equal("18", "18.0")
    assert numbers_equal("1,000", "1000")
    assert not numbers_equal("18", "19")
    assert not numbers_equal("x", "1")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("C. Washington", "C"),
        ("(B) Jefferson", "B"),
        ("C", "C"),
        ("The answer is (A).", "A"),
        ("the answer is B because", "B"),
        ("I think it is (C)", "C"),
        ("A good question, hard to say", None),
        ("J. out of range", None),
        ("", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text, n_choices=3) == expected


def test_answer_type_inference() -> None:
    assert answer_type(GSM) == "number"
    assert answer_type(MC) == "choice"
    assert answer_type(POP) == "text"
    assert answer_type(mk(("42",))) == "number"
    assert answer_type(mk(("Paris",))) == "text"
    assert answer_type(mk(("B", "x"), choices=["a", "x"])) == "choice"
    with pytest.raises(LirefError, match=r"answer_type 'date'; allowed"):
        answer_type(mk(("x",), answer_type="date"))


def test_is_correct_numeric() -> None:
    assert is_correct("1,000", GSM)
    assert is_correct(" They sell 1000 pens.\nQ: next question 5", GSM)
    assert not is_correct("250 * 4 = 1000", GSM)  # first number is 250
    assert not is_correct("I don't know", GSM)


def test_is_correct_multiple_choice() -> None:
    assert is_correct("C. Washington", MC)
    assert is_correct("The answer is (C)", MC)
    assert not is_correct("B. Jefferson", MC)
    assert not is_correct("Washington", MC)  # letters only
    by_letter = mk(("C", "Washington"), choices=["a", "b", "c"])
    assert is_correct("C", by_letter)


def test_is_correct_aliases_case_insensitive_whole_words() -> None:
    assert is_correct("He was a Politician from Canada.", POP)
    assert is_correct("a POLITICAL LEADER", POP)
    assert not is_correct("He worked in population studies.", POP)  # 'pol' is not a word here
    assert not is_correct("A journalist.\nQ: Who is a politician?", POP)  # cut at next Q:
    assert not is_correct("anything", mk(()))
    jung = mk(("Carl Jung", "C. G. Jung"))
    assert is_correct("It was written by C.G. Jung? no: C. G. Jung", jung)


def test_score_completions() -> None:
    assert score_completions(["1000", "B", "politician"], [GSM, MC, POP]) == [True, False, True]
    with pytest.raises(LirefError, match="2 completions for 1 questions"):
        score_completions(["a", "b"], [GSM])


def test_cut_completion() -> None:
    assert cut_completion("Paris\nQ: next?\nA: x") == "Paris"
    assert cut_completion("a. b", stops=(".",)) == "a"
    assert cut_completion("no stop") == "no stop"
