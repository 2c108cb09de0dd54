"""MGSM (multilingual GSM8K, Shi et al. 2022): a reasoning set with a numeric gold answer.

The original files are tsv without a header: ``question<TAB>answer``.
"""

from __future__ import annotations

import logging
from typing import Any

from probing.errors import LirefError
from probing.questions._io import (
    Row,
    file_format,
    format_number,
    load_hub_rows,
    read_rows,
    reject_unknown_options,
    require_columns,
    resolve_file,
    strip_thousands,
)
from probing.questions.record import Question

__all__ = ["HUB_NAME", "DEFAULT_SPLIT", "load_mgsm"]

logger = logging.getLogger(__name__)

HUB_NAME = "juletxara/mgsm"
DEFAULT_SPLIT = "test"
TSV_COLUMNS: tuple[str, str] = ("question", "answer")


def _gold(row: Row) -> str:
    # the hub rows carry the number in ``answer_number`` (``answer`` is a worked solution or None)
    value = row.data.get("answer_number")
    if value is None:
        value = row.data.get("answer")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return format_number(value)
    gold = strip_thousands(str(value if value is not None else ""))
    try:
        float(gold)
    except ValueError:
        raise LirefError(f"{row.where}: MGSM answer {value!r} is not a number") from None
    return gold


def load_mgsm(
    path: str | None = None,
    split: str | None = None,
    language: str = "en",
    **options: Any,
) -> list[Question]:
    """Load MGSM from the hub (``juletxara/mgsm``, config = ``language``) or a local file:
    a header-less ``question<TAB>answer`` tsv (as ``mgsm_en.tsv``) or a jsonl/json/csv with
    ``question`` and ``answer`` (or ``answer_number``) columns.

    Every question is labelled ``reasoning``; thousands separators are stripped from the gold
    answer (``"5,600"`` -> ``"5600"``).
    """
    reject_unknown_options("mgsm", options, ["language"])
    split = split or DEFAULT_SPLIT
    if path is None:
        rows: list[Row] = load_hub_rows(HUB_NAME, language, split)
    else:
        file = resolve_file(path, split)
        fmt = file_format(file)
        rows = read_rows(file, fmt, fieldnames=TSV_COLUMNS if fmt == "tsv" else None)
    require_columns(rows, ["question"])
    questions = []
    for row in rows:
        if "answer" not in row.data and "answer_number" not in row.data:
            require_columns([row], ["answer"])
        questions.append(
            Question(
                id=f"mgsm_{language}/{split}/{row.index}",
                question=str(row.data["question"]).strip(),
                answers=(_gold(row),),
                label="reasoning",
                source="mgsm",
                meta={"language": language, "answer_type": "number"},
            )
        )
    logger.info("mgsm_%s/%s: %d questions", language, split, len(questions))
    return questions
