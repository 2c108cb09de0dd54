"""Intervention objects: what to do to the residual stream, at which layers and positions.

Each intervention resolves, per ``(layer, site)`` it touches, into one of three vectorisable
operations on hidden states ``h [B, T, d]`` (``steer`` applies them, several settings per batch):

- ``Add``: ``h + v`` (``AddDirection``: ``v = alpha * r_hat``; ``AddLatent``: ``alpha * W_dec[i]``);
- ``Project``: ``h + c * (h . u) u`` with unit ``u`` (``AblateDirection``: ``c = -1``;
  ``ScaleProjection``: ``c = scale``);
- ``Clamp``: ``h + SAE.decode(f') - SAE.decode(f)`` with ``f = SAE.encode(h)`` and ``f'`` = ``f``
  with latent ``i`` set to ``value`` (= decode(f') + the SAE's error term ``h - decode(f)``);
- ``Erase``: ``h - ((h - bias) @ right.T) @ left.T`` (``EraseConcept``: a LEACE eraser of the
  ``concept-erasure`` package, exactly its ``LeaceEraser.__call__``).

Layer ``l`` = output of decoder block ``l`` (HF ``hidden_states[l + 1]``), as in extraction.
Positions: ``"all"`` (every column, padding included, which nothing attends to), ``"prompt"``,
``"generated"`` (columns of the prompt / of generated tokens, also under a KV cache; see
``probing.model.hooks.ForwardPositions``) or an explicit ``[B, C]`` bool mask over absolute columns
(columns past ``C`` are not steered).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from probing.errors import LirefError
from probing.model.hooks import SITES, check_layers

__all__ = [
    "DIRECTION_UNITS",
    "LATENT_UNITS",
    "POSITION_MODES",
    "AblateDirection",
    "Add",
    "AddDirection",
    "AddLatent",
    "Clamp",
    "ClampLatent",
    "Erase",
    "EraseConcept",
    "Intervention",
    "Op",
    "Project",
    "ScaleProjection",
]

POSITION_MODES: tuple[str, ...] = ("all", "prompt", "generated")
#: ``abs``: alpha in residual units; ``gap``: multiples of the reasoning-minus-memory projection
#: gap at the layer (= the norm of the unnormalised diff-in-means); ``norm``: multiples of the
#: mean residual norm at the layer (``unit`` must be given, see ``mean_residual_norm``).
DIRECTION_UNITS: tuple[str, ...] = ("abs", "gap", "norm")
#: ``abs``: the latent's activation / coefficient as given; ``max_act``: multiples of the
#: latent's maximum activation (``max_activation`` must be given).
LATENT_UNITS: tuple[str, ...] = ("abs", "max_act")

Direction = torch.Tensor | Mapping[int, torch.Tensor]
Positions = str | torch.Tensor


# ----------------------------------------------------------------------------- resolved ops


@dataclass(frozen=True)
class Add:
    """``h + vector`` (``vector [d]`` float64)."""

    vector: torch.Tensor


@dataclass(frozen=True)
class Project:
    """``h + coef * (h . unit) unit`` (``unit [d]`` float64, norm 1)."""

    unit: torch.Tensor
    coef: float


@dataclass(frozen=True)
class Clamp:
    """Latent ``latent`` of ``sae`` set to ``value``; the SAE's error term is kept."""

    sae: Any
    latent: int
    value: float


@dataclass(frozen=True)
class Erase:
    """``h - ((h - bias) @ right.T) @ left.T``: an affine rank-``k`` erasure (``left [d, k]``,
    ``right [k, d]``, ``bias [d]``, float64; LEACE's ``proj_left``, ``proj_right``, ``bias``)."""

    left: torch.Tensor
    right: torch.Tensor
    bias: torch.Tensor


Op = Add | Project | Clamp | Erase


# ----------------------------------------------------------------------------- helpers


def _unit(v: torch.Tensor, what: str) -> torch.Tensor:
    v = v.detach().to(torch.float64).reshape(-1)
    norm = float(v.norm())
    if not norm > 0 or norm != norm:
        raise LirefError(f"{what}: the direction has zero (or non-finite) norm")
    return v / norm


def _check_positions(positions: Positions) -> None:
    if isinstance(positions, torch.Tensor):
        if positions.ndim != 2 or positions.dtype != torch.bool:
            raise LirefError(f"an explicit positions mask must be a [batch, columns] bool tensor, "
                             f"got {tuple(positions.shape)} {positions.dtype}")
        return
    if positions not in POSITION_MODES:
        raise LirefError(f"unknown positions {positions!r}; allowed: {list(POSITION_MODES)} or a "
                         f"[batch, columns] bool mask")


def _layers_of(layer: int | Sequence[int] | None) -> list[int] | None:
    if layer is None:
        return None
    if isinstance(layer, int) and not isinstance(layer, bool):
        return [layer]
    return [int(x) for x in layer]


