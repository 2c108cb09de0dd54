"""The stages of a liref run as plain functions (the Hydra jobs are thin wrappers around them).

model config -> (model, tokenizer); data config -> questions -> prompts -> cached activations
-> per-layer probes, directions, plots and metrics written into an output folder.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probing import __version__
from probing.activations.cache import CachedActivations, cached_extract
from probing.errors import LirefError
from probing.io import write_json
from probing.models import load_model, model_id
from probing.probes.directions import layer_directions, save_directions, select_layer
from probing.probes.estimators import make_probe
from probing.probes.evaluation import evaluate_layers, transfer_metrics
from probing.questions import LABEL_TO_INT, Question, load_question_set
from probing.questions.prompts import PromptTemplate, format_prompts
from probing.questions.sampling import sample_balanced
from probing.report.plots import plot_layer_metrics, plot_pca

log = logging.getLogger(__name__)

__all__ = [
    "ProbeReport",
    "extract_for_questions",
    "load_model_from_config",
    "load_questions",
    "organism_checkpoint",
    "prompt_template",
    "run_probe_stage",
]


def load_model_from_config(model_cfg: Mapping[str, Any], cache_dir: str | Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` from a ``conf/model/*.yaml`` mapping.

    For ``name: organism``, a changed organism config or ``retrain: true`` trains a new organism
    into ``cache_dir`` first (see ``probing.organism.ensure_organism``). GGUF models (a built-in
    name like ``smollm2-135m``, a ``.gguf`` path, or ``gguf_file``) are converted once to
    safetensors under ``cache_dir/gguf``.
    """
    name = str(model_cfg["name"])
    if name == "organism":
        from probing.organism import ensure_organism

        name = str(ensure_organism(model_cfg.get("organism"), bool(model_cfg.get("retrain", False)),
                                   Path(cache_dir) / "organism"))
    model, tokenizer = load_model(
        name,
        dtype=str(model_cfg.get("dtype", "float32")),
        device=str(model_cfg.get("device", "cpu")),
        trust_remote_code=bool(model_cfg.get("trust_remote_code", False)),
        device_map=model_cfg.get("device_map"),
        revision=model_cfg.get("revision"),
        gguf_file=model_cfg.get("gguf_file"),
        cache_dir=cache_dir,
    )
    model.config.liref_name = str(model_cfg["name"])
    return model, tokenizer


def organism_checkpoint(model: Any) -> str | None:
    """The folder of a loaded organism (the committed one or a retrained one), else ``None``."""
    cfg = model.config
    return str(cfg._name_or_path) if getattr(cfg, "liref_name", None) == "organism" else None


def load_questions(sets: Sequence[Mapping[str, Any]], n: int | None = None, seed: int = 0,
                   organism_path: str | None = None) -> list[Question]:
    """Concatenate question sets (each a kwargs mapping for ``load_question_set``), then draw at
    most ``n`` balanced across labels.

    ``organism_path``: checkpoint whose question sets an ``organism`` entry without a ``path``
    reads (so a retrained organism is probed on its own corpus)."""
    if not sets:
        raise LirefError("data.sets is empty: name at least one question set")
    questions: list[Question] = []
    for spec in sets:
        spec = dict(spec)
        if "name" not in spec:
            raise LirefError(f"question set entry {spec} has no 'name'")
        if spec["name"] == "organism" and spec.get("path") is None and organism_path:
            spec["path"] = organism_path
        questions.extend(load_question_set(**{"seed": seed, **spec}))
    if n is not None:
        questions = sample_balanced(questions, n=n, seed=seed)
    return questions


def prompt_template(cfg: Mapping[str, Any] | None) -> PromptTemplate:
    """``PromptTemplate`` from a ``prompt:`` config mapping (``None`` = the paper's template)."""
    if not cfg:
        return PromptTemplate()
    kw = dict(cfg)
    kw["few_shot"] = tuple(tuple(pair) for pair in kw.get("few_shot") or ())
    return PromptTemplate(**kw)


