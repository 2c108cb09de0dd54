"""Statistics shared by every stage: AUROC, seeded percentile bootstrap intervals, paired tests,
effect sizes and false-discovery-rate control.

Conventions: labels ``y`` are 0/1 (1 = reasoning), scores are real (higher = reasoning);
intervals are two-sided percentile intervals at ``confidence`` (default 0.95) from
``n_resamples`` seeded resamples. Classification metrics are bootstrapped *stratified* (each
class resampled within itself), so every resample holds both classes and its AUROC is defined.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from probing.errors import LirefError

__all__ = [
    "CONFIDENCE",
    "N_RESAMPLES",
    "accuracy_with_ci",
    "auroc",
    "auroc_with_ci",
    "balanced_accuracy_with_ci",
    "balanced_threshold",
    "benjamini_hochberg",
    "bootstrap_auroc",
    "bootstrap_ci",
    "bootstrap_mean",
    "bootstrap_means",
    "cohens_d",
    "mcnemar_exact",
    "paired_bootstrap_diff",
    "percentile_interval",
]

N_RESAMPLES = 1000
CONFIDENCE = 0.95


def _binary(y: Sequence[int] | np.ndarray) -> np.ndarray:
    y = np.asarray(y).astype(np.int64).reshape(-1)
    if y.size == 0:
        raise LirefError("no labels: cannot compute a classification metric on empty data")
    if not set(np.unique(y).tolist()) <= {0, 1}:
        raise LirefError(f"labels must be 0/1, got values {sorted(set(y.tolist()))}")
    return y


def _pair_kernel(s1: np.ndarray, s0: np.ndarray) -> np.ndarray:
    """``K[i, j] = 1[s1_i > s0_j] + 0.5 * 1[s1_i == s0_j]``, ``[n1, n0]`` float64."""
    return (s1[:, None] > s0[None, :]) + 0.5 * (s1[:, None] == s0[None, :])


def auroc(y: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` ``[N]`` for labels ``y`` ``[N]`` (ties count one
    half; ``sklearn.metrics.roc_auc_score``); NaN when only one class is present."""
    from sklearn.metrics import roc_auc_score

    y = _binary(y)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size != y.size:
        raise LirefError(f"{y.size} labels but {s.size} scores")
    if np.unique(y).size < 2:
        return float("nan")
    return float(roc_auc_score(y, s))


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Two-sided percentile interval of bootstrap ``samples`` (NaNs ignored)."""
    if not 0.0 < confidence < 1.0:
        raise LirefError(f"confidence must be in (0, 1), got {confidence}")
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(samples, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def _counts(rng: np.random.Generator, n: int, n_resamples: int) -> np.ndarray:
    """``[n_resamples, n]`` multiplicities of a resample with replacement of ``n`` items."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)


def bootstrap_auroc(y: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                    n_resamples: int = N_RESAMPLES, seed: int = 0) -> np.ndarray:
    """``[n_resamples]`` AUROCs of stratified resamples (vectorised through the pair kernel:
    ``AUROC_b = w1_b^T K w0_b / (n1 n0)`` with multinomial weights ``w``)."""
    # stratified (each class resampled within itself): every resample keeps both classes, so its
    # AUROC is defined; the pair kernel scores all resamples in one einsum instead of one
    # roc_auc_score call per resample (1000 calls would dominate a per-layer evaluation)
    y = _binary(y)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    s1, s0 = s[y == 1], s[y == 0]
    if s1.size == 0 or s0.size == 0:
        return np.full(n_resamples, np.nan)
    rng = np.random.default_rng(seed)
    kernel = _pair_kernel(s1, s0)
    w1, w0 = _counts(rng, s1.size, n_resamples), _counts(rng, s0.size, n_resamples)
    return np.einsum("bi,ij,bj->b", w1, kernel, w0) / (s1.size * s0.size)


