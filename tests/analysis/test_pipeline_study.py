"""The one-command study on the organism: every stage, one wandb group, the report."""

from __future__ import annotations

import json

from probing.report.results import latest_run
from tests.report.test_build import check_report_page
from train.tracking import read_offline_run

STAGES = ("probe", "conflict", "sae", "match", "steer")


def test_every_stage_writes_its_outputs_and_the_report_matches_them(organism_study):
    run = latest_run("pipeline", organism_study / "outputs")
    metrics = json.loads((run / "metrics.json").read_text())
    for stage in STAGES:
        own = json.loads((run / stage / "metrics.json").read_text())
        assert own and all(metrics[f"{stage}/{k}"] == v for k, v in own.items()), stage
        (offline,) = (run / stage / "wandb").glob("offline-run-*")
        rec = read_offline_run(offline)
        assert rec["run"]["job_type"] == stage and rec["run"]["group"] == f"pipeline-{run.name}"
    assert metrics["sae/layer"] == metrics["probe/best_layer"]
    assert metrics["match/layer"] == metrics["probe/best_layer"]
    for file in ("probe/per_layer.json", "probe/split.json", "sae/sae/cfg.json",
                 "match/latents.json", "match/match.json", "steer/results.json",
                 "environment.json", "report.md"):
        assert (run / file).is_file(), file
    parsed = check_report_page(run / "report.html", run)
    stages_in_report = {key.split(":")[0] for key in parsed.cells}
    assert stages_in_report == set(STAGES)
    assert {"held-out test figures per layer", "the probe beside its controls (test part)",
            "top 10 latents", "paired effects at the headline strength (accuracy difference to "
            "the unsteered run)", "software and machine"} <= set(parsed.captions)
    assert len(parsed.images) >= 6  # layer curve, PCA, density, matching and steering plots


def test_report_job_rebuilds_the_same_report_from_artifacts(organism_study):
    from tests.job_fixtures import run_module

    run = latest_run("pipeline", organism_study / "outputs")
    before = (run / "report.html").read_text()
    (run / "report.html").unlink()
    proc = run_module("analysis.report", f"run_dir={run}", cwd=organism_study)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (run / "report.html").read_text() == before
