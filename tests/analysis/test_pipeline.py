"""The main job ``analysis.pipeline``: stage reuse from the stage cache on the organism study,
stage-order errors, one loaded model for all stages."""

from __future__ import annotations

import json

import pytest

from probing.probes.estimators import load_probe
from probing.report.results import latest_run
from probing.sae.training import load_sae
from tests.conftest import STUDY_OVERRIDES
from tests.job_fixtures import REPO, run_main_in_process, run_module, write_questions
from tests.tiny_models import save_tiny_model


def _rerun(study, *extra: str, name: str) -> tuple[dict, str]:
    proc = run_module("analysis.pipeline", *STUDY_OVERRIDES, "logger=disabled", *extra,
                      f"hydra.run.dir=reruns/{name}", cwd=study)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((study / "reruns" / name / "metrics.json").read_text()), \
        proc.stderr + proc.stdout


def test_rerun_with_nothing_changed_restores_every_stage(organism_study):
    first = json.loads((latest_run("pipeline", organism_study / "outputs") / "metrics.json"
                        ).read_text())
    second, log = _rerun(organism_study, name="rerun")
    stages = ("probe", "conflict", "sae", "match", "steer")
    assert all(first[f"{s}/reused"] == 0.0 and second[f"{s}/reused"] == 1.0 for s in stages)
    same = {k: v for k, v in first.items() if not k.endswith("/reused")}
    assert {k: v for k, v in second.items() if not k.endswith("/reused")} == same
    assert "stage steer reused" in log
    run = organism_study / "reruns" / "rerun"
    assert load_probe(run / "probe" / "probe").layer == first["probe/best_layer"]
    load_sae(str(run / "sae" / "sae"))  # the restored SAE loads
    assert (run / "report.html").is_file()
    # the keys computed before any stage runs are the ones the run restored from; a changed SAE
    # setting changes the key of the SAE and of every stage that reads it, not the probe's
    from hydra import compose, initialize_config_dir

    from analysis.stages import STAGES, stage_keys

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        same_cfg = compose("pipeline", overrides=list(STUDY_OVERRIDES))
        changed_cfg = compose("pipeline", overrides=[*STUDY_OVERRIDES, "sae.k=8"])
    keys, changed = stage_keys(same_cfg, list(STAGES)), stage_keys(changed_cfg, list(STAGES))
    assert all(f"stages/{s}-{keys[s]}" in log for s in stages)
    assert changed["probe"] == keys["probe"]
    assert all(changed[s] != keys[s] for s in ("sae", "match", "steer"))


def test_a_pretrained_sae_runs_through_matching_and_steering(organism_study):
    """With ``sae.architecture: pretrained`` (a built-in name, a release or a folder, as the
    real-model studies load their committed SAEs) the SAE stage only evaluates it and writes no
    ``sae/sae`` folder: matching and steering load the same SAE by its name."""
    first = latest_run("pipeline", organism_study / "outputs")
    trained = json.loads((first / "metrics.json").read_text())
    sae_folder = first / "sae" / "sae"
    second, _ = _rerun(organism_study, "stages=[probe,sae,match,steer]", "sae=smollm2_135m",
                       f"sae.pretrained.release={sae_folder}",
                       f"sae.pretrained.layer={trained['sae/layer']}",
                       "sae.pretrained.model=organism", name="pretrained")
    run = organism_study / "reruns" / "pretrained"
    assert not (run / "sae" / "sae").exists()
    assert str(sae_folder) in json.dumps(json.loads((run / "match" / "match.json").read_text()))
    # the same SAE and probe as the first run's: the same best-matched latent
    assert second["match/top1_latent"] == trained["match/top1_latent"]
    assert second["match/top1_cosine"] == pytest.approx(trained["match/top1_cosine"], abs=1e-6)
    assert second["steer/n_settings"] > 0 and (run / "steer" / "results_report.json").is_file()


