"""PNG plots: per-layer probe metrics and a PCA of one layer; and the figure helpers every
liref plot uses (``agg_figure``, ``save_png``).

Figures are drawn on their own Agg canvas (``matplotlib.figure.Figure`` + ``FigureCanvasAgg``),
never through pyplot: importing or plotting leaves the user's backend (a notebook's inline
one, say) as it was, and no figure is left open in pyplot's registry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from probing.figures import agg_figure, save_png

__all__ = ["CONTROL_LINES", "RESIDUALISED", "agg_figure", "plot_layer_metrics", "plot_pca",
           "plot_residualised", "save_png"]

#: control lines drawn on the layer plot: (per_layer key, label, colour)
CONTROL_LINES = (
    ("control/bow_auroc", "bag-of-words AUROC", "tab:grey"),
    ("control/embedding_auroc", "embedding-probe AUROC", "tab:brown"),
    ("control/format_auroc", "format-covariates AUROC", "tab:olive"),
    ("control/surface_auroc", "surface-covariates AUROC", "tab:cyan"),
)
#: the per-layer curves of the probe on residualised activations: (key, label, colour)
RESIDUALISED = (("residualised_auroc", "AUROC, format regressed out", "tab:purple"),
                ("residualised_surface_auroc", "AUROC, surface regressed out", "tab:pink"))


def plot_residualised(ax: Any, per_layer: Sequence[Mapping[str, Any]]) -> None:
    """Draw each recorded residualised AUROC against layer with its 95% band on ``ax``."""
    layers = [r["layer"] for r in per_layer]
    for key, label, colour in RESIDUALISED:
        if not per_layer or key not in per_layer[0]:
            continue
        ax.plot(layers, [r[key] for r in per_layer], marker="s", ms=3, ls="--", color=colour,
                label=label)
        ax.fill_between(layers, [r[f"{key}_ci_low"] for r in per_layer],
                        [r[f"{key}_ci_high"] for r in per_layer], color=colour, alpha=0.12,
                        lw=0)


def plot_layer_metrics(per_layer: Sequence[Mapping[str, Any]], path: str | Path,
                       keys: Sequence[str] = ("accuracy", "auroc"), title: str = "",
                       best_layer: int | None = None) -> Path:
    """Held-out ``keys`` against layer, with their 95% intervals as bands (``<key>_ci_low`` /
    ``_ci_high`` when present), the AUROC of the probe on format-residualised activations, the
    controls as horizontal lines and the chosen layer marked."""
    fig, ax = agg_figure(figsize=(6.5, 3.8))
    layers = [r["layer"] for r in per_layer]
    for key in keys:
        line = ax.plot(layers, [r[key] for r in per_layer], marker="o", ms=3, label=key)[0]
        if f"{key}_ci_low" in per_layer[0]:
            ax.fill_between(layers, [r[f"{key}_ci_low"] for r in per_layer],
                            [r[f"{key}_ci_high"] for r in per_layer], color=line.get_color(),
                            alpha=0.2, lw=0)
    plot_residualised(ax, per_layer)
    for key, label, colour in CONTROL_LINES:
        value = per_layer[0].get(key)
        if value is not None:
            ax.axhline(value, color=colour, lw=1.2, ls="-.", label=f"{label} {value:.2f}")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance")
    if best_layer is not None:
        ax.axvline(best_layer, color="black", lw=0.8, ls=":", label=f"chosen (validation): "
                                                                     f"{best_layer}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (output of decoder block)")
    ax.set_ylabel("held-out test score (95% CI)")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title or "probe vs layer", fontsize=9)
    ax.legend(loc="lower right", fontsize=7)
    return save_png(fig, path, dpi=120)


def plot_pca(x: torch.Tensor | np.ndarray, labels: Sequence[str], path: str | Path,
             title: str = "", class_names: Sequence[str] = ("reasoning", "memory")) -> Path:
    """First two principal components of ``x`` ``[N, d]``, coloured by label (``labels``
    ``[N]``: ``"reasoning"`` / ``"memory"``, shown as ``class_names``)."""
    arr = x.to(torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)
    centred = arr - arr.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pcs = centred @ vt[:2].T
    fig, ax = agg_figure(figsize=(4.5, 4))
    labels_arr = np.asarray(labels)
    for label, name, colour in zip(("reasoning", "memory"), class_names, ("tab:red", "tab:blue"),
                                   strict=True):
        m = labels_arr == label
        ax.scatter(pcs[m, 0], pcs[m, 1], s=8, alpha=0.6, c=colour, label=name)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title(title or "PCA")
    ax.legend(fontsize=8)
    return save_png(fig, path, dpi=120)
