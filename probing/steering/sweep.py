"""The settings of a steering sweep: strength x layer x intervention, each beside its controls.

Setting 0 is always the unsteered run (no intervention). For each intervention, layer and
strength, the conditions are:

- ``direction``: the LiReF of that layer (``+LiReF``);
- ``negated``: ``-LiReF`` (additions only; ablation and projection scaling do not depend on the
  sign of the direction);
- ``random``: seeded random directions of the same norm (``n_random`` seeds);
- ``orthogonal``: the LiReF with the span of the matched latents' decoder rows removed,
  rescaled to its norm (needs a matching run; at the SAE's layer only);
- ``conflict`` / ``negated_conflict``: a conflict run's own direction (context minus memory
  answers, its own norm as the ``gap`` unit), when one is given;
- ``latent`` / ``random_latent``: a matched latent (``add_latent``, ``clamp_latent``) and
  seeded random latents of similar firing density;
- ``erase`` only: ``direction`` = the LEACE eraser of the probe's labels, ``permuted`` = erasers
  fitted on permuted labels (``n_permuted`` seeds; ``probing.steering.erasure``).

Interventions (``INTERVENTIONS``): ``add`` (``AddDirection``, strengths in ``units``),
``ablate`` (``AblateDirection``, no strength), ``scale`` (``ScaleProjection`` at the block
output), ``released`` (the released code's preset, strengths = its scale), ``add_latent``
(``AddLatent``, strengths in max-activation units), ``clamp_latent`` (``ClampLatent``,
values in max-activation units) and ``erase`` (``EraseConcept``, LEACE, no strength).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from probing.errors import LirefError
from probing.steering.controls import orthogonalise, random_directions, random_latents
from probing.steering.interventions import (
    AblateDirection,
    AddDirection,
    AddLatent,
    ClampLatent,
    EraseConcept,
    Intervention,
    ScaleProjection,
)
from probing.steering.presets import released_code
from probing.steering.sources import MatchRun

log = logging.getLogger(__name__)

__all__ = ["INFO_KEYS", "INTERVENTIONS", "NO_STRENGTH", "Setting", "SweepSpec", "build_settings"]

INTERVENTIONS: tuple[str, ...] = ("add", "ablate", "scale", "released", "add_latent",
                                  "clamp_latent", "erase")
#: interventions without a strength (one setting per condition)
NO_STRENGTH: tuple[str, ...] = ("ablate", "erase")
_LATENT = ("add_latent", "clamp_latent")
#: The descriptive keys of every setting (``Setting.info``), in column order.
INFO_KEYS: tuple[str, ...] = ("intervention", "layer", "strength", "condition", "seed",
                              "latent", "rank")


@dataclass
class Setting:
    """One setting: its interventions (applied in order) and what it is (``INFO_KEYS``)."""

    interventions: list[Intervention]
    info: dict[str, Any]

    @property
    def is_baseline(self) -> bool:
        return self.info["intervention"] == "none"


@dataclass
class SweepSpec:
    """What to sweep.

    Attributes:
        interventions: among ``INTERVENTIONS``.
        layers: steering layers (layer l = output of block l); latents use the SAE's layer.
        strengths: ``{intervention: [strengths]}`` (``ablate`` and ``erase`` need none).
        units: units of ``add`` strengths (``abs``, ``gap``, ``norm``; see ``AddDirection``).
        norm_unit: ``{layer: mean residual norm}`` for ``units="norm"``.
        positions: ``all``, ``prompt`` or ``generated``.
        n_random: random same-norm directions per setting (seeds ``seed .. seed + n - 1``).
        negated, orthogonal: include those controls.
        top_k_latents: matched latents to steer with; ``n_random_latents`` controls each.
        n_permuted: ``erase`` erasers fitted on permuted labels (seeds ``seed .. seed + n - 1``).
        seed: base seed of the random controls.
    """

    interventions: list[str]
    layers: list[int]
    strengths: dict[str, list[float]] = field(default_factory=dict)
    units: str = "gap"
    norm_unit: dict[int, float] | None = None
    positions: str = "all"
    n_random: int = 3
    negated: bool = True
    orthogonal: bool = True
    top_k_latents: int = 2
    n_random_latents: int = 3
    n_permuted: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [i for i in self.interventions if i not in INTERVENTIONS]
        if bad or not self.interventions:
            raise LirefError(f"unknown interventions {bad or self.interventions}; allowed: "
                             f"{list(INTERVENTIONS)}")
        for name in self.interventions:
            if name not in NO_STRENGTH and not self.strengths.get(name):
                raise LirefError(f"intervention {name!r} needs strengths (strengths.{name}: "
                                 f"[...])")
        if not self.layers:
            raise LirefError("no steering layers")
        if min(self.n_random, self.n_random_latents, self.top_k_latents, self.n_permuted) < 0:
            raise LirefError("n_random, n_random_latents, top_k_latents and n_permuted must be "
                             ">= 0")


def _info(intervention: str, layer: int | None, strength: float | None, condition: str,
          seed: int | None = None, latent: int | None = None, rank: int | None = None,
          ) -> dict[str, Any]:
    return dict(zip(INFO_KEYS, (intervention, layer, strength, condition, seed, latent, rank),
                    strict=True))


def _direction_settings(spec: SweepSpec, name: str, layer: int, r: torch.Tensor,
                        controls: list[tuple[str, int | None, torch.Tensor]],
                        ) -> list[Setting]:
    out: list[Setting] = []
    pos = spec.positions
    unit = spec.norm_unit if spec.units == "norm" else None
    strengths: Sequence[float | None] = [None] if name == "ablate" else spec.strengths[name]
    for strength in strengths:
        for condition, seed, v in [("direction", None, r), *controls]:
            if name == "add":
                ivs: list[Intervention] = [AddDirection(layer, v, float(strength), units=spec.units,
                                                        unit=unit, positions=pos)]
            elif name == "ablate":
                ivs = [AblateDirection(layer, v, positions=pos)]
            elif name == "scale":
                ivs = [ScaleProjection(layer, v, float(strength), positions=pos)]
            else:  # released: the preset fixes sites and positions
                ivs = list(released_code(v, float(strength)))
            out.append(Setting(ivs, _info(name, layer, strength, condition, seed)))
    return out


def build_settings(spec: SweepSpec, directions: Mapping[int, torch.Tensor],
                   match: MatchRun | None = None, sae: Any | None = None,
                   knob: Mapping[int, torch.Tensor] | None = None,
                   erasers: Mapping[int, Any] | None = None) -> list[Setting]:
    """All settings of ``spec``: the unsteered run first, then per intervention and layer each
    strength with its direction and controls.

    Args:
        directions: ``{layer: [d]}`` unnormalised diff-in-means (its norm is the ``gap`` unit).
        match, sae: the matching run and its SAE (latent interventions, ``orthogonal``).
        knob: ``{layer: [d]}`` a conflict run's direction (context minus memory), steered as
            the conditions ``conflict`` (and ``negated_conflict`` for additions).
        erasers: ``{layer: LayerErasers}`` (``probing.steering.erasure.fit_probe_erasers``, with
            ``n_permuted`` seeds) for ``erase``.
    """
    settings = [Setting([], _info("none", None, 0.0, "unsteered"))]
    seeds = [spec.seed + k for k in range(spec.n_random)]
    top = match.top(spec.top_k_latents) if match is not None else []
    wants_latents = any(n in _LATENT for n in spec.interventions)
    if (wants_latents or spec.orthogonal) and (match is None or sae is None):
        if wants_latents:
            raise LirefError("latent interventions need a matching run (match_dir=...)")
        log.info("no matching run: the 'orthogonal' control is skipped")
    for name in (n for n in spec.interventions if n not in (*_LATENT, "erase")):
        for layer in spec.layers:
            if layer not in directions:
                raise LirefError(f"the probe run has no direction for layer {layer}; it has "
                                 f"{sorted(directions)}")
            r = directions[layer].to(torch.float64)
            controls: list[tuple[str, int | None, torch.Tensor]] = []
            if spec.negated and name == "add":
                controls.append(("negated", None, -r))
            if knob is not None and layer in knob:
                k = knob[layer].to(torch.float64)
                controls.append(("conflict", None, k))
                if spec.negated and name == "add":
                    controls.append(("negated_conflict", None, -k))
            rand = random_directions(r.numel(), seeds, float(r.norm()))
            controls += [("random", seed, rand[k]) for k, seed in enumerate(seeds)]
            if spec.orthogonal and match is not None and sae is not None and top:
                if layer == match.layer:
                    rows = torch.stack([sae.W_dec[int(t["latent"])].detach().double().cpu()
                                        for t in top])
                    v, kept = orthogonalise(r, rows)
                    log.info("layer %d: the LiReF keeps %.3f of its norm outside the span of the "
                             "top-%d latents", layer, kept, len(top))
                    controls.append(("orthogonal", None, v))
                else:
                    log.info("layer %d: no 'orthogonal' control (the SAE is at layer %d)",
                             layer, match.layer)
            settings += _direction_settings(spec, name, layer, r, controls)
    if "erase" in spec.interventions:
        settings += _erase_settings(spec, erasers)
    for name in (n for n in spec.interventions if n in _LATENT):
        assert match is not None and sae is not None
        settings += _latent_settings(spec, name, match, sae, top)
    return settings


def _erase_settings(spec: SweepSpec, erasers: Mapping[int, Any] | None) -> list[Setting]:
    """Per layer: the LEACE eraser of the labels (``direction``), then ``n_permuted`` erasers
    fitted on permuted labels (``permuted``, seeds ``seed ..``)."""
    if erasers is None:
        raise LirefError("the erase intervention needs erasers (probing.steering.erasure."
                         "fit_probe_erasers on the probe run)")
    out: list[Setting] = []
    seeds = [spec.seed + k for k in range(spec.n_permuted)]
    for layer in spec.layers:
        if layer not in erasers:
            raise LirefError(f"no eraser for layer {layer}; fitted for {sorted(erasers)}")
        le = erasers[layer]
        missing = [s for s in seeds if s not in le.permuted]
        if missing:
            raise LirefError(f"layer {layer}: no permuted-label erasers for seeds {missing}")
        arms = [("direction", None, le.direction), *[("permuted", s, le.permuted[s])
                                                     for s in seeds]]
        for condition, seed, eraser in arms:
            out.append(Setting([EraseConcept(layer, eraser, positions=spec.positions)],
                               _info("erase", layer, None, condition, seed)))
    return out


def _latent_settings(spec: SweepSpec, name: str, match: MatchRun, sae: Any,
                     top: list[dict[str, Any]]) -> list[Setting]:
    out: list[Setting] = []
    by_latent = {int(r["latent"]): r for r in match.rows}
    taken = [int(t["latent"]) for t in top]
    for t in top:
        rank, latent = int(t["rank"]), int(t["latent"])
        picks = random_latents(match.rows, float(t["density"]), spec.n_random_latents,
                               spec.seed + 1000 * rank, exclude=taken)
        arms = [("latent", None, latent)] + [("random_latent", spec.seed + k, p)
                                             for k, p in enumerate(picks)]
        for strength in spec.strengths[name]:
            for condition, seed, lat in arms:
                row = by_latent[lat]
                cls = AddLatent if name == "add_latent" else ClampLatent
                iv = cls(match.layer, sae, lat, float(strength), units="max_act",
                         max_activation=float(row["max_activation"]), positions=spec.positions)
                out.append(Setting([iv], _info(name, match.layer, strength, condition, seed,
                                               lat, rank)))
    return out
