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

from probing import __version__
from probing.activations.cache import CachedActivations, cached_extract
from probing.errors import LirefError
from probing.io import write_json
from probing.models import load_model, model_id
from probing.probes.controls import bow_scores, embedding_scores, mean_input_embeddings
from probing.probes.directions import layer_directions, save_directions
from probing.probes.estimators import make_probe
from probing.probes.evaluation import evaluate_layers, score_metrics, transfer_metrics
from probing.questions import (
    FILE_LABELLED_SETS,
    LABEL_TO_INT,
    LABELS,
    Question,
    check_classes,
    load_question_set,
)
from probing.questions.prompts import PromptTemplate, format_prompts
from probing.questions.sampling import dedupe_questions, sample_balanced
from probing.report.plots import plot_layer_metrics, plot_pca

log = logging.getLogger(__name__)

__all__ = [
    "ProbeData",
    "ProbeReport",
    "extract_for_questions",
    "load_model_from_config",
    "load_questions",
    "organism_checkpoint",
    "probe_data",
    "prompt_template",
    "question_summary",
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
                   organism_path: str | None = None, classes: Sequence[str] | None = None,
                   ) -> list[Question]:
    """Concatenate question sets (each a kwargs mapping for ``load_question_set``), drop
    duplicates across sets (normalised text), then draw at most ``n`` balanced across labels.

    ``organism_path``: checkpoint whose question sets an ``organism`` entry without a ``path``
    reads (so a retrained organism is probed on its own corpus). ``classes``: the data
    config's two class names, positive first (``None`` = reasoning, memory), given to every
    set that reads its labels from a file (``FILE_LABELLED_SETS``) unless it names its own."""
    if not sets:
        raise LirefError("data.sets is empty: name at least one question set")
    names = None if classes is None else list(check_classes(classes))
    questions: list[Question] = []
    for spec in sets:
        spec = dict(spec)
        if "name" not in spec:
            raise LirefError(f"question set entry {spec} has no 'name'")
        if spec["name"] == "organism" and spec.get("path") is None and organism_path:
            spec["path"] = organism_path
        if names is not None and spec["name"] in FILE_LABELLED_SETS:
            spec.setdefault("classes", names)
        questions.extend(load_question_set(**{"seed": seed, **spec}))
    questions = dedupe_questions(questions)  # across sets too (MGSM repeats GSM8K items)
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
    return probe_data(model, tokenizer, questions, cache_dir, layers, position, batch_size,
                      template, controls=False).cached


@dataclass
class ProbeData:
    """One labelled question set ready for probing.

    Attributes:
        cached: activations ``[N, L, d]`` (from the cache).
        questions: the N questions (labels, groups, ids).
        prompts: the N prompt strings (the bag-of-words control reads them).
        embeddings: ``[N, d]`` mean input embedding of each prompt's tokens (the embedding
            control), or ``None``.
        template: the prompt template (recorded in every saved probe).
    """

    cached: CachedActivations
    questions: list[Question]
    prompts: list[str]
    embeddings: torch.Tensor | None = None
    template: PromptTemplate = field(default_factory=PromptTemplate)

    @property
    def targets(self) -> np.ndarray:
        """``[N]`` int64: 1 reasoning, 0 memory."""
        return _targets(self.questions)

    @property
    def groups(self) -> list[str]:
        return [q.group for q in self.questions]

    def controls(self) -> dict[str, Any]:
        """Inputs of the controls: ``{"texts": prompts, "embeddings": [N, d]}``."""
        out: dict[str, Any] = {"texts": self.prompts}
        if self.embeddings is not None:
            out["embeddings"] = self.embeddings.numpy()
        return out


def probe_data(model: Any, tokenizer: Any, questions: Sequence[Question], cache_dir: str | Path,
               layers: Sequence[int] | None = None, position: str = "last", batch_size: int = 8,
               template: PromptTemplate | None = None, controls: bool = True) -> ProbeData:
    """Prompts, cached activations ``[N, L, d]`` and (``controls``) mean input embeddings."""
    template = template or PromptTemplate()
    prompts = format_prompts(questions, template, tokenizer)
    special = not template.chat  # a chat template's string already holds its BOS
    cached = cached_extract(model, tokenizer, prompts, cache_dir, layers=layers,
                            position=position, batch_size=batch_size,
                            labels=[q.label for q in questions], ids=[q.id for q in questions],
                            add_special_tokens=special)
    embeddings = (mean_input_embeddings(model, tokenizer, prompts, special) if controls
                  else None)
    return ProbeData(cached, list(questions), prompts, embeddings, template)


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
    """The probe and its controls, fitted on ``source[fit_idx]``, scored on ``target``."""
    y_t = target.targets
    out = transfer_metrics(probe, target.cached.layer(layer), y_t, n_resamples, seed)
    y_s = source.targets
    bow = bow_scores([source.prompts[i] for i in fit_idx], y_s[fit_idx], target.prompts)
    out.update({f"control/bow_{k}": v for k, v in score_metrics(y_t, bow, n_resamples,
                                                                  seed).items()})
    if source.embeddings is not None and target.embeddings is not None:
        emb = embedding_scores(source.embeddings.numpy()[fit_idx], y_s[fit_idx],
                               target.embeddings.numpy())
        out.update({f"control/embedding_{k}": v
                    for k, v in score_metrics(y_t, emb, n_resamples, seed).items()})
    out["selectivity"] = out["auroc"] - out["control/bow_auroc"]
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
    validation items, test figures with 95% intervals, bag-of-words and embedding controls),
    then write the artifacts.

    Writes into ``out_dir``: ``per_layer.json``, ``split.json`` (question ids of each part),
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
    files["plot_layers"] = plot_layer_metrics(
        ev.rows, out / "probe_layers.png", best_layer=best,
        title=f"{kind} probe, held-out test ({meta['model']})")
    files["plot_pca"] = plot_pca(cached.layer(best), [q.label for q in questions],
                                 out / f"pca_layer_{best:02d}.png", title=f"layer {best}",
                                 class_names=names)
    return ProbeReport(per_layer=ev.rows, best_layer=best, metrics=metrics,
                       directions=directions, files=files)


def describe_model(model: Any) -> dict[str, Any]:
    """Metadata of a loaded model: id, number of layers, width."""
    from probing.models import num_layers

    return {"model": model_id(model), "n_layers": num_layers(model),
            "d_model": int(model.get_input_embeddings().weight.shape[1])}
