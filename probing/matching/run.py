"""A whole matching run: which SAE latents carry the LiReF, and are they more than tokens?

``run_matching`` (the body of ``python -m analysis.match``) takes a loaded model, the
``MatchInputs`` (SAE + direction, checked) and a labelled question set, and writes into
``out_dir``:

- ``latents.json`` / ``latents.csv``: one row per latent, sorted by ``rank_by`` (see
  ``LATENT_COLUMNS``); ``match.json`` (provenance, read by ``load_match``);
- ``reconstruction.json`` (OMP curve and its controls), ``nulls.json``, ``gap.json``,
  ``sparse_probes.json`` (``last_token``: liref's rows; ``saebench``: SAEBench's protocol, or
  null when off), ``injection.json``, ``top_examples.json``, ``split.json``;
- plots: ``cosine_hist.png``, ``reconstruction.png``, ``sparse_probes.png``,
  ``top_latents_hist.png``.

Protocol: questions are split into grouped train / held-out test parts. Activation scores
used for ranking (mean difference, Cohen's d, AUROC, ReasonScore, gap share) come from the
training part; the ``test_*`` columns, sparse probes, the top latents' AUROC intervals and
the injection baselines come from the held-out part. Geometry (cosines, nulls, OMP) uses no
question labels except the permutation null (all prompts, labels shuffled).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probing.errors import LirefError, from_mapping
from probing.io import write_csv, write_json
from probing.matching.geometry import decoder_matrix, omp_path, unit_direction
from probing.matching.injection import READOUTS, InjectionConfig, Target
from probing.matching.inputs import LATENTS_FILENAME, MATCH_FILENAME, MatchInputs
from probing.questions import LABEL_TO_INT, Question
from probing.stats import auroc_with_ci
from probing.version import __version__

log = logging.getLogger(__name__)

__all__ = ["LATENT_COLUMNS", "RANK_KEYS", "MatchResult", "MatchSettings", "grouped_train_test",
           "question_sources", "run_matching"]

#: the columns of latents.json / latents.csv, in order (``test_auroc_lo/hi`` and the
#: ``injection_*`` columns are filled for the top latents only; null elsewhere)
LATENT_COLUMNS: tuple[str, ...] = (
    "latent", "rank", "decoder_cosine", "encoder_cosine", "decoder_norm",
    "cosine_z", "cosine_p", "cosine_q",
    "cosine_z_random", "cosine_p_random", "cosine_q_random", "cosine_z_analytic",
    "omp_step",
    "mean_diff", "cohens_d", "auroc", "reason_score", "mu_reasoning", "mu_memory", "entropy",
    "gap_share", "gap_contribution",
    "test_mean_diff", "test_cohens_d", "test_auroc", "test_auroc_lo", "test_auroc_hi",
    "test_gap_share",
    "density", "max_activation",
    "injection_d", "injection_class", "injection_d_random", "injection_d_random_matched",
    "injection_d_excess", "injection_d_excess_lo", "injection_d_excess_hi",
    "injection_class_vs_random", "injection_d_max",
    "injection_d_mean", "injection_d_position", "injection_best", "injection_units",
)
#: what latents can be ranked by (everything computed before the ranking)
RANK_KEYS: tuple[str, ...] = tuple(
    c for c in LATENT_COLUMNS
    if c not in ("latent", "rank", "omp_step", "test_auroc_lo", "test_auroc_hi")
    and not c.startswith("injection_"))


@dataclass
class NullSettings:
    """``n_random`` random unit directions and ``n_permutations`` label permutations."""

    n_random: int = 1000
    n_permutations: int = 1000


@dataclass
class ReconstructionSettings:
    """OMP up to ``max_k`` latents; ``n_controls`` random and permuted control directions."""

    max_k: int = 64
    n_controls: int = 20


@dataclass
class SparseProbeSettings:
    """k values of liref's last-token sparse probes and the logistic regression's ``C``;
    ``saebench``: also the SAEBench-protocol probes (mean-pooled, ``saebench_ks``;
    ``probing.matching.sparse_probes.saebench_sparse_probes``)."""

    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20, 50])
    C: float = 1.0
    saebench: bool = True
    saebench_ks: list[int] = field(default_factory=lambda: [1, 2, 5])

    def __post_init__(self) -> None:
        for name in ("ks", "saebench_ks"):
            ks = list(getattr(self, name))
            if not ks or any(int(k) < 1 for k in ks):
                raise LirefError(f"sparse_probes.{name} must be a non-empty list of k >= 1, "
                                 f"got {ks}")


@dataclass
class ReasonScoreSettings:
    """ReasonScore's entropy exponent and what a reasoning *source* is: a question field
    (``source``) or a ``meta`` key (``task``, ``kind``, ...); ``auto`` = ``source`` when the
    reasoning questions come from several sources, else ``task`` when they have several,
    else a single source (entropy term 1)."""

    alpha: float = 0.7
    sources: str = "auto"


@dataclass
class ExampleSettings:
    """Top-activating tokens and prompts kept per top latent."""

    n_tokens: int = 10
    n_prompts: int = 5


@dataclass
class MatchSettings:
    """Everything a match run can be told (``conf/match.yaml`` mirrors it).

    Args:
        rank_by: the column the latents are ranked by (descending); ``abs_<column>`` ranks by
            its absolute value (e.g. ``abs_decoder_cosine``).
        top_k: top latents that get examples, held-out intervals and histograms.
        test_size: held-out share of the grouped split.
        n_resamples: bootstrap resamples of every interval.
        batch_size: prompts per forward pass.
    """

    rank_by: str = "gap_share"
    top_k: int = 20
    test_size: float = 0.25
    n_resamples: int = 1000
    batch_size: int = 16
    seed: int = 0
    nulls: NullSettings = field(default_factory=NullSettings)
    reconstruction: ReconstructionSettings = field(default_factory=ReconstructionSettings)
    sparse_probes: SparseProbeSettings = field(default_factory=SparseProbeSettings)
    reason_score: ReasonScoreSettings = field(default_factory=ReasonScoreSettings)
    examples: ExampleSettings = field(default_factory=ExampleSettings)
    injection: InjectionConfig = field(default_factory=InjectionConfig)

    def __post_init__(self) -> None:
        key = self.rank_by.removeprefix("abs_")
        if key not in RANK_KEYS:
            raise LirefError(f"rank_by={self.rank_by!r} is not a latent score; allowed: "
                             f"{list(RANK_KEYS)} (or abs_<name>)")
        if not 0.0 < self.test_size < 1.0:
            raise LirefError(f"test_size must be in (0, 1), got {self.test_size}")
        if self.top_k < 1:
            raise LirefError(f"top_k must be >= 1, got {self.top_k}")
        if self.nulls.n_random < 1 or self.nulls.n_permutations < 1:
            raise LirefError("nulls.n_random and nulls.n_permutations must be >= 1")
        if self.reconstruction.max_k < 1 or self.reconstruction.n_controls < 0:
            raise LirefError("reconstruction.max_k must be >= 1 and n_controls >= 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MatchSettings:
        """From a (Hydra) mapping with the sub-mappings ``nulls``, ``reconstruction``,
        ``sparse_probes``, ``reason_score``, ``examples``, ``injection``."""
        d = dict(d)
        subs = {"nulls": NullSettings, "reconstruction": ReconstructionSettings,
                "sparse_probes": SparseProbeSettings, "reason_score": ReasonScoreSettings,
                "examples": ExampleSettings}
        for name, sub in subs.items():
            if name in d:
                d[name] = from_mapping(sub, dict(d[name] or {}), name)
        if "injection" in d:
            d["injection"] = InjectionConfig.from_dict(dict(d["injection"] or {}))
        return from_mapping(cls, d, "match")


@dataclass
class MatchResult:
    """``rows`` (latents.json), flat ``metrics``, ``files`` written, ``info`` (match.json)."""

    rows: list[dict[str, Any]]
    metrics: dict[str, float]
    files: dict[str, Path]
    info: dict[str, Any]
    sparse_probes: list[dict[str, Any]] = field(default_factory=list)
    injection: list[dict[str, Any]] = field(default_factory=list)
    saebench: dict[str, Any] | None = None


def grouped_train_test(questions: Sequence[Question], test_size: float, seed: int,
                       probe_dir: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, test_idx)`` of ``questions``, no group on both sides.

    When the probe run's ``split.json`` covers these questions, its test part is the held-out
    part here too, so no item the LiReF was fitted on is "held out" in matching; otherwise a
    fresh grouped, stratified split (``probing.probes.evaluation.grouped_split``)."""
    from probing.probes.evaluation import grouped_split

    ids = [q.id for q in questions]
    split_file = Path(probe_dir) / "split.json" if probe_dir is not None else None
    if split_file is not None and split_file.is_file():
        from probing.io import read_json

        split = read_json(split_file)
        if split.get("mode") == "holdout" and set(split["test"]) <= set(ids):
            test_ids = set(split["test"])
            test = np.array([i for i, q in enumerate(ids) if q in test_ids], dtype=np.int64)
            train = np.array([i for i, q in enumerate(ids) if q not in test_ids], dtype=np.int64)
            log.info("held-out part = the probe run's test part (%d questions)", len(test))
            return train, test
    y = np.array([LABEL_TO_INT[q.label] for q in questions], dtype=np.int64)
    split = grouped_split(y, [q.group for q in questions], val_size=0.0, test_size=test_size,
                          seed=seed)
    return split.train, split.test


