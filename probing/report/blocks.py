"""A report as a list of blocks, rendered to Markdown (images linked) and to one self-contained
HTML page (images embedded as base64 data URIs).

Numbers in tables and findings are ``Cell`` objects that remember where they came from (``key``:
e.g. ``"probe:best/auroc"``), so the HTML can be checked against the stages' ``metrics.json``.
Headings carry an anchor (GitHub's slug of their text, the same in both renderings), tables with
more than ``LONG_TABLE`` rows are collapsed into ``<details>``, every table scrolls inside its
own box when it is wider than the page.
"""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LONG_TABLE", "Block", "Cell", "Finding", "TableCell", "fmt", "render_html",
           "render_markdown", "slug"]

#: tables with more rows than this are collapsed (``<details>``) unless told otherwise
LONG_TABLE = 20


@dataclass(frozen=True)
class Cell:
    """A table cell: ``text`` as shown; ``key``/``value`` when it shows a recorded number;
    ``strong``: shown in bold (a finding's headline figure)."""

    text: str
    key: str | None = None
    value: float | None = None
    strong: bool = False


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


def slug(text: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces -> ``-``."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


@dataclass(frozen=True)
class Finding:
    """One line of the Findings block: ``label`` links to ``#anchor``; ``parts`` are text and
    numbers (``Cell``) in reading order."""

    anchor: str
    label: str
    parts: list[Cell | str]


#: a table cell: one number or text, or several in reading order (text and sourced numbers)
TableCell = Cell | str | list[Cell | str]


@dataclass
class Block:
    """One piece of a report.

    ``kind``: ``h1``/``h2``/``h3`` (``text``; ``anchor``, default ``slug(text)``), ``p``
    (``text``, may hold ``**bold**`` and ``code``), ``table`` (``header`` + ``rows`` of ``Cell``,
    strings or lists of both: one cell holding several sourced numbers, rendered like a
    finding's parts; ``text`` = caption; ``summary``: collapse it under this line, default:
    collapsed when longer than ``LONG_TABLE`` rows), ``img`` (``path``, ``text`` = caption; ``data``: PNG
    bytes to embed instead of the file's; ``wide``: as wide as the page), ``pre`` (``text``),
    ``findings`` (``findings``).
    """

    kind: str
    text: str = ""
    header: list[str] = field(default_factory=list)
    rows: list[list[TableCell]] = field(default_factory=list)
    path: Path | None = None
    anchor: str | None = None
    summary: str | None = None
    data: bytes | None = None
    wide: bool = False
    findings: list[Finding] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The heading's anchor."""
        return self.anchor or slug(self.text)

    def collapsed(self) -> str | None:
        """The summary line when this table is shown collapsed, else ``None``."""
        if self.kind != "table":
            return None
        if self.summary is None and len(self.rows) > LONG_TABLE:
            return f"{self.text or 'table'}: {len(self.rows)} rows"
        return self.summary


def _cell(c: Cell | str) -> Cell:
    return c if isinstance(c, Cell) else Cell(str(c))


def _md_table(b: Block) -> str:
    lines = ["| " + " | ".join(b.header) + " |", "|" + "|".join("---" for _ in b.header) + "|"]
    lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
    if b.text:
        lines.insert(0, f"*{b.text}*\n")
    table = "\n".join(lines)
    summary = b.collapsed()
    if summary is None:
        return table
    return f"<details><summary>{html.escape(summary)}</summary>\n\n{table}\n\n</details>"


def _md_part(c: Cell) -> str:
    return f"**{c.text}**" if c.strong else c.text


def _md_cell(c: TableCell) -> str:
    """A table cell's Markdown: a single cell's text as it is, parts with their bold figures."""
    if isinstance(c, list):
        return "".join(_md_part(_cell(part)) for part in c)
    return _cell(c).text


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
            out.append(_md_table(b))
        elif b.kind == "findings":
            out.append(f"## {b.text}\n\n" + "\n".join(f"- [**{f.label}**](#{f.anchor}): "
                                 + "".join(_md_part(_cell(c)) for c in f.parts)
                                 for f in b.findings))
    return "\n\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then ``**bold**`` and ``code`` spans."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _source(c: Cell) -> str:
    """``data-key``/``data-value`` attributes of a recorded number ('' for plain text)."""
    if c.key is None:
        return ""
    return f' data-key="{html.escape(c.key)}" data-value="{html.escape(repr(c.value))}"'


_STYLE = """body{font-family:system-ui,sans-serif;max-width:1040px;margin:1.5em auto;padding:0 1em;
color:#222;line-height:1.45}table{border-collapse:collapse;margin:.3em 0 .8em}td,th{border:1px solid
#ccc;padding:3px 8px;font-size:13px;text-align:right;white-space:nowrap}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}.scroll{overflow-x:auto;max-width:100%;margin-bottom:.7em}
figure{margin:.8em 0 1.5em}img{max-width:100%;height:auto;border:1px solid #eee}img.wide{width:100%}
figcaption{font-size:12px;color:#555}pre{background:#f6f6f6;padding:8px;overflow-x:auto;
font-size:12px}caption{text-align:left;font-size:13px;color:#444;padding-bottom:4px;
white-space:normal}details{margin:.3em 0 .8em}summary{cursor:pointer;font-size:14px;color:#124}
section.findings{background:#f5f8fc;border-left:4px solid #3a6ea5;padding:.2em 1.2em .6em;
margin:0 0 1.5em}section.findings h2{margin:.5em 0 .3em}section.findings ul{margin:0;
padding-left:1.1em}section.findings li{margin:.3em 0;font-size:15px}section.findings a{
text-decoration:none;color:#124}h2,h3{scroll-margin-top:.5em}"""


def _html_table(b: Block) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in b.header)
    rows = ["<tr>" + "".join(_html_cell(c) for c in row) + "</tr>" for row in b.rows]
    caption = f"<caption>{html.escape(b.text)}</caption>" if b.text else ""
    table = (f'<div class="scroll" style="overflow-x:auto"><table>{caption}<thead><tr>{head}'
             f"</tr></thead><tbody>" + "".join(rows) + "</tbody></table></div>")
    summary = b.collapsed()
    if summary is None:
        return table
    return f"<details><summary>{html.escape(summary)}</summary>{table}</details>"


