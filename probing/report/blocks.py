"""A report as a list of blocks, rendered to Markdown (images linked) and to one self-contained
HTML page (images embedded as base64 data URIs).

Numbers in tables are ``Cell`` objects that remember where they came from (``key``: e.g.
``"probe:best/auroc"``), so the HTML can be checked against the stages' ``metrics.json``.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Block", "Cell", "fmt", "render_html", "render_markdown"]


@dataclass(frozen=True)
class Cell:
    """A table cell: ``text`` as shown; ``key``/``value`` when it shows a recorded number."""

    text: str
    key: str | None = None
    value: float | None = None


def fmt(value: Any, digits: int = 3) -> str:
    """``0.95712`` -> ``"0.957"``; ints as ints; NaN/None as ``"n/a"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()
                                  and abs(value) >= 1000):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


@dataclass
class Block:
    """One piece of a report.

    ``kind``: ``h1``/``h2``/``h3`` (``text``), ``p`` (``text``, may hold ``**bold**`` and
    ``code``), ``table`` (``header`` + ``rows`` of ``Cell`` or strings, ``caption``),
    ``img`` (``path``, ``text`` = caption), ``pre`` (``text``).
    """

    kind: str
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[Cell | str]] = field(default_factory=list)
    path: Path | None = None


def _cell(c: Cell | str) -> Cell:
    return c if isinstance(c, Cell) else Cell(str(c))


def render_markdown(blocks: list[Block], base: Path) -> str:
    """Markdown with images linked relative to ``base`` (the folder the .md is written to)."""
    out: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "pre":
            out.append("```\n" + b.text.rstrip() + "\n```")
        elif b.kind == "img" and b.path is not None:
            rel = Path(b.path).resolve().relative_to(base.resolve()) if Path(
                b.path).resolve().is_relative_to(base.resolve()) else Path(b.path)
            out.append(f"![{b.text}]({rel.as_posix()})")
        elif b.kind == "table":
            lines = ["| " + " | ".join(b.header) + " |",
                     "|" + "|".join("---" for _ in b.header) + "|"]
            lines += ["| " + " | ".join(_cell(c).text for c in row) + " |" for row in b.rows]
            if b.text:
                lines.insert(0, f"*{b.text}*\n")
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then ``**bold**`` and ``code`` spans."""
    import re

    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;
padding:3px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:
left}img{max-width:100%;border:1px solid #eee}figcaption{font-size:12px;color:#555}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:12px}caption{text-align:left;
font-size:13px;color:#444;padding-bottom:4px}"""


def render_html(blocks: list[Block], title: str) -> str:
    """One self-contained HTML page (every image embedded as a base64 PNG data URI)."""
    body: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            body.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "pre":
            body.append(f"<pre>{html.escape(b.text)}</pre>")
        elif b.kind == "img" and b.path is not None:
            data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(b.text)}" '
                        f'src="data:image/png;base64,{data}"><figcaption>'
                        f"{html.escape(b.text)}</figcaption></figure>")
        elif b.kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
            rows = []
            for row in b.rows:
                cells = []
                for c in map(_cell, row):
                    attrs = ""
                    if c.key is not None:
                        attrs = (f' data-key="{html.escape(c.key)}" '
                                 f'data-value="{html.escape(repr(c.value))}"')
                    cells.append(f"<td{attrs}>{_inline(c.text)}</td>")
                rows.append("<tr>" + "".join(cells) + "</tr>")
            caption = f"<caption>{html.escape(b.text)}</caption>" if b.text else ""
            body.append(f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>"
                        + "".join(rows) + "</tbody></table>")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body>\n" + "\n".join(body)
            + "\n</body></html>\n")
