"""``python -m analysis.pipeline``: the main job, every stage in one run (``make run``).

Stages, in order (``stages=[probe,sae,match,steer]``; the report is always written):

- ``probe``: activations at every layer, probes and the LiReF direction per layer with their
  controls, the layer chosen on validation data;
- ``sae``: an SAE on token activations at that layer;
- ``match``: SAE latents matched to the direction (nulls, sparse probes, token injection);
- ``steer``: steering sweeps with the direction and the top latents, against controls;
- then ``report.md`` / ``report.html`` from the artifacts.

Each stage writes into its own sub-folder (with its own ``metrics.json``) and logs its own wandb
run in the pipeline's group. A stage whose inputs (its config, the stages it reads, the model's
weights, liref's code) are unchanged is restored from ``<cache_dir>/stages/`` instead of
recomputed, so a re-run with nothing changed takes seconds.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from analysis.stages import run_pipeline
from train.jobkit import CONFIG_PATH, run_job


@hydra.main(config_path=CONFIG_PATH, config_name="pipeline", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "pipeline", run_pipeline)


if __name__ == "__main__":
    main()
