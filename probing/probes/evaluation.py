"""Held-out evaluation of probes per layer, with an unbiased layer choice and controls.

Protocol (the house rule: choices on training/validation data, figures on held-out data):

- ``holdout`` (default): one grouped, stratified split into train / validation / test. Every
  layer's probe is fitted on train; the layer is chosen by its *validation* score; every figure
  reported (per layer and ``best``) is a *test* figure with a 95% bootstrap interval.
- ``nested k-fold`` (``k_folds`` set): grouped stratified outer folds; inside each outer
  training part a grouped train/validation split chooses the layer; every layer's probe is
  refitted on the whole outer training part and scored on the outer test fold. Per-layer figures
  and ``best`` (the fold-chosen layers' predictions) pool the out-of-fold predictions.

Splits are grouped by ``Question.group`` (paraphrases, duplicates, one fact or computation never
straddle two parts). Controls, fitted on the same training items: a bag-of-words logistic
regression on the prompt text, a logistic probe on the mean input embedding and a logistic
regression on format covariates (``probing.probes.controls``); ``selectivity`` = probe AUROC -
the strongest control's AUROC (``selectivity_bow``: minus the bag-of-words AUROC). With format
covariates, a *residualised* probe too: the same probe kind refitted on activations with the
covariates regressed out (fitted on the training part), ``residualised_auroc`` per layer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from probing.errors import LirefError
from probing.probes.controls import bow_scores, embedding_scores, format_scores, residualise
from probing.probes.directions import check_labels, select_layer
from probing.probes.estimators import Probe, make_probe
from probing.stats import (
    N_RESAMPLES,
    accuracy_with_ci,
    auroc_with_ci,
    balanced_accuracy_with_ci,
)

__all__ = [
    "CONTROL_KEYS",
    "LayerEvaluation",
    "Split",
    "evaluate_layers",
    "evaluate_probe",
    "grouped_folds",
    "grouped_split",
    "score_metrics",
    "selectivities",
    "transfer_metrics",
]

#: the control figures written beside every probe result
CONTROL_KEYS = ("bow", "embedding", "format", "surface")
#: residualised-AUROC key prefix per covariate set (``surface``: the format covariates without
#: the source / category one-hots, informative where those determine the label)
RESIDUALISED = {"format": "residualised_", "surface": "residualised_surface_"}


@dataclass(frozen=True)
class Split:
    """Item indices of the three parts (sorted, disjoint, no group in two parts)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def to_dict(self) -> dict[str, list[int]]:
        return {k: getattr(self, k).tolist() for k in ("train", "val", "test")}


def _groups(n: int, groups: Sequence[Any] | np.ndarray | None) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    g = np.asarray(groups)
    if g.shape[0] != n:
        raise LirefError(f"{n} items but {g.shape[0]} group labels")
    return np.unique(g, return_inverse=True)[1]


def grouped_split(y: Sequence[int] | np.ndarray, groups: Sequence[Any] | np.ndarray | None = None,
                  val_size: float = 0.2, test_size: float = 0.25, seed: int = 0) -> Split:
    """A grouped, stratified train / validation / test split.

    Groups are labelled by their majority label and dealt, in a seeded random order per label,
    to test until ``test_size`` of that label's items are there, then to validation, then to
    train. ``val_size`` or ``test_size`` may be 0 (that part is empty).

    Raises:
        LirefError: a size outside [0, 1), or a label with too few groups to give every
            non-empty part at least one group.
    """
    y = np.asarray(y).astype(np.int64).reshape(-1)
    for name, size in (("val_size", val_size), ("test_size", test_size)):
        if not 0.0 <= size < 1.0:
            raise LirefError(f"{name} must be in [0, 1), got {size}")
    if val_size + test_size >= 1.0:
        raise LirefError(f"val_size + test_size must be < 1, got {val_size} + {test_size}")
    gid = _groups(len(y), groups)
    sizes = np.bincount(gid)
    glabel = (2 * np.bincount(gid, weights=y) >= sizes).astype(np.int64)
    rng = np.random.default_rng(seed)
    part = np.zeros(len(sizes), dtype=np.int64)  # 0 train, 1 val, 2 test
    needed = 1 + (val_size > 0) + (test_size > 0)
    for label in (0, 1):
        members = np.flatnonzero(glabel == label)
        if len(members) < needed:
            name = "reasoning" if label else "memory"
            raise LirefError(
                f"too few {name} items for a held-out split: {len(members)} group(s) of "
                f"{name} questions, need at least {needed} (train"
                f"{', validation' if val_size > 0 else ''}{', test' if test_size > 0 else ''})")
        rng.shuffle(members)
        total = sizes[members].sum()
        done = {2: 0, 1: 0}
        targets = {2: test_size * total, 1: val_size * total}
        for g in members:
            for which in (2, 1):
                if done[which] < targets[which]:
                    part[g] = which
                    done[which] += sizes[g]
                    break
        # every non-empty part and train get at least one group of this label
        for which in [p for p in (2, 1) if targets[p] > 0] + [0]:
            if not np.any(part[members] == which):
                donor = max((p for p in (0, 1, 2) if np.sum(part[members] == p) > 1),
                            key=lambda p: np.sum(part[members] == p))
                part[members[np.flatnonzero(part[members] == donor)[0]]] = which
    item_part = part[gid]
    return Split(*(np.flatnonzero(item_part == p) for p in (0, 1, 2)))


