"""Shared reading helpers for the question loaders: local files, the HF hub, answer lists.

Every row carries where it came from (file and 1-based line, or hub name and row index) so
that every error names the place of the bad value.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probing.errors import LirefError
from probing.questions.record import LABELS, check_classes

logger = logging.getLogger(__name__)

#: File formats the local readers understand, by suffix.
FORMATS: tuple[str, ...] = ("jsonl", "json", "csv", "tsv")


@dataclass(frozen=True)
class Row:
    """One record of a data file or hub data set, with its origin for error messages."""

    data: dict[str, Any]
    origin: str
    line: int | None = None
    index: int = 0

    @property
    def where(self) -> str:
        """``"file.jsonl line 3"`` or ``"hub name row 3"``."""
        if self.line is not None:
            return f"{self.origin} line {self.line}"
        return f"{self.origin} row {self.index}"


def reject_unknown_options(loader: str, options: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """Raise if a loader got options it does not understand."""
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise LirefError(f"{loader}: unknown option(s) {unknown}; allowed: {sorted(allowed)}")


# ---------------------------------------------------------------------------------------------
# Local files


def resolve_file(path: str | Path, split: str | None, formats: Sequence[str] = FORMATS) -> Path:
    """Return the data file for ``path``: the file itself, or inside a folder
    ``{split}.{fmt}`` or the folder's only data file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LirefError(f"question file {str(p)!r} does not exist; pass an existing local file")
    if p.is_file():
        return p
    if split is not None:
        for fmt in formats:
            candidate = p / f"{split}.{fmt}"
            if candidate.is_file():
                return candidate
    files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lstrip(".") in formats)
    if len(files) == 1:
        return files[0]
    names = [f.name for f in files]
    raise LirefError(
        f"folder {str(p)!r} holds no single data file for split {split!r}: found {names}; "
        f"expected '{split}.<{'|'.join(formats)}>' or exactly one data file"
    )


def file_format(path: Path, allowed: Sequence[str] = FORMATS) -> str:
    """Format of ``path`` from its suffix (``.jsonl``, ``.json``, ``.csv``, ``.tsv``)."""
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in allowed:
        raise LirefError(
            f"file {str(path)!r}: unsupported suffix {path.suffix!r}; allowed: "
            f"{['.' + f for f in allowed]}"
        )
    return fmt


