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

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import hydra
from omegaconf import DictConfig, open_dict

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
    output (its cache key). ``upstream``: the stages it reads. ``headline``: metrics for the
    one-line summary.
    """

    run: str
    config: tuple[str, ...]
    upstream: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()


STAGES: dict[str, StageSpec] = {
    "probe": StageSpec("train.probe:probe",
                       ("data", "layers", "position", "prompt", "probe", "eval", "seed"),
                       headline=("best_layer", "best/auroc", "control/bow_auroc",
                                 "control/embedding_auroc")),
    "sae": StageSpec("train.sae:sae_job", ("layer", "sae", "corpus", "activations", "seed"),
                     ("probe",), ("layer", "l0", "explained_variance", "ce_loss_recovered")),
    "match": StageSpec("analysis.match:match_job", ("match", "data", "seed"), ("probe", "sae"),
                       ("top1_cosine", "top1_p", "k_for_0.9_cosine")),
    "steer": StageSpec("analysis.steer:steer_job", ("steer", "seed"), ("probe", "sae", "match")),
}


def _resolve(target: str) -> Callable[[JobContext], Mapping[str, Any]]:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def _wire(cfg: DictConfig, name: str, ctx: JobContext, dirs: Mapping[str, Any],
          state: Mapping[str, Any]) -> None:
    """Point a stage's inputs at the earlier stages' folders of this run."""
    with open_dict(cfg):
        if name == "sae" and cfg.get("layer") is None and "best_layer" in state:
            cfg.layer = int(state["best_layer"])
        for key, stage in (("probe_dir", "probe"), ("sae_dir", "sae"), ("match_dir", "match")):
            if stage in dirs and name in ("match", "steer"):
                section = cfg.get(name)
                if section is not None and key in section:
                    section[key] = str(dirs[stage] / "sae") if key == "sae_dir" else str(
                        dirs[stage])


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
        _wire(cfg, name, ctx, dirs, state)
        config = {k: plain(cfg.get(k)) for k in spec.config}
        key = stage_key(name, config, {u: keys[u] for u in spec.upstream}, model_key)
        tracker = ctx.tracker.child(f"{name}:{ctx.tracker.name}", name, stage_dir,
                                    config={"stage": name, **config, "stage_key": key})
        reused = reuse and restore_stage(cfg.cache_dir, name, key, stage_dir)
        if reused:
            result = read_json(stage_dir / "metrics.json")
        else:
            stage_dir.mkdir(parents=True, exist_ok=True)
            tracker.start()
            try:
                result = dict(_resolve(spec.run)(replace(ctx, run_dir=stage_dir,
                                                         tracker=tracker)))
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
