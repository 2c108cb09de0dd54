"""The LiReF against an SAE's dictionary: decoder/encoder cosines and sparse reconstruction.

The direction is a difference of activation means, not an activation: it is compared with the
SAE's decoder rows ``W_dec [d_sae, d_in]`` and encoder columns ``W_enc [d_in, d_sae]``, never
passed through the encoder. All geometry is computed in float64 on CPU.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch

from probing.errors import LirefError

__all__ = [
    "Reconstruction",
    "decoder_cosines",
    "decoder_matrix",
    "encoder_cosines",
    "encoder_matrix",
    "omp_path",
    "reconstruct_direction",
    "reconstruction_curve",
    "unit_direction",
]


def decoder_matrix(sae: Any) -> torch.Tensor:
    """``W_dec`` ``[d_sae, d_in]`` as float64 on CPU."""
    return sae.W_dec.detach().to("cpu", torch.float64)


def encoder_matrix(sae: Any) -> torch.Tensor:
    """``W_enc`` ``[d_in, d_sae]`` as float64 on CPU."""
    return sae.W_enc.detach().to("cpu", torch.float64)


def unit_direction(direction: torch.Tensor, d_in: int) -> torch.Tensor:
    """``direction / ||direction||`` ``[d_in]`` float64; width checked against the SAE."""
    r = torch.as_tensor(direction).detach().to("cpu", torch.float64).reshape(-1)
    if r.shape[0] != d_in:
        raise LirefError(f"the direction has width {r.shape[0]} but the SAE reads {d_in}-wide "
                         f"activations: they come from different models or layers")
    norm = r.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise LirefError("the direction is zero (or not finite): nothing to match")
    return r / norm


def _row_cosines(rows: torch.Tensor, r_hat: torch.Tensor) -> torch.Tensor:
    norms = rows.norm(dim=1)
    cos = rows @ r_hat / norms.clamp_min(1e-30)
    return torch.where(norms > 0, cos, torch.zeros_like(cos))


def decoder_cosines(sae: Any, direction: torch.Tensor) -> torch.Tensor:
    """Signed cosine of every decoder row with ``direction``: ``[d_sae]`` float64 (a zero
    row gets 0)."""
    w = decoder_matrix(sae)
    return _row_cosines(w, unit_direction(direction, w.shape[1]))


def encoder_cosines(sae: Any, direction: torch.Tensor) -> torch.Tensor:
    """Signed cosine of every encoder column with ``direction``: ``[d_sae]`` float64."""
    w = encoder_matrix(sae).T
    return _row_cosines(w, unit_direction(direction, w.shape[1]))


class Reconstruction(NamedTuple):
    """A k-latent approximation of the unit direction: ``sum_j coefficients[j] *
    W_dec[indices[j]]``; ``cosine`` = its cosine with the direction."""

    indices: list[int]
    coefficients: torch.Tensor  # [k] float64, signed, in units of the (unnormalised) rows
    cosine: float


def omp_path(w_dec: torch.Tensor, r_hat: torch.Tensor, max_k: int) -> list[Reconstruction]:
    """Orthogonal matching pursuit of ``r_hat`` ``[d]`` (unit) over the rows of ``w_dec``
    ``[d_sae, d]``: step k adds the row whose normalised version has the largest
    ``|<residual, row>|`` and refits all k coefficients by least squares (signed; an
    incrementally orthogonalised basis, so each step costs O(d_sae * d)).

    Returns one ``Reconstruction`` per k = 1..max_k (nested: OMP is greedy, so the k-atom
    set is the best found by this path, not the best of all k-subsets). Stops early when the
    residual vanishes or no linearly independent usable row is left.
    """
    if max_k < 1:
        raise LirefError(f"k must be >= 1, got {max_k}")
    w = w_dec.to(torch.float64)
    r = r_hat.to(torch.float64)
    r = r / r.norm()
    norms = w.norm(dim=1)
    usable = norms > 0
    atoms = w / norms.clamp_min(1e-30).unsqueeze(1)
    d = w.shape[1]
    q = torch.zeros((d, 0), dtype=torch.float64)  # orthonormal basis of the chosen rows
    rmat = torch.zeros((0, 0), dtype=torch.float64)  # w[chosen].T = q @ rmat
    residual = r.clone()
    chosen: list[int] = []
    out: list[Reconstruction] = []
    scores = torch.empty(w.shape[0], dtype=torch.float64)
    while len(out) < min(max_k, d):
        torch.mv(atoms, residual, out=scores)
        scores.abs_()
        scores[~usable] = -1.0
        if chosen:
            scores[torch.tensor(chosen)] = -1.0
        j = int(scores.argmax())
        if scores[j] < 0:
            break
        a = w[j]
        proj = q.T @ a
        v = a - q @ proj
        proj2 = q.T @ v  # re-orthogonalise once (classical Gram-Schmidt, twice)
        v = v - q @ proj2
        proj = proj + proj2
        nv = float(v.norm())
        if nv <= 1e-10 * float(norms[j]):
            usable[j] = False  # in the span of the chosen rows: skip it
            continue
        chosen.append(j)
        k = len(chosen)
        q = torch.cat([q, (v / nv).unsqueeze(1)], 1)
        grown = torch.zeros((k, k), dtype=torch.float64)
        grown[: k - 1, : k - 1] = rmat
        grown[: k - 1, k - 1] = proj
        grown[k - 1, k - 1] = nv
        rmat = grown
        qr = q.T @ r
        coef = torch.linalg.solve_triangular(rmat, qr.unsqueeze(1), upper=True).reshape(-1)
        residual = r - q @ qr
        norm = float(qr.norm())  # = ||approx||; its cosine with the unit r is ||Q^T r||
        out.append(Reconstruction(list(chosen), coef, norm))
        if float(residual.norm()) < 1e-12:
            break
    return out


def reconstruct_direction(sae: Any, direction: torch.Tensor, k: int) -> Reconstruction:
    """``(indices, coefficients, cosine)`` of the k-latent OMP reconstruction of the unit
    direction from decoder rows (fewer than k when it is exact earlier)."""
    w = decoder_matrix(sae)
    path = omp_path(w, unit_direction(direction, w.shape[1]), k)
    return path[-1]


def reconstruction_curve(sae: Any, direction: torch.Tensor,
                         ks: Iterable[int] = range(1, 65)) -> list[dict[str, Any]]:
    """Cosine of the k-latent OMP reconstruction vs k: ``[{"k", "cosine", "latent" (added at
    step k), "coefficient" (its coefficient at step k)}]`` for each k in ``ks`` (a k past an
    early exact stop repeats the last reconstruction)."""
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise LirefError(f"reconstruction ks must be >= 1, got {ks}")
    w = decoder_matrix(sae)
    path = omp_path(w, unit_direction(direction, w.shape[1]), ks[-1])
    rows = []
    for k in ks:
        rec = path[min(k, len(path)) - 1]
        rows.append({"k": k, "cosine": rec.cosine, "latent": rec.indices[-1],
                     "coefficient": float(rec.coefficients[-1])})
    return rows
