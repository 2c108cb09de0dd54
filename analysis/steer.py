"""``python -m analysis.steer probe_dir=<probe run> [match_dir=<matching run>]``: steering sweeps
(strength x layer x intervention) with their controls, on chosen question sets.

Every setting of a sweep (the unsteered run, the LiReF and its controls at every strength) is
evaluated on the same items, several settings per forward / generate call. Writes
``results.json`` and ``results.csv`` (one row per set x setting: accuracy with its interval,
paired difference to the unsteered run, McNemar p and BH q, flips, parse failures, output length,
margins and rates), ``items.json`` (per set: item ids, and per setting the items that flipped
wrong -> right / right -> wrong; generated completions), ``settings.json``, one PNG per (intervention, layer, value) and
``metrics.json`` with the headline effects; logs tables, plots and strength curves to wandb.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import hydra
from omegaconf import DictConfig

from probing.errors import LirefError
from probing.io import write_json
from train.jobkit import CONFIG_PATH, JobContext, plain, run_job

log = logging.getLogger("liref.steer")


def fitted_ids(probe_dir: str) -> set[str]:
    """Ids of the questions the probe run fitted its directions on (its training and validation
    parts; every probed question after a nested k-fold), from ``split.json``."""
    from probing.io import read_json
    from probing.steering.sources import load_probe_run

    split_file = load_probe_run(probe_dir).folder / "split.json"
    if not split_file.is_file():
        return set()
    split = read_json(split_file)
    if split.get("mode") == "holdout":
        return set(split["train"]) | set(split["val"])
    return {i for fold in split.get("test_folds", []) for i in fold}


def check_steer_sets(model_name: str, sets: Any) -> None:
    """The organism's question sets need the organism: a real model gets one clear error
    (before any stage of a pipeline runs) naming the steer configs that fit it."""
    named = [s.get("set") or s.get("name") for s in (sets or []) if s.get("name") == "organism"]
    from pathlib import Path

    organism = model_name == "organism" or Path(model_name, "organism.json").is_file()
    if named and not organism:
        raise LirefError(f"steer sets {named} ask the organism's synthetic questions, but "
                         f"model is {model_name!r}; for a real model use steer=benchmarks_cpu "
                         "(teacher-forced, CPU) or steer=benchmarks (generation), or "
                         "--config-name study_smollm2")


def _eval_sets(ctx: JobContext, model: Any, tok: Any) -> list:
    from probing.evaluation.sweep import build_eval_set
    from probing.workflow import organism_checkpoint, prompt_template

    cfg = ctx.cfg
    template = prompt_template(plain(cfg.prompt))
    specs = plain(cfg.steer.sets) or []
    if not specs:
        raise LirefError("steer.sets is empty: name at least one question set")
    check_steer_sets(str(cfg.model.name), specs)
    exclude = fitted_ids(cfg.probe_dir)  # held out from the direction, as every figure is
    return [build_eval_set(spec, template, tok, organism_checkpoint(model),
                           cfg.steer.get("n_per_set"), cfg.seed, exclude) for spec in specs]


def _subset(evalset: Any, n: int, seed: int) -> Any:
    """The first ``n`` items of a seeded shuffle of ``evalset`` (for generation)."""
    import numpy as np

    from probing.evaluation.sweep import EvalSet

    if n >= len(evalset.questions):
        return evalset
    keep = sorted(np.random.default_rng(seed).permutation(len(evalset.questions))[:n].tolist())
    return EvalSet(evalset.name, [evalset.questions[i] for i in keep],
                   [evalset.prompts[i] for i in keep], evalset.rates, evalset.contrast,
                   evalset.add_special_tokens)


def _log(ctx: JobContext, rows: list[dict[str, Any]], plots: list) -> None:
    from probing.steering.sweep import INFO_KEYS

    columns = list(dict.fromkeys(["set", "metric", *INFO_KEYS, *(k for r in rows for k in r)]))
    ctx.tracker.log_table("steer/results", columns, [[r.get(c) for c in columns] for r in rows])
    ctx.tracker.define_metric("steer/*", step_metric="steer/strength")
    for r in rows:
        if r["strength"] is None or r["intervention"] == "none":
            continue
        cond = r["condition"] + (f"{r['seed']}" if r.get("seed") is not None else "")
        rank = f"/rank{r['rank']}" if r.get("rank") is not None else ""
        key = f"steer/{r['set']}/{r['metric']}/{r['intervention']}/L{r['layer']}{rank}/{cond}"
        values = {f"{key}/{k}": v for k, v in r.items()
                  if (k == "accuracy" or f"{k}_ci_low" in r) and v is not None}
        ctx.tracker.log({"steer/strength": float(r["strength"]), **values})
    for path in plots:
        ctx.tracker.log_image(f"steer/plots/{path.stem}", path)


def steer_job(ctx: JobContext) -> dict[str, Any]:
    from probing.evaluation.paired import add_q_values
    from probing.evaluation.sweep import (
        evaluate_generation,
        evaluate_teacher_forced,
        headline_metrics,
        item_flips,
        sweep_rows,
    )
    from probing.io import write_csv
    from probing.report.steering import plot_sweep, sweep_panels
    from probing.steering.controls import mean_residual_norm
    from probing.steering.sources import load_match_run, load_probe_run
    from probing.steering.sweep import SweepSpec, build_settings

    cfg = ctx.cfg
    start = time.perf_counter()
    if cfg.get("probe_dir") in (None, "", "???"):
        raise LirefError("probe_dir is required: the output folder of `python -m train.probe` "
                         "(or of `python -m analysis.pipeline`)")
    model, tok = ctx.model()
    probe = load_probe_run(cfg.probe_dir)
    d_model = int(model.get_input_embeddings().weight.shape[1])
    width = int(probe.meta.get("d_model", d_model))
    if width != d_model:
        raise LirefError(f"the probe run's directions are {width}-wide but the model's residual "
                         f"stream is {d_model}-wide: they come from another model "
                         f"({probe.meta.get('model')!r})")
    match = load_match_run(cfg.match_dir) if cfg.get("match_dir") else None
    sae = match.load_sae(sae_dir=cfg.get("sae_dir")) if match is not None else None
    if cfg.layers is None and probe.best_layer is None:
        raise LirefError(f"{probe.folder} has no metrics.json with best_layer; name the "
                         f"steering layers (layers=[...])")
    layers = [probe.best_layer] if cfg.layers is None else [int(x) for x in cfg.layers]
    metric = str(cfg.steer.metric)
    if metric not in ("teacher_forced", "generate"):
        raise LirefError(f"steer.metric {metric!r}; allowed: teacher_forced, generate")
    if metric == "teacher_forced" and cfg.positions == "generated":
        raise LirefError("positions=generated cannot move teacher-forced scores (they are read "
                         "at the last prompt token); use steer.metric=generate")
    evalsets = _eval_sets(ctx, model, tok)
    ctl = cfg.controls
    norm_unit = None
    if cfg.units == "norm":  # the mean residual norm at the last prompt token, all sets' prompts
        prompts = [p for es in evalsets for p in es.prompts]
        norm_unit = mean_residual_norm(model, tok, prompts, layers, int(cfg.batch_size))
    spec = SweepSpec(interventions=list(cfg.interventions), layers=layers,
                     strengths={k: list(v) for k, v in plain(cfg.strengths).items()},
                     units=str(cfg.units), norm_unit=norm_unit, positions=str(cfg.positions),
                     n_random=int(ctl.n_random), negated=bool(ctl.negated),
                     orthogonal=bool(ctl.orthogonal), top_k_latents=int(ctl.top_k_latents),
                     n_random_latents=int(ctl.n_random_latents), seed=int(cfg.seed))
    settings = build_settings(spec, probe.directions, match, sae)
    interventions = [s.interventions for s in settings]
    infos = [s.info for s in settings]
    log.info("%d settings x %d sets (%s); layers %s", len(settings), len(evalsets),
             ", ".join(f"{e.name}: {len(e.questions)}" for e in evalsets), layers)
    rows: list[dict[str, Any]] = []
    items: dict[str, dict[str, Any]] = {}
    bs, n_boot = int(cfg.batch_size), int(cfg.n_resamples)
    gen = cfg.steer.generate
    for es in evalsets:
        if metric == "teacher_forced":
            t = time.perf_counter()
            out = evaluate_teacher_forced(model, tok, es, interventions, bs)
            rows += sweep_rows(out, infos, n_boot, int(cfg.seed))
            items[f"{es.name}/{out.metric}"] = item_flips(out)
            log.info("%s: teacher-forced, %d rows in %.1f s", es.name,
                     len(es.questions) * len(settings), time.perf_counter() - t)
        n_gen = len(es.questions) if metric == "generate" else int(gen.n)
        if n_gen > 0:
            t = time.perf_counter()
            part = _subset(es, n_gen, int(cfg.seed))
            out = evaluate_generation(model, tok, part, interventions, int(gen.max_new_tokens),
                                      min(bs, int(gen.batch_size)), gen.get("stop_at"))
            rows += sweep_rows(out, infos, n_boot, int(cfg.seed))
            items[f"{es.name}/{out.metric}"] = item_flips(out)
            items[f"{es.name}/{out.metric}"]["completions"] = out.completions
            log.info("%s: generation on %d items, %d rows in %.1f s", es.name,
                     len(part.questions), len(part.questions) * len(settings),
                     time.perf_counter() - t)
    add_q_values(rows, skip=[r["intervention"] == "none" for r in rows])
    run_dir = ctx.run_dir
    write_json(run_dir / "results.json", rows)
    write_csv(run_dir / "results.csv", rows)
    write_json(run_dir / "items.json", items)
    write_json(run_dir / "settings.json", {"probe_dir": str(probe.folder),
                                           "match_dir": str(match.folder) if match else None,
                                           "layers": layers, "settings": infos,
                                           "norm_unit": norm_unit})
    plots = []
    if cfg.plots:
        values = ["accuracy", *sorted({k for r in rows for k in r
                                       if (k.startswith("rate_") or k in ("margin", "logp_gold"))
                                       and f"{k}_ci_low" in r and not k.endswith("_diff")})]
        for m, name, layer, rank in sweep_panels(rows):
            tag = f"{m}_{name}_L{layer}" + (f"_rank{rank}" if rank is not None else "")
            path = plot_sweep(rows, run_dir / f"steer_{tag}.png", m, name, layer, rank, values)
            if path is not None:
                plots.append(path)
    _log(ctx, rows, plots)
    head = plain(cfg.headline) or {}
    metrics: dict[str, Any] = {}
    for name in dict.fromkeys(r["intervention"] for r in rows if r["intervention"] != "none"):
        if name != "ablate" and head.get(name) is None:
            continue
        strength = None if name == "ablate" else float(head[name])
        metrics.update(headline_metrics(rows, name, strength, layers[0]))
    metrics.update({"n_settings": len(settings), "n_rows": len(rows),
                    "seconds": time.perf_counter() - start})
    log.info("steering sweep done: %d settings, %d rows, %.1f s; results in %s", len(settings),
             len(rows), metrics["seconds"], run_dir / "results.csv")
    return metrics


@hydra.main(config_path=CONFIG_PATH, config_name="steer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(cfg, "steer", steer_job)


if __name__ == "__main__":
    main()