def bootstrap_mean(values: Sequence[float] | np.ndarray, n_resamples: int = N_RESAMPLES,
                   seed: int = 0, strata: Sequence[int] | np.ndarray | None = None
                   ) -> np.ndarray:
    """``[n_resamples]`` means of resamples of ``values`` (within each stratum when given)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise LirefError("no values to bootstrap")
    rng = np.random.default_rng(seed)
    if strata is None:
        return _counts(rng, v.size, n_resamples) @ v / v.size
    strata = np.asarray(strata).reshape(-1)
    if strata.size != v.size:
        raise LirefError(f"{v.size} values but {strata.size} strata labels")
    total = np.zeros(n_resamples)
    for s in np.unique(strata):
        part = v[strata == s]
        total += _counts(rng, part.size, n_resamples) @ part
    return total / v.size


def bootstrap_means(values: np.ndarray, n_resamples: int = N_RESAMPLES, seed: int = 0,
                    ) -> np.ndarray:
    """``[n_resamples, M]`` column means of resamples of the rows of ``values`` ``[N, M]``: one
    resample of the N items shared by all M columns (paired across columns); column ``j`` equals
    ``bootstrap_mean(values[:, j], n_resamples, seed)``."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[0] == 0:
        raise LirefError(f"bootstrap_means needs a non-empty [N, M] array, got shape {v.shape}")
    rng = np.random.default_rng(seed)
    return _counts(rng, v.shape[0], n_resamples) @ v / v.shape[0]


def bootstrap_ci(statistic: Callable[..., float], arrays: Sequence[np.ndarray],
                 n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0,
                 strata: Sequence[int] | np.ndarray | None = None) -> tuple[float, float]:
    """Percentile interval of ``statistic(*resampled arrays)``; rows of ``arrays`` (all of one
    length) are resampled together, within each stratum when ``strata`` is given."""
    arrays = [np.asarray(a) for a in arrays]
    n = len(arrays[0])
    if n == 0 or any(len(a) != n for a in arrays):
        raise LirefError(f"bootstrap arrays must be non-empty and of one length, got "
                         f"{[len(a) for a in arrays]}")
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if strata is None else [
        np.flatnonzero(np.asarray(strata) == s) for s in np.unique(strata)]
    samples = np.empty(n_resamples)
    for b in range(n_resamples):
        idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        samples[b] = statistic(*(a[idx] for a in arrays))
    return percentile_interval(samples, confidence)


def auroc_with_ci(y: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                  n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE, seed: int = 0,
                  ) -> tuple[float, float, float]:
    """``(auroc, ci_low, ci_high)`` with a stratified bootstrap interval."""
    value = auroc(y, scores)
    lo, hi = percentile_interval(bootstrap_auroc(y, scores, n_resamples, seed), confidence)
    return value, lo, hi


def accuracy_with_ci(correct: Sequence[bool] | np.ndarray, n_resamples: int = N_RESAMPLES,
                     confidence: float = CONFIDENCE, seed: int = 0,
                     strata: Sequence[int] | np.ndarray | None = None
                     ) -> tuple[float, float, float]:
    """``(accuracy, ci_low, ci_high)`` of per-item 0/1 outcomes (stratified when given)."""
    c = np.asarray(correct, dtype=np.float64).reshape(-1)
    if c.size == 0:
        raise LirefError("no items: cannot compute an accuracy")
    lo, hi = percentile_interval(bootstrap_mean(c, n_resamples, seed, strata), confidence)
    return float(c.mean()), lo, hi


def balanced_accuracy_with_ci(y: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray,
                              n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                              seed: int = 0) -> tuple[float, float, float]:
    """``(balanced accuracy, ci_low, ci_high)`` of 0/1 predictions ``[N]`` for labels ``y``
    ``[N]``: the mean of the per-class recalls (``sklearn.metrics.balanced_accuracy_score``),
    with a stratified bootstrap interval (the resamples ``accuracy_with_ci`` draws for the
    same ``seed``)."""
    from sklearn.metrics import balanced_accuracy_score

    y = _binary(y)
    pred = np.asarray(predicted).astype(np.int64).reshape(-1)
    if pred.size != y.size:
        raise LirefError(f"{y.size} labels but {pred.size} predictions")
    classes, counts = np.unique(y, return_counts=True)
    value = float(balanced_accuracy_score(y, pred)) if classes.size == 2 else float(
        (pred == y).mean())
    # each item weighted N / (n_classes * n_its_class): the plain mean of the weighted outcomes
    # is the balanced accuracy, and a stratified resample keeps every class's size
    weight = y.size / (classes.size * counts[np.searchsorted(classes, y)])
    samples = bootstrap_mean((pred == y) * weight, n_resamples, seed, strata=y)
    lo, hi = percentile_interval(samples, confidence)
    return value, lo, hi


