"""``python -m analysis.match``: which SAE latents carry the LiReF, with nulls, sparse probes
and a token-injection control.

Inputs: a probe run (``probe_dir``: ``train.probe`` or ``analysis.pipeline`` output) and an
SAE (``sae_dir``: an SAE folder, a ``train.sae`` run, or a sweep folder from which ``layer`` and
``sae=<architecture>`` pick one; or ``sae=<pretrained entry>`` for a sae-lens release). Model,
width and layer are checked against each other. Outputs: ``latents.json`` / ``latents.csv``,
``match.json``, ``reconstruction.json``, ``sparse_probes.json``, ``injection.json``, plots and
``metrics.json`` in the run directory (see ``probing.sae.match_run``).
"""

from __future__ import annotations

import logging
from typing import Any

import hydra
from omegaconf import DictConfig

from probing.errors import LirefError
from train.jobkit import CONFIG_PATH, JobContext, plain, run_job

log = logging.getLogger("liref.match")

#: the keys of conf/match.yaml that are MatchSettings
SETTINGS_KEYS = ("rank_by", "top_k", "test_size", "n_resamples", "batch_size", "seed", "nulls",
                 "reconstruction", "sparse_probes", "reason_score", "examples", "injection")


def match(ctx: JobContext) -> dict[str, Any]:
    from probing.models import model_device
    from probing.sae.match_run import MatchSettings, run_matching
    from probing.sae.matching import check_model, load_match_inputs
    from probing.workflow import load_questions, organism_checkpoint, prompt_template

    cfg = ctx.cfg
    settings = MatchSettings.from_dict({k: plain(cfg[k]) for k in SETTINGS_KEYS if k in cfg})
    sae_cfg = plain(cfg.get("sae")) or {}
    pretrained = sae_cfg.get("pretrained") or {}
    if cfg.get("probe_dir") is None:
        raise LirefError("probe_dir is required: a train.probe or analysis.pipeline run folder")
    if pretrained and cfg.get("sae_dir"):
        raise LirefError(f"both sae_dir={cfg.sae_dir} and a pretrained SAE "
                         f"({pretrained.get('release')}) are set; give one")
    layer = cfg.get("layer")
    if layer is None and pretrained:
        layer = pretrained.get("layer")
    inputs = load_match_inputs(
        cfg.probe_dir, sae_dir=cfg.get("sae_dir"), release=pretrained.get("release"),
        sae_id=pretrained.get("sae_id"), layer=None if layer is None else int(layer),
        architecture=None if pretrained else sae_cfg.get("architecture"))
    if cfg.get("position") not in (None, inputs.position):
        raise LirefError(f"position={cfg.position} but the probe read its activations at "
                         f"{inputs.position!r}; leave position unset (null)")
    model, tokenizer = ctx.model()
    check_model(inputs, model)
    inputs.sae.to(model_device(model))
    questions = load_questions(plain(cfg.data.sets), cfg.data.get("n"), int(cfg.seed),
                               organism_checkpoint(model), classes=plain(cfg.data.get("classes")))
    result = run_matching(model, tokenizer, inputs, questions, ctx.run_dir, settings,
                          template=prompt_template(plain(cfg.get("prompt"))),
                          data_name=str(cfg.data.get("name")))
    _log(ctx, result)
    top = result.rows[0]
    log.info("layer %d: rank-1 latent %d (%s %.4g, decoder cosine %.3f); best |cosine| %.3f "
             "(latent %d, family-wise p %.3g); k for 0.9 cosine: %s; results in %s",
             inputs.layer, top["latent"], settings.rank_by, top.get(
                 settings.rank_by.removeprefix("abs_")) or float("nan"),
             top["decoder_cosine"], result.metrics["top1_cosine"],
             int(result.metrics["top1_latent"]), result.metrics["top1_p"],
             result.metrics["k_for_0.9_cosine"], ctx.run_dir)
    return result.metrics


def _log(ctx: JobContext, result: Any) -> None:
    from probing.sae.match_run import LATENT_COLUMNS

    t = ctx.tracker
    columns = [c for c in LATENT_COLUMNS if c != "injection_units"]
    t.log_table("match/latents", columns, [[r[c] for c in columns] for r in result.rows[:200]])
    sp_cols = ["kind", "k", "accuracy", "accuracy_lo", "accuracy_hi", "auroc", "auroc_lo",
               "auroc_hi"]
    t.log_table("match/sparse_probes", sp_cols, [[r[c] for c in sp_cols]
                                                 for r in result.sparse_probes])
    inj_cols = ["name", "prefers", "readout", "d", "class", "d_random", "best"]
    t.log_table("match/injection", inj_cols, [[r.get(c) for c in inj_cols]
                                              for r in result.injection])
    for key, path in result.files.items():
        if key.startswith("plot_"):
            t.log_image(f"match/{key.removeprefix('plot_')}", path)
    t.log_artifact(result.files["latents"], f"match-layer{result.info['layer']}", "match",
                   metadata={k: v for k, v in result.info.items() if v is not None})


@hydra.main(config_path=CONFIG_PATH, config_name="match", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "match", match)


if __name__ == "__main__":
    main()
