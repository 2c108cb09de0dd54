"""Null distributions for decoder cosines: is a latent more aligned with the LiReF than chance?

Three nulls, all ``[n, d_in]`` sets of directions compared with every decoder row:

- analytic: a random unit vector's cosine with any fixed unit vector is ~ N(0, 1/d), so
  ``z = cos * sqrt(d)``;
- random: ``n`` seeded random unit directions (isotropic). Every latent's null is the same
  distribution, so one latent's p-value can use all latents' null cosines (resolution
  ``1 / (n * d_sae)``);
- permutation: diff-in-means directions of the same activations, class-centred, with the
  labels shuffled (``n`` seeded permutations): random directions distributed like label
  noise in the data's own within-class covariance (the residual stream is far from
  isotropic), so this is the stricter null. Centring keeps the real class difference out of
  the null (without it, a large gap leaks into every shuffled split and the null directions
  point along the LiReF itself). Each latent's cosine is standardised by its own
  permutation mean and std; the p-value compares ``|z|`` with the pooled standardised null
  of all latents (resolution ``1 / (n * d_sae)``; exact when the standardised nulls agree
  across latents, which holds approximately).

Family-wise: the null distribution of ``max_i |cos_i|`` over latents (per null direction)
gives the p-value of the best latent without any multiple-testing correction; its
studentised form (``max_i |z_i|``, Westfall-Young maxT) is the one to use with the
permutation null, whose per-latent scales differ (a latent on a high-variance axis of the
data is aligned with many permuted directions).
Per-latent p-values are FDR-corrected with Benjamini-Hochberg (``probing.stats``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probing.errors import LirefError
from probing.probes.directions import check_labels
from probing.stats import benjamini_hochberg

__all__ = [
    "CosineNull",
    "analytic_z",
    "cosine_null",
    "cosine_significance",
    "max_null_p",
    "permuted_directions",
    "random_directions",
]


def random_directions(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """``[n, d]`` float64 unit vectors, uniform on the sphere (seeded)."""
    if n < 1:
        raise LirefError(f"the number of random directions must be >= 1, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    v = torch.randn(n, d, generator=g, dtype=torch.float64)
    return v / v.norm(dim=1, keepdim=True)


def permuted_directions(x: torch.Tensor, y: Sequence[int] | np.ndarray, n: int, seed: int = 0,
                        center: bool = True) -> torch.Tensor:
    """``[n, d]`` float64 diff-in-means directions (not normalised) of ``x`` ``[N, d]`` with the
    labels ``y`` ``[N]`` randomly permuted (class sizes kept; seeded). ``center``: subtract
    each class's mean first, so the directions carry within-class variation only."""
    if n < 1:
        raise LirefError(f"the number of permutations must be >= 1, got {n}")
    y_arr = check_labels(x, y)
    x64 = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if center:
        x64 = x64.clone()
        for label in (0, 1):
            mask = torch.as_tensor(y_arr == label)
            x64[mask] -= x64[mask].mean(0)
    rng = np.random.default_rng(int(seed))
    n1 = int(y_arr.sum())
    n0 = len(y_arr) - n1
    weights = np.empty((n, len(y_arr)))
    for b in range(n):
        perm = rng.permutation(y_arr)
        weights[b] = np.where(perm == 1, 1.0 / n1, -1.0 / n0)
    return torch.from_numpy(weights) @ x64


def analytic_z(cosines: torch.Tensor | np.ndarray, d: int) -> np.ndarray:
    """``cos * sqrt(d)``: the z-score under the random-unit-vector null N(0, 1/d)."""
    return np.asarray(cosines, dtype=np.float64) * np.sqrt(d)


@dataclass
class CosineNull:
    """Null cosines of every latent with ``n`` null directions, summarised.

    Attributes:
        name: ``"random"`` or ``"permutation"``.
        mean, std: ``[d_sae]`` per-latent mean and std of the null cosines.
        pooled_abs_z: sorted ``|z|`` of every (null direction, latent) pair, each standardised
            by its latent's ``mean`` / ``std`` (``[n * d_sae]``).
        max_abs: ``[n]`` max over latents of ``|cos|`` per null direction.
        max_abs_z: ``[n]`` max over latents of ``|z|`` per null direction.
        n: the number of null directions.
        sample: a seeded subsample of the raw null cosines (for plots).
    """

    name: str
    mean: np.ndarray
    std: np.ndarray
    pooled_abs_z: np.ndarray
    max_abs: np.ndarray
    max_abs_z: np.ndarray
    n: int
    sample: np.ndarray


def cosine_null(w_dec: torch.Tensor, directions: torch.Tensor, name: str,
                chunk: int = 256, sample_size: int = 100_000) -> CosineNull:
    """Cosines of the rows of ``w_dec`` ``[d_sae, d]`` with each null direction ``[n, d]``."""
    w = w_dec.to(torch.float64)
    norms = w.norm(dim=1).clamp_min(1e-30)
    units = directions.to(torch.float64)
    units = units / units.norm(dim=1, keepdim=True).clamp_min(1e-30)
    parts = [((w @ units[i:i + chunk].T) / norms.unsqueeze(1)).T.float()
             for i in range(0, units.shape[0], chunk)]
    cos = torch.cat(parts).numpy()  # [n, d_sae] float32 (memory: n * d_sae * 4 bytes)
    mean = cos.mean(0, dtype=np.float64)
    std = cos.std(0, dtype=np.float64, ddof=1) if cos.shape[0] > 1 else np.zeros(cos.shape[1])
    safe = np.where(std > 0, std, np.inf)
    abs_z = np.abs((cos - mean) / safe).astype(np.float32)
    max_abs_z = abs_z.max(1).astype(np.float64)
    pooled = abs_z.reshape(-1)
    pooled.sort()
    flat = cos.reshape(-1)
    pick = np.random.default_rng(0).choice(flat.size, min(sample_size, flat.size), replace=False)
    return CosineNull(name=name, mean=mean, std=std, pooled_abs_z=pooled,
                      max_abs=np.abs(cos).max(1).astype(np.float64), max_abs_z=max_abs_z,
                      n=int(cos.shape[0]),
                      sample=flat[pick].astype(np.float64))


def _tail_p(sorted_null: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``(1 + #{null >= v}) / (1 + len(null))`` for each value (``sorted_null`` ascending)."""
    above = sorted_null.size - np.searchsorted(sorted_null, values, side="left")
    return (1.0 + above) / (1.0 + sorted_null.size)


def cosine_significance(cosines: torch.Tensor | np.ndarray, null: CosineNull
                        ) -> dict[str, np.ndarray]:
    """Per-latent ``z`` (standardised by the latent's own null), two-sided empirical ``p``
    (against the pooled standardised null) and BH ``q``: each ``[d_sae]``."""
    cos = np.asarray(cosines, dtype=np.float64)
    safe = np.where(null.std > 0, null.std, np.inf)
    z = (cos - null.mean) / safe
    p = _tail_p(null.pooled_abs_z.astype(np.float64), np.abs(z))
    return {"z": z, "p": p, "q": benjamini_hochberg(p)}


def max_null_p(value: float, null: CosineNull, studentized: bool = False) -> float:
    """Family-wise p of a latent with ``|cos| = |value|`` (or ``|z| = |value|`` when
    ``studentized``): the share of null directions whose best latent is at least as extreme
    (``(1 + count) / (1 + n)``)."""
    ref = null.max_abs_z if studentized else null.max_abs
    return float(_tail_p(np.sort(ref), np.array([abs(value)]))[0])
