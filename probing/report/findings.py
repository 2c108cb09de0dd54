"""The report's Findings block: at most ``MAX_FINDINGS`` lines, each a headline figure with its
95% interval (where the stage records one) beside its control, linking to the section that
holds its table.

Every number is read from a stage's ``metrics.json`` (shown with its ``<stage>:<key>`` source)
or from the steering stage's ``results.json`` (the absolute answer rates at the headline
strength). A finding whose data is absent (a stage not run, a set not steered) is left out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from probing.report.blocks import Cell, Finding, fmt, slug

__all__ = ["HEADINGS", "MAX_FINDINGS", "SteerEffect", "Steering", "anchor", "conflict_effects",
           "findings", "ground_truth_effects", "headline_effects", "interval", "number",
           "steered_set_effects", "strongest_control", "transfer_sets"]

#: the report's section headings (their slugs are the anchors the findings link to)
HEADINGS = {
    "findings": "Findings",
    "questions": "Question sets",
    "probe": "Probes and the reasoning direction per layer",
    "transfer": "Transfer: the probe scored on other sets",
    "conflicts": "Knowledge conflicts",
    "sae": "Sparse autoencoder",
    "match": "SAE latents matched to the reasoning direction",
    "steer": "Steering with the direction and with single latents",
    "ground_truth": "Ground truth on the organism: exceptions and near-exceptions",
    "paired": "Paired effects per set",
    "reproduce": "Reproduce",
}
MAX_FINDINGS = 12
#: at most this many transfer targets and (real-model) steered sets get a line each
MAX_PER_KIND = 3


def anchor(section: str) -> str:
    """The anchor of a section of ``HEADINGS``."""
    return slug(HEADINGS[section])


class StageLike(Protocol):
    """What the findings read of a stage: its name, metrics and JSON files."""

    name: str
    metrics: dict[str, Any]

    def json(self, file: str) -> Any: ...


Parts = list[Cell | str]


def number(st: StageLike, key: str, signed: bool = False, digits: int = 3,
           strong: bool = False) -> Cell:
    """The number ``key`` of the stage's metrics, with its source (bold when ``strong``)."""
    value = st.metrics[key]
    text = f"{value:+.{digits}f}" if signed and isinstance(value, float) else fmt(value, digits)
    return Cell(text, f"{st.name}:{key}", value, strong)


def interval(st: StageLike, key: str, signed: bool = False, strong: bool = False) -> Parts:
    """``value [low, high]`` of ``key`` (each a sourced number); the value alone without an
    interval."""
    parts: Parts = [number(st, key, signed, strong=strong)]
    if f"{key}_ci_low" in st.metrics and f"{key}_ci_high" in st.metrics:
        parts += [" [", number(st, f"{key}_ci_low", signed), ", ",
                  number(st, f"{key}_ci_high", signed), "]"]
    return parts


def _probe(st: StageLike) -> Finding | None:
    m = st.metrics
    if "best/auroc" not in m:
        return None
    parts: Parts = []
    if "best_layer" in m:
        parts += ["layer ", number(st, "best_layer"), " (chosen on validation), "]
    parts += ["test AUROC ", *interval(st, "best/auroc", strong=True)]
    parts += _strongest_control(st, "control/")
    if "best/selectivity" in m:
        name = _strongest_name(st, "control/")
        parts += [f"; selectivity (minus the strongest control, {name}) ",
                  number(st, "best/selectivity", True)]
    if "best/residualised_auroc" in m:
        parts += ["; with the format covariates regressed out: AUROC ",
                  *interval(st, "best/residualised_auroc")]
    if "best/residualised_surface_auroc" in m:
        parts += [" (surface only, without source and category: ",
                  *interval(st, "best/residualised_surface_auroc"), ")"]
    return Finding(anchor("probe"), "Probe", parts)


#: the controls a finding compares against: (metric key stem, name in the text)
CONTROL_NAMES = (("bow", "bag-of-words"), ("embedding", "embedding probe"),
                 ("format", "format covariates"), ("surface", "surface covariates"))


def strongest_control(st: StageLike, prefix: str) -> tuple[str, str] | None:
    """``(metric key, name)`` of the recorded control with the highest AUROC (the one
    ``selectivity`` subtracts), or ``None``; ``prefix``: ``control/`` or
    ``transfer/<name>/control/``."""
    controls = [(f"{prefix}{k}_auroc", name) for k, name in CONTROL_NAMES
                if f"{prefix}{k}_auroc" in st.metrics]
    return max(controls, key=lambda c: st.metrics[c[0]]) if controls else None


