"""Token-injection control (after arXiv 2601.05679): does a latent (or the LiReF projection)
respond to its top tokens alone, outside the context it was selected on?

For each target (a latent, or the LiReF), its top-activating units are read off the
training prompts of the class it prefers: 3 single tokens, 2 bigrams and 1 trigram (by mean
activation at the unit's last token, among units seen at least ``min_count`` times, keeping
only units whose text tokenizes back to the same ids and holds no line break). Each unit is injected into baseline
questions (held-out prompts of the other class, or neutral texts) by ``prepend``, ``append``
and ``intersperse`` (at a random interior word boundary). Cohen's d (``probing.stats``) of the
target's readout, injected vs baseline, classifies the target:

    d >= 0.8 token-driven | 0.5-0.8 partly token-driven | 0.2-0.5 weakly token-driven |
    < 0.2 context-dependent

The condition (unit x strategy) is chosen on one half of the baseline prompts and its d is
reported on the other half (the maximum over 18 conditions would be biased upwards). Random
units of the same shapes, drawn from the baseline class's own training questions, go
through the same protocol: ``d_random`` is the old control (any insertion perturbs the prompt).

The random-token baseline (the yardstick 2601.05679 lists as missing): every unit gets
``n_random_draws`` random units of its length whose token at each position lies in the same
corpus frequency band (quantile bins of log count over the training prompts' tokens, the
corpus the units are read from), none of the target's own tokens. They are injected with the
chosen condition's strategy at the same insertion points into the report half;
``d_excess = d - d_random_matched`` (mean d over the draws) with a bootstrap interval over the
report-half prompts (paired: one resample for own and random units). ``class_vs_random`` is
the class of ``d_excess`` when the interval's lower bound is above 0, else
context-dependent; ``class`` keeps the old meaning (``d`` alone).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from probing.errors import LirefError, from_mapping
from probing.stats import CONFIDENCE, N_RESAMPLES, bootstrap_ci, cohens_d

__all__ = [
    "INJECTION_CLASSES",
    "FrequencyBands",
    "STRATEGIES",
    "InjectionConfig",
    "Target",
    "Unit",
    "class_vs_random",
    "frequency_bands",
    "inject",
    "injection_class",
    "matched_random_units",
    "ngram_table",
    "random_units",
    "run_injection",
    "top_units",
]

STRATEGIES: tuple[str, ...] = ("prepend", "append", "intersperse")
#: lower bound of d -> class (checked in order); below the last: context-dependent
INJECTION_CLASSES: tuple[tuple[float, str], ...] = (
    (0.8, "token-driven"), (0.5, "partly token-driven"), (0.2, "weakly token-driven"))
CONTEXT_DEPENDENT = "context-dependent"
#: |d| cap in the random-token comparison: an infinite d comes from constant groups (a latent
#: reading one token and nothing else, zero activations, a resample of one prompt); beyond 10
#: two groups do not overlap, whatever the value
D_CAP = 10.0
READOUTS: tuple[str, ...] = ("max", "mean", "position")


def injection_class(d: float | None) -> str | None:
    """The class of an injection effect size (``None`` for a missing/NaN d)."""
    if d is None or (isinstance(d, float) and math.isnan(d)):
        return None
    for bound, name in INJECTION_CLASSES:
        if d >= bound:
            return name
    return CONTEXT_DEPENDENT


@dataclass
class InjectionConfig:
    """Settings of the token-injection control.

    Args:
        top_k: how many top-ranked latents are tested (the LiReF always is).
        n_prompts: baseline questions per class (half choose the condition, half report).
        baseline: ``other_class`` (held-out questions of the class the target does not
            prefer) or ``neutral`` (``neutral_texts``).
        n_single, n_bigram, n_trigram: units of each length per target.
        strategies: among ``prepend``, ``append``, ``intersperse``.
        min_count: a unit must occur at least this often in the training prompts (relaxed to
            1 when too few units qualify).
        readout: how a latent is read per prompt: ``max`` / ``mean`` over the prompt's tokens
            or at the probe ``position``. direction_readout: the same for the LiReF projection
            (default: at the probe position, where the direction is defined).
        random_control: also inject random units (the old control, ``d_random``).
        n_freq_bands: corpus frequency bands (quantile bins of log token count) of the
            random-token baseline.
        n_random_draws: frequency-matched random units per unit (0: no random-token
            baseline, ``class_vs_random`` is null).
        seed: baseline sampling, insertion points, random units.
    """

    top_k: int = 20
    n_prompts: int = 64
    baseline: str = "other_class"
    neutral_texts: list[str] = field(default_factory=list)
    n_single: int = 3
    n_bigram: int = 2
    n_trigram: int = 1
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    min_count: int = 2
    readout: str = "max"
    direction_readout: str = "position"
    random_control: bool = True
    n_freq_bands: int = 5
    n_random_draws: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.top_k < 0:
            raise LirefError(f"injection.top_k must be >= 0, got {self.top_k}")
        if self.n_prompts < 4:
            raise LirefError(f"injection.n_prompts must be >= 4 (two halves of >= 2), got "
                             f"{self.n_prompts}")
        if self.baseline not in ("other_class", "neutral"):
            raise LirefError(f"injection.baseline must be 'other_class' or 'neutral', got "
                             f"{self.baseline!r}")
        if self.baseline == "neutral" and len(self.neutral_texts) < 4:
            raise LirefError("injection.baseline=neutral needs >= 4 injection.neutral_texts")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise LirefError(f"injection.strategies {self.strategies}: each must be one of "
                             f"{list(STRATEGIES)}")
        for name in ("readout", "direction_readout"):
            if getattr(self, name) not in READOUTS:
                raise LirefError(f"injection.{name} must be one of {list(READOUTS)}, got "
                                 f"{getattr(self, name)!r}")
        if min(self.n_single, self.n_bigram, self.n_trigram) < 0 or \
                self.n_single + self.n_bigram + self.n_trigram == 0:
            raise LirefError("injection needs at least one unit (n_single/n_bigram/n_trigram)")
        if self.min_count < 1:
            raise LirefError(f"injection.min_count must be >= 1, got {self.min_count}")
        if self.n_freq_bands < 1:
            raise LirefError(f"injection.n_freq_bands must be >= 1, got {self.n_freq_bands}")
        if self.n_random_draws < 0:
            raise LirefError(f"injection.n_random_draws must be >= 0 (0: no random-token "
                             f"baseline), got {self.n_random_draws}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InjectionConfig:
        return from_mapping(cls, d, "injection")


@dataclass(frozen=True)
class Unit:
    """An injected unit: token ``ids``, its ``text``, mean target value at its last token
    (``score``) over ``count`` occurrences."""

    ids: tuple[int, ...]
    text: str
    score: float
    count: int

    @property
    def kind(self) -> str:
        return {1: "token", 2: "bigram", 3: "trigram"}.get(len(self.ids), f"{len(self.ids)}-gram")


@dataclass
class NgramTable:
    """Every token's n-gram ending at it, grouped: ``keys[n]`` ``[G, n]`` distinct n-grams,
    ``inverse[n]`` ``[T]`` the group of each token (-1: no n-gram there)."""

    keys: dict[int, torch.Tensor]
    inverse: dict[int, torch.Tensor]


def ngram_table(prompt: torch.Tensor, pos: torch.Tensor, token: torch.Tensor,
                special_ids: Sequence[int], max_n: int = 3) -> NgramTable:
    """Group the token stream (``prompt``/``pos``/``token`` ``[T]``, consecutive positions of
    one prompt adjacent) by the n-gram ending at each token, n = 1..max_n; n-grams that cross
    a prompt boundary, skip a position or hold a special token are left out."""
    special = torch.tensor(sorted(set(int(s) for s in special_ids)), dtype=torch.long)
    ok = ~torch.isin(token, special)
    grams = [token]
    valid = ok.clone()
    keys, inverse = {}, {}
    for n in range(1, max_n + 1):
        if n > 1:
            shift = n - 1
            prev = torch.full_like(token, -1)
            prev[shift:] = token[:-shift]
            same = torch.zeros_like(ok)
            same[shift:] = (prompt[shift:] == prompt[:-shift]) & (pos[shift:] - pos[:-shift]
                                                                  == shift)
            prev_ok = torch.zeros_like(ok)
            prev_ok[shift:] = ok[:-shift]
            grams = [prev, *grams]
            valid = valid & same & prev_ok
        stacked = torch.stack(grams, 1)  # [T, n]
        inv = torch.full((token.shape[0],), -1, dtype=torch.long)
        if bool(valid.any()):
            uniq, inv_valid = torch.unique(stacked[valid], dim=0, return_inverse=True)
            inv[valid] = inv_valid
        else:
            uniq = torch.zeros((0, n), dtype=torch.long)
        keys[n], inverse[n] = uniq, inv
    return NgramTable(keys=keys, inverse=inverse)


def _roundtrips(tokenizer: Any, text: str, ids: tuple[int, ...]) -> bool:
    for variant in (text, " " + text):
        if tuple(tokenizer(variant, add_special_tokens=False)["input_ids"]) == ids:
            return True
    return False


def _usable(text: str) -> bool:
    """A unit must have text and no line break (one would break the prompt template, e.g. a
    unit ``"?\nA:"`` injected mid-question opens a fake answer)."""
    return bool(text) and "\n" not in text and "\r" not in text


def _unit_text(tokenizer: Any, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def top_units(values: torch.Tensor, table: NgramTable, use: torch.Tensor, tokenizer: Any,
              counts: Sequence[int] = (3, 2, 1), min_count: int = 2) -> list[Unit]:
    """The target's top units: ``counts[n-1]`` n-grams per length n, ranked by the mean of
    ``values`` ``[T]`` at the n-gram's last token over the tokens where ``use`` ``[T]`` is
    true; units occurring fewer than ``min_count`` times are used only when too few others
    exist; units whose text does not tokenize back to the same ids are skipped."""
    out: list[Unit] = []
    for n, want in enumerate(counts, start=1):
        if want <= 0 or n not in table.keys:
            continue
        inv = table.inverse[n]
        sel = use & (inv >= 0)
        g = table.keys[n].shape[0]
        if g == 0 or not bool(sel.any()):
            continue
        total = torch.zeros(g, dtype=torch.float64).index_add_(0, inv[sel], values[sel].double())
        count = torch.bincount(inv[sel], minlength=g)
        mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, -math.inf))
        picked: list[Unit] = []
        for threshold in (min_count, 1):
            for gi in torch.argsort(mean, descending=True).tolist():
                if len(picked) >= want or not math.isfinite(float(mean[gi])):
                    break
                if int(count[gi]) < threshold:
                    continue
                ids = tuple(int(t) for t in table.keys[n][gi])
                if any(u.ids == ids for u in picked):
                    continue
                text = _unit_text(tokenizer, ids)
                if _usable(text) and _roundtrips(tokenizer, text, ids):
                    picked.append(Unit(ids, text, float(mean[gi]), int(count[gi])))
            if len(picked) >= want:
                break
        out.extend(picked)
    return out


def random_units(table: NgramTable, use: torch.Tensor, tokenizer: Any,
                 counts: Sequence[int] = (3, 2, 1), seed: int = 0) -> list[Unit]:
    """Units of the same shapes drawn at random (seeded) from the n-grams of the question set
    (the control of ``top_units``)."""
    rng = np.random.default_rng(seed)
    out: list[Unit] = []
    for n, want in enumerate(counts, start=1):
        if want <= 0 or n not in table.keys:
            continue
        present = torch.unique(table.inverse[n][use & (table.inverse[n] >= 0)]).tolist()
        picked: list[Unit] = []
        for gi in rng.permutation(present).tolist() if present else []:
            if len(picked) >= want:
                break
            ids = tuple(int(t) for t in table.keys[n][gi])
            text = _unit_text(tokenizer, ids)
            if _usable(text) and _roundtrips(tokenizer, text, ids):
                picked.append(Unit(ids, text, float("nan"), 0))
        out.extend(picked)
    return out


@dataclass
class FrequencyBands:
    """Corpus frequency of every token id: ``count`` ``[V]`` occurrences, ``band`` ``[V]`` its
    band (0 = rarest; -1: not in the corpus or special), ``edges`` the interior log-count
    bounds of the bands (band k: ``edges[k-1] <= log count < edges[k]``)."""

    count: torch.Tensor
    band: torch.Tensor
    edges: list[float]

    def members(self, band: int) -> np.ndarray:
        """Token ids ``[M]`` of one band."""
        return np.flatnonzero(self.band.numpy() == band)


def frequency_bands(token: torch.Tensor, use: torch.Tensor, special_ids: Sequence[int],
                    n_bands: int = 5) -> FrequencyBands:
    """Count the tokens ``token`` ``[T]`` where ``use`` ``[T]`` is true (specials left out)
    and cut the token types seen into ``n_bands`` quantile bins of log count (tied counts
    share a band, so some bands may be empty)."""
    if n_bands < 1:
        raise LirefError(f"n_bands must be >= 1, got {n_bands}")
    special = torch.tensor(sorted(set(int(i) for i in special_ids)), dtype=torch.long)
    kept = token[use & ~torch.isin(token, special)]
    size = int(token.max()) + 1 if token.numel() else 0
    count = torch.bincount(kept, minlength=size)
    band = torch.full((size,), -1, dtype=torch.long)
    seen = count > 0
    if not bool(seen.any()):
        return FrequencyBands(count, band, [])
    logc = np.log(count[seen].double().numpy())
    edges = [float(e) for e in np.quantile(logc, np.arange(1, n_bands) / n_bands)]
    band[seen] = torch.as_tensor(np.searchsorted(edges, logc, side="right"), dtype=torch.long)
    return FrequencyBands(count, band, edges)


def matched_random_units(unit: Unit, bands: FrequencyBands, tokenizer: Any, n_draws: int,
                         rng: np.random.Generator, exclude: Sequence[int] = (),
                         max_tries: int = 50) -> list[Unit]:
    """Up to ``n_draws`` distinct random units of ``unit``'s length whose token at each
    position is drawn uniformly from that position's frequency band (``exclude``, e.g. the
    target's own tokens, left out); like ``top_units``, a draw must have usable text that
    tokenizes back to its ids (``max_tries`` attempts per draw). None when a band is empty."""
    size = bands.band.shape[0]
    pools = []
    for t in unit.ids:
        b = int(bands.band[t]) if 0 <= t < size else -1
        pool = np.setdiff1d(bands.members(b), np.asarray(exclude, dtype=np.int64)) \
            if b >= 0 else np.zeros(0, dtype=np.int64)
        if pool.size == 0:
            return []
        pools.append(pool)
    out: list[Unit] = []
    for _ in range(n_draws):
        for _ in range(max_tries):
            ids = tuple(int(rng.choice(pool)) for pool in pools)
            if any(u.ids == ids for u in out):
                continue
            text = _unit_text(tokenizer, ids)
            if _usable(text) and _roundtrips(tokenizer, text, ids):
                out.append(Unit(ids, text, float("nan"), 0))
                break
    return out


def inject(question: str, unit: str, strategy: str, where: float = 0.5) -> str:
    """``question`` with ``unit`` put before it, after it, or (``intersperse``) at the
    interior word boundary a fraction ``where`` in [0, 1) along it (drawn at random by
    ``run_injection``; one-word questions get the unit appended)."""
    if strategy == "prepend":
        return f"{unit} {question}"
    if strategy == "append":
        return f"{question} {unit}"
    if strategy == "intersperse":
        words = question.split(" ")
        if len(words) < 2:
            return f"{question} {unit}"
        at = 1 + min(int(where * (len(words) - 1)), len(words) - 2)
        return " ".join([*words[:at], unit, *words[at:]])
    raise LirefError(f"unknown injection strategy {strategy!r}; allowed: {list(STRATEGIES)}")


@dataclass
class Target:
    """What is tested: ``name`` (``"latent 12"``, ``"liref"``), its ``column`` in the readout
    table, the class it prefers (1 reasoning, 0 memory), its top ``units`` and, per unit
    (keyed by its ids), its frequency-matched random units (``matched_random_units``)."""

    name: str
    column: int
    prefers: int
    units: list[Unit]
    matched: dict[tuple[int, ...], list[Unit]] = field(default_factory=dict)


#: ``score(question texts) -> {readout: [n, n_columns]}`` (readouts ``max``/``mean``/``position``)
ScoreFn = Callable[[list[str]], dict[str, torch.Tensor]]


def _d(a: np.ndarray, b: np.ndarray) -> float:
    return cohens_d(a, b) if len(a) >= 2 and len(b) >= 2 else float("nan")


Condition = tuple[Unit, str, list[int]]  # (unit, strategy, text index per baseline question)


def _choose_and_report(conds: Sequence[Condition], values: np.ndarray, base: np.ndarray
                       ) -> tuple[float, int | None, list[dict[str, Any]]]:
    """Pick the condition with the largest d on the first half of the baseline questions and
    report its d on the second half; also every condition's d on all of them."""
    if not conds:
        return float("nan"), None, []
    half = len(base) // 2
    every, chooser = [], []
    for unit, strategy, idx in conds:
        inj = values[idx]
        chooser.append(_d(inj[:half], base[:half]))
        every.append({"unit": unit.text, "kind": unit.kind, "strategy": strategy,
                      "d": _d(inj, base), "mean_injected": float(inj.mean()),
                      "mean_baseline": float(base.mean())})
    ranked = [c if math.isfinite(c) else (math.inf if c > 0 else -math.inf) for c in chooser]
    best = int(np.argmax(ranked))
    idx = conds[best][2]
    return _d(values[idx][half:], base[half:]), best, every


