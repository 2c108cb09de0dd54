"""Steering sweep figures (matplotlib, own Agg canvas) and tables: a value (accuracy, a rate, a
margin) against strength with its 95% interval band, one panel per item set, the LiReF beside its
controls (negated, orthogonalised, random directions / random latents) and the unsteered run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from probing.figures import agg_figure

#: PNG metadata (``Description``) of a sweep figure drawn in the current layout; the report
#: draws older figures again from ``results.json``
SWEEP_LAYOUT = "liref sweep grid v2: at most 3 panels a row"

__all__ = ["SWEEP_LAYOUT", "plot_sweep", "sweep_figure", "sweep_panels", "sweep_values"]

_STYLE = {
    "direction": {"color": "tab:red", "lw": 2.0, "label": "+LiReF"},
    "negated": {"color": "tab:blue", "lw": 2.0, "label": "-LiReF"},
    "orthogonal": {"color": "tab:purple", "lw": 1.5, "ls": "--", "label": "LiReF orth. to latents"},
    "latent": {"color": "tab:red", "lw": 2.0, "label": "matched latent"},
    "random": {"color": "grey", "lw": 0.8, "alpha": 0.7, "label": "random (same norm)"},
    "random_latent": {"color": "grey", "lw": 0.8, "alpha": 0.7, "label": "random latent"},
    "permuted": {"color": "grey", "lw": 0.8, "alpha": 0.7, "label": "eraser, permuted labels"},
}
#: the label of the ``direction`` condition of interventions that are not the LiReF itself
_DIRECTION_LABEL = {"erase": "LEACE eraser of the labels"}


def sweep_panels(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, int, int | None]]:
    """The distinct ``(metric, intervention, layer, rank)`` of the steered rows."""
    seen: dict[tuple, None] = {}
    for r in rows:
        if r["intervention"] != "none":
            seen[(r["metric"], r["intervention"], r["layer"], r.get("rank"))] = None
    return list(seen)


def _band(ax: Any, xs: list[float], ys: list[float], lo: list[float], hi: list[float],
          style: Mapping[str, Any], label: str | None) -> None:
    line = ax.plot(xs, ys, marker="o", ms=3, label=label,
                   **{k: v for k, v in style.items() if k != "label"})[0]
    if style.get("lw", 1) >= 1.5:
        ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)


def _panel(ax: Any, sel: Sequence[Mapping[str, Any]], steered: Sequence[Mapping[str, Any]],
           set_name: str, value: str, signed: bool, direction_label: str | None = None) -> None:
    """One set's curves of ``value`` in ``ax``."""
    lo_key = "ci_low" if value == "accuracy" else f"{value}_ci_low"
    hi_key = "ci_high" if value == "accuracy" else f"{value}_ci_high"
    base = next((r for r in sel if r["set"] == set_name and r["intervention"] == "none"), None)
    mine = [r for r in steered if r["set"] == set_name]
    no_strength = all(r["strength"] is None for r in mine)
    labelled: set[str] = set()
    curves: dict[tuple[str, Any], list[Mapping[str, Any]]] = {}
    for r in mine:
        curves.setdefault((r["condition"], r.get("seed")), []).append(r)
    ordered = sorted(curves.items(), key=lambda kv: (kv[0][0].startswith(("random", "permuted")),
                                                     str(kv[0])))
    for i, ((cond, _seed), pts) in enumerate(ordered):
        style = dict(_STYLE.get(cond, {"color": "black", "label": cond}))
        if cond == "direction" and not signed:  # ablation / projection scaling: no sign
            style["label"] = direction_label or "LiReF"
        label = None if cond in labelled else style["label"]
        labelled.add(cond)
        if no_strength:
            r = pts[0]
            ax.errorbar([i], [r[value]], yerr=[[r[value] - r[lo_key]], [r[hi_key] - r[value]]],
                        fmt="o", color=style["color"], label=label, capsize=3)
            continue
        pts = sorted(pts, key=lambda r: float(r["strength"]))
        _band(ax, [float(r["strength"]) for r in pts], [r[value] for r in pts],
              [r[lo_key] for r in pts], [r[hi_key] for r in pts], style, label)
    if base is not None:
        ax.axhline(base[value], color="black", lw=1, ls=":", label="unsteered")
        ax.axhspan(base[lo_key], base[hi_key], color="black", alpha=0.07, lw=0)
    ax.set_title(f"{set_name}: {value}", fontsize=9)
    ax.set_xlabel("" if no_strength else "strength")
    if no_strength:
        ax.set_xticks(range(len(ordered)), [c if s is None else f"{c} {s}"
                                            for (c, s), _ in ordered], rotation=30, fontsize=7)


