"""A whole steering run (the body of ``analysis.steer`` and of the pipeline's ``steer`` stage).

``run_steering(model, tokenizer, settings, sets, out_dir)``: the settings of a sweep (the LiReF of a
probe run and, with a matching run, its top latents; every strength beside its controls; with
``steer.prompting.run`` the prompting baseline) are evaluated on held-out question sets, paired
against the unsteered run on the same items. Each set's items are split in two halves by group
(``probing.steering.heldout``): the strength of each intervention is chosen on the choice half,
every headline figure is measured on the report half. Writes ``results.json`` / ``results.csv``
(one row per set x metric x setting, all items: the choice half included, ``half="all"``),
``results_report.json`` (the same rows on the report half), ``items.json`` (flips per setting,
completions; the prompting baseline's settings after the sweep's), ``settings.json`` (the
sweep's settings; ``prompt``: per set, its mode and instructions), ``selection.json`` (the
halves' ids, the objective per strength, the chosen strengths), ``erasers/`` (with ``erase``:
the fitted LEACE erasers, ``probing.steering.erasure.load_erasers``) and one PNG per (metric,
intervention, layer, rank); returns a ``SteeringResult`` whose ``metrics`` are the headline
effects on the report half.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from probing.errors import LirefError
from probing.io import read_json, write_json
from probing.steering.heldout import Objective, Selection
from probing.steering.prompting import Prompting
from probing.steering.sources import ProbeRun
from probing.steering.sweep import INTERVENTIONS, SweepSpec

log = logging.getLogger(__name__)

__all__ = [
    "GenerateSettings",
    "SteerSets",
    "SteeringControls",
    "SteeringResult",
    "SteeringSettings",
    "check_steer_sets",
    "fitted_ids",
    "run_steering",
]

UNITS = ("abs", "gap", "norm")
POSITIONS = ("all", "prompt", "generated")
METRICS = ("teacher_forced", "generate")


@dataclass
class SteeringControls:
    """The controls beside every steered setting."""

    n_random: int = 3  # seeded random directions of the same norm
    negated: bool = True  # -LiReF (add)
    orthogonal: bool = True  # LiReF minus the span of the top latents' decoder rows
    top_k_latents: int = 2  # matched latents steered with (add_latent, clamp_latent)
    n_random_latents: int = 3  # random latents of similar firing density per matched latent
    n_permuted: int = 5  # erase: LEACE erasers fitted on permuted labels (seeds seed..)

    def __post_init__(self) -> None:
        for name in ("n_random", "top_k_latents", "n_random_latents", "n_permuted"):
            if int(getattr(self, name)) < 0:
                raise LirefError(f"steering controls.{name}={getattr(self, name)}; allowed: >= 0")


def _default_strengths() -> dict[str, list[float]]:
    return {"add": [0.25, 0.5, 1.0, 2.0], "scale": [1.0, 3.0], "released": [0.1, 1.0],
            "add_latent": [2.0, 4.0, 8.0], "clamp_latent": [0.0, 2.0, 4.0]}


@dataclass
class SteeringSettings:
    """One steering sweep: what is steered, how strongly, with which controls.

    ``steer_layers``: the steering layers (layer l = output of decoder block l); ``None`` = the
    probe run's chosen layer (``best_layer`` in its ``metrics.json``). ``strengths``: per intervention,
    in ``units`` for ``add`` (``abs`` residual units, ``gap`` x ||diff-in-means||, ``norm`` x the
    mean residual norm at the last prompt token), the scale for ``scale`` / ``released``, x the
    latent's max activation for ``add_latent`` / ``clamp_latent``. ``selection``: the held-out
    choice of the strength whose effects go into ``metrics.json`` (chosen on one half of each
    set's items, measured on the other). ``headline``: an explicit override, ``{intervention:
    strength}`` fixed in advance for those interventions (still measured on the report half).
    """

    steer_layers: list[int] | None = None
    interventions: list[str] = field(default_factory=lambda: ["add", "ablate", "erase"])
    strengths: dict[str, list[float]] = field(default_factory=_default_strengths)
    units: str = "gap"
    positions: str = "all"
    controls: SteeringControls = field(default_factory=SteeringControls)
    selection: Selection = field(default_factory=Selection)
    headline: dict[str, float] = field(default_factory=dict)
    n_resamples: int = 1000
    batch_size: int = 256
    plots: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.controls, Mapping):
            self.controls = SteeringControls(**self.controls)
        if isinstance(self.selection, Mapping):
            self.selection = Selection(**self.selection)
        unknown = [i for i in [*self.interventions, *self.headline] if i not in INTERVENTIONS]
        if unknown:
            raise LirefError(f"unknown interventions {unknown}; allowed: {list(INTERVENTIONS)}")
        if self.units not in UNITS:
            raise LirefError(f"units={self.units!r}; allowed: {list(UNITS)}")
        if self.positions not in POSITIONS:
            raise LirefError(f"positions={self.positions!r}; allowed: {list(POSITIONS)}")
        if self.batch_size < 1 or self.n_resamples < 1:
            raise LirefError(f"batch_size={self.batch_size}, n_resamples={self.n_resamples}; "
                             "allowed: >= 1")


@dataclass
class GenerateSettings:
    """Greedy generation: ``n`` items per set also scored on generations (0 = none; every item
    when ``SteerSets.metric`` is ``generate``)."""

    n: int = 0
    max_new_tokens: int = 3
    batch_size: int = 16
    stop_at: str | None = "\n"


@dataclass
class SteerSets:
    """The question sets a sweep is evaluated on (``conf/steer/<name>.yaml``).

    ``sets``: each a ``load_question_set`` mapping plus ``set`` (its name in the results),
    ``rates`` (``{name: meta key}``: rate of answering that meta answer), ``contrast``
    (``[a, b]``: margin log P(a) - log P(b)), ``prompt`` (a ``PromptTemplate`` mapping) and
    ``generate_n`` (items of that set also scored by greedy generation; default ``generate.n``),
    ``objective`` (``{score, sign}``: what the strengths are chosen for on that set; see
    ``probing.steering.heldout``) and ``mode`` (``reasoning``, ``memory`` or ``context``: the
    prompting baseline's instruction; default from its items). ``metric``: ``teacher_forced``
    (one forward pass per item and setting) or ``generate``. ``prompting``: the prompting
    baseline (``probing.steering.prompting``).
    """

    sets: list[dict[str, Any]] = field(default_factory=list)
    metric: str = "teacher_forced"
    n_per_set: int | None = 200
    root: str | None = None  # folder the sets' paths are written against (interpolated)
    generate: GenerateSettings = field(default_factory=GenerateSettings)
    prompting: Prompting = field(default_factory=Prompting)

    def __post_init__(self) -> None:
        if isinstance(self.generate, Mapping):
            self.generate = GenerateSettings(**self.generate)
        if isinstance(self.prompting, Mapping):
            self.prompting = Prompting(**self.prompting)
        if self.metric not in METRICS:
            raise LirefError(f"steer.metric {self.metric!r}; allowed: {', '.join(METRICS)}")


@dataclass
class SteeringResult:
    """What a steering run wrote: its rows, per-set item flips, plots and headline metrics."""

    rows: list[dict[str, Any]]
    items: dict[str, dict[str, Any]]
    plots: list[Path]
    metrics: dict[str, Any]
    layers: list[int]


def fitted_ids(probe_dir: str | Path) -> set[str]:
    """Ids of the questions the probe run fitted its directions on (its training and validation
    parts; every probed question after a nested k-fold), from ``split.json``."""
    from probing.steering.sources import load_probe_run

    split_file = load_probe_run(probe_dir).folder / "split.json"
    if not split_file.is_file():
        return set()
    split = read_json(split_file)
    if split.get("mode") == "holdout":
        return set(split["train"]) | set(split["val"])
    return {i for fold in split.get("test_folds", []) for i in fold}


def check_steer_sets(model_name: str, sets: Sequence[Mapping[str, Any]] | None,
                     where: str = "steer sets") -> None:
    """The organism's question sets need the organism: a real model gets one clear error
    (before any stage of a pipeline runs) naming the configs that fit it."""
    named = [s.get("set") or s.get("name") for s in (sets or [])
             if s.get("name") in ("organism", "organism_conflict")]
    organism = model_name == "organism" or Path(model_name, "organism.json").is_file()
    if named and not organism:
        fix = ("conflict_data=paper_local (PopQA conflicts)" if where == "conflict_data" else
               "steer=benchmarks_cpu (teacher-forced, CPU) or steer=benchmarks (generation)")
        raise LirefError(f"{where} {named} ask the organism's synthetic questions, but model "
                         f"is {model_name!r}; for a real model use {fix}, or --config-name "
                         "study_smollm2 (study_gemma3)")


def _fitted_groups(conflict_dir: str | Path | None) -> set[str]:
    """The facts (groups) a conflict run fitted its direction on: every item of those facts
    (counterfactual, consistent, closed-book) is left out of the steering sets."""
    from probing.conflicts.build import fact_group

    if not conflict_dir:
        return set()
    return {fact_group(i) for i in fitted_ids(conflict_dir)}


def _subset(evalset: Any, n: int, seed: int,
            halves: tuple[list[str], list[str]] | None = None) -> Any:
    """``n`` items of a seeded shuffle of ``evalset`` (for generation), in the items' order;
    with ``halves`` (choice, report ids) drawn from each half in proportion to its size."""
    total = len(evalset.questions)
    if n >= total:
        return evalset
    wanted = [None] if halves is None else [set(ids) for ids in halves]
    pools = [[i for i, q in enumerate(evalset.questions) if ids is None or q.id in ids]
             for ids in wanted]
    rng = np.random.default_rng(seed)
    n_first = n if len(pools) == 1 else min(len(pools[0]), max(1, round(n * len(pools[0])
                                                                        / total)))
    keep: list[int] = []
    for pool, k in zip(pools, [n_first, n - n_first], strict=False):
        keep += [pool[i] for i in rng.permutation(len(pool))[:k]]
    keep = sorted(keep)
    return replace(evalset, questions=[evalset.questions[i] for i in keep],
                   prompts=[evalset.prompts[i] for i in keep])


def _plots(rows: Sequence[Mapping[str, Any]], out_dir: Path) -> list[Path]:
    from probing.steering.plots import plot_sweep, sweep_panels, sweep_values

    values = sweep_values(rows)
    plots = []
    for m, name, layer, rank in sweep_panels(rows):
        tag = f"{m}_{name}_L{layer}" + (f"_rank{rank}" if rank is not None else "")
        path = plot_sweep(rows, out_dir / f"steer_{tag}.png", m, name, layer, rank, values)
        if path is not None:
            plots.append(path)
    return plots


def _headline(rows: Sequence[Mapping[str, Any]], head: Mapping[str, float],
              layer: int) -> dict[str, Any]:
    """The headline effects of every intervention of ``rows`` at its strength in ``head``
    (none for interventions without strengths: ablation, prompting)."""
    from probing.steering.evaluate import headline_metrics

    metrics: dict[str, Any] = {}
    for name in dict.fromkeys(r["intervention"] for r in rows if r["intervention"] != "none"):
        no_strength = all(r["strength"] is None for r in rows if r["intervention"] == name)
        if not no_strength and head.get(name) is None:
            continue
        strength = None if no_strength else float(head[name])
        metrics.update(headline_metrics(rows, name, strength, layer))
    return metrics


def _erasers(probe: ProbeRun, spec: SweepSpec, out: Path,
             ) -> tuple[dict[int, Any] | None, dict[str, float]]:
    """With ``erase``: the probe's LEACE erasers at the steering layers (and the permuted-label
    ones), written to ``out/erasers/``; metrics ``erase/<stat>`` of the first layer's (``rank``,
    ``leftover`` = cross-covariance with the labels left on the fitting data, ``permuted_*`` =
    the mean over the permuted-label erasers)."""
    from probing.steering.erasure import fit_probe_erasers, save_erasers

    if "erase" not in spec.interventions:
        return None, {}
    t = time.perf_counter()
    seeds = [spec.seed + k for k in range(spec.n_permuted)]
    erasers, meta = fit_probe_erasers(probe, spec.layers, seeds)
    save_erasers(out / "erasers", erasers, meta)
    info = erasers[spec.layers[0]].info
    perm = [v for k, v in info.items() if k.startswith("permuted_")]
    metrics = {"erase/n_fit": float(meta["n_fit"]), "erase/rank": float(info["direction"]["rank"]),
               "erase/leftover": info["direction"]["leftover"]}
    if perm:
        metrics["erase/permuted_rank"] = float(np.mean([p["rank"] for p in perm]))
        metrics["erase/permuted_leftover"] = float(np.mean([p["leftover"] for p in perm]))
    log.info("LEACE erasers at layers %s fitted on %d training items (+%d permuted) in %.1f s",
             spec.layers, meta["n_fit"], len(seeds), time.perf_counter() - t)
    return erasers, metrics


def _objectives(specs: list[dict[str, Any]], selection: Selection) -> dict[str, Objective]:
    """``{set name: Objective}`` of the sets taking part in the choice (popping each spec's
    ``objective``): the sets that name one, or every set with the default."""
    named = {str(s.get("set") or s.get("name")): s.pop("objective", None) for s in specs}
    if any(v is not None for v in named.values()):
        return {k: Objective(**v) for k, v in named.items() if v is not None}
    return {k: selection.objective for k in named}


def _score(outcome: Any, infos: Sequence[Mapping[str, Any]], halves: tuple[list[str], list[str]],
           n_resamples: int, seed: int, parts: dict[str, list[dict[str, Any]]],
           ) -> list[dict[str, Any]]:
    """The sweep rows of ``outcome`` on all items (returned, ``half="all"``) and on each half
    (appended to ``parts["choice"]`` / ``parts["report"]``)."""
    from probing.steering.evaluate import sweep_rows
    from probing.steering.heldout import restrict

    for half, ids in zip(("choice", "report"), halves, strict=True):
        part = restrict(outcome, ids)
        if part is None:
            log.info("%s/%s: no item in the %s half", outcome.set, outcome.metric, half)
            continue
        parts[half] += [{**r, "half": half}
                        for r in sweep_rows(part, infos, n_resamples, seed)]
    return [{**r, "half": "all"} for r in sweep_rows(outcome, infos, n_resamples, seed)]


def _selection_metrics(chosen: Mapping[str, Mapping[str, Any]],
                       halves: Mapping[str, tuple[list[str], list[str]]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, c in chosen.items():
        out[f"headline/{name}/fixed"] = float(c["fixed"])
        value = c["objective"].get(c["strength"])
        if value is not None:
            out[f"headline/{name}/objective"] = float(value)
    for set_name, (a, b) in halves.items():
        out[f"selection/{set_name}/n_choice"] = float(len(a))
        out[f"selection/{set_name}/n_report"] = float(len(b))
    return out


def run_steering(model: nn.Module, tokenizer: Any, settings: SteeringSettings, sets: SteerSets,
                 out_dir: str | Path, probe_dir: str | Path | None,
                 match_dir: str | Path | None = None, sae_dir: str | Path | None = None,
                 template: Mapping[str, Any] | None = None, model_name: str = "",
                 seed: int = 0, conflict_dir: str | Path | None = None) -> SteeringResult:
    """Evaluate every setting of the sweep on every set of ``sets``; write the result files
    into ``out_dir`` (see the module docstring).

    ``probe_dir``: a probe run (its directions and chosen layer); ``match_dir``: a matching run
    (latent interventions, the ``orthogonal`` control); ``sae_dir``: the SAE of the matched
    latents (``None`` = the one the matching run names); ``conflict_dir``: a conflict run (its
    direction, the knob, is steered beside the LiReF; the facts it was fitted on are left out)."""
    from probing.evaluation.paired import add_q_values
    from probing.io import write_csv
    from probing.model.loading import organism_checkpoint
    from probing.questions.prompts import prompt_template
    from probing.steering.controls import mean_residual_norm
    from probing.steering.evaluate import (
        build_eval_set,
        evaluate_generation,
        evaluate_teacher_forced,
        item_flips,
    )
    from probing.steering.heldout import choose_strengths, split_halves
    from probing.steering.prompting import merge_outcomes, prompt_outcomes, set_mode
    from probing.steering.sources import load_match_run, load_probe_run
    from probing.steering.sweep import SweepSpec, build_settings

    start = time.perf_counter()
    out = Path(out_dir)
    if probe_dir in (None, "", "???"):
        raise LirefError("probe_dir is required: the output folder of `python -m train.probe` "
                         "(or of `python -m analysis.pipeline`)")
    probe = load_probe_run(probe_dir)
    d_model = int(model.get_input_embeddings().weight.shape[1])
    width = int(probe.meta.get("d_model", d_model))
    if width != d_model:
        raise LirefError(f"the probe run's directions are {width}-wide but the model's residual "
                         f"stream is {d_model}-wide: they come from another model "
                         f"({probe.meta.get('model')!r})")
    match = load_match_run(match_dir) if match_dir else None
    sae = match.load_sae(sae_dir=sae_dir) if match is not None else None
    if settings.steer_layers is None and probe.best_layer is None:
        raise LirefError(f"{probe.folder} has no metrics.json with best_layer; name the "
                         f"steering layers (steering.steer_layers=[...])")
    layers = ([probe.best_layer] if settings.steer_layers is None
              else [int(x) for x in settings.steer_layers])
    if sets.metric == "teacher_forced" and settings.positions == "generated":
        raise LirefError("positions=generated cannot move teacher-forced scores (they are read "
                         "at the last prompt token); use steer.metric=generate")
    if not sets.sets:
        raise LirefError("steer.sets is empty: name at least one question set")
    check_steer_sets(model_name, sets.sets)
    exclude = fitted_ids(probe_dir)  # held out from the direction, as every figure is
    exclude_groups = _fitted_groups(conflict_dir)
    tmpl = prompt_template(template)
    specs = [dict(s) for s in sets.sets]
    gen_n = [s.pop("generate_n", None) for s in specs]  # per set: items also generated
    objectives = _objectives(specs, settings.selection)
    modes = [s.pop("mode", None) for s in specs]
    evalsets = [build_eval_set(spec, tmpl, tokenizer, organism_checkpoint(model),
                               sets.n_per_set, seed, exclude, exclude_groups) for spec in specs]
    knob = None
    if conflict_dir:
        from probing.steering.sources import load_probe_run

        knob = load_probe_run(conflict_dir).directions
    norm_unit = None
    if settings.units == "norm":  # the mean residual norm at the last prompt token
        prompts = [p for es in evalsets for p in es.prompts]
        norm_unit = mean_residual_norm(model, tokenizer, prompts, layers, settings.batch_size)
    ctl = settings.controls
    spec = SweepSpec(interventions=list(settings.interventions), layers=layers,
                     strengths={k: list(v) for k, v in settings.strengths.items()},
                     units=settings.units, norm_unit=norm_unit, positions=settings.positions,
                     n_random=ctl.n_random, negated=ctl.negated, orthogonal=ctl.orthogonal,
                     top_k_latents=ctl.top_k_latents, n_random_latents=ctl.n_random_latents,
                     n_permuted=ctl.n_permuted, seed=seed)
    erasers, erase_metrics = _erasers(probe, spec, out)
    built = build_settings(spec, probe.directions, match, sae, knob, erasers)
    interventions = [s.interventions for s in built]
    infos = [s.info for s in built]
    log.info("%d settings x %d sets (%s); layers %s", len(built), len(evalsets),
             ", ".join(f"{e.name}: {len(e.questions)}" for e in evalsets), layers)
    sel, prompting = settings.selection, sets.prompting
    halves = {es.name: split_halves(es.questions, sel.fraction, sel.seed) for es in evalsets}
    rows: list[dict[str, Any]] = []
    parts: dict[str, list[dict[str, Any]]] = {"choice": [], "report": []}
    items: dict[str, dict[str, Any]] = {}
    prompts_used: dict[str, dict[str, Any]] = {}
    bs, gen = settings.batch_size, sets.generate

    def forced(e: Any, settings_: Any) -> Any:
        return evaluate_teacher_forced(model, tokenizer, e, settings_, bs)

    def generated(e: Any, settings_: Any) -> Any:
        return evaluate_generation(model, tokenizer, e, settings_, gen.max_new_tokens,
                                   min(bs, gen.batch_size), gen.stop_at)

    for es, set_gen, set_spec, mode in zip(evalsets, gen_n, specs, modes, strict=True):
        set_tmpl = prompt_template(set_spec["prompt"]) if set_spec.get("prompt") else tmpl
        mode = set_mode(es.questions, mode)
        passes = [(es, forced)] if sets.metric == "teacher_forced" else []
        n_gen = (len(es.questions) if sets.metric == "generate"
                 else gen.n if set_gen is None else int(set_gen))
        if n_gen > 0:
            passes.append((_subset(es, n_gen, seed, halves[es.name]), generated))
        for part, evaluate in passes:
            t = time.perf_counter()
            outcome, set_infos = evaluate(part, interventions), list(infos)
            if prompting.run:  # the prompting baseline: hooks off, instructed prompts
                extra, extra_infos, texts = prompt_outcomes(model, tokenizer, part, set_tmpl,
                                                            prompting, mode, evaluate)
                outcome, set_infos = merge_outcomes(outcome, extra), set_infos + extra_infos
                prompts_used[es.name] = {"mode": mode, "instructions": texts}
            rows += _score(outcome, set_infos, halves[es.name], settings.n_resamples, seed,
                           parts)
            key = f"{es.name}/{outcome.metric}"
            items[key] = item_flips(outcome)
            if outcome.completions is not None:
                items[key]["completions"] = outcome.completions
            log.info("%s: %s on %d items, %d settings in %.1f s", es.name, outcome.metric,
                     len(part.questions), len(set_infos), time.perf_counter() - t)
    for r in (rows, parts["choice"], parts["report"]):
        add_q_values(r, skip=[x["intervention"] == "none" for x in r])
    chosen = choose_strengths(parts["choice"], objectives, sets.metric, layers[0],
                              settings.headline)
    write_json(out / "results.json", rows)
    write_csv(out / "results.csv", rows)
    write_json(out / "results_report.json", parts["report"])
    write_json(out / "items.json", items)
    write_json(out / "settings.json", {"probe_dir": str(probe.folder),
                                       "conflict_dir": str(conflict_dir) if knob else None,
                                       "match_dir": str(match.folder) if match else None,
                                       "layers": layers, "settings": infos,
                                       "prompt": prompts_used, "norm_unit": norm_unit})
    write_json(out / "selection.json", {
        "fraction": sel.fraction, "seed": sel.seed, "metric": sets.metric, "layer": layers[0],
        "objectives": {k: asdict(v) for k, v in objectives.items()},
        "chosen": {k: {**v, "objective": [[s_, x] for s_, x in v["objective"].items()]}
                   for k, v in chosen.items()},
        "halves": {k: {"choice": a, "report": b} for k, (a, b) in halves.items()}})
    swept = [r for r in rows if r["intervention"] != "prompt"]  # no strength: no curve
    plots = _plots(swept, out) if settings.plots else []
    metrics = _headline(parts["report"], {k: v["strength"] for k, v in chosen.items()},
                        layers[0])
    metrics.update(_selection_metrics(chosen, halves))
    metrics.update(erase_metrics)
    metrics.update({"n_settings": len(built), "n_rows": len(rows),
                    "seconds": time.perf_counter() - start})
    log.info("steering sweep done: %d settings, %d rows, %.1f s; results in %s", len(built),
             len(rows), metrics["seconds"], out / "results.csv")
    return SteeringResult(rows, items, plots, metrics, layers)
