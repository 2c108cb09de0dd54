"""``python -m train.probe``: per-layer probes + the LiReF direction, with held-out metrics."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from probing.model.loading import describe_model
from probing.probes.run import run_probe_stage
from train.jobkit import (
    CONFIG_PATH,
    JobContext,
    plain,
    probe_settings,
    question_activations,
    run_job,
)
from train.stage_logs import log_probe_report

log = logging.getLogger("liref.probe")


def probe(ctx: JobContext) -> dict:
    cfg = ctx.cfg
    model, tokenizer = ctx.model()
    data = question_activations(cfg, model, tokenizer, plain(cfg.data.sets))
    transfer = {str(t["name"]): question_activations(cfg, model, tokenizer, t["sets"])
                for t in plain(cfg.data.transfer) or []}
    report = run_probe_stage(
        data, ctx.run_dir, **probe_settings(cfg), transfer=transfer,
        metadata={**describe_model(model), "data": cfg.data.name},
        classes=plain(cfg.data.get("classes")))
    log_probe_report(ctx, report)
    return report.metrics


@hydra.main(config_path=CONFIG_PATH, config_name="probe", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "probe", probe)


if __name__ == "__main__":
    main()
