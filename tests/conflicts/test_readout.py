"""Reference directions read on conflict items: transfer AUROC and the knob cosine's null."""

from __future__ import annotations

import numpy as np
import torch

from probing.conflicts.readout import direction_aurocs, knob_cosines


def _planted(n: int = 200, d: int = 16, seed: int = 0) -> tuple[torch.Tensor, np.ndarray,
                                                                  torch.Tensor]:
    """Activations [n, 2, d]: layer 0 carries the label along ``v``, layer 1 is noise."""
    g = torch.Generator().manual_seed(seed)
    y = np.array([0, 1] * (n // 2))
    v = torch.randn(d, generator=g, dtype=torch.float64)
    acts = torch.randn(n, 2, d, generator=g, dtype=torch.float64)
    acts[:, 0] += 2.0 * torch.from_numpy(y)[:, None].double() * v
    return acts, y, v


def test_direction_auroc_sees_a_planted_direction_and_not_noise() -> None:
    acts, y, v = _planted()
    rows = {r["layer"]: r for r in direction_aurocs(acts, y, [3, 7], {3: v, 7: v},
                                                    n_resamples=200)}
    assert rows[3]["auroc"] > 0.95 and rows[3]["auroc_ci_low"] > 0.9
    assert rows[7]["auroc_ci_low"] < 0.5 < rows[7]["auroc_ci_high"]
    flipped = direction_aurocs(acts, y, [3, 7], {3: -v}, n_resamples=50)
    assert flipped[0]["auroc"] < 0.05  # the sign is kept: it points to context


def test_knob_cosine_is_high_for_the_planted_direction_against_its_null() -> None:
    acts, y, v = _planted()
    rows = {r["layer"]: r for r in knob_cosines(acts, y, [0, 1], {0: v, 1: v},
                                                n_permutations=300)}
    assert rows[0]["cosine"] > 0.8 and rows[0]["p_value"] < 0.01
    # the null keeps the data's covariance (a label-carrying axis has more variance, so random
    # splits lean to it too); the planted direction still lies beyond it
    assert rows[0]["null_low"] < 0 < rows[0]["null_high"] < rows[0]["cosine"]
    assert rows[1]["p_value"] > 0.01 or abs(rows[1]["cosine"]) < rows[0]["cosine"]
    other = torch.randn(16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    other -= (other @ v) / (v @ v) * v  # orthogonal to the planted direction
    row = knob_cosines(acts, y, [0, 1], {0: other}, n_permutations=300)[0]
    assert row["null_low"] <= row["cosine"] <= row["null_high"] or row["p_value"] > 0.01
