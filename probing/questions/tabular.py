"""Generic question files: jsonl (or a json array), csv and tsv with a header row.

A column mapping says which column holds what, e.g.
``columns={"question": "q", "answers": "gold", "label": "type", "id": "uid"}``; files without
a label column take a fixed ``label="reasoning"`` (or ``"memory"``). Unmapped columns go to
``meta``. ``classes=[positive, negative]`` names the file's two label values (the data
config's ``classes``; default ``[reasoning, memory]``): the first is the positive class.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from probing.errors import LirefError
from probing.questions._io import (
    Row,
    allowed_labels,
    load_hub_rows,
    parse_answers,
    parse_label,
    read_rows,
    reject_unknown_options,
    require_columns,
    resolve_file,
)
from probing.questions.record import Question

__all__ = ["DEFAULT_COLUMNS", "load_csv", "load_jsonl", "load_table", "load_tsv"]

logger = logging.getLogger(__name__)

#: field -> default column name. ``answers`` falls back to ``answer`` when absent.
DEFAULT_COLUMNS: dict[str, str] = {
    "question": "question",
    "answers": "answers",
    "label": "label",
    "id": "id",
}
_OPTIONS = ("columns", "label", "label_map", "classes", "source", "hub", "config")


def _mapping(columns: Mapping[str, str] | None) -> dict[str, str]:
    columns = dict(columns or {})
    unknown = set(columns) - set(DEFAULT_COLUMNS)
    if unknown:
        raise LirefError(
            f"columns mapping has unknown field(s) {sorted(unknown)}; allowed: "
            f"{sorted(DEFAULT_COLUMNS)}"
        )
    return columns


def load_table(
    path: str | None,
    split: str | None,
    fmt: str,
    columns: Mapping[str, str] | None = None,
    label: str | None = None,
    label_map: Mapping[str, str] | None = None,
    source: str | None = None,
    hub: str | None = None,
    config: str | None = None,
    classes: Sequence[str] | None = None,
) -> list[Question]:
    """Load a local ``fmt`` file (or, with ``path=None``, the hub data set ``hub``).

    Args:
        fmt: ``jsonl`` (also reads a ``.json`` array), ``csv`` or ``tsv``.
        columns: field -> column name for ``question``, ``answers``, ``label``, ``id``.
        label: fixed label for every row (files without a label column).
        label_map: file label value -> a class name (e.g. ``{"math": "reasoning"}``).
        source: ``Question.source`` (default: the file stem or hub name).
        hub, config: hub data set name and config, used when ``path`` is ``None``.
        classes: the two label values, positive first (``None`` = ``[reasoning, memory]``);
            the positive class becomes ``label="reasoning"`` (target 1), the other
            ``"memory"`` (target 0).

    The answers cell may be a string, a number, a list, or a JSON list inside a string.

    Raises:
        LirefError: one error naming every label value that is not a class (and where the
            first is), with the allowed ones; or a bad column, an empty question, a duplicate id.
    """
    mapping = _mapping(columns)
    if label is not None and "label" in mapping:
        raise LirefError(
            f"give either a fixed label={label!r} or a label column "
            f"(columns['label']={mapping['label']!r}), not both"
        )
    fixed = parse_label(label, "label option", classes=classes) if label is not None else None
    split_name = split or "train"
    if path is None:
        if hub is None:
            raise LirefError(f"the {fmt!r} question set needs a local path=... (or hub='org/name')")
        rows: list[Row] = load_hub_rows(hub, config, split_name)
        source = source or hub.split("/")[-1]
    else:
        file = resolve_file(path, split, (fmt, "json") if fmt == "jsonl" else (fmt,))
        suffix = file.suffix.lstrip(".").lower()
        rows = read_rows(file, "json" if fmt == "jsonl" and suffix == "json" else fmt)
        source = source or Path(file).stem

    q_col = mapping.get("question", "question")
    require_columns(rows, [q_col])
    l_col = None if fixed else mapping.get("label", "label")
    if l_col is not None and l_col not in rows[0].data:
        present = sorted(rows[0].data)
        raise LirefError(
            f"missing column {l_col!r} in {rows[0].where}; columns present: {present} "
            f"(map it with columns={{'label': ...}} or give a fixed label='reasoning'|'memory')"
        )
    a_col = mapping.get("answers")
    if a_col is None:
        first = rows[0].data
        a_col = "answers" if "answers" in first else "answer" if "answer" in first else None
    required = [q_col] + [c for c in (mapping.get("answers"), l_col) if c]
    if "id" in mapping:
        required.append(mapping["id"])
    require_columns(rows, required)
    id_col = mapping.get("id", "id")
    used = {q_col, a_col, l_col, id_col}

    questions: list[Question] = []
    seen: dict[str, str] = {}
    unknown: dict[str, str] = {}  # label value -> where it first is
    for row in rows:
        d = row.data
        text = str(d[q_col] if d[q_col] is not None else "").strip()
        if not text:
            raise LirefError(f"{row.where}: empty question in column {q_col!r}")
        raw_id = d.get(id_col)
        qid = str(raw_id) if raw_id not in (None, "") else f"{source}/{row.index}"
        if qid in seen:
            raise LirefError(f"{row.where}: duplicate id {qid!r} (first at {seen[qid]})")
        seen[qid] = row.where
        try:
            lab = fixed or parse_label(d[l_col], row.where, label_map, classes)  # type: ignore[index]
        except LirefError:
            unknown.setdefault(str(d[l_col]).strip(), row.where)  # type: ignore[index]
            continue
        questions.append(
            Question(
                id=qid,
                question=text,
                answers=parse_answers(d.get(a_col), row.where) if a_col else (),
                label=lab,  # type: ignore[arg-type]
                source=source,
                meta={k: v for k, v in d.items() if k not in used},
            )
        )
    if unknown:
        values = ", ".join(repr(v) for v in unknown)
        raise LirefError(
            f"{source}: unknown label value(s) {values} in column {l_col!r} (first at "
            f"{next(iter(unknown.values()))}); allowed: {allowed_labels(classes, label_map)} "
            f"(a data config names a file's two label values, positive first, e.g. "
            f"classes: [positive, negative])")
    logger.info("%s: %d questions", source, len(questions))
    return questions


def load_jsonl(path: str | None = None, split: str | None = None, **options: Any) -> list[Question]:
    """Load a jsonl file (one JSON object per line; a ``.json`` array works too)."""
    reject_unknown_options("jsonl", options, _OPTIONS)
    return load_table(path, split, "jsonl", **options)


def load_csv(path: str | None = None, split: str | None = None, **options: Any) -> list[Question]:
    """Load a csv file with a header row."""
    reject_unknown_options("csv", options, _OPTIONS)
    return load_table(path, split, "csv", **options)


def load_tsv(path: str | None = None, split: str | None = None, **options: Any) -> list[Question]:
    """Load a tab-separated file with a header row."""
    reject_unknown_options("tsv", options, _OPTIONS)
    return load_table(path, split, "tsv", **options)
