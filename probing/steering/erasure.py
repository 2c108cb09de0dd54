"""LEACE concept erasure (``concept-erasure`` package, Belrose et al. 2023) of a probe run's label.

Ablating the LiReF removes one direction; LEACE removes *all* linear information about the label
(no linear classifier beats a constant on the erased training activations). Its control: erasers
of the same rank fitted on the same activations with permuted labels (arXiv 2605.05715 found the
erasure of a 72 %-accurate probe changed no more than such random erasures).

- ``fit_eraser(x, z)``: a ``LeaceEraser`` fitted in float64 (``LeaceFitter`` defaults: affine,
  shrinkage, covariance trace kept), stored at its rank (``proj_left [d, k]``);
- ``fit_probe_erasers(probe, layers, seeds)``: per layer, the eraser of the probe's labels on
  its training part (the activations its directions were fitted on, read from the activation
  cache the probe run names) and one per permutation seed;
- ``save_erasers`` / ``load_erasers``: ``erasers.safetensors`` + ``erasers.json`` (a notebook
  reloads them: ``load_erasers(run / "erasers")[layer].direction(x)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probing.errors import LirefError
from probing.io import read_json, write_json

__all__ = ["LayerErasers", "eraser_rank", "fit_eraser", "fit_probe_erasers", "leftover",
           "load_erasers", "save_erasers"]

FILE = "erasers.safetensors"
META = "erasers.json"
#: columns of ``proj_left`` / rows of ``proj_right`` whose product norm is below this share of
#: the largest are dropped (the trace-constrained eraser is returned at full width ``d``)
_RANK_TOL = 1e-10


@dataclass
class LayerErasers:
    """The erasers of one layer: ``direction`` (fitted on the true labels) and ``permuted``
    (``{seed: eraser}`` fitted on permuted labels), each a ``concept_erasure.LeaceEraser``;
    ``info`` per condition key (``direction``, ``permuted_<seed>``): ``rank`` and ``leftover``."""

    layer: int
    direction: Any
    permuted: dict[int, Any]
    info: dict[str, dict[str, float]] = field(default_factory=dict)

    def conditions(self) -> list[tuple[str, int | None, Any]]:
        """``[(condition, seed, eraser)]``: the direction first, then the permutations."""
        return [("direction", None, self.direction),
                *[("permuted", seed, e) for seed, e in sorted(self.permuted.items())]]


def _compact(eraser: Any) -> Any:
    """The same eraser with ``proj_left`` / ``proj_right`` cut to their rank."""
    from concept_erasure import LeaceEraser

    left, right = eraser.proj_left, eraser.proj_right
    size = left.norm(dim=0) * right.norm(dim=1)  # [k]
    top = float(size.max()) if size.numel() else 0.0
    keep = size > _RANK_TOL * top if top > 0 else torch.zeros_like(size, dtype=torch.bool)
    return LeaceEraser(left[:, keep].contiguous(), right[keep].contiguous(), eraser.bias)


def eraser_rank(eraser: Any) -> int:
    """The rank of the eraser's change of ``h`` (``proj_left`` columns after ``fit_eraser``)."""
    return int(eraser.proj_left.shape[1])


def _targets(z: Any, n: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(z)).to(torch.float64).reshape(n, -1)
    if t.shape[0] < 2 or not bool((t.std(0) > 0).any()):
        raise LirefError(f"an eraser needs at least two labels that differ; got {t.shape[0]} rows "
                         "with one label only")
    return t


def fit_eraser(x: torch.Tensor | np.ndarray, z: Sequence[float] | np.ndarray | torch.Tensor,
               ) -> Any:
    """A LEACE eraser of ``z`` (``[N]`` 0/1 or ``[N, k]`` one-hot) from ``x`` ``[N, d]``,
    fitted in float64 with ``concept_erasure.LeaceFitter`` (its defaults) and cut to its rank."""
    from concept_erasure import LeaceFitter

    x64 = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    x64 = x64.detach().to(torch.float64).cpu()
    if x64.ndim != 2:
        raise LirefError(f"fit_eraser wants [N, d] activations, got {tuple(x64.shape)}")
    t = _targets(z, x64.shape[0])
    return _compact(LeaceFitter.fit(x64, t).eraser)


def leftover(eraser: Any, x: torch.Tensor, z: Any) -> float:
    """``||cov(eraser(x), z)|| / ||cov(x, z)||`` on ``x`` ``[N, d]`` (0 = every linear trace of
    ``z`` erased; LEACE's trace constraint may leave some)."""
    x64 = x.detach().to(torch.float64)
    t = _targets(z, x64.shape[0])
    t = t - t.mean(0)

    def cov(a: torch.Tensor) -> float:
        return float(((a - a.mean(0)).T @ t).norm())

    before = cov(x64)
    return cov(eraser(x64)) / before if before > 0 else 0.0


