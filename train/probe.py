"""``python -m train.probe``: per-layer probes + the LiReF direction, with held-out metrics."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from probing.workflow import (
    describe_model,
    extract_for_questions,
    load_model_from_config,
    load_questions,
    organism_checkpoint,
    prompt_template,
    run_probe_stage,
)
from train.jobkit import CONFIG_PATH, JobContext, log_probe_report, plain, run_job

log = logging.getLogger("liref.probe")


def probe(ctx: JobContext) -> dict:
    cfg = ctx.cfg
    model, tokenizer = load_model_from_config(cfg.model, cfg.cache_dir)
    template = prompt_template(cfg.prompt)
    layers = None if cfg.layers is None else list(cfg.layers)

    def activations(sets: list) -> tuple:
        qs = load_questions(sets, cfg.data.get("n"), cfg.seed, organism_checkpoint(model))
        return extract_for_questions(model, tokenizer, qs, cfg.cache_dir, layers, cfg.position,
                                     cfg.batch_size, template), qs

    cached, questions = activations(plain(cfg.data.sets))
    transfer = {str(t["name"]): activations(t["sets"]) for t in plain(cfg.data.transfer) or []}
    report = run_probe_stage(
        cached, questions, ctx.run_dir, kind=cfg.probe.kind,
        params=plain(cfg.probe.params), test_size=cfg.eval.test_size,
        k_folds=cfg.eval.k_folds, seed=cfg.seed, select_by=cfg.eval.select_by,
        metadata={**describe_model(model), "data": cfg.data.name}, transfer=transfer)
    log_probe_report(ctx, report)
    return report.metrics


@hydra.main(config_path=CONFIG_PATH, config_name="probe", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "probe", probe)


if __name__ == "__main__":
    main()
