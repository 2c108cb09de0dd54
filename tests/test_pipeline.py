"""The main job ``analysis.pipeline`` end to end on a tiny model: probe stage, then an SAE at
the probe's best layer, both in one run directory with one metrics.json."""

from __future__ import annotations

import json

from probing.probes.estimators import load_probe
from probing.sae.training import load_sae
from probing.tracking import read_offline_run
from tests.job_fixtures import run_module, write_questions
from tests.tiny_models import save_tiny_model


def test_pipeline_runs_probe_then_sae_at_best_layer_and_reuses_unchanged_stages(tmp_path):
    model = save_tiny_model("llama", tmp_path / "model")
    questions = write_questions(tmp_path / "q.jsonl", n_per_label=16)
    args = ["model=local", f"model.name={model}", "data=local_file",
            f"data.sets.0.path={questions}", "logger=offline", "corpus.source=questions",
            f"corpus.question_sets=[{{name: jsonl, path: {questions}}}]",
            "sae.training_tokens=4096", "sae.batch_size=256", "activations.heldout_texts=8",
            "activations.heldout_tokens=256"]
    proc = run_module("analysis.pipeline", *args, "hydra.run.dir=outputs/first", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "outputs" / "first"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["probe/reused"] == 0.0 and metrics["sae/reused"] == 0.0
    for stage in ("probe", "sae"):  # each stage: its own metrics.json and wandb run, one group
        stage_metrics = json.loads((run / stage / "metrics.json").read_text())
        assert stage_metrics["l0" if stage == "sae" else "best/auroc"] == metrics[
            f"{stage}/{'l0' if stage == 'sae' else 'best/auroc'}"]
        (offline,) = (run / stage / "wandb").glob("offline-run-*")
        rec = read_offline_run(offline)
        assert rec["run"]["job_type"] == stage and rec["run"]["group"] == "pipeline-outputs-first"
    assert (run / "report.html").is_file() and (run / "environment.json").is_file()
    # nothing changed: both stages are restored from the stage cache, with the same results
    again = run_module("analysis.pipeline", *args, "hydra.run.dir=outputs/second", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    second = json.loads((tmp_path / "outputs" / "second" / "metrics.json").read_text())
    assert second["probe/reused"] == 1.0 and second["sae/reused"] == 1.0
    assert {k: v for k, v in second.items() if not k.endswith("/reused")} == {
        k: v for k, v in metrics.items() if not k.endswith("/reused")}
    assert "stage sae reused" in again.stderr + again.stdout
    load_sae(str(tmp_path / "outputs" / "second" / "sae" / "sae"))  # the restored SAE loads
    # a changed SAE setting recomputes the SAE stage only
    third = run_module("analysis.pipeline", *args, "sae.k=8", "hydra.run.dir=outputs/third",
                       cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-3000:]
    m3 = json.loads((tmp_path / "outputs" / "third" / "metrics.json").read_text())
    assert m3["probe/reused"] == 1.0 and m3["sae/reused"] == 0.0
    best = metrics["probe/best_layer"]
    assert metrics["sae/layer"] == best  # the SAE is trained where the probe works best
    for key in ("probe/best/accuracy", "probe/best/auroc", "sae/l0", "sae/explained_variance",
                "sae/mse", "sae/dead_fraction", "sae/ce_loss_recovered"):
        assert key in metrics, key
    probe = load_probe(run / "probe" / "probe")
    assert probe.layer == best
    sae = load_sae(str(run / "sae" / "sae"))
    assert sae.cfg.d_in == 32
    assert "results in" in proc.stderr + proc.stdout


def test_pipeline_rejects_unknown_stage(tmp_path):
    model = save_tiny_model("llama", tmp_path / "model")
    questions = write_questions(tmp_path / "q.jsonl", n_per_label=4)
    proc = run_module("analysis.pipeline", "model=local", f"model.name={model}",
                      "data=local_file", f"data.sets.0.path={questions}", "logger=disabled",
                      "stages=[probe,fly]", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown stages ['fly']; allowed: ['probe', 'sae', 'match', 'steer']" in proc.stderr
    proc = run_module("analysis.pipeline", "model=local", f"model.name={model}",
                      "data=local_file", f"data.sets.0.path={questions}", "logger=disabled",
                      "stages=[sae]", cwd=tmp_path)
    assert proc.returncode == 2
    assert "stage 'sae' reads the outputs of ['probe']" in proc.stderr


def test_pipeline_stages_share_one_loaded_model(tmp_path, monkeypatch):
    """Each stage gets its own run dir but the model is loaded once per pipeline run."""
    from dataclasses import replace

    from omegaconf import OmegaConf

    import probing.workflow as workflow
    from probing.tracking import Tracker
    from train.jobkit import JobContext

    loads = []
    monkeypatch.setattr(workflow, "load_model_from_config",
                        lambda m, c: loads.append(m["name"]) or ("model", "tok"))
    cfg = OmegaConf.create({"model": {"name": "x"}, "cache_dir": str(tmp_path)})
    ctx = JobContext(cfg=cfg, run_dir=tmp_path, tracker=Tracker(mode="disabled"))
    a = replace(ctx, run_dir=tmp_path / "probe")
    b = replace(ctx, run_dir=tmp_path / "sae")
    assert a.model() == b.model() == ("model", "tok")
    assert loads == ["x"]
