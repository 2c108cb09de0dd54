"""``python -m analysis.pipeline``: the main job, every stage in one run (``make run``).

Stages, in order (``stages=[probe,sae,match,steer]``; the report is always written):

- ``probe``: activations at every layer, probes and the LiReF direction per layer with their
  controls, the layer chosen on validation data;
- ``sae``: an SAE on token activations at that layer;
- ``match``: SAE latents matched to the direction (nulls, sparse probes, token injection);
- ``steer``: steering sweeps with the direction and the top latents, against controls;
- then ``report.md`` / ``report.html`` from the artifacts.

Each stage writes into its own sub-folder (with its own ``metrics.json``) and logs its own wandb
run in the pipeline's group. A stage whose inputs (its config, the stages it reads, the model's
weights, liref's code) are unchanged is restored from ``<cache_dir>/stages/`` instead of
recomputed, so a re-run with nothing changed takes seconds.
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf, open_dict

from probing.errors import LirefError
from probing.io import read_json, write_metrics
from probing.report.build import build_report, write_environment
from probing.stage_cache import model_source_key, restore_stage, stage_key, store_stage
from train.jobkit import CONFIG_PATH, JobContext, plain, run_job

log = logging.getLogger("liref.pipeline")


@dataclass(frozen=True)
class StageSpec:
    """How the pipeline runs one stage.

    ``run``: ``"module:function"`` taking a ``JobContext`` (whose ``run_dir`` is the stage
    folder) and returning flat metrics. ``config``: the config keys that determine the stage's
    output (its cache key). ``upstream``: the stages it needs; ``optional``: stages it reads
    when they ran (e.g. steering uses matched latents if there are any). ``headline``: metrics for the
    one-line summary. ``section``: a pipeline config section whose keys the stage's job reads
    at the top level (the standalone job's own settings, e.g. ``steering:``).
    """

    run: str
    config: tuple[str, ...]
    upstream: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()
    section: str | None = None
    optional: tuple[str, ...] = ()


STAGES: dict[str, StageSpec] = {
    "probe": StageSpec("train.probe:probe",
                       ("data", "layers", "position", "prompt", "probe", "eval", "seed"),
                       headline=("best_layer", "best/auroc", "control/bow_auroc",
                                 "control/embedding_auroc")),
    "sae": StageSpec("train.sae:sae_job", ("layer", "sae", "corpus", "activations", "seed"),
                     ("probe",), ("layer", "l0", "explained_variance", "ce_loss_recovered")),
    "match": StageSpec("analysis.match:match",
                       ("matching", "data", "prompt", "position", "sae", "seed"),
                       ("probe", "sae"), ("top1_cosine", "top1_p", "k_for_0.9_cosine"),
                       section="matching"),
    "steer": StageSpec("analysis.steer:steer_job", ("steer", "steering", "prompt", "seed"),
                       ("probe",), ("n_settings", "seconds"), section="steering",
                       optional=("sae", "match")),
}

#: the input-folder keys the consuming jobs read, and the stage (sub-folder) each points at
INPUT_DIRS = {"probe_dir": ("probe", ""), "sae_dir": ("sae", "sae"), "match_dir": ("match", "")}


def _resolve(target: str) -> Callable[[JobContext], Mapping[str, Any]]:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def _stage_config(cfg: DictConfig, name: str, dirs: Mapping[str, Any],
                  state: Mapping[str, Any]) -> DictConfig:
    """The config a stage's job sees: the pipeline's, with its section's keys at the top level
    and its inputs pointed at the earlier stages' folders of this run."""
    spec = STAGES[name]
    stage_cfg = cfg
    if spec.section is not None and cfg.get(spec.section) is not None:
        stage_cfg = copy.deepcopy(cfg)
        OmegaConf.set_struct(stage_cfg, False)
        stage_cfg.merge_with(cfg[spec.section])
    with open_dict(stage_cfg):
        if name == "sae" and stage_cfg.get("layer") is None and "best_layer" in state:
            stage_cfg.layer = int(state["best_layer"])
        if spec.section is not None:  # analysis jobs read their inputs from *_dir keys
            for key, (stage, sub) in INPUT_DIRS.items():
                if stage in dirs and stage in (*spec.upstream, *spec.optional):
                    stage_cfg[key] = str(dirs[stage] / sub) if sub else str(dirs[stage])
    return stage_cfg


def _summary(name: str, metrics: Mapping[str, Any], spec: StageSpec, reused: bool) -> str:
    parts = [f"{k}={metrics[k]:.3f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
             for k in spec.headline if k in metrics]
    return f"stage {name} {'reused' if reused else 'done'}: " + ", ".join(parts)


def pipeline(ctx: JobContext) -> dict[str, Any]:
    cfg = ctx.cfg
    stages = list(cfg.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise LirefError(f"unknown stages {unknown}; allowed: {list(STAGES)}")
    order = [s for s in STAGES if s in stages]
    for name in order:
        missing = [u for u in STAGES[name].upstream if u not in order]
        if missing:
            raise LirefError(f"stage {name!r} reads the outputs of {missing}; add them to "
                             f"stages (allowed order: {list(STAGES)})")
    if "steer" in order:
        from analysis.steer import check_steer_sets

        check_steer_sets(str(cfg.model.name), plain(cfg.steer.sets))
    write_environment(ctx.run_dir)
    model_key = model_source_key(plain(cfg.model))
    reuse = bool(cfg.get("reuse_stages", True))
    state: dict[str, Any] = {}
    keys: dict[str, str] = {}
    dirs: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for name in order:
        spec = STAGES[name]
        stage_dir = ctx.run_dir / name
        stage_cfg = _stage_config(cfg, name, dirs, state)
        config = {k: plain(stage_cfg.get(k)) for k in spec.config}
        reads = {u: keys[u] for u in (*spec.upstream, *spec.optional) if u in keys}
        key = stage_key(name, config, reads, model_key)
        tracker = ctx.tracker.child(f"{name}:{ctx.tracker.name}", name, stage_dir,
                                    config={"stage": name, **config, "stage_key": key})
        reused = reuse and restore_stage(cfg.cache_dir, name, key, stage_dir)
        if reused:
            result = read_json(stage_dir / "metrics.json")
        else:
            stage_dir.mkdir(parents=True, exist_ok=True)
            tracker.start()
            try:
                result = dict(_resolve(spec.run)(replace(ctx, cfg=stage_cfg,
                                                         run_dir=stage_dir, tracker=tracker)))
            except BaseException:
                tracker.finish(1)
                raise
            write_metrics(stage_dir, result)
            store_stage(cfg.cache_dir, name, key, stage_dir)
        tracker.start()  # a reused stage still gets its run: the dashboard shows every stage
        tracker.summary({**result, "reused": float(reused)})
        tracker.finish(0)
        keys[name], dirs[name] = key, stage_dir
        if "best_layer" in result:
            state["best_layer"] = int(result["best_layer"])
        metrics.update({f"{name}/{k}": v for k, v in result.items()})
        metrics[f"{name}/reused"] = float(reused)
        log.info(_summary(name, result, spec, reused))
    md, page = build_report(ctx.run_dir)
    for image in sorted(ctx.run_dir.glob("*/*.png")):  # the report's figures, in the group run
        ctx.tracker.log_image(f"report/{image.parent.name}/{image.stem}", image)
    log.info("report: %s (%s)", page, md.name)
    return metrics


@hydra.main(config_path=CONFIG_PATH, config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "pipeline", pipeline)


if __name__ == "__main__":
    main()