def question_sources(questions: Sequence[Question], key: str = "auto") -> tuple[list[str], str]:
    """Each question's reasoning *source* for ReasonScore's entropy term, and the key used."""
    def value(q: Question, k: str) -> str:
        return q.source if k == "source" else str(q.meta.get(k, ""))

    reasoning = [q for q in questions if q.label == "reasoning"]
    if key == "auto":
        key = next((k for k in ("source", "task")
                    if len({value(q, k) for q in reasoning}) > 1), "source")
    return [value(q, key) for q in questions], key


def _cosine_block(inputs: MatchInputs, x: torch.Tensor, y: np.ndarray, s: MatchSettings
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Cosines, the three nulls, significance; returns (columns, summary, plot samples)."""
    from probing.matching.geometry import decoder_cosines, encoder_cosines
    from probing.matching.nulls import (
        analytic_z,
        cosine_null,
        cosine_significance,
        max_null_p,
        permuted_directions,
        random_directions,
    )

    w = decoder_matrix(inputs.sae)
    d = w.shape[1]
    dec = decoder_cosines(inputs.sae, inputs.direction).numpy()
    enc = encoder_cosines(inputs.sae, inputs.direction).numpy()
    rnd_dirs = random_directions(s.nulls.n_random, d, s.seed)
    perm_dirs = permuted_directions(x, y, s.nulls.n_permutations, s.seed + 1)
    rnd = cosine_null(w, rnd_dirs, "random")
    perm = cosine_null(w, perm_dirs, "permutation")
    sig_r, sig_p = cosine_significance(dec, rnd), cosine_significance(dec, perm)
    cols = {"decoder_cosine": dec, "encoder_cosine": enc,
            "decoder_norm": w.norm(dim=1).numpy(),
            "cosine_z": sig_p["z"], "cosine_p": sig_p["p"], "cosine_q": sig_p["q"],
            "cosine_z_random": sig_r["z"], "cosine_p_random": sig_r["p"],
            "cosine_q_random": sig_r["q"], "cosine_z_analytic": analytic_z(dec, d)}
    top1 = int(np.argmax(np.abs(dec)))
    summary = {
        "n_random": rnd.n, "n_permutations": perm.n, "analytic_sd": 1 / math.sqrt(d),
        "top1_latent": top1, "top1_cosine": float(dec[top1]),
        "top1_p": max_null_p(sig_p["z"][top1], perm, studentized=True),
        "top1_p_random": max_null_p(dec[top1], rnd),
        "top1_z": float(sig_p["z"][top1]), "top1_q": float(sig_p["q"][top1]),
        "null_max_abs_cosine_random_95": float(np.quantile(rnd.max_abs, 0.95)),
        "null_max_abs_cosine_permutation_95": float(np.quantile(perm.max_abs, 0.95)),
        "n_significant_q05": int((sig_p["q"] < 0.05).sum()),
        "n_significant_q05_random": int((sig_r["q"] < 0.05).sum()),
    }
    controls = {"random": rnd_dirs, "permutation": perm_dirs}
    samples = {"random": rnd.sample, "permutation": perm.sample}
    return cols, summary, {"controls": controls, "samples": samples}


def _reconstruction(inputs: MatchInputs, controls: dict[str, torch.Tensor], s: MatchSettings
                    ) -> tuple[dict[str, Any], np.ndarray]:
    """OMP curve of the LiReF and its controls; also each latent's OMP step (NaN if unused)."""
    w = decoder_matrix(inputs.sae)
    r = unit_direction(inputs.direction, w.shape[1])
    max_k = s.reconstruction.max_k
    path = omp_path(w, r, max_k)
    curve = [{"k": k + 1, "cosine": rec.cosine, "latent": rec.indices[-1],
              "coefficient": float(rec.coefficients[-1])} for k, rec in enumerate(path)]
    step = np.full(w.shape[0], np.nan)
    for k, latent in enumerate(path[-1].indices):
        step[latent] = k + 1
    ctrl_rows: dict[str, list[dict[str, Any]]] = {}
    for name, dirs in controls.items():
        n = min(s.reconstruction.n_controls, dirs.shape[0])
        if n == 0:
            continue
        curves = np.full((n, len(path)), np.nan)
        for i in range(n):
            cp = omp_path(w, dirs[i] / dirs[i].norm(), len(path))
            vals = [rec.cosine for rec in cp]
            curves[i] = vals + [vals[-1]] * (len(path) - len(vals))
        ctrl_rows[name] = [{"k": k + 1, "mean": float(curves[:, k].mean()),
                            "lo": float(np.quantile(curves[:, k], 0.05)),
                            "hi": float(np.quantile(curves[:, k], 0.95))}
                           for k in range(len(path))]
    reach = next((row["k"] for row in curve if row["cosine"] >= 0.9), None)
    out = {"liref": curve, "controls": ctrl_rows, "k_for_0.9_cosine": reach,
           "latents": path[-1].indices, "coefficients": path[-1].coefficients.tolist(),
           "cosine": path[-1].cosine, "n_controls": s.reconstruction.n_controls}
    return out, step


def _rank(cols: dict[str, np.ndarray], key: str) -> np.ndarray:
    values = cols[key.removeprefix("abs_")].astype(np.float64)
    if key.startswith("abs_"):
        values = np.abs(values)
    values = np.where(np.isfinite(values), values, -np.inf)
    return np.lexsort((np.arange(values.size), -values))


def _py(v: Any) -> Any:
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def run_matching(
    model: Any,
    tokenizer: Any,
    inputs: MatchInputs,
    questions: Sequence[Question],
    out_dir: str | Path,
    settings: MatchSettings | None = None,
    template: Any = None,
    data_name: str | None = None,
    progress: bool = True,
) -> MatchResult:
    """Match the SAE's latents to the LiReF on ``questions`` and write the run's files.

    Args:
        model, tokenizer: the model the probe and SAE were made on (checked by the caller with
            ``check_model``).
        inputs: ``load_match_inputs(...)``. questions: labelled question set (both classes).
        template: ``PromptTemplate`` (``None`` = the paper's ``"Q: {question}\\nA: "``).
        data_name: recorded in ``match.json``.

    Returns:
        ``MatchResult``.
    """
    from probing.matching.plots import (
        plot_class_histograms,
        plot_cosine_histogram,
        plot_reconstruction,
        plot_sparse_probes,
    )
    from probing.matching.scores import (
        class_scores,
        encode_questions,
        gap_decomposition,
        reason_scores,
        token_stats,
        top_examples,
    )
    from probing.matching.sparse_probes import (
        saebench_pool_exclude,
        saebench_sparse_probes,
        sparse_probe_table,
    )
    from probing.questions.prompts import PromptTemplate, format_prompts

    s = settings or MatchSettings()
    template = template or PromptTemplate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not questions:
        raise LirefError("the question set is empty")
    y = np.array([LABEL_TO_INT[q.label] for q in questions], dtype=np.int64)
    if len(set(y.tolist())) < 2:
        raise LirefError(f"one-class question set: all {len(y)} questions are "
                         f"{questions[0].label!r}; matching needs reasoning and memory items")
    train, test = grouped_train_test(questions, s.test_size, s.seed, inputs.probe_dir)
    in_train = np.zeros(len(y), dtype=bool)
    in_train[train] = True
    prompts = format_prompts(questions, template, tokenizer)
    add_special = not template.chat
    sae, layer, direction = inputs.sae, inputs.layer, inputs.direction
    r_hat = unit_direction(direction, int(sae.cfg.d_in))
    log.info("encoding %d prompts at layer %d (%s position) with the SAE (%d latents)",
             len(prompts), layer, inputs.position, inputs.d_sae)
    pool_exclude = saebench_pool_exclude(tokenizer) if s.sparse_probes.saebench else None
    acts = encode_questions(model, tokenizer, sae, prompts, layer, inputs.position, direction,
                            s.batch_size, add_special, pool_exclude=pool_exclude,
                            progress=progress)
    from probing.probes.directions import diff_in_means

    agreement = float(diff_in_means(acts.x, y).double() @ r_hat
                      / diff_in_means(acts.x, y).double().norm())

    # geometry + nulls + reconstruction
    cols, null_summary, extra = _cosine_block(inputs, acts.x, y, s)
    recon, omp_step = _reconstruction(inputs, extra["controls"], s)
    cols["omp_step"] = omp_step

    # activation scores: ranking on the training part, test_* on the held-out part
    f = acts.f
    tr_scores, te_scores = class_scores(f[train], y[train]), class_scores(f[test], y[test])
    cols.update(tr_scores)
    for key in ("mean_diff", "cohens_d", "auroc"):
        cols[f"test_{key}"] = te_scores[key]
    tok = acts.tokens
    sources, source_key = question_sources(questions, s.reason_score.sources)
    source_ids = np.unique(np.asarray(sources), return_inverse=True)[1]
    tp = tok.prompt.numpy()
    rs = reason_scores(tok, y[tp], source_ids[tp], decoder_matrix(sae).norm(dim=1),
                       s.reason_score.alpha, token_weight=in_train[tp])
    cols.update(rs)
    gap_tr = gap_decomposition(sae, acts.x[train], f[train], y[train], r_hat)
    gap_te = gap_decomposition(sae, acts.x[test], f[test], y[test], r_hat)
    cols["gap_share"], cols["gap_contribution"] = gap_tr["share"], gap_tr["contribution"]
    cols["test_gap_share"] = gap_te["share"]
    cols.update(token_stats(tok))

    order = _rank(cols, s.rank_by)
    d_sae = int(inputs.d_sae)
    top = [int(i) for i in order[: min(s.top_k, d_sae)]]
    for name in ("test_auroc_lo", "test_auroc_hi"):
        cols[name] = np.full(d_sae, np.nan)
    for i in top:
        _, lo, hi = auroc_with_ci(y[test], f[test][:, i].numpy(), s.n_resamples, seed=s.seed)
        cols["test_auroc_lo"][i], cols["test_auroc_hi"][i] = lo, hi

    # token-injection control (top latents + the LiReF)
    inj_rows = _injection(model, tokenizer, sae, acts, questions, y, in_train, test,
                          order, cols, r_hat, template, add_special, inputs, s, progress)
    inj_by_latent = {r["latent"]: r for r in inj_rows if r.get("latent") is not None}

    # rows
    rank_of = np.empty(d_sae, dtype=np.int64)
    rank_of[order] = np.arange(1, d_sae + 1)
    rows: list[dict[str, Any]] = []
    for i in order.tolist():
        row: dict[str, Any] = {"latent": int(i), "rank": int(rank_of[i])}
        for c in LATENT_COLUMNS[2:]:
            if c in cols:
                row[c] = _py(cols[c][i])
        row["omp_step"] = None if row.get("omp_step") is None else int(row["omp_step"])
        inj = inj_by_latent.get(i)
        row.update({
            "injection_d": _py(inj["d"]) if inj else None,
            "injection_class": inj["class"] if inj else None,
            "injection_d_random": _py(inj["d_random"]) if inj else None,
            **{f"injection_{k}": _py(inj[k]) if inj else None for k in (
                "d_random_matched", "d_excess", "d_excess_lo", "d_excess_hi")},
            "injection_class_vs_random": inj["class_vs_random"] if inj else None,
            **{f"injection_d_{h}": _py(inj.get(f"d_{h}")) if inj else None for h in READOUTS},
            "injection_best": inj["best"] if inj else None,
            "injection_units": " | ".join(inj["units"]) if inj else None,
        })
        rows.append({c: row.get(c) for c in LATENT_COLUMNS})

    files: dict[str, Path] = {}
    write_json(out / LATENTS_FILENAME, rows)
    files["latents"] = out / LATENTS_FILENAME
    files["latents_csv"] = write_csv(out / "latents.csv", rows, LATENT_COLUMNS)
    write_json(out / "reconstruction.json", recon)
    files["reconstruction"] = out / "reconstruction.json"
    write_json(out / "nulls.json", null_summary)
    files["nulls"] = out / "nulls.json"

    def gap_json(g: dict[str, Any]) -> dict[str, Any]:
        contrib = np.asarray(g["contribution"])
        best = np.argsort(-contrib)[:20]
        return {"gap": g["gap"], "bias_term": g["bias_term"], "error_term": g["error_term"],
                "latent_sum": float(contrib.sum()),
                "check": g["gap"] - float(contrib.sum()) - g["bias_term"] - g["error_term"],
                "top_contributions": [{"latent": int(i), "contribution": float(contrib[i]),
                                       "share": _py(g["share"][i])} for i in best]}

    write_json(out / "gap.json", {"train": gap_json(gap_tr), "test": gap_json(gap_te)})
    files["gap"] = out / "gap.json"

    # sparse probes (held-out): liref's last-token variant and SAEBench's protocol
    sp_rows = sparse_probe_table(f, acts.x, y, train, test, prompts, direction,
                                 s.sparse_probes.ks, s.sparse_probes.C, s.n_resamples, s.seed)
    saebench = None
    if acts.f_mean is not None and acts.x_mean is not None:
        saebench = saebench_sparse_probes(acts.f_mean, acts.x_mean, y, train, test,
                                          s.sparse_probes.saebench_ks, s.n_resamples, s.seed)
    write_json(out / "sparse_probes.json", {"last_token": sp_rows, "saebench": saebench})
    files["sparse_probes"] = out / "sparse_probes.json"
    write_json(out / "injection.json", inj_rows)
    files["injection"] = out / "injection.json"

    # examples
    examples = {"liref": top_examples(acts, tok.proj, tokenizer, y, s.examples.n_tokens,
                                      s.examples.n_prompts)} if tok.proj is not None else {}
    for i in top:
        examples[str(i)] = top_examples(acts, tok.column(i), tokenizer, y, s.examples.n_tokens,
                                        s.examples.n_prompts)
    write_json(out / "top_examples.json", examples)
    files["top_examples"] = out / "top_examples.json"
    write_json(out / "split.json", {"train": [questions[i].id for i in train],
                                    "test": [questions[i].id for i in test]})
    files["split"] = out / "split.json"

    # plots
    title = f"layer {layer}, {inputs.architecture} SAE ({d_sae} latents)"
    files["plot_cosines"] = plot_cosine_histogram(
        cols["decoder_cosine"], int(sae.cfg.d_in), extra["samples"], top,
        out / "cosine_hist.png", title=f"decoder cosines vs nulls: {title}")
    files["plot_reconstruction"] = plot_reconstruction(
        recon["liref"], recon["controls"], out / "reconstruction.png",
        title=f"OMP reconstruction of the LiReF: {title}")
    files["plot_sparse_probes"] = plot_sparse_probes(
        sp_rows, out / "sparse_probes.png", title=f"held-out sparse probes: {title}")
    hist = {"LiReF projection": acts.direction_readout(r_hat, "position")[test].numpy()}
    for i in top[:7]:
        hist[f"latent {i} (rank {rank_of[i]})"] = f[test][:, i].numpy()
    files["plot_top_latents"] = plot_class_histograms(
        hist, y[test], out / "top_latents_hist.png",
        title=f"held-out prompts at the probe position ({inputs.position}): {title}")

    info = {
        "sae_dir": inputs.sae_dir, "sae_release": inputs.sae_release, "sae_id": inputs.sae_id,
        "layer": layer, "model": inputs.model, "d_model": inputs.d_model, "d_sae": d_sae,
        "probe_dir": inputs.probe_dir, "rank_by": s.rank_by, "position": inputs.position,
        "data": data_name, "architecture": inputs.architecture, "source_key": source_key,
        "n_questions": len(questions), "liref_version": __version__,
    }
    write_json(out / MATCH_FILENAME, info)
    files["match"] = out / MATCH_FILENAME

    metrics = _metrics(rows, null_summary, recon, sp_rows, inj_rows, gap_tr, gap_te, s)
    metrics.update(_saebench_metrics(saebench))
    metrics.update({"direction_agreement": agreement, "n_questions": len(questions),
                    "n_train": len(train), "n_test": len(test), "n_tokens": tok.n_tokens,
                    "layer": layer, "d_sae": d_sae})
    return MatchResult(rows=rows, metrics=metrics, files=files, info=info,
                       sparse_probes=sp_rows, injection=inj_rows, saebench=saebench)


def _injection(model: Any, tokenizer: Any, sae: Any, acts: Any, questions: Sequence[Question],
               y: np.ndarray, in_train: np.ndarray, test: np.ndarray, order: np.ndarray,
               cols: dict[str, np.ndarray], r_hat: torch.Tensor, template: Any,
               add_special: bool, inputs: MatchInputs, s: MatchSettings, progress: bool
               ) -> list[dict[str, Any]]:
    """The token-injection control of the top ``injection.top_k`` latents and the LiReF."""
    from probing.matching.injection import (
        frequency_bands,
        matched_random_units,
        ngram_table,
        random_units,
        run_injection,
        top_units,
    )
    from probing.matching.scores import prompt_readouts
    from probing.questions.prompts import format_prompts

    cfg = s.injection
    tok = acts.tokens
    specials = list(getattr(tokenizer, "all_special_ids", []) or [])
    table = ngram_table(tok.prompt, tok.pos, tok.token, specials)
    counts = (cfg.n_single, cfg.n_bigram, cfg.n_trigram)
    token_train = torch.as_tensor(in_train)[tok.prompt]
    token_label = torch.as_tensor(y)[tok.prompt]
    latents = [int(i) for i in order[: cfg.top_k]]
    targets = []
    for c, i in enumerate(latents):
        prefers = 1 if cols["mean_diff"][i] >= 0 else 0
        units = top_units(tok.column(i), table, token_train & (token_label == prefers),
                          tokenizer, counts, cfg.min_count)
        targets.append(Target(f"latent {i}", c, prefers, units))
    if tok.proj is not None:
        units = top_units(tok.proj, table, token_train & (token_label == 1), tokenizer, counts,
                          cfg.min_count)
        targets.append(Target("liref", len(latents), 1, units))
    # the random-token baseline: per unit, random units of its tokens' frequency bands (counted
    # over the training prompts, where the units are read), none of the target's own tokens
    bands = frequency_bands(tok.token, token_train, specials, cfg.n_freq_bands)
    for target in targets:
        rng = np.random.default_rng([cfg.seed, target.column])
        own = sorted({t for u in target.units for t in u.ids})
        target.matched = {u.ids: matched_random_units(u, bands, tokenizer, cfg.n_random_draws,
                                                      rng, own) for u in target.units}
    controls: dict[int, list] = {}
    if cfg.random_control:  # random units from the questions they are injected into
        for key, use in ((0, token_label == 0), (1, token_label == 1), (-1, None)):
            mask = token_train if use is None else token_train & use
            controls[key] = random_units(table, mask, tokenizer, counts, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    if cfg.baseline == "neutral":
        texts = list(cfg.neutral_texts)
        baselines = {-1: [texts[i] for i in rng.permutation(len(texts))[: cfg.n_prompts]]}
    else:
        baselines = {}
        for label in (0, 1):
            pool = [int(i) for i in test if y[i] == label]
            pick = rng.permutation(len(pool))[: cfg.n_prompts]
            baselines[label] = [questions[pool[j]].question for j in pick]
    readouts = {c: cfg.readout for c in range(len(latents))}
    readouts[len(latents)] = cfg.direction_readout

    def score(texts: list[str]) -> dict[str, torch.Tensor]:
        prompts = format_prompts(texts, template, tokenizer)
        return prompt_readouts(model, tokenizer, sae, prompts, inputs.layer, latents, r_hat,
                               inputs.position, max(s.batch_size, 32), add_special,
                               progress=progress)

    log.info("token injection: %d targets x %d units x %d strategies x <= %d prompts",
             len(targets), sum(counts), len(cfg.strategies), cfg.n_prompts)
    rows = run_injection(targets, baselines, score, readouts, cfg.strategies, controls,
                         cfg.seed, READOUTS, s.n_resamples)
    for row, target in zip(rows, targets, strict=True):
        row["latent"] = latents[target.column] if target.column < len(latents) else None
        row["prefers"] = "reasoning" if target.prefers == 1 else "memory"
        row["readout"] = readouts[target.column]
    return rows


def _metrics(rows: list[dict[str, Any]], nulls: dict[str, Any], recon: dict[str, Any],
             sparse: list[dict[str, Any]], injection: list[dict[str, Any]],
             gap_tr: dict[str, Any], gap_te: dict[str, Any], s: MatchSettings
             ) -> dict[str, float]:
    m: dict[str, float] = {k: v for k, v in nulls.items() if isinstance(v, (int, float))}
    reach = recon["k_for_0.9_cosine"]  # absent from metrics.json when not reached by max_k
    m["k_for_0.9_cosine"] = float(reach) if reach is not None else float("nan")
    m["reached_0.9_cosine"] = float(reach is not None)
    m["reconstruction_max_k"] = float(len(recon["liref"]))
    curve = {r["k"]: r["cosine"] for r in recon["liref"]}
    last = max(curve)
    for k in (1, 5, 20, 64):
        m[f"reconstruction_cosine_k{k}"] = curve.get(k, curve[last])
        for name, ctrl in recon["controls"].items():
            by_k = {r["k"]: r["mean"] for r in ctrl}
            m[f"reconstruction_cosine_k{k}_{name}"] = by_k.get(k, by_k[max(by_k)])
    for r in sparse:
        if r["k"] is None:
            m[f"{r['kind']}_auroc"] = r["auroc"]
            m[f"{r['kind']}_accuracy"] = r["accuracy"]
        elif r["k"] in (1, 2, 5, 20):
            m[f"sparse_{r['kind']}_auroc_k{r['k']}"] = r["auroc"]
    m["gap"] = gap_tr["gap"]
    m["gap_error_share"] = gap_tr["error_term"] / gap_tr["gap"] if gap_tr["gap"] else float("nan")
    m["gap_test"] = gap_te["gap"]
    top_rows = rows[: s.top_k]
    m[f"gap_share_top{s.top_k}"] = float(sum(r["gap_share"] or 0.0 for r in top_rows))
    m["rank1_latent"] = rows[0]["latent"]
    for key in ("decoder_cosine", "gap_share", "reason_score", "auroc", "test_auroc"):
        value = rows[0].get(key)
        m[f"rank1_{key}"] = float(value) if value is not None else float("nan")
    tested = [r for r in injection if r.get("latent") is not None][:20]
    if tested:
        classes = [r["class"] for r in tested]
        m["frac_token_driven_top20"] = classes.count("token-driven") / len(tested)
        m["frac_context_dependent_top20"] = classes.count("context-dependent") / len(tested)
        m["n_injection_tested"] = len(tested)
        vs = [r["class_vs_random"] for r in tested if r.get("class_vs_random") is not None]
        if vs:  # the headline classes: own tokens against frequency-matched random tokens
            m["frac_token_driven_vs_random_top20"] = vs.count("token-driven") / len(vs)
            m["frac_context_dependent_vs_random_top20"] = \
                vs.count("context-dependent") / len(vs)
            m["n_injection_vs_random"] = len(vs)
    liref = next((r for r in injection if r["name"] == "liref"), None)
    if liref is not None:
        m["liref_injection_d"] = liref["d"]
        m["liref_injection_d_random"] = liref["d_random"]
        if liref.get("d_excess") is not None:
            for k in ("d_random_matched", "d_excess", "d_excess_lo", "d_excess_hi"):
                m[f"liref_injection_{k}"] = liref[k]
            m["liref_injection_token_driven_vs_random"] = float(
                liref["class_vs_random"] not in (None, "context-dependent"))
    return m


def _saebench_metrics(block: dict[str, Any] | None) -> dict[str, float]:
    """``sparse_probe/saebench/<latents|neurons>_k<k>_<accuracy|auroc|balanced_accuracy>``,
    with ``_ci_low`` / ``_ci_high`` for accuracy and AUROC (none when ``block`` is None)."""
    m: dict[str, float] = {}
    for kind in ("latents", "neurons"):
        for r in (block or {}).get(kind, []):
            key = f"sparse_probe/saebench/{kind}_k{r['k']}"
            m[f"{key}_balanced_accuracy"] = r["balanced_accuracy"]
            for name in ("accuracy", "auroc"):
                m[f"{key}_{name}"] = r[name]
                m[f"{key}_{name}_ci_low"] = r[f"{name}_lo"]
                m[f"{key}_{name}_ci_high"] = r[f"{name}_hi"]
    return m
