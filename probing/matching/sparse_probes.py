"""k-sparse probes on SAE latents and on residual neurons (SAEBench style), beside the dense
probe, the LiReF projection and the bag-of-words control.

For each k: the k features with the largest absolute class-mean difference on the training
split are chosen, a logistic probe (``probing.probes.estimators.LogisticProbe``, standardised
features) is fitted on them, and held-out accuracy and AUROC are reported with 95% stratified
bootstrap intervals (``probing.stats``). Labels: 1 = reasoning, 0 = memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from probing.errors import LirefError
from probing.probes.directions import check_labels
from probing.stats import accuracy_with_ci, auroc_with_ci, balanced_threshold

__all__ = ["SPARSE_KS", "heldout_row", "select_by_mean_diff", "sparse_probe_curve",
           "sparse_probe_table"]

SPARSE_KS: tuple[int, ...] = (1, 2, 5, 10, 20, 50)


def select_by_mean_diff(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` columns of ``x`` ``[N, F]`` with the largest
    ``|mean(x[y == 1]) - mean(x[y == 0])|`` (ties: lower index first)."""
    diff = np.abs(x[y == 1].mean(0) - x[y == 0].mean(0))
    return np.argsort(-diff, kind="stable")[:k]


def heldout_row(y_test: np.ndarray, scores: np.ndarray, n_resamples: int = 1000, seed: int = 0
                ) -> dict[str, float]:
    """Held-out ``accuracy`` (score > 0 = reasoning) and ``auroc`` with bootstrap intervals."""
    acc, acc_lo, acc_hi = accuracy_with_ci((scores > 0).astype(int) == y_test, n_resamples,
                                           seed=seed, strata=y_test)
    auc, auc_lo, auc_hi = auroc_with_ci(y_test, scores, n_resamples, seed=seed)
    return {"accuracy": acc, "accuracy_lo": acc_lo, "accuracy_hi": acc_hi,
            "auroc": auc, "auroc_lo": auc_lo, "auroc_hi": auc_hi}


def sparse_probe_curve(x: torch.Tensor | np.ndarray, y: Sequence[int] | np.ndarray,
                       train: np.ndarray, test: np.ndarray, ks: Sequence[int] = SPARSE_KS,
                       C: float = 1.0, n_resamples: int = 1000, seed: int = 0
                       ) -> list[dict[str, Any]]:
    """One row per k (ks above the number of features are dropped): ``k``, held-out metrics
    (``heldout_row``) and the chosen ``features``."""
    from probing.probes.estimators import LogisticProbe

    x = np.asarray(x, dtype=np.float64)
    y_arr = check_labels(x, y)
    ks = sorted({int(k) for k in ks if 1 <= int(k) <= x.shape[1]})
    if not ks:
        raise LirefError(f"no usable k for sparse probes on {x.shape[1]} features")
    rows = []
    for k in ks:
        sel = select_by_mean_diff(x[train], y_arr[train], k)
        probe = LogisticProbe(C=C).fit(x[train][:, sel], y_arr[train])
        scores = probe.decision_function(x[test][:, sel])
        rows.append({"k": k, **heldout_row(y_arr[test], scores, n_resamples, seed),
                     "features": sel.tolist()})
    return rows


def sparse_probe_table(latents: torch.Tensor, neurons: torch.Tensor, y: np.ndarray,
                       train: np.ndarray, test: np.ndarray, texts: Sequence[str],
                       direction: torch.Tensor | None = None, ks: Sequence[int] = SPARSE_KS,
                       C: float = 1.0, n_resamples: int = 1000, seed: int = 0
                       ) -> list[dict[str, Any]]:
    """Sparse-probe curves on ``latents`` ``[N, d_sae]`` and ``neurons`` ``[N, d]``, plus
    reference rows: ``dense`` (logistic probe on all neurons), ``diffmean`` (diff-in-means
    refitted on the training split, projected), ``liref`` (the given direction, unfitted;
    when ``direction`` is given) and ``bow`` (bag-of-words control on ``texts``).

    Every row: ``features`` kind, ``k`` (null for the reference rows), held-out metrics.
    """
    from probing.probes.controls import bow_scores
    from probing.probes.estimators import DiffMeanProbe, LogisticProbe

    y = check_labels(neurons, y)
    rows: list[dict[str, Any]] = []
    for kind, x in (("latents", latents), ("neurons", neurons)):
        for row in sparse_probe_curve(x, y, train, test, ks, C, n_resamples, seed):
            rows.append({"kind": kind, **row})
    xn = neurons.double().numpy()
    refs: list[tuple[str, np.ndarray]] = [
        ("dense", LogisticProbe(C=C).fit(xn[train], y[train]).decision_function(xn[test])),
        ("diffmean", DiffMeanProbe().fit(xn[train], y[train]).decision_function(xn[test])),
    ]
    if direction is not None:
        r = direction.double().numpy()
        proj = xn @ (r / np.linalg.norm(r))
        mid = (proj[train][y[train] == 1].mean() + proj[train][y[train] == 0].mean()) / 2
        cut = mid + balanced_threshold(y[train], proj[train] - mid)  # as every probe's
        refs.append(("liref", proj[test] - cut))
    texts = list(texts)
    refs.append(("bow", bow_scores([texts[i] for i in train], y[train],
                                   [texts[i] for i in test])))
    for kind, scores in refs:
        rows.append({"kind": kind, "k": None, **heldout_row(y[test], scores, n_resamples,
                                                            seed), "features": None})
    return rows
