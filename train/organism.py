"""``python -m train.organism``: train the built-in model organism on its synthetic corpus.

Writes the checkpoint (atomically) to ``out_dir`` (default ``<run dir>/checkpoint``; a copy
lands in the run dir when ``out_dir`` is elsewhere) and metrics.json with per-kind accuracy.
The committed default checkpoint is made with
``python -m train.organism out_dir=probing/organism/checkpoint``.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from probing.organism.config import OrganismConfig
from probing.organism.training import train_and_save
from train.jobkit import CONFIG_PATH, JobContext, plain, run_job

log = logging.getLogger("liref.organism")

#: metrics.json accuracies shown in the wandb table (``accuracy_<name>``)
KINDS_TABLE = ("memory", "reasoning", "mixed", "exception_memory", "near_exception", "ordinary")


def organism(ctx: JobContext) -> dict:
    cfg = ctx.cfg
    ocfg = OrganismConfig.from_dict({**(plain(cfg.organism) or {}), "seed": int(cfg.seed)})
    out = Path(cfg.out_dir) if cfg.get("out_dir") else ctx.run_dir / "checkpoint"
    command = " ".join(["python -m train.organism", *sys.argv[1:]])
    metrics = train_and_save(ocfg, out, log_fn=lambda row, step: ctx.tracker.log(row, step=step),
                             command=command, progress=bool(cfg.get("progress", True)))
    local = ctx.run_dir / "checkpoint"
    if out.resolve() != local.resolve():
        shutil.copytree(out, local, dirs_exist_ok=True)
    ctx.tracker.log_table("organism/accuracy", ["kind", "accuracy"],
                          [[k, metrics[f"accuracy_{k}"]] for k in KINDS_TABLE])
    ctx.tracker.log_artifact(out, name=f"organism-{ocfg.config_hash()}", type="model",
                             metadata={"config_hash": ocfg.config_hash()})
    log.info("organism %s saved to %s: %s", ocfg.config_hash(), out,
             ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))
    return metrics


@hydra.main(config_path=CONFIG_PATH, config_name="organism", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "organism", organism)


if __name__ == "__main__":
    main()
