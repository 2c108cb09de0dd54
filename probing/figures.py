"""One figure helper for every plot of liref: a ``Figure`` on its own Agg canvas, saved as PNG.

No ``matplotlib.use`` and no pyplot: importing or plotting never changes the backend a notebook
user chose, and no figure is left open in pyplot.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def agg_figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (6.4, 4.8),
               squeeze: bool = True, layout: str | None = None) -> tuple[Figure, Any]:
    """A new figure on its own Agg canvas (no pyplot, no global backend) and its axes
    (``fig.subplots(nrows, ncols, squeeze=squeeze)``: one ``Axes`` or an ``[nrows, ncols]``
    array); ``layout``: matplotlib's layout engine (e.g. ``"constrained"``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Lay out ``fig`` tightly and write it to ``path`` (folders created) as a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path
