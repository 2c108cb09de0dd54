"""``python -m train.sae [probe_dir=<probe run>] [layer=N]``: an SAE on token-level residual
activations at one layer (``layer`` null = the probe run's chosen layer).

Trains with sae-lens's ``SAETrainer`` on our activations (cached once per model/corpus/layer,
shared by every SAE of a sweep), evaluates on held-out documents, saves the SAE in sae-lens's
format in ``<run dir>/sae``. With a pretrained entry (``sae=gemma_scope_9b``) it evaluates that
SAE instead of training one (see ``probing.sae.runs.run_sae``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from probing.activations.corpus import TextCorpusConfig
from probing.sae.runs import SAEConfig, SAEDataConfig, run_sae
from train.configs import to_settings
from train.jobkit import CONFIG_PATH, JobContext, run_job
from train.stage_logs import log_sae

log = logging.getLogger("liref.sae")


def sae_job(ctx: JobContext) -> dict[str, Any]:
    cfg = ctx.cfg
    data = to_settings(cfg.activations, SAEDataConfig)
    if data.cache_dir is None:
        data = dataclasses.replace(data, cache_dir=f"{cfg.cache_dir}/sae_tokens")
    result, arch, metrics = run_sae(
        ctx.model, to_settings(cfg.sae, SAEConfig), to_settings(cfg.corpus, TextCorpusConfig),
        data, ctx.run_dir, layer=cfg.layer, probe_dir=cfg.probe_dir, seed=int(cfg.seed),
        on_log=lambda m, step: ctx.tracker.log(m, step=step))
    log_sae(ctx.tracker, result, arch)
    log.info("SAE (%s) at layer %d: %s", arch, result.layer,
             {k: round(float(v), 4) for k, v in result.metrics.items()})
    return metrics


@hydra.main(config_path=CONFIG_PATH, config_name="sae", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "sae", sae_job)


if __name__ == "__main__":
    main()
