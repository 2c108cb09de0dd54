"""Readers of the run folders a steering sweep starts from: a probe run (directions, best
layer) and a latent-matching run (ranked latents of an SAE)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probing.errors import LirefError
from probing.io import read_json

__all__ = ["MatchRun", "ProbeRun", "load_match_run", "load_probe_run"]


@dataclass
class ProbeRun:
    """A probe run: ``directions`` ``{layer: [d] float64}`` (unnormalised diff-in-means, so
    ``||directions[l]||`` is the reasoning-minus-memory projection gap at layer l), the layer the
    probe job selected on its held-out split (``None`` when its metrics.json is missing), and
    the directions' metadata."""

    folder: Path
    directions: dict[int, torch.Tensor]
    best_layer: int | None
    meta: dict[str, Any] = field(default_factory=dict)

    def gap(self, layer: int) -> float:
        return float(self.directions[layer].norm())


def load_probe_run(folder: str | Path) -> ProbeRun:
    """Read ``folder/directions/`` and ``folder/metrics.json`` (``train.probe`` output; a
    pipeline run folder with a ``probe/`` stage works too)."""
    from probing.probes.directions import load_directions

    root = Path(folder).expanduser()
    if not (root / "directions").is_dir() and (root / "probe" / "directions").is_dir():
        root = root / "probe"
    if not (root / "directions" / "directions.json").is_file():
        raise LirefError(f"{folder} is not a probe run folder: no directions/directions.json "
                         f"(run `python -m train.probe` first and pass its output folder)")
    directions, meta = load_directions(root / "directions")
    best = None
    if (root / "metrics.json").is_file():
        best = read_json(root / "metrics.json").get("best_layer")
    elif (root.parent / "metrics.json").is_file():  # a pipeline run: <run>/metrics.json
        best = read_json(root.parent / "metrics.json").get(f"{root.name}/best_layer")
    return ProbeRun(root, directions, None if best is None else int(best), meta)


@dataclass
class MatchRun:
    """A latent-matching run: ``rows`` (one per latent, sorted by rank: ``latent``, ``rank``,
    ``decoder_cosine``, ``density``, ``max_activation``, ...) and ``meta`` (``sae_dir``,
    ``sae_release``, ``sae_id``, ``layer``, ``model``, ``d_model``, ``d_sae``, ``probe_dir``)."""

    folder: Path
    rows: list[dict[str, Any]]
    meta: dict[str, Any]

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])

    def top(self, k: int, live_only: bool = True) -> list[dict[str, Any]]:
        """The ``k`` best-ranked latents (with ``live_only``: among those that fire, i.e.
        ``density > 0`` and ``max_activation > 0``; a dead latent cannot be steered in units
        of its activation)."""
        rows = sorted(self.rows, key=lambda r: int(r["rank"]))
        if live_only:
            rows = [r for r in rows if float(r.get("density") or 0) > 0
                    and float(r.get("max_activation") or 0) > 0]
        return rows[:k]

    def load_sae(self, device: str = "cpu", sae_dir: str | Path | None = None) -> Any:
        """The matched SAE (a local folder, or a sae-lens release + id); ``sae_dir`` overrides
        the folder match.json names (a pipeline points it at its own ``sae/`` stage, which
        holds the same SAE when the matching stage was restored from the stage cache)."""
        from probing.sae.training import load_sae

        sae_dir = sae_dir or self.meta.get("sae_dir")
        if sae_dir:
            path = Path(sae_dir)
            if not path.is_absolute() and (self.folder / path).is_dir():
                path = self.folder / path
            return load_sae(path, device=device)
        release = self.meta.get("sae_release")
        if not release:
            raise LirefError(f"{self.folder}/match.json names neither sae_dir nor sae_release")
        return load_sae(release, self.meta.get("sae_id"), device=device)


def load_match_run(folder: str | Path) -> MatchRun:
    """Read ``folder/latents.json`` and ``folder/match.json`` (the matching job's output)."""
    from probing.matching.inputs import load_match

    root = Path(folder).expanduser()
    if (root / "match").is_dir() and not (root / "match.json").is_file():
        root = root / "match"  # a pipeline run folder
    if not (root / "latents.json").is_file():
        raise LirefError(f"{folder} is not a matching run folder: no latents.json (run the "
                         f"matching job first and pass its output folder)")
    rows, meta = load_match(root)
    if not isinstance(rows, list) or not rows:
        raise LirefError(f"{root}/latents.json must be a non-empty list of latent rows")
    missing = {"latent", "rank", "density", "max_activation"} - set(rows[0])
    if missing:
        raise LirefError(f"{root}/latents.json rows lack {sorted(missing)}")
    if "layer" not in meta:
        raise LirefError(f"{root}/match.json has no 'layer'")
    return MatchRun(root, rows, meta)