def _strongest_name(st: StageLike, prefix: str) -> str:
    found = strongest_control(st, prefix)
    return found[1] if found else "n/a"


def _strongest_control(st: StageLike, prefix: str) -> Parts:
    """`` vs <AUROC> [CI] for the strongest control (<name>)`` among bag-of-words, embedding
    and format covariates (the one ``selectivity`` subtracts); empty when none was recorded."""
    found = strongest_control(st, prefix)
    if found is None:
        return []
    key, name = found
    return [" vs ", *interval(st, key), f" for the strongest control ({name})"]


def transfer_sets(st: StageLike) -> list[tuple[str, str]]:
    """``(name, "<kind> vs <kind>")`` of the probe stage's transfer sets (``transfer/<name>/
    auroc``), in recorded order; the kinds from ``questions.json`` ('' when not recorded)."""
    names = list(dict.fromkeys(k.split("/")[1] for k in st.metrics
                               if k.startswith("transfer/") and k.endswith("/auroc")
                               and k.count("/") == 2))
    kinds: dict[str, list[str]] = {}
    for row in (st.json("questions.json") or {}).get("rows", []):
        if str(row.get("set", "")).startswith("transfer:") and row.get("kind"):
            kinds.setdefault(row["set"].split(":", 1)[1], []).append(str(row["kind"]))
    return [(name, " vs ".join(kinds.get(name, []))) for name in names]


def _transfer(st: StageLike) -> list[Finding]:
    m = st.metrics
    out = []
    for name, kinds in transfer_sets(st)[:MAX_PER_KIND]:
        pre = f"transfer/{name}/"
        what = f"{kinds}, " if kinds else ""
        parts: Parts = [f"{what}the probe unchanged: AUROC ",
                        *interval(st, pre + "auroc", strong=True),
                        *_strongest_control(st, pre + "control/")]
        if pre + "selectivity" in m:
            parts += ["; selectivity ", number(st, pre + "selectivity", True)]
        out.append(Finding(anchor("transfer"), f"Transfer to {name}", parts))
    return out


def _conflict(st: StageLike) -> list[Finding]:
    """The conflict readout: how many facts, which answer is readable where, and the LiReF of
    the probe run scored on those items with its knob cosine."""
    m = st.metrics
    if "best/auroc" not in m:
        return []
    parts: Parts = []
    if "counts/known" in m:
        parts += [number(st, "counts/known"), " facts known closed-book; after a counterfactual "
                  "statement ", number(st, "counts/context"), " context / ",
                  number(st, "counts/memory"), " memory / ", number(st, "counts/other"),
                  " other answers; "]
    parts += ["which answer comes is readable at layer ", number(st, "best_layer"),
              " with AUROC ", *interval(st, "best/auroc", strong=True),
              *_strongest_control(st, "control/")]
    if "best/residualised_auroc" in m:
        parts += ["; format (length, numerals, relation) regressed out: ",
                  *interval(st, "best/residualised_auroc")]
    out = [Finding(anchor("conflicts"), "Knowledge conflicts", parts)]
    refs = list(dict.fromkeys(k.split("/")[1] for k in m
                              if k.startswith("transfer/") and k.endswith("/auroc")))
    line: Parts = []
    for ref in refs[:MAX_PER_KIND]:
        pre = f"transfer/{ref}/"
        line += ["; " if line else "", f"{ref}'s LiReF scored unchanged on the conflict items: "
                 "AUROC ", *interval(st, pre + "auroc", strong=True)]
        if f"knob/{ref}/cosine" in m:
            line += [", cosine with the conflict direction ",
                     number(st, f"knob/{ref}/cosine", True),
                     " (null 95% ", number(st, f"knob/{ref}/null_low", True), "..",
                     number(st, f"knob/{ref}/null_high", True), ", p ",
                     number(st, f"knob/{ref}/p_value"), ")"]
    if line:
        out.append(Finding(anchor("conflicts"), "LiReF on conflicts", line))
    return out


