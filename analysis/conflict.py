"""``python -m analysis.conflict probe_dir=<probe run>``: the knowledge-conflict readout.

A conflict set (``data@conflict_data=popqa_conflict``, or ``organism_conflict``) is built for the
model (cached): the facts it knows closed-book, each put in conflict with a statement. On the
counterfactual items it answered from the statement (context) or from memory: probes per layer
on that label beside the controls, the LiReF of ``probe_dir`` (and of every ``data.transfer``
set) scored unchanged, and the cosine between each and the conflict set's own direction against
a label-permutation null (``probing.conflicts.run``). Writes a probe run plus ``conflict.json``.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from probing.conflicts.run import references, run_conflict_stage
from probing.model.loading import describe_model
from train.jobkit import (
    CONFIG_PATH,
    JobContext,
    built_sets,
    plain,
    probe_settings,
    question_activations,
    run_job,
)
from train.stage_logs import log_conflict


def conflict(ctx: JobContext) -> dict[str, Any]:
    cfg = ctx.cfg
    model, tokenizer = ctx.model()
    sets = built_sets(cfg, model, tokenizer, cfg.conflict_data.sets)
    data = question_activations(cfg, model, tokenizer, sets, data=cfg.conflict_data)
    others = {str(t["name"]): question_activations(cfg, model, tokenizer, t["sets"],
                                                   controls=False)
              for t in plain(cfg.data.transfer) or []} if cfg.get("probe_dir") else {}
    refs = references(cfg.get("probe_dir"), str(cfg.data.name or "probe"), others)
    readout = run_conflict_stage(
        data, sets[0]["built"], refs, ctx.run_dir, int(cfg.n_permutations), **probe_settings(cfg),
        metadata={**describe_model(model), "data": cfg.conflict_data.name})
    log_conflict(ctx, readout)
    return readout.metrics


@hydra.main(config_path=CONFIG_PATH, config_name="conflict", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "conflict", conflict)


if __name__ == "__main__":
    main()
