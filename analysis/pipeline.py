"""``python -m analysis.pipeline``: the main job, every stage in one run (``make run``).

Stages (``stages=[probe,sae]``): per-layer probes and the LiReF direction (extracting
activations through the shared cache), then an SAE at the probe's best layer. Each stage writes
into its own sub-folder of the run directory and logs into one wandb run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import hydra
from omegaconf import DictConfig, open_dict

from probing.errors import LirefError
from train.jobkit import CONFIG_PATH, JobContext, run_job

log = logging.getLogger("liref.pipeline")


def _probe_stage(ctx: JobContext, state: dict[str, Any]) -> Mapping[str, Any]:
    from train.probe import probe

    metrics = probe(ctx)
    state["best_layer"] = int(metrics["best_layer"])
    return metrics


def _sae_stage(ctx: JobContext, state: dict[str, Any]) -> Mapping[str, Any]:
    from train.sae import sae_job

    if ctx.cfg.get("layer") is None and "best_layer" in state:
        with open_dict(ctx.cfg):
            ctx.cfg.layer = state["best_layer"]
    return sae_job(ctx)


STAGES: dict[str, Callable[[JobContext, dict[str, Any]], Mapping[str, Any]]] = {
    "probe": _probe_stage,
    "sae": _sae_stage,
}


def pipeline(ctx: JobContext) -> dict[str, Any]:
    stages = list(ctx.cfg.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise LirefError(f"unknown stages {unknown}; allowed: {list(STAGES)}")
    state: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    for name in stages:
        log.info("stage %s", name)
        sub = replace(ctx, run_dir=ctx.run_dir / name)
        sub.run_dir.mkdir(parents=True, exist_ok=True)
        for key, value in STAGES[name](sub, state).items():
            metrics[f"{name}/{key}"] = value
        log.info("stage %s done: outputs in %s", name, sub.run_dir)
    return metrics


@hydra.main(config_path=CONFIG_PATH, config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "pipeline", pipeline)


if __name__ == "__main__":
    main()