def balanced_threshold(y: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray,
                       default: float = 0.0) -> float:
    """The decision threshold (``score > t`` = class 1) with the highest balanced accuracy
    (equivalently Youden's J = TPR - FPR, from ``sklearn.metrics.roc_curve``) on ``scores``
    ``[N]`` for labels ``y`` ``[N]`` (the data a probe was fitted on).

    ``default`` (the classifier's own threshold) is kept when it is among the best; otherwise
    the best cut nearest to it, halfway between two neighbouring scores. One class only, or no
    cut better than chance: ``default``.
    """
    from sklearn.metrics import roc_curve

    y = _binary(y)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size != y.size:
        raise LirefError(f"{y.size} labels but {s.size} scores")
    if np.unique(y).size < 2:
        return float(default)
    # thresholds descending (the first is +inf); "s >= thr[i]" gives (fpr[i], tpr[i])
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    j = tpr - fpr
    best = j.max()
    above = s > default
    j_default = above[y == 1].mean() - above[y == 0].mean()
    if best <= 0 or j_default >= best - 1e-12:
        return float(default)
    idx = np.flatnonzero(j >= best - 1e-12)
    idx = idx[(idx > 0) & (idx < thr.size - 1)]  # not "all one class"
    cuts = (thr[idx] + thr[idx + 1]) / 2.0  # between this score and the next lower one
    return float(cuts[np.argmin(np.abs(cuts - default))])


def paired_bootstrap_diff(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                          n_resamples: int = N_RESAMPLES, confidence: float = CONFIDENCE,
                          seed: int = 0) -> tuple[float, float, float]:
    """``(mean(b - a), ci_low, ci_high)``: items resampled once for both conditions (paired)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.size != b.size or a.size == 0:
        raise LirefError(f"paired outcomes need equal, non-zero lengths; got {a.size} and {b.size}")
    d = b - a
    lo, hi = percentile_interval(bootstrap_mean(d, n_resamples, seed), confidence)
    return float(d.mean()), lo, hi


def mcnemar_exact(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray
                  ) -> dict[str, Any]:
    """Exact (binomial) McNemar test of paired 0/1 outcomes ``a`` ``[N]`` (e.g. unsteered) and
    ``b`` ``[N]``.

    Returns ``{"p_value", "flips_up" (a wrong -> b right), "flips_down" (a right -> b wrong)}``;
    the p-value is the two-sided ``scipy.stats.binomtest`` of ``flips_up`` out of
    ``flips_up + flips_down`` at 1/2 (1 when nothing flips).
    """
    from scipy.stats import binomtest

    a = np.asarray(a, dtype=bool).reshape(-1)
    b = np.asarray(b, dtype=bool).reshape(-1)
    if a.size != b.size:
        raise LirefError(f"paired outcomes need equal lengths; got {a.size} and {b.size}")
    up = int((~a & b).sum())
    down = int((a & ~b).sum())
    p = 1.0 if up + down == 0 else float(binomtest(up, up + down, 0.5).pvalue)
    return {"p_value": p, "flips_up": up, "flips_down": down}


def cohens_d(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """``(mean(x) - mean(y)) / pooled std`` (ddof 1); 0 when both groups are constant and
    equal, +-inf when constant and different."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.size < 2 or y.size < 2:
        raise LirefError(f"Cohen's d needs >= 2 values per group, got {x.size} and {y.size}")
    diff = x.mean() - y.mean()
    pooled = np.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1))
                     / (x.size + y.size - 2))
    if pooled == 0:
        return 0.0 if diff == 0 else float(np.sign(diff) * np.inf)
    return float(diff / pooled)


def benjamini_hochberg(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) ``[M]``, same order as the input ``[M]``
    (``scipy.stats.false_discovery_control``)."""
    from scipy.stats import false_discovery_control

    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    if p.size == 0:
        return p
    if not np.all((p >= 0) & (p <= 1)):
        raise LirefError(f"p-values must lie in [0, 1] (no NaN); got {p[~((p >= 0) & (p <= 1))]}")
    return np.asarray(false_discovery_control(p, method="bh"), dtype=np.float64)
