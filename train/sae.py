"""``python -m train.sae [probe_dir=<probe run>] [layer=N]``: an SAE on token-level residual
activations at one layer (``layer`` null = the probe run's chosen layer, or with
``max_relative_depth`` its best validation block among the first blocks).

Trains with sae-lens's ``SAETrainer`` on our activations (cached once per model/corpus/layer,
shared by every SAE of a sweep), evaluates on held-out documents, saves the SAE in sae-lens's
format in ``<run dir>/sae``. With a pretrained entry (``sae=gemma_scope_9b``) it evaluates that
SAE instead (see ``probing.sae.runs.run_sae``). ``export_dir``: a float16 copy with
``metrics.json`` (held-out quality, training curve, block choice) and ``COMMAND``, how the
committed SAEs of the built-in models are made (``conf/sae_smollm2.yaml``, ``sae_gemma3.yaml``).
"""

from __future__ import annotations

import dataclasses
import logging
import sys
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
    from probing.sae import builtin

    cfg, curve, choice = ctx.cfg, [], None
    data = to_settings(cfg.activations, SAEDataConfig)
    if data.cache_dir is None:
        data = dataclasses.replace(data, cache_dir=f"{cfg.cache_dir}/sae_tokens")
    layer = cfg.layer
    if layer is None and cfg.probe_dir and cfg.get("max_relative_depth") is not None:
        from probing.model.blocks import num_layers

        choice = builtin.choose_sae_block_of_run(cfg.probe_dir, num_layers(ctx.model()[0]),
                                                 float(cfg.max_relative_depth))
        layer = choice["block"]
        log.info("SAE block: %s", choice["why"])

    def on_log(metrics: dict[str, float], step: int) -> None:
        ctx.tracker.log(metrics, step=step)
        if any(k.startswith("heldout/") for k in metrics):  # the training curve
            curve.append({"step": step, **{k: float(v) for k, v in metrics.items()}})

    result, arch, metrics = run_sae(
        ctx.model, to_settings(cfg.sae, SAEConfig), to_settings(cfg.corpus, TextCorpusConfig),
        data, ctx.run_dir, layer=layer, probe_dir=cfg.probe_dir, seed=int(cfg.seed),
        on_log=on_log)
    log_sae(ctx.tracker, result, arch)
    log.info("SAE (%s) at layer %d: %s", arch, result.layer,
             {k: round(float(v), 4) for k, v in result.metrics.items()})
    if cfg.get("export_dir") and result.sae_dir is not None:
        out = builtin.export_builtin_sae(
            result.sae_dir, cfg.export_dir,
            {"metrics": metrics, "block_choice": choice, "training_curve": curve},
            command="python -m train.sae " + " ".join(sys.argv[1:]))
        log.info("exported the SAE (float16) to %s", out)
    return metrics


@hydra.main(config_path=CONFIG_PATH, config_name="sae", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "sae", sae_job)


if __name__ == "__main__":
    main()
