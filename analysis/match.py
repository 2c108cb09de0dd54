"""``python -m analysis.match probe_dir=<probe run> sae_dir=<SAE>``: which SAE latents carry the
LiReF, with nulls, sparse probes and a token-injection control.

``sae_dir``: an SAE folder, a ``train.sae`` run, or a sweep folder from which ``layer`` and
``sae=<architecture>`` pick one; or ``sae=<pretrained entry>`` for a sae-lens release. Model,
width and layer are checked against each other. Settings under ``matching:``
(``probing.matching.run.MatchSettings``). Outputs: ``latents.json`` / ``latents.csv``,
``match.json``, ``reconstruction.json``, ``sparse_probes.json``, ``injection.json``, plots and
``metrics.json`` (see ``probing.matching.run``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from probing.batching import model_device
from probing.matching.inputs import check_model, inputs_from_settings
from probing.matching.run import MatchSettings, run_matching
from probing.model.loading import organism_checkpoint
from probing.questions import load_questions
from probing.questions.prompts import prompt_template
from train.configs import to_settings
from train.jobkit import CONFIG_PATH, JobContext, plain, run_job
from train.stage_logs import log_matching

log = logging.getLogger("liref.match")


def match(ctx: JobContext) -> dict[str, Any]:
    cfg = ctx.cfg
    settings = to_settings(cfg.matching, MatchSettings)
    settings = dataclasses.replace(  # the job's seed seeds every draw
        settings, seed=int(cfg.seed),
        injection=dataclasses.replace(settings.injection, seed=int(cfg.seed)))
    inputs = inputs_from_settings(cfg.probe_dir, cfg.sae_dir, plain(cfg.sae), cfg.layer,
                                  cfg.position)
    model, tokenizer = ctx.model()
    check_model(inputs, model)
    inputs.sae.to(model_device(model))
    questions = load_questions(plain(cfg.data.sets), cfg.data.n, int(cfg.seed),
                               organism_checkpoint(model), classes=cfg.data.classes)
    result = run_matching(model, tokenizer, inputs, questions, ctx.run_dir, settings,
                          template=prompt_template(plain(cfg.prompt)), data_name=cfg.data.name)
    log_matching(ctx.tracker, result)
    m = result.metrics
    log.info("layer %d: best |cosine| %.3f (latent %d, family-wise p %.3g); k for 0.9 cosine: "
             "%s; results in %s", inputs.layer, m["top1_cosine"], int(m["top1_latent"]),
             m["top1_p"], m["k_for_0.9_cosine"], ctx.run_dir)
    return m


@hydra.main(config_path=CONFIG_PATH, config_name="match", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "match", match)


if __name__ == "__main__":
    main()
