"""MMLU-Pro (Wang et al. 2024): 10-option multiple choice over 14 subjects, split into
reasoning-intensive and memory-intensive items."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

from probing.errors import LirefError
from probing.questions._io import (
    Row,
    hub_or_file_rows,
    keep_values,
    parse_answers,
    parse_label,
    reject_unknown_options,
    require_columns,
)
from probing.questions.record import Question

__all__ = [
    "CATEGORY_LABELS",
    "DEFAULT_SPLIT",
    "HUB_NAME",
    "LETTERS",
    "load_mmlu_pro",
]

logger = logging.getLogger(__name__)

HUB_NAME = "TIGER-Lab/MMLU-Pro"
DEFAULT_SPLIT = "test"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

#: FALLBACK HEURISTIC, not the paper's labels. The paper labels each item with a GPT-4o
#: "reasoning score" in [0, 1] (> 0.5 = reasoning). When a data file carries such a score
#: (option ``score_field``) it is used; otherwise the item's category decides, with this map.
CATEGORY_LABELS: dict[str, str] = {
    "math": "reasoning",
    "physics": "reasoning",
    "chemistry": "reasoning",
    "engineering": "reasoning",
    "computer science": "reasoning",
    "economics": "reasoning",
    "business": "reasoning",
    "history": "memory",
    "law": "memory",
    "philosophy": "memory",
    "psychology": "memory",
    "health": "memory",
    "biology": "memory",
    "other": "memory",
}


def _score(row: Row, score_field: str) -> float | None:
    value = row.data.get(score_field)
    if value is None or value == "":
        return None
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise LirefError(
            f"{row.where}: {score_field} {value!r} is not a number in [0, 1]"
        ) from None
    return None if math.isnan(score) else score  # NaN = not scored (pandas' empty cell)


def _choices(row: Row) -> tuple[list[str], int, str]:
    options = row.data["options"]
    if isinstance(options, str):
        options = list(parse_answers(options, row.where))
    if not isinstance(options, list) or not options:
        raise LirefError(f"{row.where}: 'options' must be a non-empty list, got {options!r}")
    choices = [str(o) for o in options]
    raw_index = row.data.get("answer_index")
    if raw_index is not None and raw_index != "":
        try:
            index = int(raw_index)
        except (TypeError, ValueError):
            raise LirefError(f"{row.where}: answer_index {raw_index!r} is not an integer") from None
    elif str(row.data.get("answer", "")).strip().upper() in LETTERS[: len(choices)]:
        index = LETTERS.index(str(row.data["answer"]).strip().upper())
    else:
        raise LirefError(
            f"{row.where}: needs 'answer_index' or an 'answer' letter in "
            f"{LETTERS[0]}-{LETTERS[len(choices) - 1]}; got {row.data.get('answer')!r}"
        )
    if not 0 <= index < len(choices):
        raise LirefError(
            f"{row.where}: answer_index {index} out of range for {len(choices)} options"
        )
    return choices, index, LETTERS[index]


def load_mmlu_pro(
    path: str | None = None,
    split: str | None = None,
    categories: Iterable[str] | str | None = None,
    score_field: str = "memory_reason_score",
    threshold: float = 0.5,
    category_labels: Mapping[str, str] | None = None,
    **options: Any,
) -> list[Question]:
    """Load MMLU-Pro from the hub (``TIGER-Lab/MMLU-Pro``) or a local jsonl/json/csv/tsv file.

    Args:
        categories: keep only these categories (e.g. ``["math", "history"]``).
        score_field: numeric column with a reasoning score; > ``threshold`` = reasoning.
            Rows without it are labelled by category (``CATEGORY_LABELS``, a fallback
            heuristic); ``meta["label_source"]`` says which was used.
        threshold: score threshold.
        category_labels: overrides/extends ``CATEGORY_LABELS``.

    ``answers`` = ``(letter, option text)``; ``meta`` holds ``choices``, ``answer_index``,
    ``category``, ``question_id``, ``src`` and, when scored, ``reasoning_score``.
    """
    reject_unknown_options(
        "mmlu_pro", options, ["categories", "score_field", "threshold", "category_labels"]
    )
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise LirefError(f"mmlu_pro: threshold={threshold!r} must be a number (e.g. 0.5)")
    label_map = {**CATEGORY_LABELS, **{k.lower(): v for k, v in (category_labels or {}).items()}}
    for cat, lab in label_map.items():
        parse_label(lab, f"mmlu_pro category_labels[{cat!r}]")
    split = split or DEFAULT_SPLIT
    rows = hub_or_file_rows(HUB_NAME, None, path, split)
    require_columns(rows, ["question", "options", "category"])
    rows = keep_values(rows, "category", categories, "mmlu_pro", "categories")

    questions = []
    for row in rows:
        choices, index, letter = _choices(row)
        category = str(row.data["category"])
        qid = row.data.get("question_id", row.index)
        meta: dict[str, Any] = {
            "choices": choices,
            "answer_index": index,
            "category": category,
            "question_id": qid,
            "answer_type": "choice",
        }
        if row.data.get("src"):
            meta["src"] = row.data["src"]
        if row.data.get("cot_content"):
            meta["cot_content"] = row.data["cot_content"]
        score = _score(row, score_field)
        if score is not None:
            label = "reasoning" if score > threshold else "memory"
            meta["reasoning_score"] = score
            meta["label_source"] = "score"
        else:
            key = category.strip().lower()
            if key not in label_map:
                raise LirefError(
                    f"{row.where}: category {category!r} has no label and the row has no "
                    f"{score_field!r}; known categories: {sorted(label_map)} "
                    f"(extend with category_labels=...)"
                )
            label = parse_label(label_map[key], row.where)
            meta["label_source"] = "category"
        questions.append(
            Question(
                id=f"mmlu_pro/{split}/{qid}",
                question=str(row.data["question"]).strip(),
                answers=(letter, choices[index]),
                label=label,  # type: ignore[arg-type]
                source="mmlu_pro",
                meta=meta,
            )
        )
    logger.info("mmlu_pro/%s: %d questions", split, len(questions))
    return questions
