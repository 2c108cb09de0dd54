"""Evaluate many steering settings on one item set, batched: every (item, setting) pair is a row
and the rows of several settings share each forward / ``generate`` call (``steer_settings``).

Two ways to score a setting:
- ``evaluate_teacher_forced``: one forward pass per item (per setting), no generation: the
  log-probability of the gold answer and of each mode's answer after the prompt; "correct" /
  a rate = that answer is the argmax under teacher forcing (for one-token answers, the first
  greedy token). The organism's default metric.
- ``evaluate_generation``: greedy completions scored per source (``score_answer``).

Both return ``Outcomes``: per-setting, per-item arrays ``[S, N]`` in the order of the items.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from probing.errors import LirefError
from probing.evaluation.margins import score_candidates
from probing.questions.record import Question
from probing.steering.interventions import Intervention

log = logging.getLogger(__name__)

__all__ = [
    "EvalSet",
    "Outcomes",
    "build_eval_set",
    "evaluate_generation",
    "evaluate_teacher_forced",
    "headline_metrics",
    "item_flips",
    "sweep_rows",
]

#: The key naming a question's own gold answer (``answers[0]``) in ``rates`` / ``contrast``.
GOLD = "gold"


@dataclass
class EvalSet:
    """Items to steer on.

    Attributes:
        name: the set's name in results (``memory``, ``exceptions``, ``gsm8k``, ...).
        questions, prompts: the items and their prompts (same order).
        rates: ``{rate name: answer key}``: the share of items answered with that answer
            (``"gold"`` or a ``meta`` key, e.g. ``{"stale": "stale_answer"}``).
        contrast: ``(key a, key b)``: the teacher-forced margin ``log P(a) - log P(b)`` (e.g.
            ``("rule_answer", "memory_answer")``).
        add_special_tokens: False for chat-templated prompts (they hold their own BOS).
    """

    name: str
    questions: list[Question]
    prompts: list[str]
    rates: dict[str, str] = field(default_factory=dict)
    contrast: tuple[str, str] | None = None
    add_special_tokens: bool = True

    def __post_init__(self) -> None:
        if len(self.questions) != len(self.prompts) or not self.questions:
            raise LirefError(f"set {self.name!r}: {len(self.questions)} questions and "
                             f"{len(self.prompts)} prompts; need the same non-zero number")
        if self.contrast is not None:
            self.contrast = tuple(self.contrast)  # type: ignore[assignment]
            if len(self.contrast) != 2:
                raise LirefError(f"set {self.name!r}: contrast must name two answer keys, got "
                                 f"{self.contrast!r}")
        for key in self.keys():
            self.answer(self.questions[0], key)  # fail early on a missing meta key

    def keys(self) -> list[str]:
        """The answer keys scored: gold, the contrast's, the rates' (no repeats)."""
        keys = [GOLD, *(self.contrast or ()), *self.rates.values()]
        return list(dict.fromkeys(keys))

    def answer(self, question: Question, key: str) -> str:
        if key == GOLD:
            if not question.answers:
                raise LirefError(f"set {self.name!r}: question {question.id!r} has no answer")
            return question.answers[0]
        if key not in question.meta:
            raise LirefError(f"set {self.name!r}: question {question.id!r} has no meta[{key!r}] "
                             f"(its meta keys: {sorted(question.meta)})")
        return str(question.meta[key])


@dataclass
class Outcomes:
    """Per-setting, per-item results ``[S, N]`` on one ``EvalSet``."""

    set: str
    metric: str
    item_ids: list[str]
    correct: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    parse_failed: np.ndarray | None = None
    length: np.ndarray | None = None
    completions: list[list[str]] | None = None


def _settings(settings: Sequence[Sequence[Intervention]]) -> list[list[Intervention]]:
    out = [list(s) for s in settings]
    if not out:
        raise LirefError("no settings to evaluate")
    return out


def evaluate_teacher_forced(model: nn.Module, tokenizer: Any, evalset: EvalSet,
                            settings: Sequence[Sequence[Intervention]], batch_size: int = 64,
                            progress: bool = True) -> Outcomes:
    """Teacher-forced scores of every setting on ``evalset`` (one forward row per item and
    setting when the answers are one token each).

    Scores: ``logp_gold``; ``margin`` (the contrast, when set); ``rate_<name>`` (0/1: the
    rate's answer is the argmax); ``correct`` = the gold answer is the argmax.
    """
    from probing.steering.context import steer_settings

    settings = _settings(settings)
    keys = evalset.keys()
    n, s = len(evalset.questions), len(settings)
    cands = [[evalset.answer(q, k) for k in keys] for q in evalset.questions]
    prompts = list(evalset.prompts) * s
    rows = [j for j in range(s) for _ in range(n)]
    with steer_settings(model, settings) as steering:
        res = score_candidates(model, tokenizer, prompts, cands * s, batch_size,
                               evalset.add_special_tokens, steering, rows, progress)
    logprob = res.logprob.reshape(s, n, len(keys))
    greedy = res.greedy.reshape(s, n, len(keys))
    col = {k: i for i, k in enumerate(keys)}
    scores: dict[str, np.ndarray] = {"logp_gold": logprob[:, :, col[GOLD]]}
    if evalset.contrast is not None:
        a, b = evalset.contrast
        scores["margin"] = logprob[:, :, col[a]] - logprob[:, :, col[b]]
    for name, key in evalset.rates.items():
        scores[f"rate_{name}"] = greedy[:, :, col[key]]
    return Outcomes(evalset.name, "teacher_forced", [q.id for q in evalset.questions],
                    greedy[:, :, col[GOLD]], scores)


def evaluate_generation(model: nn.Module, tokenizer: Any, evalset: EvalSet,
                        settings: Sequence[Sequence[Intervention]], max_new_tokens: int,
                        batch_size: int = 32, stop_at: str | None = "\n",
                        stops: Sequence[str] | None = None) -> Outcomes:
    """Greedy completions of every setting on ``evalset``, scored with each question's rule
    (``score_answer``); ``rate_<name>`` = the completion gives that answer; length in tokens."""
    from probing.evaluation.generation import greedy_generate
    from probing.evaluation.scorers import DEFAULT_STOPS, gives_answer, score_answer, scoring_rule
    from probing.steering.context import steer_settings

    settings = _settings(settings)
    stops = tuple(DEFAULT_STOPS if stops is None else stops)
    n, s = len(evalset.questions), len(settings)
    prompts = list(evalset.prompts) * s
    row_setting = np.repeat(np.arange(s), n)
    with steer_settings(model, settings) as steering:
        texts = greedy_generate(model, tokenizer, prompts, max_new_tokens, batch_size, stop_at,
                                on_batch=lambda idx: steering.set_rows(row_setting[idx]),
                                add_special_tokens=evalset.add_special_tokens)
    correct = np.zeros((s, n), dtype=bool)
    failed = np.zeros((s, n), dtype=bool)
    length = np.zeros((s, n), dtype=np.float64)
    rates = {name: np.zeros((s, n), dtype=bool) for name in evalset.rates}
    completions: list[list[str]] = [[""] * n for _ in range(s)]
    for r, text in enumerate(texts):
        j, i = divmod(r, n)
        q = evalset.questions[i]
        scored = score_answer(text, q, stops=stops)
        correct[j, i], failed[j, i] = scored.correct, scored.parse_failed
        length[j, i] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        completions[j][i] = text
        for name, key in evalset.rates.items():
            rates[name][j, i] = gives_answer(text, evalset.answer(q, key), scoring_rule(q), stops,
                                             q)
    scores: dict[str, np.ndarray] = {f"rate_{k}": v for k, v in rates.items()}
    return Outcomes(evalset.name, "generate", [q.id for q in evalset.questions], correct, scores,
                    failed, length, completions)


def sweep_rows(outcomes: Outcomes, infos: Sequence[Mapping[str, Any]], n_resamples: int = 1000,
               seed: int = 0) -> list[dict[str, Any]]:
    """One row per setting: ``set``, ``metric``, the setting's ``info`` and its paired
    statistics against the unsteered run (setting 0; see ``compare_settings``)."""
    from probing.evaluation.paired import compare_settings

    if len(infos) != outcomes.correct.shape[0]:
        raise LirefError(f"{len(infos)} setting descriptions for {outcomes.correct.shape[0]} "
                         f"settings")
    stats = compare_settings(outcomes.correct, 0, outcomes.scores, outcomes.parse_failed,
                             outcomes.length, n_resamples, seed)
    return [{"set": outcomes.set, "metric": outcomes.metric, **dict(info), **st}
            for info, st in zip(infos, stats, strict=True)]


def item_flips(outcomes: Outcomes, baseline: int = 0) -> dict[str, Any]:
    """``{"item_ids": [...], "up": [[i, ...] per setting], "down": [...]}``: the items each
    setting turned wrong -> right (up) and right -> wrong (down) against ``baseline``."""
    c = outcomes.correct.astype(bool)
    base = c[baseline]
    return {"item_ids": list(outcomes.item_ids),
            "up": [np.flatnonzero(~base & row).tolist() for row in c],
            "down": [np.flatnonzero(base & ~row).tolist() for row in c]}


def build_eval_set(spec: Mapping[str, Any], template: Any = None, tokenizer: Any = None,
                   organism_path: str | None = None, n: int | None = None, seed: int = 0,
                   exclude: Collection[str] = (), exclude_groups: Collection[str] = (),
                   ) -> EvalSet:
    """An ``EvalSet`` from a config mapping: ``set`` (its name), ``rates``, ``contrast``,
    ``prompt`` (a ``PromptTemplate`` mapping overriding ``template``), ``n`` (items, drawn with
    ``seed``), the rest passed to ``load_question_set`` (``name``, ``path``, ``split``,
    ``kinds``, ...). Questions whose id is in ``exclude`` (the items the direction was fitted
    on) or whose group is in ``exclude_groups`` are dropped before the draw."""
    from probing.questions import load_questions
    from probing.questions.prompts import PromptTemplate, format_prompts, prompt_template
    from probing.questions.sampling import sample_balanced

    spec = dict(spec)
    name = str(spec.pop("set", None) or spec.get("name") or "")
    rates = dict(spec.pop("rates", None) or {})
    contrast = spec.pop("contrast", None)
    prompt = spec.pop("prompt", None)
    n = spec.pop("n", n)
    if not name:
        raise LirefError(f"question set entry {spec} has no 'set' or 'name'")
    questions = load_questions([spec], None, seed, organism_path)
    kept = [q for q in questions if q.id not in exclude and q.group not in exclude_groups]
    if not kept:
        raise LirefError(f"steering set {name!r}: all {len(questions)} questions were used to "
                         "fit the direction; evaluate on other items")
    if len(kept) < len(questions):
        log.info("steering set %s: %d of %d questions left out (the direction was fitted on "
                 "them)", name, len(questions) - len(kept), len(questions))
    questions = sample_balanced(kept, n, seed)
    tmpl = prompt_template(prompt) if prompt else (template or PromptTemplate())
    return EvalSet(name, questions, format_prompts(questions, tmpl, tokenizer), rates,
                   tuple(contrast) if contrast else None, add_special_tokens=not tmpl.chat)


def _mean(values: Sequence[float]) -> float:
    vals = [v for v in values if v == v]
    return float(np.mean(vals)) if vals else float("nan")


def headline_metrics(rows: Sequence[Mapping[str, Any]], intervention: str,
                     strength: float | None, layer: int | None = None) -> dict[str, float]:
    """Flat headline effects at one strength (``None``: an intervention without strengths, e.g.
    ablation) and layer (default: the first swept; latents: the SAE's):
    ``{set}/{metric}/unsteered/<stat>`` and ``{set}/{metric}/{intervention}/{condition}/<stat>``
    (``diff``, ``p_value``, and ``<score>_diff`` for margins and rates, with ``_ci_low/_ci_high``
    for a single setting; ``random`` and ``permuted`` = the mean over seeds), plus
    ``.../selectivity`` = direction diff minus the mean random (erase: permuted) diff."""
    out: dict[str, float] = {}
    def same(x: float | None) -> bool:
        if x is None or strength is None:
            return x is None and strength is None
        return abs(float(x) - strength) < 1e-9

    chosen = [r for r in rows if r["intervention"] == intervention and same(r["strength"])]
    layers = list(dict.fromkeys(r["layer"] for r in chosen))
    if layer is None or layer not in layers:
        layer = layers[0] if layers else layer
    chosen = [r for r in chosen if r["layer"] == layer]
    score_keys = sorted({k for r in rows for k in r if f"{k}_diff" in r and f"{k}_ci_low" in r})
    for r in rows:
        if r["intervention"] == "none":
            key = f"{r['set']}/{r['metric']}/unsteered"
            out[f"{key}/accuracy"] = r["accuracy"]
            for s in score_keys:
                if s in r:
                    out[f"{key}/{s}"] = r[s]
    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in chosen:
        cond = r["condition"] if r.get("rank") is None else f"rank{r['rank']}_{r['condition']}"
        groups.setdefault((r["set"], r["metric"], cond), []).append(r)
    for (set_name, metric, cond), members in groups.items():
        key = f"{set_name}/{metric}/{intervention}/{cond}"
        out[f"{key}/diff"] = _mean([m["diff"] for m in members])
        if len(members) == 1:
            out[f"{key}/p_value"] = members[0]["p_value"]
            out[f"{key}/diff_ci_low"] = members[0]["diff_ci_low"]
            out[f"{key}/diff_ci_high"] = members[0]["diff_ci_high"]
        for s in score_keys:
            if f"{s}_diff" in members[0]:
                out[f"{key}/{s}_diff"] = _mean([m[f"{s}_diff"] for m in members])
                if len(members) == 1 and f"{s}_diff_ci_low" in members[0]:
                    for end in ("ci_low", "ci_high"):
                        out[f"{key}/{s}_diff_{end}"] = members[0][f"{s}_diff_{end}"]
    for set_name, metric, cond in groups:
        if cond == "direction":  # erase: against the permuted-label erasers
            rand = "permuted" if (set_name, metric, "permuted") in groups else "random"
        elif cond.endswith("_latent") and not cond.endswith("_random_latent"):
            rand = cond[: -len("latent")] + "random_latent"
        else:
            continue
        if (set_name, metric, rand) in groups:
            base = f"{set_name}/{metric}/{intervention}"
            for stat in ("diff", *(f"{s}_diff" for s in score_keys)):
                if f"{base}/{cond}/{stat}" in out and f"{base}/{rand}/{stat}" in out:
                    name = stat[: -len("diff")] + "selectivity"
                    out[f"{base}/{cond}/{name}"] = (out[f"{base}/{cond}/{stat}"]
                                                    - out[f"{base}/{rand}/{stat}"])
    if layer is not None:
        out[f"headline/{intervention}/layer"] = float(layer)
    if strength is not None:
        out[f"headline/{intervention}/strength"] = float(strength)
    return out