def _html_cell(c: TableCell) -> str:
    """A ``<td>``: a single number carries its source on the cell, parts on their spans."""
    if isinstance(c, list):
        return "<td>" + "".join(_html_part(_cell(part)) for part in c) + "</td>"
    c = _cell(c)
    return f"<td{_source(c)}>{_inline(c.text)}</td>"


def _html_part(c: Cell) -> str:
    """A finding's piece: a sourced number as a ``<span data-key>``, text with its inline
    markup; bold when ``strong``."""
    text = f"<span{_source(c)}>{html.escape(c.text)}</span>" if c.key is not None \
        else _inline(c.text)
    return f"<b>{text}</b>" if c.strong else text


def _html_findings(b: Block) -> str:
    items = []
    for f in b.findings:
        text = "".join(_html_part(c) for c in map(_cell, f.parts))
        items.append(f'<li><a href="#{html.escape(f.anchor)}"><b>{html.escape(f.label)}</b></a>: '
                     f"{text}</li>")
    return (f'<section class="findings" id="{html.escape(b.id)}"><h2>{html.escape(b.text)}</h2>'
            "<ul>" + "".join(items) + "</ul></section>")


def render_html(blocks: list[Block], title: str, style: str = "") -> str:
    """One self-contained HTML page (every image embedded as a base64 PNG data URI); ``style``:
    CSS rules added after the page's own."""
    body: list[str] = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            body.append(f'<{b.kind} id="{html.escape(b.id)}">{html.escape(b.text)}</{b.kind}>')
        elif b.kind == "p":
            body.append(f"<p>{_inline(b.text)}</p>")
        elif b.kind == "pre":
            body.append(f"<pre>{html.escape(b.text)}</pre>")
        elif b.kind == "img" and (b.data is not None or b.path is not None):
            png = b.data if b.data is not None else Path(b.path).read_bytes()  # type: ignore[arg-type]
            data = base64.b64encode(png).decode("ascii")
            wide = ' class="wide"' if b.wide else ""
            body.append(f'<figure><img{wide} alt="{html.escape(b.text)}" '
                        f'src="data:image/png;base64,{data}"><figcaption>'
                        f"{html.escape(b.text)}</figcaption></figure>")
        elif b.kind == "table":
            body.append(_html_table(b))
        elif b.kind == "findings":
            body.append(_html_findings(b))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
            f"content=\"width=device-width\"><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
