"""PNG plots of a match run (matplotlib, own Agg canvas): each figure beside its control.

- decoder-cosine histogram against the random and label-permutation nulls;
- OMP reconstruction cosine vs k, against random and permuted directions;
- sparse-probe AUROC vs k (latents, neurons) beside the dense probe, the LiReF and the
  bag-of-words control;
- activation histograms of the top latents (and the LiReF projection) by class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probing.figures import agg_figure, save_png

__all__ = ["plot_class_histograms", "plot_cosine_histogram", "plot_reconstruction",
           "plot_sparse_probes"]


def plot_cosine_histogram(cosines: np.ndarray, d: int, null_samples: Mapping[str, np.ndarray],
                          marked: Sequence[int], path: str | Path, title: str = "") -> Path:
    """Density of every latent's decoder cosine, the analytic N(0, 1/d) curve and the sampled
    null cosines; ``marked`` latents get a tick each."""
    fig, ax = agg_figure(figsize=(6.4, 3.6))
    lim = float(max(np.abs(cosines).max(), *(np.abs(v).max() for v in null_samples.values()
                                              if v.size), 3 / np.sqrt(d))) * 1.05
    bins = np.linspace(-lim, lim, 81)
    ax.hist(cosines, bins=bins, density=True, alpha=0.55, color="tab:red",
            label=f"decoder rows ({len(cosines)})")
    colours = {"random": "tab:grey", "permutation": "tab:blue"}
    for name, values in null_samples.items():
        if values.size:
            ax.hist(values, bins=bins, density=True, histtype="step", lw=1.4,
                    color=colours.get(name, "k"), label=f"null: {name} directions")
    grid = np.linspace(-lim, lim, 400)
    ax.plot(grid, np.sqrt(d / (2 * np.pi)) * np.exp(-d * grid ** 2 / 2), color="k", lw=0.8,
            ls="--", label="analytic N(0, 1/d)")
    ymax = ax.get_ylim()[1]
    for i in marked:
        ax.plot([cosines[i]] * 2, [0, ymax * 0.08], color="tab:red", lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("cosine(decoder row, LiReF)")
    ax.set_ylabel("density (log)")
    ax.set_title(title or "decoder cosines vs nulls", fontsize=9)
    ax.legend(fontsize=7)
    return save_png(fig, path, dpi=110)


def plot_reconstruction(curve: Sequence[Mapping[str, Any]],
                        controls: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path,
                        title: str = "") -> Path:
    """OMP reconstruction cosine vs k for the LiReF and the control directions (mean with a
    band from the 5th to the 95th percentile)."""
    fig, ax = agg_figure(figsize=(6, 3.6))
    ks = [r["k"] for r in curve]
    ax.plot(ks, [r["cosine"] for r in curve], marker="o", ms=3, color="tab:red", label="LiReF")
    colours = {"random": "tab:grey", "permutation": "tab:blue"}
    for name, rows in controls.items():
        if not rows:
            continue
        k = [r["k"] for r in rows]
        ax.plot(k, [r["mean"] for r in rows], color=colours.get(name, "k"),
                label=f"{name} directions (mean)")
        ax.fill_between(k, [r["lo"] for r in rows], [r["hi"] for r in rows], alpha=0.2,
                        color=colours.get(name, "k"))
    ax.axhline(0.9, color="k", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("k (decoder rows, orthogonal matching pursuit)")
    ax.set_ylabel("cosine with the direction")
    ax.set_ylim(0, 1.02)
    ax.set_title(title or "sparse reconstruction of the LiReF", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    return save_png(fig, path, dpi=110)


def plot_sparse_probes(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = ""
                       ) -> Path:
    """Held-out AUROC vs k of the sparse probes (95% intervals) and the reference lines."""
    fig, ax = agg_figure(figsize=(6, 3.6))
    colours = {"latents": "tab:red", "neurons": "tab:green"}
    for kind, colour in colours.items():
        part = [r for r in rows if r["kind"] == kind]
        if not part:
            continue
        k = np.array([r["k"] for r in part])
        auc = np.array([r["auroc"] for r in part])
        err = np.array([[a - r["auroc_lo"], r["auroc_hi"] - a] for a, r in zip(auc, part,
                                                                              strict=True)]).T
        ax.errorbar(k, auc, yerr=err, marker="o", ms=3, capsize=2, color=colour,
                    label=f"{kind} (top-k by class-mean difference)")
    styles = {"dense": ("k", "-"), "liref": ("tab:red", "--"), "diffmean": ("tab:purple", ":"),
              "bow": ("tab:grey", "-.")}
    for r in rows:
        if r["kind"] in styles:
            colour, ls = styles[r["kind"]]
            ax.axhline(r["auroc"], color=colour, ls=ls, lw=1,
                       label=f"{r['kind']} {r['auroc']:.3f}")
    ax.axhline(0.5, color="grey", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("k features")
    ax.set_ylabel("held-out AUROC")
    ax.set_ylim(0.4, 1.02)
    ax.set_title(title or "sparse probes", fontsize=9)
    ax.legend(fontsize=6, loc="lower right")
    return save_png(fig, path, dpi=110)


def plot_class_histograms(values: Mapping[str, np.ndarray], y: np.ndarray, path: str | Path,
                          title: str = "") -> Path:
    """One panel per entry of ``values`` (``[N]`` each): histograms for reasoning (label 1)
    and memory (label 0) prompts."""
    n = max(len(values), 1)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = agg_figure(rows, cols, figsize=(3.1 * cols, 2.4 * rows), squeeze=False)
    for ax, (name, v) in zip(axes.ravel(), values.items(), strict=False):
        v = np.asarray(v, dtype=np.float64)
        lo, hi = float(v.min()), float(v.max())
        if hi - lo < 1e-6:  # a latent silent (or constant) on these prompts
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 30)
        ax.hist(v[y == 1], bins=bins, alpha=0.6, color="tab:red", label="reasoning")
        ax.hist(v[y == 0], bins=bins, alpha=0.6, color="tab:blue", label="memory")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(values):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=6)
    fig.suptitle(title or "top latents by class (held-out prompts)", fontsize=9)
    return save_png(fig, path, dpi=110)
