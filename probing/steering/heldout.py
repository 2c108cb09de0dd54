"""Strengths chosen on one half of the items, figures reported on the other (AxBench,
arXiv 2501.17148).

Each set's items are split in two halves by group (``Question.group``: no group on both sides),
seeded and stratified by label: the strength of each intervention is chosen on the choice half
(A) by an objective, and every headline figure is measured on the report half (B).

Objective of a strength (on half A, at the headline layer): per set in the choice (sets with an
``objective`` in their config; every set when none has one), ``sign`` x (the direction's paired
difference of ``score`` minus the mean over the random controls' -- latents: the matched latent's
minus its random latents', averaged over ranks), averaged over those sets. The largest wins;
a tie goes to the weaker strength.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from probing.errors import LirefError
from probing.questions.record import Question

log = logging.getLogger(__name__)

__all__ = ["Objective", "Selection", "choose_strengths", "objective_value", "restrict",
           "split_halves"]

#: the paired stat each score is chosen on (``accuracy``: the accuracy difference)
ACCURACY = "accuracy"


@dataclass
class Objective:
    """What a strength is chosen for on one set: ``sign`` x the paired difference of ``score``
    (``accuracy`` or a per-item score: ``margin``, ``logp_gold``, ``rate_<name>``)."""

    score: str = ACCURACY
    sign: float = 1.0

    def __post_init__(self) -> None:
        if float(self.sign) not in (1.0, -1.0):
            raise LirefError(f"objective sign={self.sign}; allowed: 1 or -1")
        self.sign = float(self.sign)

    @property
    def stat(self) -> str:
        """The row key of the paired difference (``diff`` or ``<score>_diff``)."""
        return "diff" if self.score == ACCURACY else f"{self.score}_diff"


@dataclass
class Selection:
    """The held-out choice of strengths.

    ``fraction``: share of each set's items (whole groups) in the choice half A; the rest is the
    report half B. ``seed``: the split's seed. ``objective``: the default objective of a set
    (a set's ``objective: {score, sign}`` in ``steer.sets`` overrides it; when any set names
    one, only those sets take part in the choice)."""

    fraction: float = 0.5
    seed: int = 0
    objective: Objective = field(default_factory=Objective)

    def __post_init__(self) -> None:
        if isinstance(self.objective, Mapping):
            self.objective = Objective(**self.objective)
        if not 0.0 < float(self.fraction) < 1.0:
            raise LirefError(f"selection.fraction={self.fraction}; allowed: strictly between 0 "
                             "and 1 (both halves need items)")


def split_halves(questions: Sequence[Question], fraction: float = 0.5, seed: int = 0,
                 ) -> tuple[list[str], list[str]]:
    """``(choice ids, report ids)``: whole groups, dealt in a seeded order per label (the label
    of a group's first item) to the choice half until ``fraction`` of that label's items are
    there; each half gets at least one group. Ids in the order of ``questions``.

    Raises:
        LirefError: fewer than two groups (no split possible).
    """
    groups = list(dict.fromkeys(q.group for q in questions))
    if len(groups) < 2:
        raise LirefError(f"{len(questions)} items in {len(groups)} group(s): a held-out choice "
                         "of strengths needs at least two groups")
    size = {g: 0 for g in groups}
    label: dict[str, str] = {}
    for q in questions:
        size[q.group] += 1
        label.setdefault(q.group, q.label)
    rng = np.random.default_rng(seed)
    choice: set[str] = set()
    for lab in sorted(set(label.values())):
        members = [g for g in groups if label[g] == lab]
        order = [members[i] for i in rng.permutation(len(members))]
        target, done = fraction * sum(size[g] for g in members), 0
        for g in order:
            if done >= target:
                break
            choice.add(g)
            done += size[g]
    if len(choice) == len(groups):  # leave the report half a group
        choice.discard(next(g for g in reversed(groups) if g in choice))
    if not choice:
        choice.add(groups[0])
    a = [q.id for q in questions if q.group in choice]
    b = [q.id for q in questions if q.group not in choice]
    return a, b


def restrict(outcomes: Any, ids: Collection[str]) -> Any | None:
    """``outcomes`` (``Outcomes`` [S, N]) on the items whose id is in ``ids`` (``None`` when
    none is)."""
    wanted = set(ids)
    keep = np.array([i for i, x in enumerate(outcomes.item_ids) if x in wanted], dtype=int)
    if keep.size == 0:
        return None

    def pick(a: Any) -> Any:
        return None if a is None else np.asarray(a)[:, keep]

    completions = (None if outcomes.completions is None
                   else [[row[i] for i in keep] for row in outcomes.completions])
    return replace(outcomes, item_ids=[outcomes.item_ids[i] for i in keep],
                   correct=pick(outcomes.correct),
                   scores={k: pick(v) for k, v in outcomes.scores.items()},
                   parse_failed=pick(outcomes.parse_failed), length=pick(outcomes.length),
                   completions=completions)


def _same(x: float | None, y: float) -> bool:
    return x is not None and abs(float(x) - y) < 1e-9


def _arms(rows: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]],
                                                      list[Mapping[str, Any]]]:
    """``(steered rows, their random controls)`` among one strength's rows."""
    direction = [r for r in rows if r["condition"] in ("direction", "latent")]
    random = [r for r in rows if r["condition"] in ("random", "random_latent")]
    return direction, random


def objective_value(rows: Sequence[Mapping[str, Any]], objectives: Mapping[str, Objective],
                    metric: str) -> float:
    """The objective of one strength's rows (one intervention, one layer; every set): per set
    in ``objectives``, ``sign`` x (mean steered stat - mean random stat), averaged over sets
    (NaN when no set has the stat)."""
    values = []
    for set_name, obj in objectives.items():
        mine = [r for r in rows if r["set"] == set_name and r["metric"] == metric]
        direction, random = _arms(mine)
        steered = [float(r[obj.stat]) for r in direction if obj.stat in r]
        if not steered:
            continue
        ctl = [float(r[obj.stat]) for r in random if obj.stat in r]
        values.append(obj.sign * (np.mean(steered) - (np.mean(ctl) if ctl else 0.0)))
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")


def choose_strengths(rows: Sequence[Mapping[str, Any]], objectives: Mapping[str, Objective],
                     metric: str, layer: int | None, fixed: Mapping[str, float] | None = None,
                     ) -> dict[str, dict[str, Any]]:
    """Per intervention with strengths: ``{"strength", "fixed", "objective": {strength:
    value}}`` from the choice half's ``rows``; ``fixed`` strengths (``steering.headline``) are
    taken as given. The layer is ``layer`` when the intervention was swept there, else its
    first (latents: the SAE's)."""
    out: dict[str, dict[str, Any]] = {}
    fixed = dict(fixed or {})
    names = dict.fromkeys(r["intervention"] for r in rows if r["strength"] is not None
                          and r["intervention"] != "none")
    for name in names:
        mine = [r for r in rows if r["intervention"] == name and r["strength"] is not None]
        layers = list(dict.fromkeys(r["layer"] for r in mine))
        at = layer if layer in layers else layers[0]
        mine = [r for r in mine if r["layer"] == at]
        strengths = sorted({float(r["strength"]) for r in mine}, key=lambda s: (abs(s), s))
        values = {s: objective_value([r for r in mine if _same(r["strength"], s)], objectives,
                                     metric) for s in strengths}
        if name in fixed:
            out[name] = {"strength": float(fixed[name]), "fixed": True, "objective": values}
            continue
        finite = [s for s in strengths if values[s] == values[s]]
        best = max(finite, key=lambda s: values[s]) if finite else strengths[0]
        if not finite:
            log.warning("%s: no objective on the choice half; strength %g (the weakest)", name,
                        best)
        out[name] = {"strength": best, "fixed": False, "objective": values}
    return out