def _conflict_steering(st: StageLike, steer: Steering) -> list[Finding]:
    """One line: +LiReF's change of the context rate and -LiReF's of the memory rate on
    counterfactual items, each beside random directions."""
    parts: Parts = []
    for effect in conflict_effects(steer):
        rate = effect.stat.removesuffix("_diff")
        parts += ["; " if parts else "", f"{effect.label}: {effect.what} ",
                  number(st, effect.pre + f"unsteered/{rate}"), ", change ",
                  *interval(st, effect.key, True, strong=True)]
        if effect.random_key in st.metrics:
            parts += [" vs ", number(st, effect.random_key, True),
                      " for random directions of the same norm"]
    if not parts:
        return []
    return [Finding(anchor("conflicts"), "LiReF on counterfactual items",
                    [*parts, steer.where()])]


def _sae(st: StageLike) -> Finding | None:
    m = st.metrics
    named = [(k, text) for k, text in (("ce_loss_recovered", "CE loss recovered "),
                                       ("explained_variance", "explained variance "),
                                       ("dead_fraction", "dead latents ")) if k in m]
    if not any(k != "dead_fraction" for k, _ in named):
        return None
    parts: Parts = []
    for key, before, after in (("layer", "layer ", ""), ("d_sae", "", " latents"),
                               ("l0", "L0 ", "")):
        if key in m:
            parts += [", " if parts else "", before, number(st, key, digits=1), after]
    if parts:
        parts.append(": ")
    for i, (key, text) in enumerate(named):
        parts += [", " if i else "", text, number(st, key, strong=i == 0)]
        if key == "ce_loss_recovered":
            parts.append(" (1 = the clean model, 0 = the layer zero-ablated)")
    return Finding(anchor("sae"), "SAE", parts)


def _best_latent(st: StageLike) -> Finding | None:
    m = st.metrics
    if "top1_cosine" not in m:
        return None
    parts: Parts = []
    if "top1_latent" in m:
        parts += ["latent ", number(st, "top1_latent"), " (largest |decoder cosine|): "]
    parts += ["cosine ", number(st, "top1_cosine", strong=True)]
    nulls = [(k, p, what) for k, p, what in (
        ("null_max_abs_cosine_permutation_95", "top1_p", "label-permuted directions"),
        ("null_max_abs_cosine_random_95", "top1_p_random", "random directions")) if k in m]
    for i, (key, p, what) in enumerate(nulls):
        parts += [" vs the nulls' 95% max |cosine|: " if i == 0 else " and ", number(st, key),
                  f" for {what}"]
        if p in m:
            parts += [" (family-wise p " if i == 0 else " (p ", number(st, p), ")"]
    if "n_significant_q05" in m:
        parts += ["; latents with q < 0.05 against the permuted null: ",
                  number(st, "n_significant_q05")]
    return Finding(anchor("match"), "Best-matched latent", parts)


def _sparse_readout(st: StageLike) -> Finding | None:
    m = st.metrics

    def ks(kind: str) -> list[int]:
        return sorted(int(k.rsplit("_k", 1)[1]) for k in m
                      if k.startswith(f"sparse_{kind}_auroc_k"))

    latents, neurons = ks("latents"), ks("neurons")
    if not latents:
        return None
    parts: Parts = ["held-out AUROC of probes on " + " / ".join(map(str, latents))
                    + " SAE latents "]
    parts += _joined(st, [f"sparse_latents_auroc_k{k}" for k in latents], strong=True)
    if neurons:
        parts += [" vs on " + " / ".join(map(str, neurons)) + " neurons "]
        parts += _joined(st, [f"sparse_neurons_auroc_k{k}" for k in neurons])
    for key, text in (("dense_auroc", "dense probe "), ("bow_auroc", "bag-of-words ")):
        if key in m:
            parts += ["; " + text, number(st, key)]
    parts += _saebench_readout(st)
    return Finding(anchor("match"), "Sparse readout", parts)


def _saebench_readout(st: StageLike) -> Parts:
    """``; SAEBench protocol (mean-pooled), accuracy on 1 / 2 / 5 latents a / b / c vs neurons
    d / e / f`` when the match stage recorded it."""
    pre = "sparse_probe/saebench/"

    def ks(kind: str) -> list[int]:
        found = (re.fullmatch(rf"{pre}{kind}_k(\d+)_accuracy", k) for k in st.metrics)
        return sorted(int(f.group(1)) for f in found if f)

    latents, neurons = ks("latents"), ks("neurons")
    if not latents:
        return []
    parts: Parts = ["; SAEBench protocol (mean-pooled), accuracy on "
                    + " / ".join(map(str, latents)) + " latents "]
    parts += _joined(st, [f"{pre}latents_k{k}_accuracy" for k in latents])
    if neurons:
        parts += [" vs neurons "]
        parts += _joined(st, [f"{pre}neurons_k{k}_accuracy" for k in neurons])
    return parts