def _excess(base: np.ndarray, own: np.ndarray, rand: np.ndarray, n_resamples: int,
            confidence: float, seed: int) -> dict[str, float]:
    """Own units vs frequency-matched random units on the same prompts: ``base``, ``own``
    ``[n]`` and ``rand`` ``[n, K]`` (K draws) readouts of the report-half prompts.
    ``d_excess = d(own, base) - mean_k d(rand_k, base)`` with a percentile interval over
    resamples of the prompts (one resample for all K + 2 columns: paired). An infinite d
    (constant groups, e.g. a latent that reads one token and nothing else) counts as
    ``+-D_CAP`` here, so that the difference and its interval stay defined."""
    def capped(x: np.ndarray, b: np.ndarray) -> float:
        return float(np.clip(_d(x, b), -D_CAP, D_CAP))

    def stat(b: np.ndarray, o: np.ndarray, r: np.ndarray) -> float:
        return capped(o, b) - float(np.mean([capped(r[:, k], b) for k in range(r.shape[1])]))

    d_rand = float(np.mean([capped(rand[:, k], base) for k in range(rand.shape[1])]))
    excess = capped(own, base) - d_rand
    lo, hi = bootstrap_ci(stat, [base, own, rand], n_resamples, confidence, seed)
    return {"d_random_matched": d_rand, "d_excess": excess, "d_excess_lo": lo,
            "d_excess_hi": hi}


