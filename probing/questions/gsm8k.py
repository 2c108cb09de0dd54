"""GSM8K (grade-school math word problems): a reasoning set with a numeric gold answer."""

from __future__ import annotations

import logging
import re
from typing import Any

from probing.errors import LirefError
from probing.questions._io import (
    hub_or_file_rows,
    reject_unknown_options,
    require_columns,
    strip_thousands,
)
from probing.questions.record import Question

__all__ = ["HUB_NAME", "HUB_CONFIG", "DEFAULT_SPLIT", "gold_from_solution", "load_gsm8k"]

logger = logging.getLogger(__name__)

HUB_NAME = "openai/gsm8k"
HUB_CONFIG = "main"
DEFAULT_SPLIT = "test"

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def gold_from_solution(solution: str, where: str = "") -> str:
    """The final answer after ``####`` with commas stripped: ``"... #### 1,000"`` -> ``"1000"``."""
    if "####" not in solution:
        raise LirefError(f"{where}: GSM8K answer has no '#### <number>' final line")
    gold = strip_thousands(solution.rsplit("####", 1)[1])
    if not _NUMBER.fullmatch(gold):
        raise LirefError(f"{where}: GSM8K final answer {gold!r} is not a number")
    return gold


def load_gsm8k(path: str | None = None, split: str | None = None, **options: Any) -> list[Question]:
    """Load GSM8K from the hub (``openai/gsm8k``, config ``main``) or a local jsonl/csv/tsv file
    with ``question`` and ``answer`` (worked solution ending in ``#### <number>``) columns.

    Every question is labelled ``reasoning``; ``answers`` is ``(gold,)``; ``meta["solution"]``
    holds the full worked solution.
    """
    reject_unknown_options("gsm8k", options, [])
    split = split or DEFAULT_SPLIT
    rows = hub_or_file_rows(HUB_NAME, HUB_CONFIG, path, split)
    require_columns(rows, ["question", "answer"])
    questions = []
    for row in rows:
        solution = str(row.data["answer"])
        gold = gold_from_solution(solution, row.where)
        questions.append(
            Question(
                id=f"gsm8k/{split}/{row.index}",
                question=str(row.data["question"]).strip(),
                answers=(gold,),
                label="reasoning",
                source="gsm8k",
                meta={"solution": solution, "answer_type": "number"},
            )
        )
    logger.info("gsm8k/%s: %d questions", split, len(questions))
    return questions
