"""What each stage logs to wandb (tables, per-layer or per-strength curves, plots, artifacts):
the wandb glue of the jobs, so that the job files stay thin and ``probing`` never calls wandb."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from train.tracking import Tracker

log = logging.getLogger("liref")

__all__ = ["log_matching", "log_probe_report", "log_sae", "log_steering"]


def log_probe_report(ctx: Any, report: Any) -> None:
    """Per-layer metrics (step = layer), a table, the plots and the probe/directions artifacts."""
    rows = report.per_layer
    ctx.tracker.define_metric("probe/*", step_metric="probe/layer")
    for row in rows:
        ctx.tracker.log({f"probe/{k}": v for k, v in row.items()})
    columns = list(rows[0])
    ctx.tracker.log_table("probe/per_layer", columns, [[r[c] for c in columns] for r in rows])
    for key in ("plot_layers", "plot_pca"):
        ctx.tracker.log_image(f"probe/{key}", report.files[key])
    ctx.tracker.log_artifact(report.files["probe"], f"probe-layer{report.best_layer}", "probe")
    ctx.tracker.log_artifact(report.files["directions"], "liref-directions", "direction")
    m = report.metrics
    log.info("layer %d (chosen on validation): test accuracy %.3f [%.3f, %.3f], balanced "
             "accuracy %.3f [%.3f, %.3f], AUROC %.3f [%.3f, %.3f]; bag-of-words AUROC %.3f, "
             "embedding AUROC %s, format AUROC %s (surface only %s); format residualised: "
             "AUROC %s (surface only %s); probe in %s",
             report.best_layer, m["best/accuracy"], m["best/accuracy_ci_low"],
             m["best/accuracy_ci_high"], m["best/balanced_accuracy"],
             m["best/balanced_accuracy_ci_low"], m["best/balanced_accuracy_ci_high"],
             m["best/auroc"], m["best/auroc_ci_low"],
             m["best/auroc_ci_high"], m.get("control/bow_auroc", float("nan")),
             *(f"{m[k]:.3f}" if k in m else "n/a" for k in (
                 "control/embedding_auroc", "control/format_auroc", "control/surface_auroc",
                 "best/residualised_auroc", "best/residualised_surface_auroc")),
             report.files["probe"])


def log_sae(tracker: Tracker, result: Any, arch: str) -> None:
    """The SAE's metrics table, its latent-density plot and the SAE as an artifact."""
    if result.density_plot is not None:
        tracker.log_image("sae/latent_density", result.density_plot)
    tracker.log_table("sae/metrics", ["metric", "value"],
                      [[k, float(v)] for k, v in result.metrics.items()])
    if result.sae_dir is not None:
        tracker.log_artifact(result.sae_dir, f"sae-{arch}-layer{result.layer}", "sae",
                             metadata={**result.metrics, "layer": result.layer})


def log_matching(tracker: Tracker, result: Any) -> None:
    """The latents, sparse-probe and injection tables, the plots and the latents artifact."""
    from probing.matching.run import LATENT_COLUMNS

    columns = [c for c in LATENT_COLUMNS if c != "injection_units"]
    tracker.log_table("match/latents", columns,
                      [[r[c] for c in columns] for r in result.rows[:200]])
    sp_cols = ["kind", "k", "accuracy", "accuracy_lo", "accuracy_hi", "auroc", "auroc_lo",
               "auroc_hi"]
    tracker.log_table("match/sparse_probes", sp_cols,
                      [[r[c] for c in sp_cols] for r in result.sparse_probes])
    if result.saebench is not None:  # SAEBench-protocol probes (mean-pooled)
        sb_cols = ["kind", "k", "accuracy", "balanced_accuracy", "auroc", "auroc_lo", "auroc_hi"]
        tracker.log_table("match/sparse_probes_saebench", sb_cols,
                          [[kind, *(r[c] for c in sb_cols[1:])]
                           for kind in ("latents", "neurons") for r in result.saebench[kind]])
    inj_cols = ["name", "prefers", "readout", "d", "class", "d_random", "d_random_matched",
                "d_excess", "d_excess_lo", "d_excess_hi", "class_vs_random", "best"]
    tracker.log_table("match/injection", inj_cols,
                      [[r.get(c) for c in inj_cols] for r in result.injection])
    for key, path in result.files.items():
        if key.startswith("plot_"):
            tracker.log_image(f"match/{key.removeprefix('plot_')}", path)
    tracker.log_artifact(result.files["latents"], f"match-layer{result.info['layer']}", "match",
                         metadata={k: v for k, v in result.info.items() if v is not None})


def log_steering(tracker: Tracker, rows: Sequence[dict[str, Any]], plots: Sequence[Path]) -> None:
    """The results table, one curve per (set, metric, intervention, layer, condition) against
    strength, and the sweep plots."""
    from probing.steering.sweep import INFO_KEYS

    columns = list(dict.fromkeys(["set", "metric", *INFO_KEYS, *(k for r in rows for k in r)]))
    tracker.log_table("steer/results", columns, [[r.get(c) for c in columns] for r in rows])
    tracker.define_metric("steer/*", step_metric="steer/strength")
    for r in rows:
        if r["strength"] is None or r["intervention"] == "none":
            continue
        cond = r["condition"] + (f"{r['seed']}" if r.get("seed") is not None else "")
        rank = f"/rank{r['rank']}" if r.get("rank") is not None else ""
        key = f"steer/{r['set']}/{r['metric']}/{r['intervention']}/L{r['layer']}{rank}/{cond}"
        values = {f"{key}/{k}": v for k, v in r.items()
                  if (k == "accuracy" or f"{k}_ci_low" in r) and v is not None}
        tracker.log({"steer/strength": float(r["strength"]), **values})
    for path in plots:
        tracker.log_image(f"steer/plots/{path.stem}", path)


def log_conflict(ctx: Any, readout: Any) -> None:
    """The conflict readout: the behavioural probe's per-layer metrics and plots, the transfer
    and knob-cosine rows per reference as tables."""
    summary = readout.summary
    ctx.tracker.define_metric("conflict/*", step_metric="conflict/layer")
    for name, rows in summary["transfer"].items():
        columns = list(rows[0]) if rows else []
        ctx.tracker.log_table(f"conflict/transfer_{name}", columns,
                              [[r[c] for c in columns] for r in rows])
    for name, rows in summary["knob"].items():
        columns = list(rows[0]) if rows else []
        ctx.tracker.log_table(f"conflict/knob_{name}", columns,
                              [[r[c] for c in columns] for r in rows])
    image = ctx.run_dir / "conflict_layers.png"
    if image.is_file():
        ctx.tracker.log_image("conflict/layers", image)
    m = readout.metrics
    log.info("knowledge conflicts: %d facts known closed-book; counterfactual answers %d context, "
             "%d memory, %d other; behaviour readable at layer %d with AUROC %.3f [%.3f, %.3f] "
             "(bag-of-words %.3f)", m.get("counts/known", 0), m.get("counts/context", 0),
             m.get("counts/memory", 0), m.get("counts/other", 0), m["best_layer"],
             m["best/auroc"], m["best/auroc_ci_low"], m["best/auroc_ci_high"],
             m.get("control/bow_auroc", float("nan")))