def _concept(labels: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """``z`` (``[N]`` 0/1 for two classes, ``[N, k]`` one-hot for more) and the class names."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise LirefError(f"erasure needs two classes in the probe's training part, got "
                         f"{classes}")
    idx = np.array([classes.index(label) for label in labels])
    z = (idx == 1).astype(np.float64) if len(classes) == 2 else np.eye(len(classes))[idx]
    return z, classes


def fit_probe_erasers(probe: Any, layers: Sequence[int], seeds: Sequence[int],
                      ) -> tuple[dict[int, LayerErasers], dict[str, Any]]:
    """Erasers of a probe run's labels at ``layers``: fitted on its training part (``split.json``:
    ``train`` of a hold-out split, every item after a nested k-fold, as its directions were) of
    the cached activations its ``activations.json`` names; one more per seed on labels permuted
    with ``numpy.random.default_rng(seed)``. ``probe``: a ``ProbeRun`` or its folder.

    Returns ``({layer: LayerErasers}, meta)`` (``n_fit``, ``classes``, ``position``, ...)."""
    from probing.activations.cache import load_activations
    from probing.steering.sources import ProbeRun, load_probe_run

    run = probe if isinstance(probe, ProbeRun) else load_probe_run(probe)
    split_file = run.folder / "split.json"
    if not split_file.is_file():
        raise LirefError(f"{run.folder} has no split.json: the erase intervention is fitted on "
                         "the probe's training part (re-run `python -m train.probe`)")
    split = read_json(split_file)
    cached = load_activations(run.folder, [int(x) for x in layers])
    ids, labels = cached.ids, cached.labels
    if len(ids) != cached.acts.shape[0] or len(labels) != cached.acts.shape[0]:
        raise LirefError(f"the activation cache {cached.folder} has no ids / labels per row")
    train = set(split["train"]) if split.get("mode") == "holdout" else set(ids)
    rows = [i for i, q in enumerate(ids) if q in train]
    if not rows:
        raise LirefError(f"none of the probe's training ids is in the activation cache "
                         f"{cached.folder}")
    z, classes = _concept([labels[i] for i in rows])
    out: dict[int, LayerErasers] = {}
    for layer in layers:
        x = cached.layer(int(layer))[rows].to(torch.float64)
        direction = fit_eraser(x, z)
        permuted = {int(s): fit_eraser(x, z[np.random.default_rng(int(s)).permutation(len(z))])
                    for s in seeds}
        info = {"direction": {"rank": eraser_rank(direction),
                              "leftover": leftover(direction, x, z)}}
        for s, e in permuted.items():
            info[f"permuted_{s}"] = {"rank": eraser_rank(e), "leftover": leftover(e, x, z)}
        out[int(layer)] = LayerErasers(int(layer), direction, permuted, info)
    meta = {"probe_dir": str(run.folder), "activations": str(cached.folder),
            "position": cached.manifest.get("position"), "n_fit": len(rows),
            "classes": classes, "seeds": [int(s) for s in seeds],
            "fitted_on": "train split" if split.get("mode") == "holdout"
            else "all items (nested k-fold)"}
    return out, meta


def save_erasers(folder: str | Path, erasers: Mapping[int, LayerErasers],
                 meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``erasers.safetensors`` (``L<layer>/<condition>/{proj_left,proj_right,bias}``
    float64) + ``erasers.json`` (layers, conditions with seed, rank, leftover; ``meta``)."""
    from safetensors.torch import save_file

    from probing.version import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    entries = []
    for layer, le in sorted(erasers.items()):
        for condition, seed, e in le.conditions():
            name = condition if seed is None else f"{condition}_{seed}"
            key = f"L{layer}/{name}"
            tensors[f"{key}/proj_left"] = e.proj_left.to(torch.float64).contiguous()
            tensors[f"{key}/proj_right"] = e.proj_right.to(torch.float64).contiguous()
            if e.bias is not None:
                tensors[f"{key}/bias"] = e.bias.to(torch.float64).contiguous()
            entries.append({"key": key, "layer": layer, "condition": condition, "seed": seed,
                            **le.info.get(name, {"rank": eraser_rank(e)})})
    save_file(tensors, str(folder / FILE))
    write_json(folder / META, {**dict(meta or {}), "format": "liref-erasers", "version": 1,
                               "liref_version": __version__, "layers": sorted(erasers),
                               "erasers": entries})
    return folder


def load_erasers(folder: str | Path) -> dict[int, LayerErasers]:
    """Read ``save_erasers`` output: ``{layer: LayerErasers}`` of ``LeaceEraser`` objects."""
    from concept_erasure import LeaceEraser
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / META).is_file():
        raise LirefError(f"{folder} holds no {META} (a steering run with the erase "
                         "intervention writes erasers/)")
    meta = read_json(folder / META)
    try:
        tensors = load_file(str(folder / FILE))
    except (SafetensorError, OSError) as exc:
        raise LirefError(f"{folder / FILE} cannot be read: {exc}") from exc
    out: dict[int, LayerErasers] = {}
    for entry in meta["erasers"]:
        key, layer = entry["key"], int(entry["layer"])
        e = LeaceEraser(tensors[f"{key}/proj_left"], tensors[f"{key}/proj_right"],
                        tensors.get(f"{key}/bias"))
        le = out.setdefault(layer, LayerErasers(layer, None, {}))
        name = key.split("/", 1)[1]
        le.info[name] = {k: entry[k] for k in ("rank", "leftover") if k in entry}
        if entry["condition"] == "direction":
            le.direction = e
        else:
            le.permuted[int(entry["seed"])] = e
    return out
