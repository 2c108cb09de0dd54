"""The knowledge-conflict readout (the body of ``analysis.conflict`` and of the pipeline's
``conflict`` stage).

On the counterfactual items the model answered from the statement (context) or from memory:

1. probes per layer on that behavioural label (``run_probe_stage``: grouped by fact, layer
   chosen on validation, test figures with intervals, bag-of-words, embedding and format
   controls, the fact's relation a category covariate of the format control: a known confound,
   since some relations are answered from context more often); its diff-in-means direction is
   the conflict set's own direction (the "knob");
2. transfer: each reference direction (the LiReF of the probe run, and of every other labelled
   set given) scored unchanged on these items, per layer;
3. the cosine per layer between each reference and the knob, beside a label-permutation null;
4. the continuous label: the teacher-forced margin log P(context) - log P(memory) per item
   (its AUROC for the behavioural label, its means per behaviour).

Writes the probe-run files into ``out_dir`` plus ``conflict.json`` (counts per relation,
per-layer transfer and cosines) and ``conflict_layers.png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probing.conflicts.build import conflict_counts
from probing.conflicts.readout import direction_aurocs, knob_cosines
from probing.errors import LirefError
from probing.io import write_json
from probing.probes.data import ProbeData
from probing.probes.plots import CONTROL_LINES, plot_residualised
from probing.probes.run import run_probe_stage
from probing.stats import auroc_with_ci

__all__ = ["CLASSES", "ConflictReadout", "Reference", "references", "run_conflict_stage"]

#: the behavioural classes, positive first (the knob points from memory to context)
CLASSES: tuple[str, str] = ("context", "memory")
#: the ``Question.meta`` keys of the format control's category covariate on conflict items
FORMAT_KEYS: tuple[str, ...] = ("relation",)


@dataclass
class Reference:
    """A direction per layer fitted on other data (``{layer: [d]}``) and its chosen layer."""

    directions: dict[int, torch.Tensor]
    layer: int | None = None


@dataclass
class ConflictReadout:
    """What ``run_conflict_stage`` produced: flat metrics and the ``conflict.json`` content."""

    metrics: dict[str, Any]
    summary: dict[str, Any]


def _margin_summary(questions: Sequence[Any], y: np.ndarray, n_resamples: int, seed: int,
                    ) -> tuple[dict[str, float], dict[str, Any]]:
    margins = np.array([float(q.meta["margin"]) for q in questions])
    auc, lo, hi = auroc_with_ci(y, margins, n_resamples, seed=seed)
    metrics = {"margin/auroc": auc, "margin/auroc_ci_low": lo, "margin/auroc_ci_high": hi,
               "margin/mean_context": float(margins[y == 1].mean()),
               "margin/mean_memory": float(margins[y == 0].mean())}
    return metrics, {"margin_auroc": [auc, lo, hi]}


def _plot(rows: Sequence[Mapping[str, Any]], transfer: Mapping[str, list[dict[str, float]]],
          knobs: Mapping[str, list[dict[str, float]]], best: int, path: Path) -> Path:
    from probing.figures import agg_figure, save_png

    fig, (ax, bx) = agg_figure(1, 2, figsize=(11, 3.8))
    layers = [r["layer"] for r in rows]
    line = ax.plot(layers, [r["auroc"] for r in rows], marker="o", ms=3,
                   label="own probe (held-out test)")[0]
    ax.fill_between(layers, [r["auroc_ci_low"] for r in rows],
                    [r["auroc_ci_high"] for r in rows], color=line.get_color(), alpha=0.2, lw=0)
    plot_residualised(ax, rows)
    for key, label, colour in CONTROL_LINES:
        if rows[0].get(key) is not None:
            ax.axhline(rows[0][key], color=colour, lw=1.2, ls="-.",
                       label=f"{label} {rows[0][key]:.2f}")
    for name, t in transfer.items():
        ax.plot([r["layer"] for r in t], [r["auroc"] for r in t], marker=".", ms=3,
                label=f"LiReF of {name} (unchanged)")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.axvline(best, color="black", lw=0.8, ls=":", label=f"chosen: {best}")
    ax.set(xlabel="layer", ylabel="AUROC, context vs memory answer", ylim=(0, 1.02),
           title="which answer will the model give?")
    ax.legend(fontsize=7, loc="lower right")
    for name, k in knobs.items():
        kl = [r["layer"] for r in k]
        line = bx.plot(kl, [r["cosine"] for r in k], marker="o", ms=3, label=name)[0]
        bx.fill_between(kl, [r["null_low"] for r in k], [r["null_high"] for r in k],
                        color=line.get_color(), alpha=0.15, lw=0)
    bx.axhline(0, color="grey", lw=0.8)
    bx.set(xlabel="layer", ylabel="cosine(LiReF, conflict direction)",
           title="the knob vs the LiReF (band: label-permutation null, 95%)")
    bx.legend(fontsize=7)
    return save_png(fig, path, dpi=110)


def run_conflict_stage(data: ProbeData, built: str | Path, references: Mapping[str, Reference],
                       out_dir: str | Path, n_permutations: int = 1000,
                       **probe_kwargs: Any) -> ConflictReadout:
    """The readout above on ``data`` (counterfactual items labelled context / memory, with
    ``meta["margin"]``), from the conflict set file ``built``. ``probe_kwargs`` go to
    ``run_probe_stage`` (kind, params, val_size, test_size, k_folds, seed, select_by,
    n_resamples, metadata)."""
    out = Path(out_dir)
    y = data.targets
    n_context, n_memory = int(y.sum()), int((1 - y).sum())
    if min(n_context, n_memory) < 4:
        raise LirefError(f"the conflict set has {n_context} items answered from the context and "
                         f"{n_memory} from memory; the readout needs at least 4 of each (a "
                         "bigger data file, more relations, or a model that knows more facts)")
    seed = int(probe_kwargs.get("seed", 0))
    n_resamples = int(probe_kwargs.get("n_resamples", 1000))
    data = replace(data, category_keys=FORMAT_KEYS)
    report = run_probe_stage(data, out, classes=list(CLASSES), **probe_kwargs)
    layers, acts = data.cached.layers, data.cached.acts
    metrics: dict[str, Any] = {**report.metrics, "n_context": n_context, "n_memory": n_memory}
    transfer, knobs = {}, {}
    for name, ref in references.items():
        transfer[name] = direction_aurocs(acts, y, layers, ref.directions, n_resamples, seed)
        knobs[name] = knob_cosines(acts, y, layers, ref.directions, n_permutations, seed)
        at = ref.layer if ref.layer is not None else report.best_layer
        for row in (r for r in transfer[name] if r["layer"] == at):
            metrics.update({f"transfer/{name}/{k}": v for k, v in row.items()})
        for row in (r for r in knobs[name] if r["layer"] == at):
            metrics.update({f"knob/{name}/{k}": v for k, v in row.items()})
    margin_metrics, margin_summary = _margin_summary(data.questions, y, n_resamples, seed)
    metrics.update(margin_metrics)
    counts = conflict_counts(built)
    for key, value in counts["total"].items():
        metrics[f"counts/{key}"] = value
    summary = {**counts, "probed": {"context": n_context, "memory": n_memory},
               "best_layer": report.best_layer, "transfer": transfer, "knob": knobs,
               "reference_layers": {n: r.layer for n, r in references.items()},
               **margin_summary}
    write_json(out / "conflict.json", summary)
    _plot(report.per_layer, transfer, knobs, report.best_layer, out / "conflict_layers.png")
    return ConflictReadout(metrics, summary)


def references(probe_dir: str | Path | None, name: str = "probe",
               others: Mapping[str, ProbeData] | None = None) -> dict[str, Reference]:
    """The directions read on a conflict set: the LiReF of the probe run ``probe_dir`` (as
    ``name``, at its chosen layer) and the diff-in-means per layer of each of ``others`` (all
    their items; at the probe run's chosen layer too)."""
    from probing.probes.directions import layer_directions, load_directions
    from probing.probes.run import recorded_layer

    out: dict[str, Reference] = {}
    layer = None
    if probe_dir not in (None, "", "???"):
        root = Path(str(probe_dir)).expanduser()
        directions, _ = load_directions(root / "directions")
        layer = recorded_layer(root)
        out[name] = Reference(directions, layer)
    for other, data in (others or {}).items():
        fitted = layer_directions(data.cached.acts, data.targets)
        out[other] = Reference({int(lay): fitted[i] for i, lay in enumerate(data.cached.layers)},
                               layer)
    return out
