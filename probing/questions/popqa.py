"""PopQA (Mallen et al. 2023): entity-centric factual questions, a memory set."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from probing.questions._io import (
    hub_or_file_rows,
    keep_values,
    parse_answers,
    reject_unknown_options,
    require_columns,
)
from probing.questions.record import Question

__all__ = ["DEFAULT_SPLIT", "HUB_NAME", "META_COLUMNS", "load_popqa"]

logger = logging.getLogger(__name__)

HUB_NAME = "akariasai/PopQA"
DEFAULT_SPLIT = "test"
#: PopQA columns copied into ``meta`` when present (``prop`` always is).
META_COLUMNS: tuple[str, ...] = (
    "prop",
    "subj",
    "obj",
    "s_pop",
    "o_pop",
    "subj_id",
    "prop_id",
    "obj_id",
    "s_wiki_title",
    "o_wiki_title",
)
_INT_COLUMNS = ("s_pop", "o_pop", "subj_id", "prop_id", "obj_id")


def _meta_value(column: str, value: Any) -> Any:
    if column in _INT_COLUMNS and isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return value
    return value


def load_popqa(
    path: str | None = None,
    split: str | None = None,
    props: Iterable[str] | str | None = None,
    **options: Any,
) -> list[Question]:
    """Load PopQA from the hub (``akariasai/PopQA``) or a local jsonl/json/csv/tsv file with
    ``question``, ``prop`` and ``possible_answers`` columns.

    ``possible_answers`` may be a list or a JSON list inside a string (as in the original
    tsv). Every question is labelled ``memory``. ``props`` keeps only those relations.
    """
    reject_unknown_options("popqa", options, ["props"])
    split = split or DEFAULT_SPLIT
    rows = hub_or_file_rows(HUB_NAME, None, path, split)
    require_columns(rows, ["question", "prop", "possible_answers"])
    rows = keep_values(rows, "prop", props, "popqa", "props")

    questions = []
    no_answer = 0
    for row in rows:
        answers = parse_answers(row.data["possible_answers"], row.where)
        no_answer += not answers
        meta = {c: _meta_value(c, row.data[c]) for c in META_COLUMNS if c in row.data}
        meta["answer_type"] = "text"
        rid = row.data.get("id")
        questions.append(
            Question(
                id=f"popqa/{split}/{rid if rid not in (None, '') else row.index}",
                question=str(row.data["question"]).strip(),
                answers=answers,
                label="memory",
                source="popqa",
                meta=meta,
            )
        )
    if no_answer:
        logger.warning("popqa/%s: %d questions have no possible answer", split, no_answer)
    logger.info("popqa/%s: %d questions", split, len(questions))
    return questions
