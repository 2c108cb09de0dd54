"""Held-out probe evaluation: grouped splits, the layer chosen on validation data only, test
figures with bootstrap intervals, the controls beside them, nested k-fold."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probing.errors import LirefError
from probing.probes.evaluation import evaluate_layers, grouped_folds, grouped_split


def _layers(y: np.ndarray, informative_on: list[np.ndarray], d: int = 8, seed: int = 0
            ) -> torch.Tensor:
    """``[N, L, d]``: layer j separates the classes only on the items ``informative_on[j]``
    (noise elsewhere)."""
    rng = np.random.default_rng(seed)
    out = []
    for idx in informative_on:
        x = rng.normal(size=(len(y), d))
        x[idx, 0] += 3.0 * (2 * y[idx] - 1)
        out.append(x)
    return torch.tensor(np.stack(out, 1))


def test_grouped_split_keeps_groups_together_and_is_stratified():
    y = np.array([0] * 60 + [1] * 60)
    groups = np.repeat(np.arange(40), 3)  # 3 paraphrases per item, one label per group
    s = grouped_split(y, groups, val_size=0.2, test_size=0.25, seed=3)
    parts = [set(groups[s.train]), set(groups[s.val]), set(groups[s.test])]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert sorted(np.concatenate([s.train, s.val, s.test]).tolist()) == list(range(120))
    for part, share in ((s.test, 0.25), (s.val, 0.2)):
        for label in (0, 1):
            assert abs((y[part] == label).sum() / 60 - share) <= 0.05 + 1e-9
    again = grouped_split(y, groups, val_size=0.2, test_size=0.25, seed=3)
    assert np.array_equal(again.test, s.test)  # seeded


def test_split_errors_name_the_counts():
    with pytest.raises(LirefError, match="too few memory items.*2 group.*need at least 3"):
        grouped_split([0, 0, 1, 1, 1], None)
    with pytest.raises(LirefError, match="k_folds=5 needs at least 5 groups of reasoning"):
        grouped_folds([0] * 10 + [1] * 4, None, 5)
    with pytest.raises(LirefError, match="val_size"):
        grouped_split([0, 1] * 10, None, val_size=1.5)


def test_layer_is_chosen_on_validation_and_figures_are_test_figures():
    y = np.array([0, 1] * 100)
    split = grouped_split(y, None, 0.2, 0.25, seed=0)
    # both layers separate the training items; layer 3 also the validation items (noise on
    # test), layer 8 also the test items (noise on validation)
    acts = _layers(y, [np.r_[split.train, split.val], np.r_[split.train, split.test]])
    ev = evaluate_layers(acts, y, [3, 8], "diffmean", val_size=0.2, test_size=0.25, seed=0,
                         compare_logistic=False, n_resamples=200)
    by_layer = {r["layer"]: r for r in ev.rows}
    assert by_layer[3]["val_auroc"] > 0.95 and by_layer[8]["val_auroc"] < 0.75
    assert by_layer[8]["auroc"] > 0.95 and by_layer[3]["auroc"] < 0.75  # test figures
    assert ev.best_layer == 3  # chosen on validation, although layer 8 is best on test
    assert ev.best["auroc"] == pytest.approx(by_layer[3]["auroc"])
    for row in ev.rows:
        for key in ("accuracy", "auroc"):
            assert row[f"{key}_ci_low"] <= row[key] <= row[f"{key}_ci_high"]


def test_controls_and_selectivity():
    y = np.array([0, 1] * 60)
    texts = [("what is 3 plus 4 ?" if t else "where does ann live ?") + f" {i}"
             for i, t in enumerate(y)]
    emb = np.random.default_rng(1).normal(size=(120, 6))
    acts = _layers(y, [np.arange(120)])
    ev = evaluate_layers(acts, y, [0], controls={"texts": texts, "embeddings": emb},
                         compare_logistic=False, n_resamples=200)
    c = ev.controls
    assert c["control/bow_auroc"] == pytest.approx(1.0)  # the words give the label away
    assert c["control/bow_accuracy"] == pytest.approx(1.0)
    assert 0.25 < c["control/embedding_auroc"] < 0.75  # random embeddings: chance
    row = ev.rows[0]
    assert row["selectivity"] == pytest.approx(row["auroc"] - c["control/bow_auroc"])
    assert row["control/bow_auroc"] == c["control/bow_auroc"]


def test_nested_kfold_pools_out_of_fold_predictions():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 60)
    informative = rng.normal(size=(120, 8)) + 1.2 * (2 * y - 1)[:, None] * np.eye(8)[0]
    noise = rng.normal(size=(120, 8))
    acts = torch.tensor(np.stack([noise, informative], 1))
    ev = evaluate_layers(acts, y, [5, 7], "diffmean", k_folds=4, n_resamples=200)
    rows = ev.rows
    assert [r["layer"] for r in rows] == [5, 7]
    assert rows[1]["accuracy"] > 0.8 and rows[1]["auroc"] > 0.85
    assert 0.3 < rows[0]["accuracy"] < 0.7  # noise: near chance held-out
    assert rows[0]["train_accuracy"] > rows[0]["accuracy"]  # overfits train, not test
    assert -1.0 <= rows[1]["cos_logistic_diffmean"] <= 1.0
    assert ev.layer_choices == [7, 7, 7, 7] and ev.best_layer == 7
    assert ev.split["mode"] == "nested_kfold"
    folds = ev.split["test_folds"]
    assert sorted(i for f in folds for i in f) == list(range(120))  # every item tested once


def test_validation_ties_go_to_the_earliest_layer_via_select_layer():
    """The layer choice is ``directions.select_layer`` on the validation figures: two identical
    layers tie and the earlier one is chosen, whichever order they are listed in."""
    from probing.probes.directions import select_layer

    y = np.array([0, 1] * 60)
    one = _layers(y, [np.arange(120)])
    acts = torch.cat([one, one], 1)  # [N, 2, d]: the same activations twice
    for layers in ([4, 2], [2, 4]):
        ev = evaluate_layers(acts, y, layers, "diffmean", compare_logistic=False,
                             n_resamples=50)
        val_rows = [{"layer": r["layer"], "auroc": r["val_auroc"]} for r in ev.rows]
        assert ev.best_layer == select_layer(val_rows) == 2


def test_imbalanced_classes_report_balanced_accuracy_beside_accuracy():
    """108 vs 252, well separated: with the threshold chosen on the training part, held-out
    accuracy and balanced accuracy (with intervals, per layer and for the best layer) are both
    high and close, as AUROC says they should be."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(108, dtype=np.int64), np.zeros(252, dtype=np.int64)]
    x = rng.normal(size=(360, 8))
    x[y == 1, 0] = rng.normal(3.0, 0.3, 108)
    x[y == 0, 0] = 1.5 - rng.exponential(4.0, 252)  # the class-mean midpoint is inside memory
    ev = evaluate_layers(torch.tensor(x[:, None, :]), y, [0], "diffmean",
                         compare_logistic=False, n_resamples=200)
    for figures in (ev.rows[0], ev.best):
        assert figures["auroc"] > 0.99
        assert figures["accuracy"] > 0.95 and figures["balanced_accuracy"] > 0.95
        assert abs(figures["accuracy"] - figures["balanced_accuracy"]) < 0.03
        assert (figures["balanced_accuracy_ci_low"] <= figures["balanced_accuracy"]
                <= figures["balanced_accuracy_ci_high"])
