"""The stages of the main job (``analysis.pipeline``) and how one is run, cached and logged.

A stage is a job body (``train.probe:probe``, ...) run on the pipeline's config with its inputs
pointed at the earlier stages' folders of the run; its outputs are stored in and restored from
the stage cache (``analysis.stage_cache``).
"""

from __future__ import annotations

import copy
import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from omegaconf import DictConfig

from analysis.stage_cache import model_source_key, restore_stage, stage_key, store_stage
from probing.errors import LirefError
from probing.io import read_json, write_metrics
from probing.report.build import build_report, write_environment
from probing.steering.run import check_steer_sets
from train.jobkit import JobContext, plain

log = logging.getLogger("liref.pipeline")


@dataclass(frozen=True)
class StageSpec:
    """How the pipeline runs one stage.

    ``run``: ``"module:function"`` taking a ``JobContext`` (whose ``run_dir`` is the stage
    folder) and returning flat metrics. ``config``: the config keys that determine the stage's
    output (its cache key). ``upstream``: the stages it needs; ``optional``: stages it reads
    when they ran (e.g. steering uses matched latents if there are any). ``headline``: metrics
    for the one-line summary.
    """

    run: str
    config: tuple[str, ...]
    upstream: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()


STAGES: dict[str, StageSpec] = {
    "probe": StageSpec("train.probe:probe",
                       ("data", "layers", "position", "prompt", "probe", "eval", "seed"),
                       headline=("best_layer", "best/auroc", "control/bow_auroc",
                                 "control/embedding_auroc")),
    "conflict": StageSpec("analysis.conflict:conflict",
                          ("conflict_data", "conflict", "data", "layers", "position", "prompt",
                           "probe", "eval", "seed", "n_permutations"), ("probe",),
                          ("best_layer", "best/auroc", "counts/known", "n_context", "n_memory")),
    "sae": StageSpec("train.sae:sae_job", ("layer", "sae", "corpus", "activations", "seed"),
                     ("probe",), ("layer", "l0", "explained_variance", "ce_loss_recovered")),
    "match": StageSpec("analysis.match:match",
                       ("matching", "data", "prompt", "position", "sae", "seed"),
                       ("probe", "sae"), ("top1_cosine", "top1_p", "k_for_0.9_cosine")),
    "steer": StageSpec("analysis.steer:steer_job",
                       ("steer", "steering", "prompt", "conflict", "seed"),
                       ("probe",), ("n_settings", "seconds"),
                       optional=("sae", "match", "conflict")),
}

#: the input-folder keys the stages read, and the stage (sub-folder) each points at
INPUT_DIRS = {"probe_dir": ("probe", ""), "sae_dir": ("sae", "sae"), "match_dir": ("match", ""),
              "conflict_dir": ("conflict", "")}


def _resolve(target: str) -> Callable[[JobContext], Mapping[str, Any]]:
    module, fn = target.split(":")
    return getattr(importlib.import_module(module), fn)


def _stage_config(cfg: DictConfig, name: str, dirs: Mapping[str, Any]) -> DictConfig:
    """The config a stage's job sees: the pipeline's, with its inputs pointed at the earlier
    stages' folders of this run (the chosen layer travels in the probe folder)."""
    spec = STAGES[name]
    stage_cfg = copy.deepcopy(cfg)
    for key, (stage, sub) in INPUT_DIRS.items():
        if key == "sae_dir" and _pretrained_sae(cfg):
            continue  # the SAE stage only evaluated it; later stages load it by name too
        if stage in dirs and stage in (*spec.upstream, *spec.optional):
            stage_cfg[key] = str(dirs[stage] / sub) if sub else str(dirs[stage])
    return stage_cfg


def _pretrained_sae(cfg: DictConfig) -> bool:
    """``sae.pretrained`` is set (a sae-lens release or a built-in name such as
    ``smollm2-135m``): the SAE stage writes no ``sae/sae`` folder for it."""
    sae = cfg.get("sae")
    return sae is not None and bool(sae.get("pretrained"))


def stage_keys(cfg: DictConfig, order: list[str]) -> dict[str, str]:
    """The cache key of every stage in ``order``: its config keys, the keys of the stages it
    reads, the model's weights and liref's code; computed before any stage runs."""
    model_key = model_source_key(plain(cfg.model))
    keys: dict[str, str] = {}
    for name in order:
        spec = STAGES[name]
        config = {k: plain(cfg.get(k)) for k in spec.config}
        reads = {u: keys[u] for u in (*spec.upstream, *spec.optional) if u in keys}
        keys[name] = stage_key(name, config, reads, model_key)
    return keys


def _summary(name: str, metrics: Mapping[str, Any], spec: StageSpec, reused: bool) -> str:
    parts = [f"{k}={metrics[k]:.3f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}"
             for k in spec.headline if k in metrics]
    return f"stage {name} {'reused' if reused else 'done'}: " + ", ".join(parts)


def run_pipeline(ctx: JobContext) -> dict[str, Any]:
    """Run the configured stages in order into ``ctx.run_dir/<stage>/``, then the report."""
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
        check_steer_sets(str(cfg.model.name), plain(cfg.steer.sets))
    if "conflict" in order:
        check_steer_sets(str(cfg.model.name), plain(cfg.conflict_data.sets), "conflict_data")
    write_environment(ctx.run_dir)
    reuse = bool(cfg.get("reuse_stages", True))
    keys = stage_keys(cfg, order)
    dirs: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for name in order:
        spec = STAGES[name]
        stage_dir = ctx.run_dir / name
        stage_cfg = _stage_config(cfg, name, dirs)
        config = {k: plain(stage_cfg.get(k)) for k in spec.config}
        key = keys[name]
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
        dirs[name] = stage_dir
        metrics.update({f"{name}/{k}": v for k, v in result.items()})
        metrics[f"{name}/reused"] = float(reused)
        log.info(_summary(name, result, spec, reused))
    md, page = build_report(ctx.run_dir)
    for image in sorted(ctx.run_dir.glob("*/*.png")):  # the report's figures, in the group run
        ctx.tracker.log_image(f"report/{image.parent.name}/{image.stem}", image)
    log.info("report: %s (%s)", page, md.name)
    return metrics
