"""The main job ``analysis.pipeline`` end to end on a tiny model: probe stage, then an SAE at
the probe's best layer, both in one run directory with one metrics.json."""

from __future__ import annotations

import json

from probing.probes.estimators import load_probe
from probing.sae.training import load_sae
from tests.job_fixtures import run_module, write_questions
from tests.tiny_models import save_tiny_model


def test_pipeline_runs_probe_then_sae_at_best_layer(tmp_path):
    model = save_tiny_model("llama", tmp_path / "model")
    questions = write_questions(tmp_path / "q.jsonl", n_per_label=16)
    proc = run_module(
        "analysis.pipeline", "model=local", f"model.name={model}", "data=local_file",
        f"data.sets.0.path={questions}", "logger=disabled", "corpus.source=questions",
        f"corpus.question_sets=[{{name: jsonl, path: {questions}}}]",
        "sae.training_tokens=4096", "sae.batch_size=256", "activations.heldout_texts=8",
        "activations.heldout_tokens=256", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "pipeline").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
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
    assert "unknown stages ['fly']; allowed: ['probe', 'sae']" in proc.stderr


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
