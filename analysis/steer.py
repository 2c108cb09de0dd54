"""``python -m analysis.steer probe_dir=<probe run> [match_dir=<matching run>]``: steering sweeps
(strength x layer x intervention) beside their controls, on the question sets of ``steer=``.

Settings under ``steering:`` (``probing.steering.run.SteeringSettings``), the sets and the metric
under ``steer:`` (``SteerSets``). Writes ``results.json`` / ``results.csv``, ``items.json``,
``settings.json``, plots and ``metrics.json`` with the headline effects (see
``probing.steering.run``); logs tables, plots and strength curves to wandb.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from probing.steering.run import SteeringSettings, SteerSets, run_steering
from train.configs import to_settings
from train.jobkit import CONFIG_PATH, JobContext, built_sets, plain, run_job
from train.stage_logs import log_steering


def steer_job(ctx: JobContext) -> dict[str, Any]:
    cfg = ctx.cfg
    model, tokenizer = ctx.model()
    sets = to_settings(cfg.steer, SteerSets)
    sets.sets = built_sets(cfg, model, tokenizer, sets.sets, add_prompt=True)
    result = run_steering(model, tokenizer, to_settings(cfg.steering, SteeringSettings),
                          sets, ctx.run_dir, cfg.probe_dir,
                          cfg.match_dir, cfg.sae_dir, plain(cfg.prompt), str(cfg.model.name),
                          int(cfg.seed), cfg.get("conflict_dir"))
    log_steering(ctx.tracker, result.rows, result.plots)
    return result.metrics


@hydra.main(config_path=CONFIG_PATH, config_name="steer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "steer", steer_job)


if __name__ == "__main__":
    main()
