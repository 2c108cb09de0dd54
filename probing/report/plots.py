"""PNG plots (matplotlib, Agg backend): per-layer probe metrics and a PCA of one layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = ["plot_layer_metrics", "plot_pca"]


def plot_layer_metrics(per_layer: Sequence[Mapping[str, Any]], path: str | Path,
                       keys: Sequence[str] = ("accuracy", "auroc"), title: str = "") -> Path:
    """Line plot of ``keys`` (held-out) against layer."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    layers = [r["layer"] for r in per_layer]
    for key in keys:
        ax.plot(layers, [r[key] for r in per_layer], marker="o", label=key)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--", label="chance")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer (output of decoder block)")
    ax.set_ylabel("held-out score")
    ax.set_ylim(0.0, 1.02)
    ax.set_title(title or "probe vs layer")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_pca(x: torch.Tensor | np.ndarray, labels: Sequence[str], path: str | Path,
             title: str = "") -> Path:
    """First two principal components of ``x`` ``[N, d]``, coloured by label."""
    arr = x.to(torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)
    centred = arr - arr.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    pcs = centred @ vt[:2].T
    fig, ax = plt.subplots(figsize=(4.5, 4))
    labels_arr = np.asarray(labels)
    for name, colour in (("reasoning", "tab:red"), ("memory", "tab:blue")):
        m = labels_arr == name
        ax.scatter(pcs[m, 0], pcs[m, 1], s=8, alpha=0.6, c=colour, label=name)
    ax.set_xlabel("PC1")
    ax.set_ylabel("PC2")
    ax.set_title(title or "PCA")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
