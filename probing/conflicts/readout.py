"""Reading a knowledge-conflict set with directions fitted elsewhere.

- ``direction_aurocs``: a direction per layer (a LiReF fitted on other data) scored unchanged
  on the conflict items: AUROC of the projection for the behavioural label (context = 1).
- ``knob_cosines``: the cosine per layer between a reference direction and the conflict set's
  own diff-in-means direction (the "knob"), beside a null of diff-in-means directions of
  label-permuted items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from probing.errors import LirefError
from probing.probes.directions import check_labels
from probing.stats import auroc_with_ci

__all__ = ["direction_aurocs", "knob_cosines"]


def _layer_index(layers: Sequence[int], layer: int) -> int:
    if layer not in layers:
        raise LirefError(f"layer {layer} is not among the extracted layers {list(layers)}")
    return list(layers).index(layer)


def direction_aurocs(acts: torch.Tensor, y: Sequence[int] | np.ndarray, layers: Sequence[int],
                     directions: Mapping[int, torch.Tensor], n_resamples: int = 1000,
                     seed: int = 0) -> list[dict[str, float]]:
    """``[{layer, auroc, auroc_ci_low, auroc_ci_high}]`` of ``acts [N, L, d] @ directions[l]``
    for labels ``y [N]``, for each layer present in both."""
    y_arr = check_labels(acts, y)
    rows = []
    for layer in (int(x) for x in layers if int(x) in directions):
        x = acts[:, _layer_index(layers, layer)].to(torch.float64)
        scores = (x @ directions[layer].to(torch.float64)).numpy()
        auc, lo, hi = auroc_with_ci(y_arr, scores, n_resamples, seed=seed)
        rows.append({"layer": layer, "auroc": auc, "auroc_ci_low": lo, "auroc_ci_high": hi})
    return rows


def knob_cosines(acts: torch.Tensor, y: Sequence[int] | np.ndarray, layers: Sequence[int],
                 reference: Mapping[int, torch.Tensor], n_permutations: int = 1000,
                 seed: int = 0) -> list[dict[str, float]]:
    """``[{layer, cosine, null_low, null_high, p_value}]``: the cosine between ``reference[l]``
    and the diff-in-means direction of ``acts [N, L, d]`` (context minus memory), the 2.5 and
    97.5 percentiles of the cosines of ``n_permutations`` label-permuted diff-in-means
    directions, and the two-sided permutation p-value of ``|cosine|``."""
    y_arr = check_labels(acts, y)
    rng = np.random.default_rng(seed)
    perms = np.stack([y_arr] + [rng.permutation(y_arr) for _ in range(n_permutations)])
    pos = perms / perms.sum(1, keepdims=True)  # [P+1, N] weights of the class means
    neg = (1 - perms) / (1 - perms).sum(1, keepdims=True)
    weights = torch.from_numpy(pos - neg)  # diff-in-means = weights @ x
    rows = []
    for layer in (int(x) for x in layers if int(x) in reference):
        x = acts[:, _layer_index(layers, layer)].to(torch.float64)
        r = reference[layer].to(torch.float64)
        d = weights @ x  # [P+1, d]
        cos = ((d @ r) / (d.norm(dim=1) * r.norm()).clamp_min(1e-300)).numpy()
        obs, null = float(cos[0]), cos[1:]
        p = float((1 + np.sum(np.abs(null) >= abs(obs))) / (1 + len(null)))
        rows.append({"layer": layer, "cosine": obs, "null_low": float(np.percentile(null, 2.5)),
                     "null_high": float(np.percentile(null, 97.5)), "p_value": p})
    return rows