def _sites_of(site: str | Sequence[str]) -> tuple[str, ...]:
    sites = (site,) if isinstance(site, str) else tuple(site)
    bad = [s for s in sites if s not in SITES]
    if bad or not sites:
        raise LirefError(f"unknown sites {list(sites)}; allowed: {list(SITES)}")
    return sites


def _per_layer(value: Any, layer: int, what: str) -> Any:
    if isinstance(value, Mapping):
        if layer not in value:
            raise LirefError(f"{what} has no entry for layer {layer}; it has layers "
                             f"{sorted(value)}")
        return value[layer]
    return value


def _positions_key(positions: Positions) -> object:
    return positions if isinstance(positions, str) else ("mask", id(positions))


# ----------------------------------------------------------------------------- interventions


@dataclass(eq=False)
class Intervention:
    """Base class: ``ops(model)`` -> ``[(layer, site, Op)]`` in application order."""

    kind: ClassVar[str] = "intervention"

    def targets(self, model: torch.nn.Module) -> list[tuple[int, str]]:
        raise NotImplementedError

    def op(self, layer: int, site: str, d_model: int) -> Op:
        raise NotImplementedError

    @property
    def positions_key(self) -> object:
        return _positions_key(self.positions)  # type: ignore[attr-defined]

    def ops(self, model: torch.nn.Module) -> list[tuple[int, str, Op]]:
        d_model = int(model.get_input_embeddings().weight.shape[1])
        return [(layer, site, self.op(layer, site, d_model))
                for layer, site in self.targets(model)]


class _AtLayers(Intervention):
    """An intervention at ``layer`` (one, several or ``None`` = every layer) x ``site``, at
    ``positions`` (the subclass's dataclass fields)."""

    layer: int | Sequence[int] | None
    positions: Positions
    site: str | Sequence[str]

    def __post_init__(self) -> None:
        _check_positions(self.positions)
        self._sites = _sites_of(self.site)

    def targets(self, model: torch.nn.Module) -> list[tuple[int, str]]:
        layers = check_layers(model, _layers_of(self.layer))
        return [(layer, site) for layer in layers for site in self._sites]


@dataclass(eq=False)
class _DirectionIntervention(_AtLayers):
    layer: int | Sequence[int] | None
    direction: Direction
    positions: Positions = field(default="all", kw_only=True)
    site: str | Sequence[str] = field(default="block_out", kw_only=True)

    def raw_direction(self, layer: int, d_model: int) -> torch.Tensor:
        r = torch.as_tensor(_per_layer(self.direction, layer, "direction"))
        r = r.detach().to(torch.float64).reshape(-1)
        if r.numel() != d_model:
            raise LirefError(f"{type(self).__name__}: the direction at layer {layer} has width "
                             f"{r.numel()} but the model's residual width is {d_model}")
        return r


@dataclass(eq=False)
class AddDirection(_DirectionIntervention):
    """``h + alpha * r_hat`` (``r_hat`` = the direction, normalised).

    Args:
        layer: one layer, several, or ``None`` = every layer (negative indices allowed).
        direction: ``[d]`` (one vector for every layer) or ``{layer: [d]}``; for
            ``units="gap"`` pass the unnormalised diff-in-means: its norm is the gap.
        alpha: strength in ``units``.
        units: ``abs``, ``gap`` (``alpha * gap_l``, ``gap_l = ||direction_l||`` unless ``unit``
            gives it) or ``norm`` (``alpha * unit_l``, the mean residual norm; required).
        unit: the value of one unit, a float or ``{layer: float}`` (overrides ``gap``).
        positions, site: where (see the module docstring; site default ``block_out``).
    """

    alpha: float = 0.0
    units: str = field(default="abs", kw_only=True)
    unit: float | Mapping[int, float] | None = field(default=None, kw_only=True)
    kind: ClassVar[str] = "add"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.units not in DIRECTION_UNITS:
            raise LirefError(f"unknown units {self.units!r}; allowed: {list(DIRECTION_UNITS)}")
        if self.units == "norm" and self.unit is None:
            raise LirefError("units='norm' needs unit= (the mean residual norm per layer; "
                             "probing.steering.mean_residual_norm computes it)")

    def scale(self, layer: int, raw: torch.Tensor) -> float:
        """``alpha`` in residual units at ``layer``."""
        if self.units == "abs":
            return float(self.alpha)
        if self.unit is not None:
            return float(self.alpha) * float(_per_layer(self.unit, layer, "unit"))
        return float(self.alpha) * float(raw.norm())  # gap = ||diff-in-means||

    def op(self, layer: int, site: str, d_model: int) -> Op:
        raw = self.raw_direction(layer, d_model)
        return Add(self.scale(layer, raw) * _unit(raw, "AddDirection"))


@dataclass(eq=False)
class AblateDirection(_DirectionIntervention):
    """``h - (h . r_hat) r_hat``: the projection on the direction becomes 0."""

    kind: ClassVar[str] = "ablate"

    def op(self, layer: int, site: str, d_model: int) -> Op:
        return Project(_unit(self.raw_direction(layer, d_model), "AblateDirection"), -1.0)