def extract_for_questions(model: Any, tokenizer: Any, questions: Sequence[Question],
                          cache_dir: str | Path, layers: Sequence[int] | None = None,
                          position: str = "last", batch_size: int = 8,
                          template: PromptTemplate | None = None) -> CachedActivations:
    """Prompt the questions and return their (cached) activations ``[N, L, d]``."""
    prompts = format_prompts(questions, template, tokenizer)
    chat = template is not None and template.chat  # the chat template already added BOS
    return cached_extract(model, tokenizer, prompts, cache_dir, layers=layers, position=position,
                          batch_size=batch_size, labels=[q.label for q in questions],
                          ids=[q.id for q in questions], add_special_tokens=not chat)


@dataclass
class ProbeReport:
    """What ``run_probe_stage`` produced: per-layer rows, the best layer, flat metrics, files."""

    per_layer: list[dict[str, float]]
    best_layer: int
    metrics: dict[str, float]
    directions: torch.Tensor  # [L, d] float64, not normalised
    files: dict[str, Path] = field(default_factory=dict)


def _targets(questions: Sequence[Question]) -> np.ndarray:
    return np.array([LABEL_TO_INT[q.label] for q in questions], dtype=np.int64)


def run_probe_stage(
    cached: CachedActivations,
    questions: Sequence[Question],
    out_dir: str | Path,
    kind: str = "diffmean",
    params: Mapping[str, Any] | None = None,
    test_size: float = 0.25,
    k_folds: int | None = None,
    seed: int = 0,
    select_by: str = "auroc",
    metadata: Mapping[str, Any] | None = None,
    transfer: Mapping[str, tuple[CachedActivations, Sequence[Question]]] | None = None,
) -> ProbeReport:
    """Probe every cached layer, pick the best, write probes, directions and plots.

    Writes into ``out_dir``: ``per_layer.json``, ``probes/layer_<l>/`` (fitted on all data),
    ``probe/`` (the best layer's), ``directions/`` (diff-in-means per layer, float64),
    ``probe_layers.png`` and ``pca_layer_<l>.png``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    y = _targets(questions)
    if len(y) != cached.acts.shape[0]:
        raise LirefError(f"{len(y)} questions but {cached.acts.shape[0]} activation rows")
    layers = cached.layers
    per_layer = evaluate_layers(cached.acts, y, layers, kind, params, test_size, k_folds, seed)
    best = select_layer(per_layer, select_by)
    meta = {**dict(metadata or {}), "probe": kind, "liref_version": __version__,
            "position": cached.manifest.get("position"), "model": cached.manifest.get("model"),
            "n": int(len(y))}
    files: dict[str, Path] = {}
    metrics: dict[str, float] = {"best_layer": best, "n_questions": int(len(y))}
    for row in per_layer:
        layer = int(row["layer"])
        probe = make_probe(kind, **dict(params or {}))
        probe.layer = layer
        probe.metadata = {**meta, "layer": layer,
                          "metrics": {k: v for k, v in row.items() if k != "layer"}}
        probe.fit(cached.layer(layer), y)
        probe.save(out / "probes" / f"layer_{layer:02d}")
        if layer == best:
            files["probe"] = probe.save(out / "probe")
            for name, (other, other_qs) in (transfer or {}).items():
                m = transfer_metrics(probe, other.layer(layer), _targets(other_qs))
                for key, value in m.items():
                    metrics[f"transfer/{name}/{key}"] = value
        for key, value in row.items():
            if key != "layer":
                metrics[f"layer_{layer:02d}/{key}"] = value
    for key in ("accuracy", "auroc"):
        metrics[f"best/{key}"] = next(r[key] for r in per_layer if r["layer"] == best)
    directions = layer_directions(cached.acts, y)
    files["directions"] = save_directions(out / "directions", directions, layers, meta)
    write_json(out / "per_layer.json", per_layer)
    files["per_layer"] = out / "per_layer.json"
    files["plot_layers"] = plot_layer_metrics(per_layer, out / "probe_layers.png",
                                              title=f"{kind} probe, held-out ({meta['model']})")
    files["plot_pca"] = plot_pca(cached.layer(best), [q.label for q in questions],
                                 out / f"pca_layer_{best:02d}.png", title=f"layer {best}")
    return ProbeReport(per_layer=per_layer, best_layer=best, metrics=metrics,
                       directions=directions, files=files)


def describe_model(model: Any) -> dict[str, Any]:
    """Metadata of a loaded model: id, number of layers, width."""
    from probing.models import num_layers

    return {"model": model_id(model), "n_layers": num_layers(model),
            "d_model": int(model.get_input_embeddings().weight.shape[1])}