def sweep_values(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The values a sweep figure shows: accuracy, then every rate, margin and gold log-prob that
    the rows carry with an interval."""
    return ["accuracy", *sorted({k for r in rows for k in r
                                 if (k.startswith("rate_") or k in ("margin", "logp_gold"))
                                 and f"{k}_ci_low" in r and not k.endswith("_diff")})]


def sweep_figure(rows: Sequence[Mapping[str, Any]], metric: str, intervention: str, layer: int,
                 rank: int | None = None, values: Sequence[str] = ("accuracy",),
                 title: str = "", max_cols: int = 3) -> Any | None:
    """The figure of ``plot_sweep`` (a matplotlib ``Figure``; the caller closes it), or ``None``
    when no panel is left."""
    sel = [r for r in rows if r["metric"] == metric]
    steered = [r for r in sel if r["intervention"] == intervention and r["layer"] == layer
               and r.get("rank") == rank]
    if not steered:
        return None
    sets = list(dict.fromkeys(r["set"] for r in sel))
    panels = [(v, s) for v in values for s in sets
              if any(r["set"] == s and r.get(v) is not None for r in steered)]
    if not panels:
        return None
    n_cols = min(max_cols, len(panels))
    n_rows = -(-len(panels) // n_cols)
    fig, axes = agg_figure(n_rows, n_cols, figsize=(3.4 * n_cols, 2.6 * n_rows + 0.6),
                           squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax, (value, set_name) in zip(flat, panels, strict=False):
        _panel(ax, sel, steered, set_name, value, signed=intervention in ("add", "add_latent"),
               direction_label=_DIRECTION_LABEL.get(intervention))
    for ax in flat[len(panels):]:
        ax.axis("off")
    legend: dict[str, Any] = {}
    for ax in flat[:len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            legend.setdefault(label, handle)
    where = f"layer {layer}" + (f", latent rank {rank}" if rank is not None else "")
    fig.suptitle(title or f"{intervention} ({where}), {metric.replace('_', '-')}", fontsize=11)
    fig.legend(list(legend.values()), list(legend.keys()), loc="lower center",
               ncol=min(len(legend), 6), fontsize=8, frameon=False)
    return fig


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: str | Path | BinaryIO, metric: str,
               intervention: str, layer: int, rank: int | None = None,
               values: Sequence[str] = ("accuracy",), title: str = "",
               max_cols: int = 3) -> Path | BinaryIO | None:
    """A grid of panels, one per (value, set) with data (accuracy, a rate, a margin; values in
    order, sets within each), at most ``max_cols`` per row so that each stays legible at page
    width; each panel shows the value against strength for every condition (95% intervals as
    bands; random controls as thin grey lines) and the unsteered run as a dotted line with its
    band; one legend below the grid. For an intervention without strengths (ablation), one
    point per condition. Written as PNG to ``path`` (a file or a binary stream); ``None`` when
    no panel is left."""
    fig = sweep_figure(rows, metric, intervention, layer, rank, values, title, max_cols)
    if fig is None:
        return None
    h = fig.get_figheight()  # fixed margins (tight_layout costs ~40% of the figure's time)
    fig.subplots_adjust(left=0.07, right=0.98, top=1 - 0.8 / h, bottom=0.95 / h, hspace=0.55,
                        wspace=0.28)
    fig.savefig(path, dpi=100, format="png", metadata={"Description": SWEEP_LAYOUT})
    return path if not isinstance(path, str) else Path(path)