@dataclass(eq=False)
class ScaleProjection(_DirectionIntervention):
    """``h + scale * (h . r_hat) r_hat`` (the paper's released code; ``scale=-1`` ablates)."""

    scale: float = 0.1
    kind: ClassVar[str] = "scale"

    def op(self, layer: int, site: str, d_model: int) -> Op:
        return Project(_unit(self.raw_direction(layer, d_model), "ScaleProjection"),
                       float(self.scale))


@dataclass(eq=False)
class _LatentIntervention(Intervention):
    layer: int
    sae: Any
    latent: int
    units: str = field(default="abs", kw_only=True)
    max_activation: float | None = field(default=None, kw_only=True)
    positions: Positions = field(default="all", kw_only=True)
    site: str = field(default="block_out", init=False)

    def __post_init__(self) -> None:
        _check_positions(self.positions)
        if self.units not in LATENT_UNITS:
            raise LirefError(f"unknown latent units {self.units!r}; allowed: {list(LATENT_UNITS)}")
        if self.units == "max_act" and self.max_activation is None:
            raise LirefError("units='max_act' needs max_activation= (the latent's maximum "
                             "activation, e.g. from the matching run's latents.json)")
        d_sae = int(self.sae.cfg.d_sae)
        if not 0 <= int(self.latent) < d_sae:
            raise LirefError(f"latent {self.latent} is out of range; the SAE has {d_sae} latents "
                             f"(0..{d_sae - 1})")

    def targets(self, model: torch.nn.Module) -> list[tuple[int, str]]:
        (layer,) = check_layers(model, [self.layer])
        d_in = int(self.sae.cfg.d_in)
        d_model = int(model.get_input_embeddings().weight.shape[1])
        if d_in != d_model:
            raise LirefError(f"the SAE reads {d_in}-wide activations but the model's residual "
                             f"width is {d_model}: it belongs to another model")
        return [(layer, "block_out")]

    def amount(self, value: float) -> float:
        return float(value) * (float(self.max_activation) if self.units == "max_act" else 1.0)

    def decoder_row(self) -> torch.Tensor:
        """``W_dec[latent]`` ``[d]`` float64."""
        return self.sae.W_dec[int(self.latent)].detach().to(torch.float64).cpu()


@dataclass(eq=False)
class AddLatent(_LatentIntervention):
    """``h + alpha * W_dec[latent]`` (alpha in ``units``: ``abs`` or ``max_act``)."""

    alpha: float = 0.0
    kind: ClassVar[str] = "add_latent"

    def op(self, layer: int, site: str, d_model: int) -> Op:
        return Add(self.amount(self.alpha) * self.decoder_row())


@dataclass(eq=False)
class ClampLatent(_LatentIntervention):
    """Encode, set ``latent`` to ``value`` (in ``units``), decode, add back the error term
    ``h - SAE(h)``: clamping a latent to the value it already has changes nothing."""

    value: float = 0.0
    kind: ClassVar[str] = "clamp_latent"

    def op(self, layer: int, site: str, d_model: int) -> Op:
        return Clamp(self.sae, int(self.latent), self.amount(self.value))


@dataclass(eq=False)
class EraseConcept(_AtLayers):
    """LEACE concept erasure: ``h - ((h - mean) @ proj_right^T) @ proj_left^T`` (the
    ``concept_erasure.LeaceEraser`` map; ``probing.steering.erasure.fit_eraser`` fits one).

    Args:
        layer: one layer, several, or ``None`` = every layer (negative indices allowed).
        eraser: a ``LeaceEraser`` (``proj_left [d, k]``, ``proj_right [k, d]``, ``bias [d]`` or
            ``None``) for every layer, or ``{layer: LeaceEraser}``.
        positions, site: where (see the module docstring; site default ``block_out``).
    """

    layer: int | Sequence[int] | None
    eraser: Any
    positions: Positions = field(default="all", kw_only=True)
    site: str | Sequence[str] = field(default="block_out", kw_only=True)
    kind: ClassVar[str] = "erase"

    def op(self, layer: int, site: str, d_model: int) -> Op:
        e = _per_layer(self.eraser, layer, "eraser")
        left = e.proj_left.detach().to(torch.float64).cpu()
        right = e.proj_right.detach().to(torch.float64).cpu()
        if left.ndim != 2 or right.shape != (left.shape[1], left.shape[0]):
            raise LirefError(f"EraseConcept: proj_left {tuple(left.shape)} and proj_right "
                             f"{tuple(right.shape)} must be [d, k] and [k, d]")
        if left.shape[0] != d_model:
            raise LirefError(f"EraseConcept: the eraser at layer {layer} is {left.shape[0]}-wide "
                             f"but the model's residual width is {d_model}")
        bias = (torch.zeros(d_model, dtype=torch.float64) if e.bias is None
                else e.bias.detach().to(torch.float64).cpu().reshape(-1))
        return Erase(left, right, bias)
