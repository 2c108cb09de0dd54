"""The report's "Knowledge conflicts" section: counts per relation, the behavioural readout per
layer beside its controls, the LiReF scored on the conflict items, the knob cosine against its
null, and the steering table of the conflict sets."""

from __future__ import annotations

from typing import Any

from probing.report.blocks import Block, Cell, fmt

__all__ = ["CONFLICT_SETS", "conflict_blocks"]

#: the steering sets of a conflict run (conf/steer/*.yaml) and what their rates say
CONFLICT_SETS = (("conflict_counterfactual", "counterfactual statement"),
                 ("conflict_consistent", "consistent statement"),
                 ("conflict_closed_book", "no statement"))
_CONDITIONS = (("add", "direction", "+LiReF"), ("add", "negated", "-LiReF"),
               ("add", "random", "random (mean)"), ("add", "conflict", "+conflict direction"),
               ("add", "negated_conflict", "-conflict direction"),
               ("ablate", "direction", "ablate LiReF"), ("ablate", "random", "ablate random"),
               ("erase", "direction", "erase (LEACE)"), ("erase", "permuted", "erase permuted"),
               ("prompt", "direction", "prompt: set's mode"),
               ("prompt", "negated", "prompt: other mode"))
#: the settings whose columns appear only when they ran
_OPTIONAL = ("erase", "prompt")


def _counts(st: Any) -> list[Block]:
    summary = st.json("conflict.json") or {}
    counts = summary.get("counts") or {}
    if not counts:
        return []
    keys = ("questions", "known", "context", "memory", "other")
    rows = [[rel, *[str(c.get(k, 0)) for k in keys]] for rel, c in counts.items()]
    total = summary.get("total") or {}
    rows.append(["**all**", *[str(total.get(k, 0)) for k in keys]])
    return [Block("table", "facts per relation: asked closed-book, known, and what the model "
                           "answered after a counterfactual statement",
                  ["relation", "questions", "known closed-book", "context answer",
                   "memory answer", "other"], rows)]


def _readout(st: Any) -> list[Block]:
    summary = st.json("conflict.json") or {}
    per_layer = st.json("per_layer.json") or []
    refs = list((summary.get("transfer") or {}).keys())
    by_ref = {r: {row["layer"]: row for row in summary["transfer"][r]} for r in refs}
    knob = {r: {row["layer"]: row for row in summary["knob"][r]} for r in refs}
    best = st.metrics.get("best_layer")
    rows = []
    for r in per_layer:
        layer = int(r["layer"])
        name = f"**{layer}** (chosen)" if layer == best else str(layer)
        cells: list[Cell | str] = [name, st.ci(f"layer_{layer:02d}/auroc")]
        for ref in refs:
            t, k = by_ref[ref].get(layer), knob[ref].get(layer)
            cells.append(f"{fmt(t['auroc'])} [{fmt(t['auroc_ci_low'])}, "
                         f"{fmt(t['auroc_ci_high'])}]" if t else "n/a")
            cells.append(f"{fmt(k['cosine'])} (null {fmt(k['null_low'])}..{fmt(k['null_high'])}, "
                         f"p {fmt(k['p_value'])})" if k else "n/a")
        rows.append(cells)
    header = ["layer", "own probe AUROC"]
    for ref in refs:
        header += [f"LiReF of {ref}: AUROC", f"cos(LiReF of {ref}, knob)"]
    controls = [["own probe at the chosen layer", st.ci("best/auroc")],
                ["bag-of-words (prompt text)", st.ci("control/bow_auroc")],
                ["mean input embedding", st.ci("control/embedding_auroc")],
                ["format covariates (length, numerals, relation)", st.ci("control/format_auroc")],
                ["own probe at the chosen layer, format residualised",
                 st.ci("best/residualised_auroc")],
                ["teacher-forced margin log P(context) - log P(memory)", st.ci("margin/auroc")]]
    return [Block("table", "which answer will the model give? AUROC for context (1) vs memory "
                           "(0) answers on held-out facts, beside the controls",
                  ["classifier", "AUROC [95% CI]"], controls),
            Block("table", "per layer: the behavioural probe (held-out test), each LiReF scored "
                           "unchanged on all probed items, and its cosine with the conflict "
                           "set's own diff-in-means direction (the knob) beside a "
                           "label-permutation null", header, rows)]


def _steering(steer: Any) -> list[Block]:
    rows: list[list[Cell | str]] = []
    ran = {name for name in _OPTIONAL if any(f"/{name}/" in k for k in steer.metrics)}
    conds = [c for c in _CONDITIONS if c[0] not in _OPTIONAL or c[0] in ran]
    for metric in ("teacher_forced", "generate"):
        for set_, what in CONFLICT_SETS:
            rows += _steering_rows(steer, f"{set_}/{metric}", what,
                                   "teacher-forced" if metric == "teacher_forced" else
                                   "generated", conds)
    if not rows:
        return []
    return [Block("p", "Steering at the headline strength on held-out facts. Teacher-forced: a "
                       "rate is the share of items whose answer is the greedy continuation "
                       "(every token the argmax), margin = log P(context) - log P(memory); "
                       "generated: the greedy completion of a sample gives that answer (any "
                       "alias, whole words). If the LiReF carries the "
                       "paper's mode, +LiReF raises the context rate on counterfactual items "
                       "and -LiReF the memory rate, while consistent items stay right. "
                       "Difference from the unsteered run, paired 95% bootstrap interval. "
                       "Prompting baseline (when run): the instruction of the set's mode "
                       "(counterfactual and consistent items: \"Answer using the text "
                       "above.\", closed-book: \"Answer from memory.\") and of the other "
                       "mode (\"Answer from memory.\" / \"Think step by step.\")."),
            Block("table", "conflict sets under steering",
                  ["items", "scored", "score", "unsteered", *[c[2] for c in conds]], rows)]


def _steering_rows(steer: Any, base: str, what: str, scored: str,
                   conds: list[tuple[str, str, str]]) -> list[list[Cell | str]]:
    m = steer.metrics
    scores = sorted({k.split("/")[-1] for k in m if k.startswith(f"{base}/unsteered/rate_")
                     or k == f"{base}/unsteered/margin"})
    rows = []
    for score in scores:
        cells: list[Cell | str] = [what, scored, score.removeprefix("rate_"),
                                   steer.cell(f"{base}/unsteered/{score}")]
        for intervention, cond, _ in conds:
            key = f"{base}/{intervention}/{cond}/{score}_diff"
            cells.append(steer.ci(key) if key in m else Cell("n/a"))
        rows.append(cells)
    return rows


def conflict_blocks(st: Any, steer: Any | None, heading: str) -> list[Block]:
    """The section's blocks from a conflict stage ``st`` (and the steer stage, when it ran)."""
    summary = st.json("conflict.json") or {}
    probed = summary.get("probed") or {}
    blocks = [Block("h2", heading),
              Block("p", "A statement before the question contradicts a fact the model answers "
                         "right closed-book (the same template, relation and subject on both "
                         "sides). Behavioural label: the greedy answer is the statement's "
                         "object (context) or the remembered one (memory); other answers are "
                         f"dropped. Probed: {probed.get('context', 0)} context and "
                         f"{probed.get('memory', 0)} memory answers, split by fact.")]
    blocks += _counts(st) + _readout(st)
    if steer is not None:
        blocks += _steering(steer)
    for img in sorted(st.folder.glob("conflict_*.png")):
        blocks.append(Block("img", img.stem.replace("_", " "), path=img))
    return blocks
