"""The format control (arXiv 2606.02907): a classifier on format covariates alone, and the probe
refitted on activations with those covariates regressed out (fitted on the training part)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probing.probes.controls import (
    align_covariates,
    format_covariates,
    residualise,
)
from probing.probes.evaluation import evaluate_layers, selectivities
from probing.questions import Question


def _q(i: int, label: str = "memory", source: str = "a", **meta) -> Question:
    return Question(id=f"q{i}", question=f"question {i}", answers=("x",), label=label,
                    source=source, meta=meta)


def test_format_covariates_columns() -> None:
    qs = [_q(0, source="a", choices=["p", "q", "r"], category="law"),
          _q(1, source="b", category="math"), _q(2, source="a", category="math")]
    prompts = ["Q: what is 12 + 1,024?", "Q: who?", "Q: 3.5 or 7"]
    z, names = format_covariates(qs, prompts, token_lengths=[9, 4, 6])
    assert names == ["tokens", "digits", "numerals", "options", "source=a", "source=b",
                     "category=law", "category=math"]
    assert z[:, 0].tolist() == [9, 4, 6]
    assert z[:, 1].tolist() == [6, 0, 3]  # digit characters
    assert z[:, 2].tolist() == [2, 0, 2]  # "12", "1,024" / "3.5", "7"
    assert z[:, 3].tolist() == [3, 0, 0]
    assert z[:, 4:6].tolist() == [[1, 0], [0, 1], [1, 0]]
    # one source, no choices, no category: length (in characters without a tokenizer) and counts
    z1, names1 = format_covariates([_q(0), _q(1)], ["ab 1", "c"])
    assert names1 == ["characters", "digits", "numerals"] and z1[:, 0].tolist() == [4, 1]
    # another set's covariates in this one's column order (zeros where it has none)
    moved = align_covariates(z1, names1, ["numerals", "source=a", "characters"])
    assert moved.tolist() == [[1, 0, 4], [0, 0, 1]]


def test_residualise_is_fitted_on_the_training_rows_only() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 3))
    z[:, 2] = 1.0  # a constant column is dropped, not a singular fit
    x = z[:, :2] @ rng.normal(size=(2, 6)) + 0.1 * rng.normal(size=(50, 6)) + 5.0
    fit = np.arange(30)
    xr = residualise(torch.tensor(x), z, fit)
    zc = z[fit, :2] - z[fit, :2].mean(0)
    assert np.abs(zc.T @ xr[fit]).max() < 1e-8 and np.abs(xr[fit].mean(0)).max() < 1e-8
    assert np.abs(xr[30:]).max() < 1.0  # the fitted relation holds on the other rows too
    again = residualise(x + 100.0 * (np.arange(50) >= 30)[:, None], z, fit)
    assert np.allclose(again[fit], xr[fit])  # rows outside the fit part do not move the fit


def _planted(genuine: float, shift: float, n: int = 480, d: int = 16, seed: int = 0
             ) -> tuple[torch.Tensor, np.ndarray, dict]:
    """Items whose prompt length and digit count depend on the label (shift in within-class
    sds); activations ``[n, 2, d]`` carry the length and digit count along two axes and the
    label itself along a third with weight ``genuine`` (0 = a pure format confound)."""
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    tokens = np.round(30 + 4 * shift * y + 4 * rng.normal(size=n)).clip(3)
    digits = rng.poisson(2 + 2 * shift * y)
    prompts = ["Q: " + "w " * int(t) + "7" * int(k) for t, k in zip(tokens, digits, strict=True)]
    qs = [_q(i, "reasoning" if t else "memory") for i, t in enumerate(y)]
    z, _ = format_covariates(qs, prompts, token_lengths=tokens)
    basis = np.linalg.qr(rng.normal(size=(d, 3)))[0].T
    layers = []
    for _ in range(2):
        x = rng.normal(size=(n, d))
        x += np.outer((tokens - tokens.mean()) / tokens.std(), 3 * basis[0])
        x += np.outer(digits - digits.mean(), basis[1])
        x += np.outer(genuine * (2 * y - 1), basis[2])
        layers.append(x)
    emb = rng.normal(size=(n, 4))
    return torch.tensor(np.stack(layers, 1)), y, {"format": z, "embeddings": emb}


def test_a_planted_format_confound_is_caught_and_residualised_away() -> None:
    acts, y, controls = _planted(genuine=0.0, shift=2.0)
    ev = evaluate_layers(acts, y, [0, 1], controls=controls, compare_logistic=False,
                         n_resamples=100)
    c = ev.controls
    assert c["control/format_auroc"] > 0.85  # the format alone gives the label away
    assert c["control/format_auroc_ci_low"] <= c["control/format_auroc"]
    assert ev.best["auroc"] > 0.8  # and so does the probe, through the format component
    # chance: 120 test items (a chance AUROC has sd about 0.05; the regression's own error
    # adds some, as the label is nearly a function of the covariates)
    resid = [row["residualised_auroc"] for row in ev.rows]
    assert all(abs(r - 0.5) < 0.25 for r in resid) and abs(np.mean(resid) - 0.5) < 0.15
    for row in ev.rows:
        assert row["residualised_auroc_ci_low"] <= row["residualised_auroc"]
        assert row["residualised_auroc"] < row["auroc"] - 0.25  # the probe's signal is gone
    assert ev.strongest_control == "format"
    assert ev.best["selectivity"] == pytest.approx(ev.best["auroc"] - c["control/format_auroc"])
    assert "selectivity_bow" not in ev.best  # no texts, no bag-of-words control
    assert abs(ev.best["residualised_auroc"] - 0.5) < 0.25


def test_a_genuine_label_signal_survives_residualising() -> None:
    acts, y, controls = _planted(genuine=2.0, shift=0.5)
    ev = evaluate_layers(acts, y, [0, 1], controls=controls, k_folds=3, compare_logistic=False,
                         n_resamples=100)
    assert 0.55 < ev.controls["control/format_auroc"] < 0.9  # format carries some of it
    for row in ev.rows:
        assert row["residualised_auroc"] > 0.9 and row["residualised_auroc_ci_low"] > 0.8
        assert row["selectivity"] > 0.05
    assert ev.best["residualised_auroc"] > 0.9


def test_selectivity_is_against_the_strongest_control() -> None:
    sel, name = selectivities(0.9, {"control/bow_auroc": 0.6, "control/embedding_auroc": 0.7,
                                    "control/format_auroc": 0.65})
    assert name == "embedding"
    assert sel == {"selectivity": pytest.approx(0.2), "selectivity_bow": pytest.approx(0.3)}
    assert selectivities(0.9, {}) == ({}, None)


def test_a_label_assigned_per_category_is_read_by_the_surface_control() -> None:
    """Labels given per category (MMLU-Pro by category): the format control, which holds the
    category one-hots, is perfect and its residualised probe at chance by construction; the
    surface covariates alone (no length or digit shift here) say the label is not in the
    surface, and the probe on surface-residualised activations keeps the genuine signal."""
    acts, y, controls = _planted(genuine=2.0, shift=0.0)
    names = ["tokens", "digits", "numerals", "category=math", "category=history"]
    controls = {**controls, "format": np.column_stack([controls["format"], y, 1 - y]),
                "format_names": names}
    ev = evaluate_layers(acts, y, [0, 1], controls=controls, compare_logistic=False,
                         n_resamples=100)
    assert ev.controls["control/format_auroc"] > 0.99
    assert ev.controls["control/surface_auroc"] < 0.7
    assert ev.strongest_control == "format"
    assert abs(ev.best["residualised_auroc"] - 0.5) < 0.2  # the category took the label along
    assert ev.best["residualised_surface_auroc"] > 0.9
    assert ev.best["residualised_surface_auroc_ci_low"] <= ev.best["residualised_surface_auroc"]
    for row in ev.rows:
        assert row["residualised_surface_auroc"] > 0.9
    # without the names, or without one-hot columns, there is no separate surface set
    plain = evaluate_layers(acts, y, [0, 1], controls={"format": controls["format"]},
                            compare_logistic=False, n_resamples=50)
    assert "control/surface_auroc" not in plain.controls
    assert "residualised_surface_auroc" not in plain.best