def _token_injection(st: StageLike) -> Finding | None:
    """The LiReF's and the top latents' token-injection class against frequency-matched random
    tokens (the headline), the old class (own tokens vs no insertion) beside it."""
    m = st.metrics
    parts: Parts = []
    if "liref_injection_d_excess" in m:
        parts += ["LiReF projection: own top tokens move it by d ", number(st, "liref_injection_d"),
                  " vs ", number(st, "liref_injection_d_random_matched"),
                  " for random tokens of the same frequency bands at the same positions, "
                  "excess ", number(st, "liref_injection_d_excess", signed=True, strong=True),
                  " [", number(st, "liref_injection_d_excess_lo", signed=True), ", ",
                  number(st, "liref_injection_d_excess_hi", signed=True), "]"]
    if "frac_token_driven_vs_random_top20" in m:
        parts += ["; " if parts else "", "share of the top latents token-driven against "
                  "random tokens ", number(st, "frac_token_driven_vs_random_top20", strong=True)]
        if "frac_token_driven_top20" in m:
            parts += [" (old class, own tokens vs none: ", number(st, "frac_token_driven_top20"),
                      ")"]
    return Finding(anchor("match"), "Token injection", parts) if parts else None


def _joined(st: StageLike, keys: Sequence[str], strong: bool = False) -> Parts:
    parts: Parts = []
    for i, key in enumerate(keys):
        parts += [" / " if i else "", number(st, key, strong=strong)]
    return parts


#: the organism's ground-truth findings: (set, rate, steering condition, what, label, other)
GROUND_TRUTH = (
    ("exceptions", "rate_rule", "direction", "rule-answer rate", "+LiReF on exceptions",
     ("negated", "-LiReF")),
    ("near_exceptions", "rate_stale", "negated", "stale-answer rate", "-LiReF on near-exceptions",
     ("direction", "+LiReF")),
)


@dataclass(frozen=True)
class SteerEffect:
    """One headline steering effect at the headline ``add`` strength: the paired change of
    ``stat`` (``rate_rule_diff``, ``logp_gold_diff``, ``diff``, ...) on ``set`` scored by
    ``metric`` under ``condition`` (``direction`` = +LiReF, ``negated`` = -LiReF), read from the
    steering stage's metrics.json; ``label`` and ``what`` name it (``"+LiReF on exceptions"``,
    ``"rule-answer rate"``); ``other``: the opposite condition and its name, where shown."""

    set: str
    metric: str
    condition: str
    stat: str
    label: str
    what: str
    other: tuple[str, str] | None = None

    @property
    def pre(self) -> str:
        """``<set>/<metric>/``"""
        return f"{self.set}/{self.metric}/"

    @property
    def key(self) -> str:
        """The effect's metrics key (``_ci_low`` / ``_ci_high`` beside it)."""
        return f"{self.pre}add/{self.condition}/{self.stat}"

    @property
    def random_key(self) -> str:
        """The same change under random directions of the same norm (mean over seeds)."""
        return f"{self.pre}add/random/{self.stat}"


