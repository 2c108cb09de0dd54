"""Controls for steering: same-norm random directions, a direction orthogonalised against SAE
decoder rows, random latents of similar firing density, and the ``norm`` unit.

Every reported steering effect is shown beside these (DESIGN.md): >= 3 seeded random directions
of the same norm, the negated direction, the direction with the matched latents' subspace
removed, and (for latents) random latents that fire about as often.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from probing.errors import LirefError

__all__ = ["mean_residual_norm", "orthogonalise", "random_directions", "random_latents"]


def random_directions(d: int, seeds: Sequence[int], norm: float = 1.0) -> torch.Tensor:
    """``[len(seeds), d]`` float64 Gaussian directions scaled to ``norm``; row ``i`` depends only
    on ``seeds[i]`` (adding seeds never changes the others)."""
    if d < 1:
        raise LirefError(f"width must be >= 1, got {d}")
    rows = []
    for seed in seeds:
        g = torch.Generator().manual_seed(int(seed))
        v = torch.randn(d, generator=g, dtype=torch.float64)
        rows.append(v / v.norm() * float(norm))
    return torch.stack(rows) if rows else torch.empty((0, d), dtype=torch.float64)


def orthogonalise(direction: torch.Tensor, against: torch.Tensor, keep_norm: bool = True,
                  ) -> tuple[torch.Tensor, float]:
    """``direction`` ``[d]`` minus its projection on the span of ``against`` ``[k, d]``.

    Returns ``(v, retained)``: ``v`` float64, rescaled to ``||direction||`` when ``keep_norm``;
    ``retained`` = ``||residual|| / ||direction||`` (1 = already orthogonal)."""
    r = direction.detach().to(torch.float64).reshape(-1)
    a = against.detach().to(torch.float64).reshape(-1, r.numel())
    if a.shape[0] == 0:
        return r.clone(), 1.0
    q, _ = torch.linalg.qr(a.T)  # [d, k] orthonormal basis of the span
    residual = r - q @ (q.T @ r)
    retained = float(residual.norm() / r.norm())
    if retained < 1e-6:
        raise LirefError("the direction lies in the span of the latents' decoder rows: nothing "
                         "is left after orthogonalising")
    if keep_norm:
        residual = residual / residual.norm() * r.norm()
    return residual, retained


def random_latents(rows: Sequence[Mapping[str, Any]], target_density: float, n: int, seed: int,
                   exclude: Sequence[int] = (), tolerance: float = 2.0) -> list[int]:
    """``n`` seeded random latents whose firing density is within a factor ``tolerance`` of
    ``target_density`` (the ``n * 4`` nearest in log density if too few are), never dead and
    never in ``exclude``. ``rows``: ``{"latent", "density", ...}`` per latent."""
    if n < 1:
        return []
    if not target_density > 0:
        raise LirefError(f"target density must be > 0 (a latent that fires), got {target_density}")
    skip = {int(x) for x in exclude}
    pool = [(int(r["latent"]), float(r["density"])) for r in rows
            if int(r["latent"]) not in skip and float(r.get("density") or 0.0) > 0]
    if len(pool) < n:
        raise LirefError(f"only {len(pool)} live latents to draw {n} random control latents from")
    gap = {lat: abs(math.log(dens / target_density)) for lat, dens in pool}
    close = sorted(lat for lat, g in gap.items() if g <= math.log(tolerance))
    if len(close) < n:
        close = sorted(sorted(gap, key=lambda lat: (gap[lat], lat))[: max(n, 4 * n)])
    rng = np.random.default_rng(seed)
    return [int(x) for x in rng.choice(close, size=n, replace=False)]


@torch.no_grad()
def mean_residual_norm(model: torch.nn.Module, tokenizer: Any, prompts: Sequence[str],
                       layers: Sequence[int], batch_size: int = 32,
                       add_special_tokens: bool = True) -> dict[int, float]:
    """``{layer: mean L2 norm}`` of the residual stream (output of block ``layer``) at the last
    prompt token of ``prompts`` (the ``norm`` unit of ``AddDirection``)."""
    from probing.activations.extract import extract_activations

    acts = extract_activations(model, tokenizer, prompts, list(layers), "last", batch_size,
                               progress=False, add_special_tokens=add_special_tokens)
    norms = acts.to(torch.float64).norm(dim=-1).mean(0)  # [L]
    return {int(layer): float(norms[i]) for i, layer in enumerate(layers)}
