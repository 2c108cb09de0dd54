"""The stages of a liref run as plain functions (the Hydra jobs are thin wrappers around them).

model config -> (model, tokenizer); data config -> questions -> prompts -> cached activations
-> per-layer probes, directions, plots and metrics written into an output folder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probing.errors import LirefError
from probing.io import write_json
from probing.probes.controls import (
    align_covariates,
    bow_scores,
    embedding_scores,
    format_scores,
)
from probing.probes.data import ProbeData
from probing.probes.directions import layer_directions, save_directions
from probing.probes.estimators import make_probe
from probing.probes.evaluation import (
    evaluate_layers,
    score_metrics,
    selectivities,
    transfer_metrics,
)
from probing.probes.plots import plot_layer_metrics, plot_pca
from probing.questions import LABELS, Question, check_classes
from probing.version import __version__

log = logging.getLogger(__name__)

__all__ = ["ProbeReport", "question_summary", "recorded_layer", "run_probe_stage"]


@dataclass
class ProbeReport:
    """What ``run_probe_stage`` produced: per-layer rows, the best layer, flat metrics, files."""

    per_layer: list[dict[str, float]]
    best_layer: int
    metrics: dict[str, float]
    directions: torch.Tensor  # [L, d] float64, not normalised
    files: dict[str, Path] = field(default_factory=dict)


def question_summary(questions: Sequence[Question],
                     transfer: Mapping[str, ProbeData] | None = None,
                     classes: Sequence[str] | None = None) -> dict[str, Any]:
    """Counts of the probed questions by source, kind (organism) and label (named by
    ``classes``, positive first), and of each transfer set: ``{"n", "classes", "by_label",
    "rows": [{set, source, kind, label, n}], ...}``."""
    from collections import Counter

    names = dict(zip(LABELS, check_classes(classes), strict=True))

    def rows(qs: Sequence[Question], name: str) -> list[dict[str, Any]]:
        c = Counter((q.source, str(q.meta.get("kind", "")), names[q.label]) for q in qs)
        return [{"set": name, "source": s, "kind": k, "label": lab, "n": n}
                for (s, k, lab), n in sorted(c.items())]

    out_rows = rows(questions, "probe")
    for name, other in (transfer or {}).items():
        out_rows += rows(other.questions, f"transfer:{name}")
    return {"n": len(questions), "classes": list(names.values()),
            "by_label": dict(Counter(names[q.label] for q in questions)),
            "n_groups": len({q.group for q in questions}), "rows": out_rows}


def _transfer(probe: Any, source: ProbeData, fit_idx: np.ndarray, target: ProbeData,
              layer: int, n_resamples: int, seed: int) -> dict[str, float]:
    """The probe and its controls, fitted on ``source[fit_idx]``, scored on ``target`` (the
    format control on the source's covariate columns; a source or category the target lacks is
    zero there); ``selectivity`` against the strongest control, ``selectivity_bow``."""
    y_t = target.targets
    out = transfer_metrics(probe, target.cached.layer(layer), y_t, n_resamples, seed)
    y_s = source.targets
    scores = {"bow": bow_scores([source.prompts[i] for i in fit_idx], y_s[fit_idx],
                                target.prompts)}
    if source.embeddings is not None and target.embeddings is not None:
        scores["embedding"] = embedding_scores(source.embeddings.numpy()[fit_idx], y_s[fit_idx],
                                               target.embeddings.numpy())
    z_s, names = source.format_covariates()
    z_t, names_t = target.format_covariates()
    scores["format"] = format_scores(z_s[fit_idx], y_s[fit_idx],
                                     align_covariates(z_t, names_t, names))
    for name, s in scores.items():
        out.update({f"control/{name}_{k}": v
                    for k, v in score_metrics(y_t, s, n_resamples, seed).items()})
    out.update(selectivities(out["auroc"], out)[0])
    return out


def run_probe_stage(
    data: ProbeData,
    out_dir: str | Path,
    kind: str = "diffmean",
    params: Mapping[str, Any] | None = None,
    val_size: float = 0.2,
    test_size: float = 0.25,
    k_folds: int | None = None,
    seed: int = 0,
    select_by: str = "auroc",
    metadata: Mapping[str, Any] | None = None,
    transfer: Mapping[str, ProbeData] | None = None,
    n_resamples: int = 1000,
    classes: Sequence[str] | None = None,
) -> ProbeReport:
    """Probe every cached layer (``probing.probes.evaluation.evaluate_layers``: layer chosen on
    validation items, test figures with 95% intervals, bag-of-words, embedding and format
    controls, the probe on format-residualised activations), then write the artifacts.

    Writes into ``out_dir``: ``per_layer.json``, ``split.json`` (question ids of each part),
    ``controls.json`` (the strongest control, the format covariates' names),
    ``probes/layer_<l>/`` and ``directions/`` (fitted on the training part; with nested
    k-fold on all items), ``probe/`` (the chosen layer's), ``probe_layers.png`` and
    ``pca_layer_<l>.png``. ``classes``: the data config's class names, positive first (the
    direction points towards it; recorded in every probe's metadata).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cached, questions = data.cached, data.questions
    y = data.targets
    if len(y) != cached.acts.shape[0]:
        raise LirefError(f"{len(y)} questions but {cached.acts.shape[0]} activation rows")
    layers = cached.layers
    ev = evaluate_layers(cached.acts, y, layers, kind, params, groups=data.groups,
                         controls=data.controls(), val_size=val_size, test_size=test_size,
                         k_folds=k_folds, seed=seed, select_by=select_by,
                         n_resamples=n_resamples)
    best = ev.best_layer
    holdout = ev.split["mode"] == "holdout"
    fit_idx = np.asarray(ev.split["train"]) if holdout else np.arange(len(y))
    ids = [q.id for q in questions]
    split_ids = ({part: [ids[i] for i in ev.split[part]] for part in ("train", "val", "test")}
                 if holdout else {"test_folds": [[ids[i] for i in f]
                                                 for f in ev.split["test_folds"]]})
    write_json(out / "split.json", {"mode": ev.split["mode"], "seed": seed, **split_ids})
    write_json(out / "controls.json", {
        "strongest_control": ev.strongest_control,
        "format_covariates": data.format_covariates()[1],
        "format_category_keys": list(data.category_keys)})
    names = check_classes(classes)
    write_json(out / "questions.json", question_summary(questions, transfer, names))
    write_json(out / "activations.json", {"cache": str(cached.folder), "layers": layers,
                                          "shape": list(cached.acts.shape),
                                          "position": cached.manifest.get("position")})
    meta = {**dict(metadata or {}), "probe": kind, "liref_version": __version__,
            "position": cached.manifest.get("position"), "model": cached.manifest.get("model"),
            "model_fingerprint": cached.manifest.get("model_fingerprint"),
            "d_model": int(cached.acts.shape[-1]), "prompt_template": asdict(data.template),
            "best_layer": int(best), "classes": list(names),
            "n": int(len(y)), "n_fit": int(len(fit_idx)),
            "fitted_on": "train split" if holdout else "all items (nested k-fold)"}
    files: dict[str, Path] = {}
    metrics: dict[str, float] = {"best_layer": best, "n_questions": int(len(y)),
                                 **{f"best/{k}": v for k, v in ev.best.items()}, **ev.controls}
    for row in ev.rows:
        layer = int(row["layer"])
        probe = make_probe(kind, **dict(params or {}))
        probe.layer = layer
        probe.metadata = {**meta, "layer": layer,
                          "metrics": {k: v for k, v in row.items() if k != "layer"}}
        probe.fit(cached.layer(layer)[fit_idx], y[fit_idx])
        probe.save(out / "probes" / f"layer_{layer:02d}")
        if layer == best:
            files["probe"] = probe.save(out / "probe")
            for name, other in (transfer or {}).items():
                for key, value in _transfer(probe, data, fit_idx, other, layer, n_resamples,
                                            seed).items():
                    metrics[f"transfer/{name}/{key}"] = value
        for key, value in row.items():
            if key != "layer" and not key.startswith("control/"):
                metrics[f"layer_{layer:02d}/{key}"] = value
    directions = layer_directions(cached.acts[fit_idx], y[fit_idx])
    files["directions"] = save_directions(out / "directions", directions, layers, meta)
    write_json(out / "per_layer.json", ev.rows)
    files["per_layer"] = out / "per_layer.json"
    files["split"] = out / "split.json"
    files["controls"] = out / "controls.json"
    files["plot_layers"] = plot_layer_metrics(
        ev.rows, out / "probe_layers.png", best_layer=best,
        title=f"{kind} probe, held-out test ({meta['model']})")
    files["plot_pca"] = plot_pca(cached.layer(best), [q.label for q in questions],
                                 out / f"pca_layer_{best:02d}.png", title=f"layer {best}",
                                 class_names=names)
    return ProbeReport(per_layer=ev.rows, best_layer=best, metrics=metrics,
                       directions=directions, files=files)


def recorded_layer(probe_dir: str | Path) -> int | None:
    """The layer a probe run chose on validation data (``best_layer`` in its ``metrics.json``;
    a pipeline run folder's ``probe/best_layer`` works too); ``None`` when it has none. Every later
    stage takes its layer from here: the chosen layer travels one way."""
    from probing.io import read_json

    root = Path(probe_dir).expanduser()
    if (root / "metrics.json").is_file():
        best = read_json(root / "metrics.json").get("best_layer")
        if best is not None:
            return int(best)
    if (root.parent / "metrics.json").is_file():
        best = read_json(root.parent / "metrics.json").get(f"{root.name}/best_layer")
        return None if best is None else int(best)
    return None