def grouped_folds(y: Sequence[int] | np.ndarray, groups: Sequence[Any] | np.ndarray | None,
                  k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` grouped, stratified ``(train_idx, test_idx)`` folds (sklearn StratifiedGroupKFold)."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y).astype(np.int64).reshape(-1)
    if k < 2:
        raise LirefError(f"k_folds must be >= 2 or null, got {k}")
    gid = _groups(len(y), groups)
    for label in (0, 1):
        n_groups = len(np.unique(gid[y == label]))
        if n_groups < k:
            name = "reasoning" if label else "memory"
            raise LirefError(f"k_folds={k} needs at least {k} groups of {name} questions; "
                             f"there are {n_groups}")
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(te)) for tr, te in folds.split(np.zeros(len(y)), y, gid)]


def score_metrics(y: np.ndarray, scores: np.ndarray, n_resamples: int = N_RESAMPLES,
                  seed: int = 0) -> dict[str, float]:
    """Accuracy and balanced accuracy (``scores > 0`` = reasoning; the mean of the two classes'
    recalls) and AUROC of ``scores`` ``[N]`` for ``y`` ``[N]``, with 95% stratified bootstrap
    intervals: ``accuracy``, ``accuracy_ci_low``, ``accuracy_ci_high``, ``balanced_accuracy``,
    ``balanced_accuracy_ci_low``, ..., ``auroc``, ``auroc_ci_low``, ..."""
    y = np.asarray(y).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    pred = (scores > 0).astype(np.int64)
    acc, acc_lo, acc_hi = accuracy_with_ci(pred == y, n_resamples, seed=seed, strata=y)
    bal, bal_lo, bal_hi = balanced_accuracy_with_ci(y, pred, n_resamples, seed=seed)
    auc, auc_lo, auc_hi = auroc_with_ci(y, scores, n_resamples, seed=seed)
    return {"accuracy": acc, "accuracy_ci_low": acc_lo, "accuracy_ci_high": acc_hi,
            "balanced_accuracy": bal, "balanced_accuracy_ci_low": bal_lo,
            "balanced_accuracy_ci_high": bal_hi,
            "auroc": auc, "auroc_ci_low": auc_lo, "auroc_ci_high": auc_hi}


def evaluate_probe(probe: Probe, x: np.ndarray | torch.Tensor, y: np.ndarray,
                   n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """Accuracy, balanced accuracy and AUROC (with 95% intervals) of a fitted probe on ``x``
    ``[N, d]``, ``y`` ``[N]``."""
    return score_metrics(np.asarray(y), probe.decision_function(x), n_resamples, seed)


def transfer_metrics(probe: Probe, x: np.ndarray | torch.Tensor, y: Sequence[int] | np.ndarray,
                     n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict[str, float]:
    """Score a probe fitted on one question set on another (both classes must be present)."""
    y_arr = check_labels(x, y)
    return evaluate_probe(probe, x, y_arr, n_resamples, seed)


@dataclass
class LayerEvaluation:
    """What ``evaluate_layers`` found.

    Attributes:
        rows: one dict per layer: held-out (test) ``accuracy``/``balanced_accuracy``/``auroc``
            with ``_ci_low`` / ``_ci_high``, ``val_accuracy``/``val_auroc`` (what chose the
            layer),
            ``train_accuracy``, ``cos_logistic_diffmean``, ``selectivity`` (minus the
            strongest control), ``selectivity_bow``, ``residualised_auroc`` (+ intervals; the
            probe on format-residualised activations) and the ``control/...`` figures.
        best_layer: the layer chosen on validation data (nested k-fold: the most frequent
            choice over the outer folds).
        best: held-out figures of the chosen layer(s) (``accuracy``, ``balanced_accuracy``,
            ``auroc`` + intervals, ``selectivity``, ``selectivity_bow``,
            ``residualised_auroc`` + intervals).
        controls: ``control/bow_accuracy``, ``control/bow_auroc``, ``control/embedding_...``,
            ``control/format_...`` (+ intervals) on the same held-out items.
        split: ``{"mode", "train", "val", "test"}`` (indices) or the outer folds.
        layer_choices: the layer chosen in each outer fold (holdout: one entry).
        strongest_control: the control with the highest AUROC (``bow``, ``embedding``,
            ``format``), the one ``selectivity`` subtracts; ``None`` without controls.
    """

    rows: list[dict[str, float]]
    best_layer: int
    best: dict[str, float]
    controls: dict[str, float]
    split: dict[str, Any]
    layer_choices: list[int] = field(default_factory=list)
    strongest_control: str | None = None


def _control_scores(controls: Mapping[str, Any], y: np.ndarray, tr: np.ndarray,
                    te: np.ndarray) -> dict[str, np.ndarray]:
    """Held-out decision scores of each available control, fitted on ``tr``."""
    out: dict[str, np.ndarray] = {}
    texts = controls.get("texts")
    if texts is not None:
        texts = list(texts)
        out["bow"] = bow_scores([texts[i] for i in tr], y[tr], [texts[i] for i in te])
    emb = controls.get("embeddings")
    if emb is not None:
        emb = np.asarray(emb, dtype=np.float64)
        out["embedding"] = embedding_scores(emb[tr], y[tr], emb[te])
    for name, z in _covariate_sets(controls).items():
        out[name] = format_scores(z[tr], y[tr], z[te])
    return out


def _covariate_sets(controls: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """``{"format": [N, F]}`` covariates of ``controls`` (none when absent or ``F == 0``) and,
    when some of its columns (``format_names``) are source / category one-hots (``key=value``)
    and some are not, ``"surface"``: the other columns alone (length, digits, numerals,
    options). Where the label is a function of the category, ``format`` is perfect by
    construction and only ``surface`` says whether the surface gives the label away."""
    z = controls.get("format")
    if z is None:
        return {}
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        return {}
    out = {"format": z}
    names = list(controls.get("format_names") or [])
    keep = [j for j, n in enumerate(names) if "=" not in n]
    if len(names) == z.shape[1] and 0 < len(keep) < len(names):
        out["surface"] = z[:, keep]
    return out


def selectivities(auroc: float, controls: Mapping[str, float], prefix: str = "control/",
                  ) -> tuple[dict[str, float], str | None]:
    """``{"selectivity": auroc - the strongest control's AUROC, "selectivity_bow": auroc -
    bag-of-words AUROC}`` (each when its controls exist) and the strongest control's name,
    from ``controls`` ``{f"{prefix}{name}_auroc": value}``."""
    found = {k: controls[f"{prefix}{k}_auroc"] for k in CONTROL_KEYS
             if f"{prefix}{k}_auroc" in controls}
    if not found:
        return {}, None
    strongest = max(found, key=lambda k: found[k])
    out = {"selectivity": auroc - found[strongest]}
    if "bow" in found:
        out["selectivity_bow"] = auroc - found["bow"]
    return out, strongest


def _residualised_scores(x: np.ndarray, y: np.ndarray, z: np.ndarray, fit_idx: np.ndarray,
                         te: np.ndarray, kind: str, params: Mapping[str, Any] | None
                         ) -> np.ndarray:
    """Test scores of the probe refitted on ``x`` with ``z`` regressed out (both fitted on
    ``fit_idx``); zeros (chance) when nothing of the label is left (a zero direction)."""
    xr = residualise(x, z, fit_idx)
    try:
        _, (s,) = _fit_scores(xr, y, fit_idx, [te], kind, params)
    except LirefError:
        return np.zeros(len(te))
    return s


def _control_metrics(scores: Mapping[str, np.ndarray], y_test: np.ndarray, n_resamples: int,
                     seed: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, s in scores.items():
        for key, value in score_metrics(y_test, s, n_resamples, seed).items():
            out[f"control/{name}_{key}"] = value
    return out


def _fit_scores(x: np.ndarray, y: np.ndarray, tr: np.ndarray, parts: Sequence[np.ndarray],
                kind: str, params: Mapping[str, Any] | None) -> tuple[Probe, list[np.ndarray]]:
    probe = make_probe(kind, **dict(params or {})).fit(x[tr], y[tr])
    return probe, [probe.decision_function(x[p]) for p in parts]


def _logistic_agreement(x: np.ndarray, y: np.ndarray, tr: np.ndarray) -> float:
    dm = make_probe("diffmean").fit(x[tr], y[tr]).direction
    lg = make_probe("logistic").fit(x[tr], y[tr]).direction
    return float(dm @ lg)


def _val_metrics(y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from probing.stats import auroc

    return {"accuracy": float(((scores > 0).astype(np.int64) == y).mean()),
            "auroc": auroc(y, scores)}


@dataclass
class EvalConfig:
    """How probes are evaluated (``conf/eval/*.yaml``): grouped held-out split or nested k-fold.

    ``val_size``: share that chooses the layer; ``test_size``: held-out share every reported
    figure comes from; ``k_folds``: nested grouped k-fold instead (the layer chosen inside each
    outer fold); ``select_by``: the validation metric that chooses the layer;
    ``n_resamples``: bootstrap resamples of each 95% interval.
    """

    val_size: float = 0.2
    test_size: float = 0.25
    k_folds: int | None = None
    select_by: str = "auroc"
    n_resamples: int = 1000

    def __post_init__(self) -> None:
        if not (0 < self.val_size < 1 and 0 < self.test_size < 1
                and self.val_size + self.test_size < 1):
            raise LirefError(f"val_size={self.val_size}, test_size={self.test_size}: each in "
                             "(0, 1) and their sum < 1")
        if self.k_folds is not None and self.k_folds < 2:
            raise LirefError(f"k_folds={self.k_folds}; allowed: null or >= 2")
        if self.select_by not in ("auroc", "accuracy"):
            raise LirefError(f"select_by={self.select_by!r}; allowed: auroc, accuracy")


def evaluate_layers(
    acts: torch.Tensor,
    y: Sequence[int] | np.ndarray,
    layers: Sequence[int],
    kind: str = "diffmean",
    params: Mapping[str, Any] | None = None,
    groups: Sequence[Any] | np.ndarray | None = None,
    controls: Mapping[str, Any] | None = None,
    val_size: float = 0.2,
    test_size: float = 0.25,
    k_folds: int | None = None,
    seed: int = 0,
    select_by: str = "auroc",
    n_resamples: int = N_RESAMPLES,
    compare_logistic: bool = True,
) -> LayerEvaluation:
    """Fit a probe per layer on training items; choose the layer on validation items; report
    test figures with 95% intervals, beside the controls.

    Args:
        acts: ``[N, len(layers), d]`` activations. y: ``[N]`` (1 reasoning, 0 memory).
        groups: ``[N]`` group keys (``Question.group``); ``None`` = every item its own group.
        controls: ``{"texts": [N] prompt strings, "embeddings": [N, d] mean input
            embeddings, "format": [N, F] format covariates}``; any may be absent. With
            ``format``, the probe is refitted on residualised activations too.
        val_size, test_size: shares of the holdout split (ignored with ``k_folds``).
        k_folds: nested grouped k-fold instead of one split.
        select_by: validation metric that chooses the layer (``auroc`` or ``accuracy``).
    """
    y_arr = check_labels(acts, y)
    if acts.shape[1] != len(layers):
        raise LirefError(f"activations hold {acts.shape[1]} layers but {len(layers)} were named")
    if select_by not in ("auroc", "accuracy"):
        raise LirefError(f"select_by must be 'auroc' or 'accuracy', got {select_by!r}")
    xs = {layer: acts[:, j].to(torch.float64).numpy() for j, layer in enumerate(layers)}
    controls = dict(controls or {})
    zs = _covariate_sets(controls)
    gid = _groups(len(y_arr), groups)
    if k_folds is None:
        split = grouped_split(y_arr, gid, val_size, test_size, seed)
        folds = [(split.train, split.val, split.test)]
        split_info: dict[str, Any] = {"mode": "holdout", **split.to_dict()}
    else:
        folds = []
        for tr_outer, te in grouped_folds(y_arr, gid, k_folds, seed):
            inner = grouped_split(y_arr[tr_outer], gid[tr_outer], val_size=0.25, test_size=0.0,
                                  seed=seed)
            folds.append((tr_outer[inner.train], tr_outer[inner.val], te))
        split_info = {"mode": "nested_kfold", "k_folds": k_folds,
                      "test_folds": [te.tolist() for _, _, te in folds]}

    test_idx = np.concatenate([te for _, _, te in folds])
    y_test = y_arr[test_idx]
    oof: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    val: dict[int, list[dict[str, float]]] = {layer: [] for layer in layers}
    extra: dict[int, list[dict[str, float]]] = {layer: [] for layer in layers}
    resid = {name: {layer: [] for layer in layers} for name in zs}
    control_parts: dict[str, list[np.ndarray]] = {}
    choices: list[int] = []
    chosen_scores: list[np.ndarray] = []
    chosen_resid: dict[str, list[np.ndarray]] = {name: [] for name in zs}
    for tr, va, te in folds:
        # the layer is chosen by probes fitted on tr and scored on va
        fold_val = {}
        for layer in layers:
            x = xs[layer]
            probe, (s_val,) = _fit_scores(x, y_arr, tr, [va], kind, params)
            fold_val[layer] = _val_metrics(y_arr[va], s_val)
            val[layer].append(fold_val[layer])
            if k_folds is None:  # holdout: the same probe is the evaluated one
                s_test = probe.decision_function(x[te])
                train_acc = probe.score(x[tr], y_arr[tr])
                fit_idx = tr
            else:  # nested: refit on the whole outer training part
                fit_idx = np.sort(np.concatenate([tr, va]))
                probe, (s_test,) = _fit_scores(x, y_arr, fit_idx, [te], kind, params)
                train_acc = probe.score(x[fit_idx], y_arr[fit_idx])
            oof[layer].append(s_test)
            for name, z in zs.items():
                resid[name][layer].append(_residualised_scores(x, y_arr, z, fit_idx, te, kind,
                                                               params))
            row = {"train_accuracy": train_acc}
            if compare_logistic:
                row["cos_logistic_diffmean"] = _logistic_agreement(x, y_arr, fit_idx)
            extra[layer].append(row)
        chosen = select_layer([{"layer": lay, **m} for lay, m in fold_val.items()], select_by)
        choices.append(chosen)
        chosen_scores.append(oof[chosen][-1])
        for name in zs:
            chosen_resid[name].append(resid[name][chosen][-1])
        fit_idx = tr if k_folds is None else np.sort(np.concatenate([tr, va]))
        for name, s in _control_scores(controls, y_arr, fit_idx, te).items():
            control_parts.setdefault(name, []).append(s)

    control_metrics = _control_metrics({k: np.concatenate(v) for k, v in control_parts.items()},
                                       y_test, n_resamples, seed)
    rows: list[dict[str, float]] = []
    for layer in layers:
        row: dict[str, float] = {"layer": layer}
        row.update(score_metrics(y_test, np.concatenate(oof[layer]), n_resamples, seed))
        for key in ("accuracy", "auroc"):
            row[f"val_{key}"] = float(np.mean([v[key] for v in val[layer]]))
        for key in extra[layer][0]:
            row[key] = float(np.mean([e[key] for e in extra[layer]]))
        row.update(selectivities(row["auroc"], control_metrics)[0])
        for name in zs:
            row.update(_residualised_metrics(y_test, resid[name][layer], n_resamples, seed,
                                             RESIDUALISED[name]))
        row.update(control_metrics)
        rows.append(row)
    best_layer = max(set(choices), key=lambda layer: (choices.count(layer), -layer))
    best = score_metrics(y_test, np.concatenate(chosen_scores), n_resamples, seed)
    sel, strongest = selectivities(best["auroc"], control_metrics)
    best.update(sel)
    for name in zs:
        best.update(_residualised_metrics(y_test, chosen_resid[name], n_resamples, seed,
                                          RESIDUALISED[name]))
    return LayerEvaluation(rows=rows, best_layer=best_layer, best=best,
                           controls=control_metrics, split=split_info, layer_choices=choices,
                           strongest_control=strongest)


def _residualised_metrics(y_test: np.ndarray, parts: Sequence[np.ndarray], n_resamples: int,
                          seed: int, prefix: str = "residualised_") -> dict[str, float]:
    """``<prefix>auroc`` with ``_ci_low`` / ``_ci_high`` of the pooled test scores."""
    auc, lo, hi = auroc_with_ci(y_test, np.concatenate(parts), n_resamples, seed=seed)
    return {f"{prefix}auroc": auc, f"{prefix}auroc_ci_low": lo, f"{prefix}auroc_ci_high": hi}
