"""k-sparse probes on SAE latents and on residual neurons, beside the dense probe, the LiReF
projection and the bag-of-words control.

liref's variant (``sparse_probe_table``), at the probe's position: for each k, the k features with the largest absolute class-mean difference on the training
split are chosen, a logistic probe (``probing.probes.estimators.LogisticProbe``, standardised
features) is fitted on them, and held-out accuracy and AUROC are reported with 95% stratified
bootstrap intervals (``probing.stats``). Labels: 1 = reasoning, 0 = memory.

It reads one position (the last token by default), standardises and uses more k values, so
its figures cannot be put beside SAEBench's; ``saebench_sparse_probes`` follows SAEBench's
protocol (``sae_bench/evals/sparse_probing``: k = 1, 2, 5 on features mean-pooled over the
prompt) for that comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from probing.errors import LirefError
from probing.probes.directions import check_labels
from probing.stats import accuracy_with_ci, auroc_with_ci, balanced_threshold

__all__ = ["SAEBENCH_KS", "SAEBENCH_PROTOCOL", "SPARSE_KS", "heldout_row",
           "saebench_pool_exclude", "saebench_sparse_probes", "select_by_mean_diff",
           "sparse_probe_curve", "sparse_probe_table"]

SPARSE_KS: tuple[int, ...] = (1, 2, 5, 10, 20, 50)
#: SAEBench's ``SparseProbingEvalConfig.k_values``
SAEBENCH_KS: tuple[int, ...] = (1, 2, 5)
#: what ``saebench_sparse_probes`` does, recorded beside its figures
SAEBENCH_PROTOCOL: dict[str, Any] = {
    "source": "SAEBench sae_bench/evals/sparse_probing (main.py, probe_training.py)",
    "pooling": "mean over the prompt's tokens at the SAE's layer, padding/BOS/EOS ids masked; "
               "latents: each token encoded, then averaged",
    "selection": "top k by |mean(reasoning) - mean(memory)| on the training part",
    "estimator": "sklearn LogisticRegression(penalty='l2', C=1.0, max_iter=1000), float32 "
                 "features, no standardisation",
    "accuracy": "predict() on the held-out part (decision > 0)",
    "differences": "no class-balancing subsample (liref's grouped split; balanced_accuracy "
                   "reported); one binary task; prompts not truncated to 128 tokens",
}


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


def saebench_pool_exclude(tokenizer: Any) -> list[int]:
    """Token ids SAEBench masks before mean-pooling (``get_bos_pad_eos_mask``): the
    tokenizer's BOS, EOS and PAD ids (those it has)."""
    ids = (getattr(tokenizer, name, None) for name in ("bos_token_id", "eos_token_id",
                                                        "pad_token_id"))
    return sorted({int(i) for i in ids if i is not None})


def _saebench_curve(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray,
                    ks: Sequence[int], n_resamples: int, seed: int) -> list[dict[str, Any]]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    rows = []
    for k in ks:
        sel = select_by_mean_diff(x[train], y[train], k)
        probe = LogisticRegression(C=1.0, max_iter=1000)  # L2, as SAEBench's penalty="l2"
        probe.fit(x[train][:, sel], y[train])
        scores = probe.decision_function(x[test][:, sel])
        rows.append({"k": k, **heldout_row(y[test], scores, n_resamples, seed),
                     "balanced_accuracy": float(balanced_accuracy_score(
                         y[test], probe.predict(x[test][:, sel]))),
                     "selected": sel.tolist()})
    return rows


def saebench_sparse_probes(latents_mean: torch.Tensor | np.ndarray,
                           neurons_mean: torch.Tensor | np.ndarray,
                           y: Sequence[int] | np.ndarray, train: np.ndarray, test: np.ndarray,
                           ks: Sequence[int] = SAEBENCH_KS, n_resamples: int = 1000,
                           seed: int = 0) -> dict[str, Any]:
    """k-sparse probes by SAEBench's protocol on mean-pooled ``latents_mean`` ``[N, d_sae]``
    and ``neurons_mean`` ``[N, d]`` (pooling: ``encode_questions(pool_exclude=...)``).

    As SAEBench (``get_top_k_mean_diff_mask``, ``train_sklearn_probe``): the k features with
    the largest ``|mean diff|`` on the training part, raw (unstandardised) float32 features,
    ``LogisticRegression(C=1, max_iter=1000)``, accuracy of ``predict`` on the held-out part.
    Where liref differs (see ``SAEBENCH_PROTOCOL["differences"]``): SAEBench subsamples each
    class to equal size; here the training and held-out parts are liref's grouped split,
    shared with every other figure, kept whole (no items dropped, no extra seed), so
    ``balanced_accuracy`` is added for comparison with SAEBench's balanced test sets, and
    AUROC and 95% bootstrap intervals (``heldout_row``) as for liref's other probes.

    Returns:
        ``{"latents": rows, "neurons": rows, "protocol": {...}}``; a row: ``k``, ``accuracy``
        (``_lo``/``_hi``), ``auroc`` (``_lo``/``_hi``), ``balanced_accuracy``, ``selected``
        (feature indices). ks above a side's width are dropped.
    """
    out: dict[str, Any] = {}
    for kind, feats in (("latents", latents_mean), ("neurons", neurons_mean)):
        x = np.asarray(feats, dtype=np.float32)
        y_arr = check_labels(x, y)
        use = sorted({int(k) for k in ks if 1 <= int(k) <= x.shape[1]})
        if not use:
            raise LirefError(f"no usable k in {list(ks)} for SAEBench sparse probes on "
                             f"{x.shape[1]} {kind}")
        out[kind] = _saebench_curve(x, y_arr, np.asarray(train), np.asarray(test), use,
                                    n_resamples, seed)
    out["protocol"] = {**SAEBENCH_PROTOCOL, "ks": [int(k) for k in ks]}
    return out