def read_rows(
    path: Path,
    fmt: str | None = None,
    fieldnames: Sequence[str] | None = None,
    what: str = "question file",
) -> list[Row]:
    """Read all records of a local data file (``what`` names it in error messages).

    Args:
        path: the file.
        fmt: ``jsonl``, ``json``, ``csv`` or ``tsv``; from the suffix when ``None``.
        fieldnames: for csv/tsv files WITHOUT a header: the column names, in order. Such
            files are split on the delimiter without quoting rules (as MGSM's tsv files).

    Raises:
        LirefError: missing, unreadable, malformed or empty file.
    """
    fmt = fmt or file_format(path)
    if not path.is_file():
        raise LirefError(f"{what} {str(path)!r} does not exist; pass an existing local file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise LirefError(f"cannot read {what} {str(path)!r}: {e}") from e
    if fmt == "jsonl":
        rows = list(_jsonl_rows(text, str(path)))
    elif fmt == "json":
        rows = _json_rows(text, str(path))
    elif fmt in ("csv", "tsv"):
        delimiter = "," if fmt == "csv" else "\t"
        if fieldnames is None:
            rows = list(_dict_rows(text, str(path), delimiter))
        else:
            rows = list(_headerless_rows(text, str(path), delimiter, fieldnames))
    else:
        raise LirefError(f"unsupported file format {fmt!r}; allowed: {list(FORMATS)}")
    if not rows:
        raise LirefError(f"{what} {str(path)!r} is empty (no records)")
    logger.debug("read %d records from %s", len(rows), path)
    return rows


def _jsonl_rows(text: str, origin: str) -> Iterator[Row]:
    index = 0
    # split on "\n" only: str.splitlines() would also split inside strings at U+2028 etc.
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            raise LirefError(f"malformed JSON in {origin} line {lineno}: {e.msg}") from e
        if not isinstance(data, dict):
            raise LirefError(
                f"{origin} line {lineno}: expected a JSON object, got {type(data).__name__}"
            )
        yield Row(data, origin, lineno, index)
        index += 1


def _json_rows(text: str, origin: str) -> list[Row]:
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LirefError(f"malformed JSON in {origin} line {e.lineno}: {e.msg}") from e
    if not isinstance(data, list):
        raise LirefError(f"{origin}: expected a JSON array of objects, got {type(data).__name__}")
    rows = []
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise LirefError(
                f"{origin} item {i}: expected a JSON object, got {type(item).__name__}"
            )
        rows.append(Row(item, origin, None, i))
    return rows


def _dict_rows(text: str, origin: str, delimiter: str) -> Iterator[Row]:
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = reader.fieldnames or []
    index = 0
    try:
        for data in reader:
            if None in data:
                raise LirefError(
                    f"{origin} line {reader.line_num}: more fields than the {len(header)} "
                    f"header columns {header}"
                )
            if all(v is None or v == "" for v in data.values()):
                continue
            yield Row(dict(data), origin, reader.line_num, index)
            index += 1
    except csv.Error as e:
        raise LirefError(f"malformed {origin} line {reader.line_num}: {e}") from e


def _headerless_rows(
    text: str, origin: str, delimiter: str, fieldnames: Sequence[str]
) -> Iterator[Row]:
    index = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        parts = line.split(delimiter)
        if len(parts) != len(fieldnames):
            raise LirefError(
                f"{origin} line {lineno}: expected {len(fieldnames)} {delimiter!r}-separated "
                f"columns {list(fieldnames)}, found {len(parts)}"
            )
        yield Row(dict(zip(fieldnames, parts, strict=True)), origin, lineno, index)
        index += 1


def require_columns(rows: Iterable[Row], columns: Sequence[str]) -> None:
    """Raise naming the first missing column, the file/row and the columns present."""
    for row in rows:
        for col in columns:
            if col not in row.data:
                raise LirefError(
                    f"missing column {col!r} in {row.where}; columns present: {sorted(row.data)}"
                )


# ---------------------------------------------------------------------------------------------
# The Hugging Face hub


def hub_or_file_rows(hub_name: str, config: str | None, path: str | Path | None,
                     split: str) -> list[Row]:
    """Rows of the hub data set ``hub_name`` (``path`` None) or of the local file/folder."""
    if path is None:
        return load_hub_rows(hub_name, config, split)
    return read_rows(resolve_file(path, split))


def keep_values(rows: list[Row], column: str, wanted: str | Sequence[str] | None, loader: str,
                option: str) -> list[Row]:
    """Rows whose ``column`` is in ``wanted`` (all rows when ``None``); unknown values raise
    ``LirefError`` naming the loader's ``option`` and listing the values present."""
    if wanted is None:
        return rows
    keep = {wanted} if isinstance(wanted, str) else set(wanted)
    present = {str(r.data[column]) for r in rows}
    unknown = keep - present
    if unknown:
        raise LirefError(f"{loader}: unknown {option} {sorted(unknown)}; "
                         f"allowed: {sorted(present)}")
    return [r for r in rows if str(r.data[column]) in keep]


def load_hub_rows(name: str, config: str | None, split: str) -> list[Row]:
    """Load ``datasets.load_dataset(name, config, split=split)`` as rows.

    Any failure (no network, unknown name or split, ``datasets`` missing) becomes one
    ``LirefError`` that says a local ``path`` works too.
    """
    try:
        import datasets

        ds = datasets.load_dataset(name, config, split=split)
        rows = [Row(dict(r), f"hub {name}", None, i) for i, r in enumerate(ds)]
    except Exception as e:  # every hub failure becomes one user-facing error
        cfg = f", config {config!r}" if config else ""
        raise LirefError(
            f"could not load {name!r}{cfg}, split {split!r} from the Hugging Face hub "
            f"({type(e).__name__}: {e}). The hub may be unreachable (no network) or the "
            f"name/split may be wrong; pass a local file instead with path=... "
            f"(jsonl/json/csv/tsv); HF_HUB_OFFLINE=1 skips the network retries"
        ) from e
    if not rows:
        raise LirefError(f"hub data set {name!r}, split {split!r} is empty")
    logger.info("loaded %d rows from hub %s (%s)", len(rows), name, split)
    return rows


# ---------------------------------------------------------------------------------------------
# Values


def parse_answers(value: Any, where: str = "") -> tuple[str, ...]:
    """Answers from a string, a number, a list, or a JSON (or Python) list inside a string.

    Strips whitespace, drops empty strings and exact duplicates, keeps the order.
    """
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            parsed = _parse_list_literal(text)
            if parsed is not None:
                return parse_answers(parsed, where)
        return (text,) if text else ()
    if isinstance(value, bool):
        return (str(value),)
    if isinstance(value, int | float):
        return (format_number(value),)
    if isinstance(value, list | tuple):
        out: list[str] = []
        for item in value:
            for a in parse_answers(item, where):
                if a not in out:
                    out.append(a)
        return tuple(out)
    raise LirefError(
        f"{where}: answers must be a string, a number or a list, got {type(value).__name__}"
    )


def _parse_list_literal(text: str) -> list[Any] | None:
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        try:
            parsed = ast.literal_eval(text)  # safe: literals only, no code is run
        except (ValueError, SyntaxError):
            return None
    return parsed if isinstance(parsed, list) else None


def format_number(value: int | float) -> str:
    """``18`` -> ``"18"``, ``18.0`` -> ``"18"``, ``2.5`` -> ``"2.5"``."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def strip_thousands(text: str) -> str:
    """Remove thousands separators from a number string: ``"1,000"`` -> ``"1000"``."""
    return text.strip().replace(",", "").replace("\u202f", "").replace("\u00a0", "")


#: Accepted spellings of the two labels in data files (besides the labels themselves).
LABEL_ALIASES: dict[str, str] = {"1": "reasoning", "0": "memory"}


def allowed_labels(classes: Sequence[str] | None = None,
                   label_map: Mapping[str, str] | None = None) -> str:
    """The label values a file may hold, for error messages."""
    extra = f" or a key of label_map {sorted(label_map)}" if label_map else ""
    return f"{list(check_classes(classes))} (or 1/0){extra}"


def parse_label(value: Any, where: str, label_map: Mapping[str, str] | None = None,
                classes: Sequence[str] | None = None) -> str:
    """Map a label cell to ``"reasoning"`` (the first of ``classes``, the positive class) or
    ``"memory"`` (the second); case-insensitive, 1/0 accepted, ``label_map`` applied first.
    ``classes=None`` = ``["reasoning", "memory"]``."""
    names = check_classes(classes)
    key = str(value).strip()
    if label_map and key in label_map:
        key = str(label_map[key])
    low = key.lower()
    for name, label in zip(names, LABELS, strict=True):
        if low == name.lower():
            return label
    if low in LABEL_ALIASES:
        return LABEL_ALIASES[low]
    raise LirefError(f"{where}: bad label {value!r}; allowed: {allowed_labels(classes, label_map)}")
