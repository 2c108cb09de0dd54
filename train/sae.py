"""``python -m train.sae``: an SAE on token-level residual activations at one layer.

Trains with sae-lens's ``SAETrainer`` on our activations (cached once per model/corpus/layer,
shared by every SAE of a sweep), evaluates on held-out documents, saves the SAE in sae-lens's
format in ``<run dir>/sae``. With a pretrained entry (``sae=gemma_scope_9b``) it evaluates that
SAE instead of training one.
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from probing.activations.corpus import load_corpus
from probing.sae.runs import SAEDataConfig, evaluate_pretrained_on_corpus, train_sae_on_corpus
from probing.sae.training import SAETrainConfig, load_sae
from train.jobkit import CONFIG_PATH, JobContext, plain, run_job

log = logging.getLogger("liref.sae")


def sae_job(ctx: JobContext) -> dict[str, Any]:
    cfg = ctx.cfg
    sae_cfg = plain(cfg.sae)
    pretrained = sae_cfg.pop("pretrained", None)
    layer = cfg.layer if cfg.layer is not None else (pretrained or {}).get("layer")
    data = SAEDataConfig.from_dict({**plain(cfg.activations), "layer": layer})
    sae = None
    if pretrained:  # first, so that an unreachable hub fails before the model loads
        sae = load_sae(pretrained["release"], pretrained.get("sae_id"),
                       device=str(sae_cfg.get("device", "cpu")), dtype=sae_cfg.get("dtype"))
    model, tokenizer = ctx.model()
    checkpoint = model.config._name_or_path if cfg.model.name == "organism" else None
    corpus = load_corpus(**plain(cfg.corpus), seed=int(cfg.seed), organism_checkpoint=checkpoint)

    if pretrained:
        result = evaluate_pretrained_on_corpus(model, tokenizer, corpus, sae, data,
                                               out_dir=ctx.run_dir, seed=int(cfg.seed))
        arch = f"pretrained:{pretrained['release']}/{pretrained.get('sae_id')}"
    else:
        train_cfg = SAETrainConfig.from_dict(sae_cfg)
        result = train_sae_on_corpus(model, tokenizer, corpus, train_cfg, data,
                                     out_dir=ctx.run_dir, seed=int(cfg.seed),
                                     on_log=lambda m, step: ctx.tracker.log(m, step=step))
        arch = train_cfg.architecture
    if result.density_plot is not None:
        ctx.tracker.log_image("sae/latent_density", result.density_plot)
    ctx.tracker.log_table("sae/metrics", ["metric", "value"],
                          [[k, float(v)] for k, v in result.metrics.items()])
    if result.sae_dir is not None:
        ctx.tracker.log_artifact(result.sae_dir, f"sae-{arch}-layer{result.layer}", "sae",
                                 metadata={**result.metrics, "layer": result.layer})
    log.info("SAE (%s) at layer %d: %s", arch, result.layer,
             {k: round(float(v), 4) for k, v in result.metrics.items()})
    return {
        **result.metrics,
        "layer": result.layer,
        "d_sae": int(result.sae.cfg.d_sae),
        "cache_reused": float(not any(result.cache_built.values())) if result.cache_built
        else 0.0,
    }


@hydra.main(config_path=CONFIG_PATH, config_name="sae", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "sae", sae_job)


if __name__ == "__main__":
    main()
