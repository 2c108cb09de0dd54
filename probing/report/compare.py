"""One side-by-side table of several finished runs (one row per run, i.e. per model), built from
their run folders alone: ``compare.md``, a self-contained ``compare.html`` and ``compare.json``
holding the same values.

A column per finding: the chosen block and its relative depth, the probe beside its strongest
control, transfer, the knowledge-conflict readout and conflict steering, the SAE's quality, the
best-matched latent against its nulls, and the steering headline. Every figure is read by the
single-run report's own readers (``probing.report.build.read_stages``) and chosen by its
Findings' helpers (``probing.report.findings``), so a number here is the number that run's
``report.md`` shows. A finding a run does not have (a stage not run, a set not steered) is
``—``; a run that stopped after the probe stage still gets its row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probing.errors import LirefError
from probing.io import atomic_write_text, write_json
from probing.report.blocks import Block, Cell, TableCell, render_html, render_markdown
from probing.report.build import STAGE_FOLDERS, probe_metadata, read_stages
from probing.report.findings import (
    MAX_PER_KIND,
    Parts,
    StageLike,
    Steering,
    conflict_effects,
    headline_effects,
    interval,
    number,
    strongest_control,
    transfer_sets,
)

__all__ = ["COLUMNS", "MISSING", "CompareRow", "build_compare", "compare_json", "compare_row",
           "compare_rows"]

#: what a run without a finding shows
MISSING = "\u2014"

#: the page is wider than a report's and its cells wrap: one row holds a run's every finding
STYLE = ("body{max-width:1600px}td{white-space:normal;text-align:left;vertical-align:top;"
         "min-width:8em}")

#: (column key, header, how to read it), in the table's order
COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("model", "model", "the model the probe stage recorded (its directions.json); the run "
                       "folder's name in brackets."),
    ("block", "chosen block (depth)",
     "the decoder block whose output the probe chose on validation (0 = the first) of the "
     "model's n blocks; in brackets its relative depth block / n, comparable across models."),
    ("probe", "probe AUROC vs strongest control",
     "held-out test AUROC of the LiReF probe at that block [95% bootstrap interval], beside the "
     "strongest of its controls on the same items (bag-of-words, embedding, format or surface "
     "covariates; the one selectivity subtracts): a control as high as the probe explains it."),
    ("transfer", "transfer (e.g. GSM8K vs PopQA)",
     "the probe fitted on the probe set, scored unchanged on each transfer set (its two kinds "
     "in brackets), AUROC [95% interval] beside that set's strongest control; 0.5 = chance."),
    ("conflict", "conflict readout",
     "knowledge conflicts: at the block chosen on validation, the AUROC [95% interval] with "
     "which a probe reads whether the model answers from the context or from memory after a "
     "counterfactual statement, beside its strongest control."),
    ("conflict_steer", "conflict steering",
     "on counterfactual conflict items at the headline strength: -LiReF's change of the "
     "memory-answer rate and +LiReF's of the context-answer rate [paired 95% interval], beside "
     "random directions of the same norm."),
    ("sae", "SAE",
     "the SAE's block and width (latents), then on held-out documents: explained variance, CE "
     "loss recovered (1 = the clean model, 0 = the block zero-ablated) and the fraction of dead "
     "latents."),
    ("latent", "best-matched latent vs null",
     "the latent with the largest |decoder cosine| with the LiReF and that cosine, beside the "
     "95% quantile of the largest |cosine| under label-permuted directions (family-wise p) and "
     "under random directions (p)."),
    ("steer", "steering headline",
     "the single-run report's steering headline at the headline add strength (chosen on one "
     "half of the items, measured on the other): the organism's ground-truth answer rates, or "
     "+LiReF on each steered set; change [paired 95% interval] beside random directions."),
)


@dataclass
class CompareRow:
    """One run's row: its folder, model name and a cell per column key (``Cell``, text or
    parts, ``MISSING`` where the run lacks the finding)."""

    run: Path
    model: str
    n_blocks: int | None
    depth: float | None
    cells: dict[str, TableCell]


def _as_int(st: StageLike, key: str) -> Cell:
    """An index or a count (a layer, a width, a latent), shown as an integer, with its source."""
    value = st.metrics[key]
    return Cell(str(int(value)), f"{st.name}:{key}", value)


def _beside_control(st: StageLike, key: str, prefix: str) -> Parts:
    """``<AUROC> [low, high] vs <strongest control> <AUROC>`` (the control where recorded)."""
    parts: Parts = [*interval(st, key, strong=True)]
    found = strongest_control(st, prefix)
    if found is not None:
        control, name = found
        parts += [f" vs {name} ", number(st, control)]
    return parts


def _joined(groups: Sequence[Parts]) -> TableCell:
    """Groups of parts joined by ``; ``; ``MISSING`` when there is none."""
    parts: Parts = []
    for group in groups:
        parts += ["; " if parts else "", *group]
    return parts or MISSING


def _block(stages: dict[str, Any], n_blocks: int | None, depth: float | None) -> TableCell:
    probe = stages["probe"]
    if "best_layer" not in probe.metrics:
        return MISSING
    parts: Parts = [_as_int(probe, "best_layer")]
    if n_blocks is not None and depth is not None:
        parts += [f" of {n_blocks} ({depth:.2f})"]
    return parts


def _probe(st: StageLike) -> TableCell:
    return _beside_control(st, "best/auroc", "control/") if "best/auroc" in st.metrics \
        else MISSING


def _transfer(st: StageLike) -> TableCell:
    groups = []
    for name, kinds in transfer_sets(st)[:MAX_PER_KIND]:
        what = f"{name} ({kinds}): " if kinds else f"{name}: "
        groups.append([what, *_beside_control(st, f"transfer/{name}/auroc",
                                              f"transfer/{name}/control/")])
    return _joined(groups)


def _conflict(st: StageLike | None) -> TableCell:
    if st is None or "best/auroc" not in st.metrics:
        return MISSING
    parts: Parts = []
    if "best_layer" in st.metrics:
        parts += ["block ", _as_int(st, "best_layer"), ": "]
    return [*parts, *_beside_control(st, "best/auroc", "control/")]


def _random(st: StageLike, key: str) -> Parts:
    return [" vs random ", number(st, key, signed=True)] if key in st.metrics else []


def _conflict_steering(steer: StageLike | None) -> TableCell:
    if steer is None:
        return MISSING
    effects = sorted(conflict_effects(Steering(steer)), key=lambda e: e.condition != "negated")
    return _joined([[f"{e.label} {e.what} ", *interval(steer, e.key, signed=True, strong=True),
                     *_random(steer, e.random_key)] for e in effects])


def _sae(st: StageLike | None) -> TableCell:
    if st is None:
        return MISSING
    m = st.metrics
    head: Parts = []
    for key, before in (("layer", "block "), ("d_sae", "width ")):
        if key in m:
            head += [", " if head else "", before, _as_int(st, key)]
    quality: Parts = []
    for key, before in (("explained_variance", "EV "), ("ce_loss_recovered", "CE recovered "),
                        ("dead_fraction", "dead ")):
        if key in m:
            quality += [", " if quality else "", before,
                        number(st, key, strong=key == "explained_variance")]
    if not quality:
        return MISSING
    return [*head, ": " if head else "", *quality]


def _latent(st: StageLike | None) -> TableCell:
    if st is None or "top1_cosine" not in st.metrics:
        return MISSING
    m = st.metrics
    parts: Parts = []
    if "top1_latent" in m:
        parts += ["latent ", _as_int(st, "top1_latent"), ": "]
    parts += ["cosine ", number(st, "top1_cosine", strong=True)]
    for key, p, what in (("null_max_abs_cosine_permutation_95", "top1_p", "permuted"),
                         ("null_max_abs_cosine_random_95", "top1_p_random", "random")):
        if key in m:
            parts += [f"; {what} null 95% ", number(st, key)]
            if p in m:
                parts += [", p ", number(st, p)]
    return parts


def _steering(steer: StageLike | None) -> TableCell:
    if steer is None:
        return MISSING
    steering = Steering(steer)
    cell = _joined([[f"{e.label}: {e.what} ", *interval(steer, e.key, signed=True, strong=True),
                     *_random(steer, e.random_key)] for e in headline_effects(steering)])
    return cell if cell == MISSING else [*cell, steering.where()]


def compare_row(run_dir: str | Path) -> CompareRow:
    """The row of one finished run folder.

    Raises:
        LirefError: the folder does not exist or holds no finished probe stage.
    """
    run = Path(run_dir)
    stages = read_stages(run) if run.is_dir() else {}
    if "probe" not in stages:
        what = "does not exist" if not run.exists() else "holds no finished probe stage"
        raise LirefError(f"{run} is not a finished run folder: it {what} (expected "
                         f"probe/metrics.json, beside {list(STAGE_FOLDERS[1:])} where they ran, "
                         "as python -m analysis.pipeline writes it into outputs/pipeline/<time>)")
    meta = probe_metadata(stages)
    n_blocks = int(meta["n_layers"]) if meta.get("n_layers") else None
    best = stages["probe"].metrics.get("best_layer")
    depth = int(best) / n_blocks if n_blocks and best is not None else None
    model = str(meta.get("model") or MISSING)
    cells: dict[str, TableCell] = {
        "model": f"{model} ({run.name})",
        "block": _block(stages, n_blocks, depth),
        "probe": _probe(stages["probe"]),
        "transfer": _transfer(stages["probe"]),
        "conflict": _conflict(stages.get("conflict")),
        "conflict_steer": _conflict_steering(stages.get("steer")),
        "sae": _sae(stages.get("sae")),
        "latent": _latent(stages.get("match")),
        "steer": _steering(stages.get("steer")),
    }
    return CompareRow(run, model, n_blocks, depth, cells)


def compare_rows(run_dirs: Sequence[str | Path]) -> list[CompareRow]:
    """One row per run folder, in the order given.

    Raises:
        LirefError: no run given, or a path that is not a finished run folder (the first one).
    """
    if not run_dirs:
        raise LirefError("give the run folders to compare: compare=[outputs/pipeline/<a>,"
                         "outputs/pipeline/<b>]")
    return [compare_row(run) for run in run_dirs]


def _text(cell: TableCell) -> str:
    parts = cell if isinstance(cell, list) else [cell]
    return "".join(p.text if isinstance(p, Cell) else str(p) for p in parts)


def _values(cell: TableCell) -> dict[str, Any]:
    """``{"<stage>:<metrics key>": value}`` of the sourced numbers in a cell."""
    parts = cell if isinstance(cell, list) else [cell]
    return {p.key: p.value for p in parts if isinstance(p, Cell) and p.key is not None}


def compare_json(rows: Sequence[CompareRow]) -> dict[str, Any]:
    """The table as JSON: the columns (header, how to read) and per run its model, blocks,
    depth and per column the text shown and the values it shows, keyed by their source."""
    return {"columns": [{"key": k, "header": h, "how_to_read": how} for k, h, how in COLUMNS],
            "rows": [{"run": str(r.run), "model": r.model, "n_blocks": r.n_blocks,
                      "depth": r.depth,
                      "cells": {k: {"text": _text(c), "values": _values(c)}
                                for k, c in r.cells.items()}} for r in rows]}


def _blocks(rows: Sequence[CompareRow], title: str) -> list[Block]:
    table = Block("table", "one row per run; every figure from that run's stage folders",
                  [h for _, h, _ in COLUMNS], [[r.cells[k] for k, _, _ in COLUMNS] for r in rows])
    folders = ", ".join(f"`{r.run}`" for r in rows)
    return [Block("h1", title),
            Block("p", f"Runs: {folders}. {MISSING} = the run has no such result (a stage not "
                       "run, a set not steered). Each figure is the one the run's own report "
                       "shows (python -m analysis.report run_dir=...)."),
            table,
            Block("h2", "How to read"),
            *[Block("p", f"**{h}**: {how}") for _, h, how in COLUMNS]]


def build_compare(run_dirs: Sequence[str | Path], out_dir: str | Path,
                  title: str | None = None) -> tuple[Path, Path, Path]:
    """Write ``compare.md``, ``compare.html`` and ``compare.json`` into ``out_dir`` from the run
    folders' artifacts alone (no model is loaded). Returns their paths.

    Raises:
        LirefError: no run given, or a path that is not a finished run folder.
    """
    rows = compare_rows(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    title = title or "liref comparison: " + ", ".join(r.model for r in rows)
    blocks = _blocks(rows, title)
    md, page, data = out / "compare.md", out / "compare.html", out / "compare.json"
    atomic_write_text(md, render_markdown(blocks, out))
    atomic_write_text(page, render_html(blocks, title, STYLE))
    write_json(data, compare_json(rows))
    return md, page, data
