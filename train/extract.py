"""``python -m train.extract``: residual activations of a question set, into the shared cache."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from probing.io import write_json
from probing.model.loading import describe_model
from train.jobkit import CONFIG_PATH, JobContext, plain, question_activations, run_job

log = logging.getLogger("liref.extract")


def extract(ctx: JobContext) -> dict:
    cfg = ctx.cfg
    model, tokenizer = ctx.model()
    data = question_activations(cfg, model, tokenizer, plain(cfg.data.sets), controls=False)
    cached, questions = data.cached, data.questions
    info = {**describe_model(model), "cache": str(cached.folder), "layers": cached.layers,
            "shape": list(cached.acts.shape), "position": cfg.position}
    write_json(ctx.run_dir / "activations.json", info)
    log.info("activations %s cached in %s", tuple(cached.acts.shape), cached.folder)
    return {"n_questions": cached.acts.shape[0], "n_layers": cached.acts.shape[1],
            "d_model": cached.acts.shape[2],
            "n_reasoning": sum(q.label == "reasoning" for q in questions),
            "n_memory": sum(q.label == "memory" for q in questions)}


@hydra.main(config_path=CONFIG_PATH, config_name="extract", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "extract", extract)


if __name__ == "__main__":
    main()
