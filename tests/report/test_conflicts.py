"""The report's knowledge-conflict section and findings, from a conflict stage's files alone."""

from __future__ import annotations

import json
from pathlib import Path

from probing.report.build import build_report


def _write(folder: Path, name: str, obj: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(obj))


def test_conflict_section_shows_counts_readout_transfer_knob_and_steering(tmp_path):
    run = tmp_path / "run"
    conflict = run / "conflict"
    metrics = {"best_layer": 1, "best/auroc": 0.71, "best/auroc_ci_low": 0.6,
               "best/auroc_ci_high": 0.8, "control/bow_auroc": 0.77,
               "control/bow_auroc_ci_low": 0.65, "control/bow_auroc_ci_high": 0.88,
               "layer_00/auroc": 0.65, "layer_01/auroc": 0.71,
               "counts/known": 50, "counts/context": 20, "counts/memory": 15, "counts/other": 15,
               "transfer/mmlu/auroc": 0.486, "transfer/mmlu/auroc_ci_low": 0.41,
               "transfer/mmlu/auroc_ci_high": 0.56, "knob/mmlu/cosine": -0.017,
               "knob/mmlu/null_low": -0.22, "knob/mmlu/null_high": 0.24,
               "knob/mmlu/p_value": 0.9, "margin/auroc": 0.81}
    _write(conflict, "metrics.json", metrics)
    _write(conflict, "per_layer.json", [{"layer": 0, "auroc": 0.65}, {"layer": 1, "auroc": 0.71}])
    _write(conflict, "conflict.json", {
        "counts": {"country": {"questions": 80, "known": 30, "context": 15, "memory": 8,
                               "other": 7},
                   "capital": {"questions": 40, "known": 20, "context": 5, "memory": 7,
                               "other": 8}},
        "total": {"questions": 120, "known": 50, "context": 20, "memory": 15, "other": 15},
        "probed": {"context": 20, "memory": 15},
        "transfer": {"mmlu": [{"layer": 0, "auroc": 0.5, "auroc_ci_low": 0.4,
                               "auroc_ci_high": 0.6},
                              {"layer": 1, "auroc": 0.486, "auroc_ci_low": 0.41,
                               "auroc_ci_high": 0.56}]},
        "knob": {"mmlu": [{"layer": 0, "cosine": 0.1, "null_low": -0.2, "null_high": 0.2,
                           "p_value": 0.4},
                          {"layer": 1, "cosine": -0.017, "null_low": -0.22, "null_high": 0.24,
                           "p_value": 0.9}]}})
    steer = {"conflict_counterfactual/generate/unsteered/rate_memory": 0.05,
             "conflict_counterfactual/generate/add/negated/rate_memory_diff": 0.225,
             "conflict_counterfactual/generate/add/negated/rate_memory_diff_ci_low": 0.1,
             "conflict_counterfactual/generate/add/negated/rate_memory_diff_ci_high": 0.35,
             "conflict_counterfactual/generate/add/random/rate_memory_diff": -0.008,
             "conflict_counterfactual/generate/prompt/negated/rate_memory_diff": 0.15,
             "conflict_counterfactual/generate/prompt/negated/rate_memory_diff_ci_low": 0.0,
             "conflict_counterfactual/generate/prompt/negated/rate_memory_diff_ci_high": 0.3,
             "headline/add/strength": 1.0, "headline/add/layer": 1.0}
    _write(run / "steer", "metrics.json", steer)
    md, _ = build_report(run)
    text = md.read_text()
    section = text[text.index("## Knowledge conflicts"):]
    assert "| country | 80 | 30 | 15 | 8 | 7 |" in section
    assert "| **all** | 120 | 50 | 20 | 15 | 15 |" in section
    assert "0.710 [0.600, 0.800]" in section and "0.770 [0.650, 0.880]" in section
    assert "-0.017 (null -0.220..0.240, p 0.900)" in section
    assert "| counterfactual statement | generated | memory | 0.050 |" in section
    assert "0.225 [0.100, 0.350]" in section
    # the prompting baseline's columns (it ran), not erasure's (it did not)
    assert "prompt: other mode" in section and "0.150 [0.000, 0.300]" in section
    assert "erase (LEACE)" not in section
    findings = text[: text.index("## Knowledge conflicts")]
    assert "(#knowledge-conflicts): 50 facts known closed-book" in findings
    assert "LiReF on conflicts**](#knowledge-conflicts): mmlu's LiReF scored unchanged" in findings
    assert "**0.486** [0.410, 0.560]" in findings
    assert "LiReF on counterfactual items" in findings and "-LiReF: memory-answer rate" in findings
    assert "**+0.225**" in findings
