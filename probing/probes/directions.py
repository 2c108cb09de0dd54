"""Difference-in-means directions (the LiReF), projections and layer selection.

All directions are computed in float64, as in the paper's code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probing.errors import LirefError
from probing.io import read_json, write_json

__all__ = [
    "check_labels",
    "diff_in_means",
    "layer_directions",
    "load_direction",
    "load_directions",
    "project",
    "save_directions",
    "select_layer",
    "unit",
]


def check_labels(x: torch.Tensor | np.ndarray, y: Sequence[int] | np.ndarray | torch.Tensor,
                 ) -> np.ndarray:
    """Validate ``x`` ``[N, ...]`` against binary labels ``y`` ``[N]`` (1 = reasoning, 0 = memory).

    Returns ``y`` as an int64 numpy array; raises ``LirefError`` on empty, mismatched or
    one-class data.
    """
    y_arr = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y).astype(np.int64).reshape(-1)
    n = x.shape[0]
    if n == 0 or y_arr.size == 0:
        raise LirefError("empty data: no activations/labels to fit on")
    if y_arr.size != n:
        raise LirefError(f"{n} activation rows but {y_arr.size} labels")
    present = set(np.unique(y_arr).tolist())
    if not present <= {0, 1}:
        raise LirefError(f"labels must be 0 (memory) or 1 (reasoning), got values {sorted(present)}")
    if len(present) < 2:
        only = "reasoning" if present == {1} else "memory"
        raise LirefError(f"one-class data: all {n} examples are labelled {only!r}; "
                         "a direction/probe needs both reasoning and memory examples")
    return y_arr


def diff_in_means(x: torch.Tensor, y: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """LiReF at one layer: ``mean(x[y == 1]) - mean(x[y == 0])``.

    Args:
        x: ``[N, d]`` activations. y: ``[N]`` labels, 1 = reasoning, 0 = memory.

    Returns:
        ``[d]`` float64 (not normalised).
    """
    y_arr = check_labels(x, y)
    x64 = torch.as_tensor(x).to(torch.float64)
    mask = torch.as_tensor(y_arr == 1)
    return x64[mask].mean(0) - x64[~mask].mean(0)


def layer_directions(acts: torch.Tensor, y: Sequence[int] | np.ndarray | torch.Tensor,
                     ) -> torch.Tensor:
    """Diff-in-means per layer: ``[N, L, d]`` -> ``[L, d]`` float64 (not normalised)."""
    if acts.ndim != 3:
        raise LirefError(f"expected activations [N, layers, d], got shape {tuple(acts.shape)}")
    y_arr = check_labels(acts, y)
    x64 = acts.to(torch.float64)
    mask = torch.as_tensor(y_arr == 1)
    return x64[mask].mean(0) - x64[~mask].mean(0)


def unit(v: torch.Tensor) -> torch.Tensor:
    """``v / ||v||`` along the last axis (float64)."""
    v = v.to(torch.float64)
    norm = v.norm(dim=-1, keepdim=True)
    if bool((norm == 0).any()):
        raise LirefError("zero direction: the two classes have identical means")
    return v / norm


def project(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """Scalar projection of ``x`` ``[N, d]`` on the unit ``direction`` ``[d]`` -> ``[N]`` float64."""
    if x.shape[-1] != direction.shape[-1]:
        raise LirefError(f"activations have width {x.shape[-1]} but the direction has width "
                         f"{direction.shape[-1]}: they come from different models or layers")
    return x.to(torch.float64) @ unit(direction)


def select_layer(per_layer: Sequence[Mapping[str, Any]], key: str = "auroc") -> int:
    """The layer whose metric ``key`` is highest (ties: the earliest layer), from rows
    ``[{"layer": l, key: value, ...}]`` (e.g. ``per_layer.json``; ``evaluate_layers`` chooses
    with it on validation figures)."""
    if not per_layer:
        raise LirefError("no per-layer metrics to select a layer from")
    best = max(per_layer, key=lambda r: (r[key], -r["layer"]))
    return int(best["layer"])


def save_directions(folder: str | Path, directions: torch.Tensor, layers: Sequence[int],
                    metadata: Mapping[str, Any]) -> Path:
    """Write ``directions.safetensors`` (``[L, d]`` float64) + ``directions.json`` in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"directions": directions.to(torch.float64).contiguous()},
              str(folder / "directions.safetensors"))
    write_json(folder / "directions.json", {**metadata, "layers": list(layers),
                                            "d_model": int(directions.shape[-1])})
    return folder


def _directions_folder(path: str | Path) -> Path:
    """A ``directions/`` folder, given it or a probe run folder that holds one."""
    path = Path(path)
    if (path / "directions.json").is_file():
        return path
    if (path / "directions" / "directions.json").is_file():
        return path / "directions"
    raise LirefError(f"no saved directions in {path}: expected directions.json there or in "
                     f"{path / 'directions'} (a train.probe run folder)")


def load_directions(path: str | Path, layer: int | None = None
                    ) -> tuple[dict[int, torch.Tensor] | torch.Tensor, dict[str, Any]]:
    """Read ``save_directions`` output (a ``directions/`` folder or a probe run folder).

    Returns ``({layer: [d] float64}, metadata)``; with ``layer``, ``([d] float64, metadata)``
    for that layer only (a layer that was not saved raises, naming the saved ones). The
    directions are unnormalised diff-in-means vectors (their norm is the class-mean gap).
    """
    folder = _directions_folder(path)
    meta = read_json(folder / "directions.json")
    try:
        tensors = load_file(str(folder / "directions.safetensors"))["directions"]
    except (SafetensorError, OSError, KeyError) as exc:
        raise LirefError(f"{folder / 'directions.safetensors'} cannot be read: {exc}") from exc
    saved = [int(x) for x in meta["layers"]]
    if tensors.shape[0] != len(saved):
        raise LirefError(f"{folder}: {tensors.shape[0]} directions saved for layers {saved}")
    dirs = {layer_: tensors[i] for i, layer_ in enumerate(saved)}
    if layer is None:
        return dirs, meta
    if layer not in dirs:
        raise LirefError(f"layer {layer} has no saved direction in {folder}; saved layers: "
                         f"{saved}")
    return dirs[layer], meta


def load_direction(path: str | Path, layer: int | None = None) -> torch.Tensor:
    """One unnormalised ``[d]`` float64 direction; ``layer=None`` = the layer the probe stage
    chose on validation data (``best_layer`` in the metadata)."""
    _, meta = load_directions(path)
    if layer is None:
        if meta.get("best_layer") is None:
            raise LirefError(f"{path}: no best_layer recorded; pass layer=... "
                             f"(saved layers: {meta['layers']})")
        layer = int(meta["best_layer"])
    direction, _ = load_directions(path, layer)
    assert isinstance(direction, torch.Tensor)
    return direction