def class_vs_random(d_excess: float | None, lo: float | None) -> str | None:
    """The class of ``d_excess`` when its interval's lower bound ``lo`` is above 0, else
    context-dependent (``None`` when there is no random-token baseline)."""
    if d_excess is None or lo is None or math.isnan(d_excess) or math.isnan(lo):
        return None
    return injection_class(d_excess) if lo > 0 else CONTEXT_DEPENDENT


def run_injection(targets: Sequence[Target], baselines: dict[int, list[str]], score: ScoreFn,
                  readouts: dict[int, str], strategies: Sequence[str] = STRATEGIES,
                  controls: Sequence[Unit] | dict[int, Sequence[Unit]] = (), seed: int = 0,
                  extra_readouts: Sequence[str] = (), n_resamples: int = N_RESAMPLES,
                  confidence: float = CONFIDENCE) -> list[dict[str, Any]]:
    """Inject every target's units (and the control units) into the baseline questions.

    Args:
        targets: what to test (with ``matched`` random units for the random-token baseline).
            baselines: ``{class: questions}`` — a target preferring class
            c is injected into ``baselines[1 - c]`` (or ``baselines[-1]``, neutral texts, when
            present). score: scores question texts (templating and the model are the
            caller's); called a second time for the matched random units of the chosen
            conditions. readouts: ``{column: readout}`` (the primary readout per column).
        controls: random units, the same for every target, or ``{class: units}`` keyed like
            ``baselines`` (e.g. random units from the baseline class's own questions).
        extra_readouts: also report the chosen condition's d under these readouts.
        n_resamples, confidence: the bootstrap interval of ``d_excess``.

    Returns:
        One dict per target: ``name``, ``d`` (chosen condition, report half), ``class``
        (the old class, of ``d``), ``best`` (``"<kind> '<text>' @ <strategy>"``),
        ``d_random`` (old control, same protocol), ``d_random_matched`` (mean d of the chosen
        unit's frequency-matched random units, same strategy and insertion points, report
        half), ``d_excess`` = ``d - d_random_matched`` (each |d| capped at ``D_CAP``) with
        ``d_excess_lo``/``_hi``,
        ``class_vs_random``, ``random_matched`` (their texts), ``d_<readout>`` for the extra
        readouts, ``units`` and ``conditions`` (every condition's d on all baseline prompts).
        The random-token keys are null when the chosen unit has no matched random units.
    """
    rng_seed = int(seed)
    texts: dict[str, int] = {}

    def want(t: str) -> int:
        return texts.setdefault(t, len(texts))

    def base_key(prefers: int) -> int:
        return -1 if -1 in baselines else 1 - prefers

    plans: list[dict[str, Any]] = []
    for target in targets:
        key = base_key(target.prefers)
        questions = baselines[key]
        ctrl = controls.get(key, ()) if isinstance(controls, dict) else controls
        if len(questions) < 4:
            raise LirefError(f"token injection for {target.name}: only {len(questions)} "
                             f"baseline questions (need >= 4)")

        # one insertion point per question, shared by every unit (paired comparisons)
        where = np.random.default_rng(rng_seed).random(len(questions))

        def conditions(units: Sequence[Unit], questions: list[str] = questions,
                       where: np.ndarray = where) -> list[Condition]:
            out = []
            for unit in units:
                for strategy in strategies:
                    idx = [want(inject(q, unit.text, strategy, float(w)))
                           for q, w in zip(questions, where, strict=True)]
                    out.append((unit, strategy, idx))
            return out

        plans.append({"target": target, "base": [want(q) for q in questions],
                      "questions": questions, "where": where,
                      "conds": conditions(target.units), "controls": conditions(ctrl)})
    if not texts:
        return []
    table = score(list(texts))
    rows = []
    for plan in plans:
        target: Target = plan["target"]
        how = readouts[target.column]
        values = table[how][:, target.column].double().numpy()
        base = values[plan["base"]]
        rep = slice(len(base) // 2, None)
        d, best, every = _choose_and_report(plan["conds"], values, base)
        d_random, _, _ = _choose_and_report(plan["controls"], values, base)
        row: dict[str, Any] = {
            "name": target.name, "d": d, "class": injection_class(d), "d_random": d_random,
            "d_random_matched": None, "d_excess": None, "d_excess_lo": None,
            "d_excess_hi": None, "class_vs_random": None, "random_matched": [],
            "best": None, "units": [u.text for u in target.units], "conditions": every,
        }
        if best is not None:
            unit, strategy, idx = plan["conds"][best]
            row["best"] = f"{unit.kind} '{unit.text}' @ {strategy}"
            for extra in extra_readouts:
                ev = table[extra][:, target.column].double().numpy()
                row[f"d_{extra}"] = _d(ev[idx][rep], ev[plan["base"]][rep])
            # the random-token baseline: the chosen condition with the unit swapped for
            # frequency-matched random units (report half only)
            draws = target.matched.get(unit.ids, [])
            plan["matched"] = [[want(inject(q, r.text, strategy, float(w))) for q, w in
                                zip(plan["questions"][rep], plan["where"][rep], strict=True)]
                               for r in draws]
            plan["own"] = idx[rep]
            row["random_matched"] = [r.text for r in draws]
        else:
            for extra in extra_readouts:
                row[f"d_{extra}"] = float("nan")
        rows.append(row)
    _random_token_baseline(plans, rows, table, texts, score, readouts, n_resamples,
                           confidence, rng_seed)
    return rows


def _random_token_baseline(plans: list[dict[str, Any]], rows: list[dict[str, Any]],
                           table: dict[str, torch.Tensor], texts: dict[str, int],
                           score: ScoreFn, readouts: dict[int, str], n_resamples: int,
                           confidence: float, seed: int) -> None:
    """Score the texts of the matched random units not scored yet and fill every row's
    random-token keys (``_excess``, ``class_vs_random``) in place."""
    n_old = next(iter(table.values())).shape[0]
    if len(texts) > n_old:
        more = score(list(texts)[n_old:])
        table = {k: torch.cat([v, more[k]]) for k, v in table.items() if k in more}
    for plan, row in zip(plans, rows, strict=True):
        if not plan.get("matched"):
            continue
        target: Target = plan["target"]
        values = table[readouts[target.column]][:, target.column].double().numpy()
        base = values[plan["base"]][len(plan["base"]) // 2:]
        rand = np.stack([values[idx] for idx in plan["matched"]], 1)  # [n, K]
        row.update(_excess(base, values[plan["own"]], rand, n_resamples, confidence, seed))
        row["class_vs_random"] = class_vs_random(row["d_excess"], row["d_excess_lo"])
