"""Held-out evaluation of probes per layer: accuracy, AUROC, direction agreement, transfer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split

from probing.errors import LirefError
from probing.probes.directions import check_labels
from probing.probes.estimators import Probe, make_probe

__all__ = ["evaluate_layers", "evaluate_probe", "heldout_splits", "transfer_metrics"]


def heldout_splits(y: np.ndarray, test_size: float = 0.25, k_folds: int | None = None,
                   seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified (train_idx, test_idx) pairs: one split, or ``k_folds`` folds."""
    idx = np.arange(len(y))
    if k_folds is not None:
        if k_folds < 2:
            raise LirefError(f"k_folds must be >= 2 or null, got {k_folds}")
        if np.bincount(y).min() < k_folds:
            raise LirefError(f"k_folds={k_folds} needs at least {k_folds} examples per class; "
                             f"class counts are {np.bincount(y).tolist()}")
        skf = StratifiedKFold(n_splits=k_folds, shuffle=True, random_state=seed)
        return list(skf.split(idx, y))
    if not 0.0 < test_size < 1.0:
        raise LirefError(f"test_size must be in (0, 1), got {test_size}")
    if np.bincount(y).min() < 2:
        raise LirefError(f"too few examples for a held-out split: class counts "
                         f"{np.bincount(y).tolist()} (need >= 2 per class)")
    tr, te = train_test_split(idx, test_size=test_size, stratify=y, random_state=seed)
    return [(np.sort(tr), np.sort(te))]


def evaluate_probe(probe: Probe, x: np.ndarray | torch.Tensor, y: np.ndarray) -> dict[str, float]:
    """Accuracy and AUROC of a fitted probe on ``x`` ``[N, d]``, ``y`` ``[N]``."""
    y = np.asarray(y)
    scores = probe.decision_function(x)
    acc = float(((scores > 0).astype(int) == y).mean())
    auroc = float(roc_auc_score(y, scores)) if len(set(y.tolist())) == 2 else float("nan")
    return {"accuracy": acc, "auroc": auroc}


def evaluate_layers(
    acts: torch.Tensor,
    y: Sequence[int] | np.ndarray,
    layers: Sequence[int],
    kind: str = "diffmean",
    params: Mapping[str, Any] | None = None,
    test_size: float = 0.25,
    k_folds: int | None = None,
    seed: int = 0,
    compare_logistic: bool = True,
) -> list[dict[str, float]]:
    """Fit a probe per layer on training folds and score it on held-out folds.

    Args:
        acts: ``[N, len(layers), d]`` activations. y: ``[N]`` (1 reasoning, 0 memory).

    Returns:
        one dict per layer: ``layer``, held-out ``accuracy`` / ``auroc`` (mean over folds),
        ``train_accuracy`` and, with ``compare_logistic``, ``cos_logistic_diffmean`` (cosine of
        the logistic and diff-in-means directions fitted on the same training data).
    """
    y_arr = check_labels(acts, y)
    if acts.shape[1] != len(layers):
        raise LirefError(f"activations hold {acts.shape[1]} layers but {len(layers)} were named")
    splits = heldout_splits(y_arr, test_size, k_folds, seed)
    rows = []
    for j, layer in enumerate(layers):
        x = acts[:, j].to(torch.float64).numpy()
        folds = []
        for tr, te in splits:
            probe = make_probe(kind, **dict(params or {})).fit(x[tr], y_arr[tr])
            m = evaluate_probe(probe, x[te], y_arr[te])
            m["train_accuracy"] = probe.score(x[tr], y_arr[tr])
            if compare_logistic:
                dm = make_probe("diffmean").fit(x[tr], y_arr[tr]).direction
                lg = make_probe("logistic").fit(x[tr], y_arr[tr]).direction
                m["cos_logistic_diffmean"] = float(dm @ lg)
            folds.append(m)
        row: dict[str, float] = {"layer": layer}
        for key in folds[0]:
            row[key] = float(np.mean([f[key] for f in folds]))
        rows.append(row)
    return rows


def transfer_metrics(probe: Probe, x: np.ndarray | torch.Tensor, y: Sequence[int] | np.ndarray,
                     ) -> dict[str, float]:
    """Score a probe fitted on one question set on another (both classes must be present)."""
    y_arr = check_labels(x, y)
    return evaluate_probe(probe, x, y_arr)
