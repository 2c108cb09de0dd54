"""Paired comparison of steered runs with the unsteered run on the same items.

Per setting: accuracy with a 95% bootstrap interval, the paired difference to the unsteered run
(bootstrap over items, resampled once for both runs), the exact McNemar test, per-item flips
(wrong -> right = up, right -> wrong = down), parse failures, output length, and the same
mean / difference / interval for every continuous score (margins, log-probabilities) and rate.
All intervals come from ``probing.stats``; every column of one item set shares one resample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from probing.errors import LirefError
from probing.stats import (
    CONFIDENCE,
    N_RESAMPLES,
    benjamini_hochberg,
    bootstrap_means,
    mcnemar_exact,
    percentile_interval,
)

__all__ = ["add_q_values", "compare_settings"]


def _mean_columns(values: np.ndarray, baseline: int, n_resamples: int, seed: int,
                  confidence: float) -> list[dict[str, float]]:
    """Per setting (rows of ``values [S, N]``): mean, interval, difference to ``baseline`` and
    its paired interval."""
    s, _ = values.shape
    diffs = values - values[baseline]
    boot = bootstrap_means(np.concatenate([values, diffs]).T, n_resamples, seed)  # [R, 2S]
    out = []
    for j in range(s):
        lo, hi = percentile_interval(boot[:, j], confidence)
        dlo, dhi = percentile_interval(boot[:, s + j], confidence)
        out.append({"mean": float(values[j].mean()), "ci_low": lo, "ci_high": hi,
                    "diff": float(diffs[j].mean()), "diff_ci_low": dlo, "diff_ci_high": dhi})
    return out


def compare_settings(
    correct: np.ndarray,
    baseline: int = 0,
    scores: Mapping[str, np.ndarray] | None = None,
    parse_failed: np.ndarray | None = None,
    length: np.ndarray | None = None,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
) -> list[dict[str, Any]]:
    """One row of statistics per setting.

    Args:
        correct: ``[S, N]`` 0/1 outcomes of S settings on the same N items.
        baseline: the row of the unsteered run.
        scores: ``{name: [S, N]}`` further per-item numbers (a margin, a log-probability, a 0/1
            rate); each gets ``name``, ``name_ci_low/high``, ``name_diff``, ``name_diff_ci_low/
            high`` (0/1 rates also ``name_p_value``, McNemar).
        parse_failed: ``[S, N]`` bool, counted per setting; ``length``: ``[S, N]`` output lengths.

    Returns:
        ``[{"n", "accuracy", "ci_low", "ci_high", "diff", "diff_ci_low", "diff_ci_high",
        "p_value", "flips_up", "flips_down", "parse_failures", "mean_length", ...}]``.
    """
    c = np.asarray(correct, dtype=bool)
    if c.ndim != 2 or c.shape[1] == 0:
        raise LirefError(f"outcomes must be [settings, items] with items > 0, got {c.shape}")
    if not 0 <= baseline < c.shape[0]:
        raise LirefError(f"baseline row {baseline} is not among {c.shape[0]} settings")
    rows: list[dict[str, Any]] = []
    acc = _mean_columns(c.astype(np.float64), baseline, n_resamples, seed, confidence)
    for j in range(c.shape[0]):
        test = mcnemar_exact(c[baseline], c[j])
        rows.append({"n": int(c.shape[1]), "accuracy": acc[j]["mean"],
                     "ci_low": acc[j]["ci_low"], "ci_high": acc[j]["ci_high"],
                     "diff": acc[j]["diff"], "diff_ci_low": acc[j]["diff_ci_low"],
                     "diff_ci_high": acc[j]["diff_ci_high"], **test,
                     "parse_failures": int(np.asarray(parse_failed[j]).sum())
                     if parse_failed is not None else 0,
                     "mean_length": float(np.asarray(length[j], dtype=np.float64).mean())
                     if length is not None else float("nan")})
    for name, values in (scores or {}).items():
        v = np.asarray(values)
        if v.shape != c.shape:
            raise LirefError(f"score {name!r} has shape {v.shape}, outcomes {c.shape}")
        binary = v.dtype == bool
        stats = _mean_columns(v.astype(np.float64), baseline, n_resamples, seed, confidence)
        for j, st in enumerate(stats):
            rows[j].update({name: st["mean"], f"{name}_ci_low": st["ci_low"],
                            f"{name}_ci_high": st["ci_high"], f"{name}_diff": st["diff"],
                            f"{name}_diff_ci_low": st["diff_ci_low"],
                            f"{name}_diff_ci_high": st["diff_ci_high"]})
            if binary:
                rows[j][f"{name}_p_value"] = mcnemar_exact(v[baseline], v[j])["p_value"]
    return rows


def add_q_values(rows: Sequence[dict[str, Any]], key: str = "p_value",
                 skip: Sequence[bool] | None = None) -> None:
    """Benjamini-Hochberg q-values of ``row[key]`` over the rows (in place, as ``q_value``);
    rows flagged in ``skip`` (the unsteered runs) get none."""
    use = [i for i, r in enumerate(rows) if not (skip and skip[i]) and key in r]
    q = benjamini_hochberg([rows[i][key] for i in use])
    for i, value in zip(use, q, strict=True):
        rows[i]["q_value"] = float(value)