class Steering:
    """The steering stage's headline ``add`` setting and its result rows."""

    def __init__(self, st: StageLike) -> None:
        self.st = st
        m = st.metrics
        self.strength = m.get("headline/add/strength")
        self.layer = m.get("headline/add/layer")
        self.metrics = list(dict.fromkeys(k.split("/")[1] for k in m
                                          if k.count("/") == 3 and "/unsteered/" in k))
        rows = st.json("results_report.json")  # the half the headline figures come from
        rows = rows if isinstance(rows, list) else st.json("results.json")  # an older run
        self.rows: list[Mapping[str, Any]] = rows if isinstance(rows, list) else []

    def metric(self, set_: str, key: str) -> str | None:
        """The first scoring metric (teacher_forced first) with ``<set>/<metric>/<key>``."""
        for metric in sorted(self.metrics, key=lambda x: x != "teacher_forced"):
            if f"{set_}/{metric}/{key}" in self.st.metrics:
                return metric
        return None

    def where(self) -> str:
        if self.strength is None:
            return ""
        layer = "" if self.layer is None else f" at layer {fmt(int(self.layer))}"
        tried = (((self.st.json("selection.json") or {}).get("chosen") or {}).get("add")
                 or {}).get("objective") or []
        chosen = ("" if self.st.metrics.get("headline/add/fixed", 1.0) else
                  ", the only strength swept" if len(tried) == 1 else
                  ", chosen on the other half of the items")
        return f" (add, strength {self.strength:g}{layer}{chosen})"

    def steered(self, set_: str, metric: str, condition: str, value: str) -> list[float]:
        """``value`` of the rows of the headline ``add`` setting under ``condition`` (one per
        seed for random directions)."""
        if self.strength is None:
            return []
        return [float(r[value]) for r in self.rows
                if r.get("set") == set_ and r.get("metric") == metric
                and r.get("intervention") == "add" and r.get("condition") == condition
                and r.get("strength") is not None
                and float(r["strength"]) == float(self.strength)
                and (self.layer is None or r.get("layer") == int(self.layer))
                and r.get(value) is not None]


def conflict_effects(steer: Steering) -> list[SteerEffect]:
    """+LiReF's change of the context-answer rate and -LiReF's of the memory-answer rate on the
    counterfactual conflict items (each where recorded; teacher-forced scoring first)."""
    out = []
    for rate, cond, sign in (("rate_context", "direction", "+"), ("rate_memory", "negated", "-")):
        metric = steer.metric("conflict_counterfactual", f"add/{cond}/{rate}_diff")
        if metric is not None:
            what = "context" if rate == "rate_context" else "memory"
            out.append(SteerEffect("conflict_counterfactual", metric, cond, f"{rate}_diff",
                                   f"{sign}LiReF", f"{what}-answer rate"))
    return out


def ground_truth_effects(steer: Steering) -> list[SteerEffect]:
    """The organism's ground truth (``GROUND_TRUTH``) where the run steered those sets."""
    out = []
    for set_, rate, cond, what, label, other in GROUND_TRUTH:
        metric = steer.metric(set_, f"add/{cond}/{rate}_diff")
        if metric is not None:
            out.append(SteerEffect(set_, metric, cond, f"{rate}_diff", label, what, other))
    return out


def steered_set_effects(steer: Steering) -> list[SteerEffect]:
    """+LiReF on each steered set (a real model's; at most ``MAX_PER_KIND``, conflict sets
    aside): the gold answer's log-probability change, accuracy's where that is not recorded."""
    m = steer.st.metrics
    sets = list(dict.fromkeys(k.split("/")[0] for k in m
                              if k.count("/") == 4 and "/add/direction/" in k
                              and not k.startswith("conflict_")))  # those: conflict_effects
    out = []
    for set_ in sets[:MAX_PER_KIND]:
        metric = steer.metric(set_, "add/direction/diff")
        if metric is None:
            continue
        stat, what = (("logp_gold_diff", "gold-answer log-prob")
                      if f"{set_}/{metric}/add/direction/logp_gold_diff" in m
                      else ("diff", "accuracy"))
        out.append(SteerEffect(set_, metric, "direction", stat, f"+LiReF on {set_}", what))
    return out


def headline_effects(steer: Steering) -> list[SteerEffect]:
    """The steering headline of a run, as the Findings show it: the organism's ground truth
    where it was steered, else +LiReF on each steered set."""
    return ground_truth_effects(steer) or steered_set_effects(steer)


def _ground_truth(st: StageLike, steer: Steering) -> list[Finding]:
    out = []
    for effect in ground_truth_effects(steer):
        set_, metric, cond, what, label = (effect.set, effect.metric, effect.condition,
                                           effect.what, effect.label)
        rate, pre = effect.stat.removesuffix("_diff"), effect.pre
        other, other_label = effect.other or ("", "")
        parts: Parts = [what]
        if pre + f"unsteered/{rate}" in st.metrics:
            parts += [" ", number(st, pre + f"unsteered/{rate}")]
            now = steer.steered(set_, metric, cond, rate)
            if len(now) == 1:
                parts += [" \u2192 ", Cell(fmt(now[0]))]
        parts += [steer.where(), ", change ",
                  *interval(st, pre + f"add/{cond}/{rate}_diff", True, strong=True)]
        if pre + f"add/random/{rate}_diff" in st.metrics:
            parts += [" vs ", number(st, pre + f"add/random/{rate}_diff", True),
                      " for random directions of the same norm"]
            seeds = steer.steered(set_, metric, "random", rate)
            if seeds:
                parts += [f" ({len(seeds)} seeds, rates {fmt(min(seeds))}\u2013"
                          f"{fmt(max(seeds))})"]
        if pre + f"add/{other}/{rate}_diff" in st.metrics:
            parts += [" and ", number(st, pre + f"add/{other}/{rate}_diff", True),
                      f" for {other_label}"]
        parts += _removal_and_prompting(st, pre, f"{rate}_diff",
                                        "reasoning" if cond == "direction" else "memory")
        out.append(Finding(anchor("ground_truth"), label, parts))
    return out