def test_pipeline_rejects_unknown_stage(tmp_path, monkeypatch, capsys):
    model = save_tiny_model("llama", tmp_path / "model")
    questions = write_questions(tmp_path / "q.jsonl", n_per_label=4)
    common = ["model=local", f"model.name={model}", "data=local_file",
              f"data.sets.0.path={questions}", "logger=disabled"]

    def run(*extra: str) -> tuple[int, str]:
        return run_main_in_process("analysis.pipeline", [*common, *extra], tmp_path,
                                   monkeypatch, capsys)

    code, err = run("stages=[probe,fly]")
    assert code == 2
    assert ("unknown stages ['fly']; allowed: ['probe', 'conflict', 'sae', 'match', 'steer']"
            in err)
    code, err = run("stages=[sae]")
    assert code == 2
    assert "stage 'sae' reads the outputs of ['probe']" in err
    # a real model with the organism's steering sets: one error before any stage runs
    code, err = run("steer=organism")
    assert code == 2
    assert "ask the organism's synthetic questions" in err
    assert "steer=benchmarks_cpu" in err and not list(tmp_path.glob("outputs/*/*/probe"))
    code, err = run("steer=local_file", "conflict_data=organism")
    assert code == 2 and "conflict_data ['organism_conflict'] ask the organism's" in err


ORGANISM_SETS = ["exceptions", "near_exceptions", "memory", "reasoning", "ordinary",
                 "conflict_counterfactual", "conflict_consistent", "conflict_closed_book"]


@pytest.mark.parametrize(("overrides", "metric", "sets", "corpus"), [
    ([], "teacher_forced", ORGANISM_SETS, "organism"),
    (["data=organism_matched"], "teacher_forced", ORGANISM_SETS, "organism"),
    (["model=smollm2_135m", "data=paper_local"], "teacher_forced",
     ["gsm8k", "popqa", "conflict_counterfactual", "conflict_consistent", "conflict_closed_book"],
     "benchmarks"),
    (["model=llama3_8b", "data=mmlu_pro"], "generate",
     ["gsm8k", "mgsm", "mmlu_pro", "popqa", "conflict_counterfactual", "conflict_consistent"],
     "benchmarks"),
    (["data=local_file", "data.sets.0.path=/q.jsonl"], "teacher_forced", ["jsonl"], "questions"),
    (["data=paper_local", "steer=organism", "corpus=organism"], "teacher_forced", ORGANISM_SETS,
     "organism"),
])
def test_pipeline_steers_on_the_sets_that_fit_its_data(overrides, metric, sets, corpus):
    """``steer`` and ``corpus`` default to ``conf/{steer,corpus}/<data>.yaml``; an explicit
    choice wins."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("pipeline", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.cwd} in the sets' paths
    try:
        steer = OmegaConf.to_container(cfg.steer, resolve=True)
        source = OmegaConf.to_container(cfg.corpus, resolve=True)["source"]
    finally:
        HydraConfig.instance().cfg = None
    assert steer["metric"] == metric
    assert [s.get("set") or s["name"] for s in steer["sets"]] == sets
    assert source == corpus


def test_pipeline_stages_share_one_loaded_model(tmp_path, monkeypatch):
    """Each stage gets its own run dir but the model is loaded once per pipeline run."""
    from dataclasses import replace

    from omegaconf import OmegaConf

    import probing.model.loading as workflow
    from train.jobkit import JobContext
    from train.tracking import Tracker

    loads = []
    monkeypatch.setattr(workflow, "load_model_from_config",
                        lambda m, c: loads.append(m["name"]) or ("model", "tok"))
    cfg = OmegaConf.create({"model": {"name": "x"}, "cache_dir": str(tmp_path)})
    ctx = JobContext(cfg=cfg, run_dir=tmp_path, tracker=Tracker(mode="disabled"))
    a = replace(ctx, run_dir=tmp_path / "probe")
    b = replace(ctx, run_dir=tmp_path / "sae")
    assert a.model() == b.model() == ("model", "tok")
    assert loads == ["x"]