def _prompt_condition(st: StageLike, set_: str, toward: str | None) -> tuple[str, str]:
    """The prompting baseline's condition on ``set_`` whose instruction pushes ``toward`` a mode
    (``reasoning`` / ``memory``; ``None``: the set's own mode) and that instruction's text."""
    info = ((st.json("settings.json") or {}).get("prompt") or {}).get(set_) or {}
    cond = "direction" if toward is None or info.get("mode") == toward else "negated"
    return cond, str((info.get("instructions") or {}).get(cond, "the set's instruction"))


def _removal_and_prompting(st: StageLike, pre: str, stat: str, toward: str | None = None
                           ) -> Parts:
    """``; ablating it .. vs random ablations; erasing the label (LEACE) .. vs permuted-label
    erasers; prompting "<instruction>" ..`` for the settings a run has (``pre`` =
    ``<set>/<metric>/``; the instruction is the one pushing ``toward`` a mode)."""
    m = st.metrics
    parts: Parts = []
    for name, what, control, control_what in (
            ("ablate", "ablating it", "random", "random ablations"),
            ("erase", "erasing the label (LEACE)", "permuted", "erasers of permuted labels")):
        key = pre + f"{name}/direction/{stat}"
        if key not in m:
            continue
        parts += [f"; {what} ", *interval(st, key, True)]
        if pre + f"{name}/{control}/{stat}" in m:
            parts += [" vs ", number(st, pre + f"{name}/{control}/{stat}", True),
                      f" for {control_what}"]
    cond, text = _prompt_condition(st, pre.split("/")[0], toward)
    if pre + f"prompt/{cond}/{stat}" in m:
        parts += [f'; prompting "{text}" ', *interval(st, pre + f"prompt/{cond}/{stat}", True)]
    return parts


def _steered_sets(st: StageLike, steer: Steering) -> list[Finding]:
    """One line per steered set (a real model's): +LiReF's change of the gold answer's
    log-probability (accuracy when not recorded) beside random directions, -LiReF, the
    ablations and the LEACE erasures."""
    out = []
    for effect in steered_set_effects(steer):
        pre, stat, what = effect.pre, effect.stat, effect.what
        parts: Parts = [f"{what} change{steer.where()} ",
                        *interval(st, pre + f"add/direction/{stat}", True, strong=True)]
        for key, text in ((f"add/random/{stat}", " for random directions of the same norm"),
                          (f"add/negated/{stat}", " for -LiReF")):
            if pre + key in st.metrics:
                parts += [" vs " if key.startswith("add/random") else " and ",
                          number(st, pre + key, True), text]
        parts += _removal_and_prompting(st, pre, stat, "reasoning")
        out.append(Finding(anchor("paired"), effect.label, parts))
    return out


def findings(stages: Mapping[str, StageLike]) -> list[Finding]:
    """The Findings lines of a run, in the report's order, at most ``MAX_FINDINGS``."""
    out: list[Finding | None] = []
    if "probe" in stages:
        out += [_probe(stages["probe"]), *_transfer(stages["probe"])]
    if "conflict" in stages:
        out += _conflict(stages["conflict"])
    if "sae" in stages:
        out.append(_sae(stages["sae"]))
    if "match" in stages:
        out += [_best_latent(stages["match"]), _sparse_readout(stages["match"]),
                _token_injection(stages["match"])]
    if "steer" in stages:
        st = stages["steer"]
        steer = Steering(st)
        truth = _ground_truth(st, steer)
        out += _conflict_steering(st, steer)
        out += truth or _steered_sets(st, steer)
    return [f for f in out if f is not None][:MAX_FINDINGS]
