"""Held-out choice of steering strengths (chosen on half A, reported on half B) and the
prompting baseline (an instruction added to each question, scored like any setting)."""

from __future__ import annotations

import numpy as np
import pytest

from probing.errors import LirefError
from probing.model.loading import load_model
from probing.questions import Question
from probing.questions.prompts import PromptTemplate, format_prompts
from probing.steering.evaluate import EvalSet, Outcomes, evaluate_teacher_forced, sweep_rows
from probing.steering.heldout import Objective, Selection, choose_strengths, split_halves
from probing.steering.prompting import (
    Prompting,
    instructed_prompts,
    merge_outcomes,
    prompt_outcomes,
    set_mode,
)
from probing.steering.run import SteeringSettings, _headline, _score
from probing.steering.sweep import INFO_KEYS
from tests.tiny_models import PROMPTS

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _q(i: int, group: str, label: str = "reasoning", **meta: object) -> Question:
    return Question(id=f"q{i}", question=f"what is {i} ?", answers=(str(i % 10),), label=label,
                    source="t", meta=meta, group=group)


def _questions() -> list[Question]:
    # 30 items in 12 groups of 1-4 items, both labels
    return [_q(i, f"g{i % 12}", "memory" if i % 12 < 4 else "reasoning") for i in range(30)]


def test_split_is_grouped_seeded_and_stratified():
    qs = _questions()
    a, b = split_halves(qs, 0.5, seed=3)
    assert sorted(a + b) == sorted(q.id for q in qs) and not set(a) & set(b)
    group = {q.id: q.group for q in qs}
    assert not {group[i] for i in a} & {group[i] for i in b}  # no group on both sides
    assert (a, b) == split_halves(qs, 0.5, seed=3)  # same seed, same halves
    assert [split_halves(qs, 0.5, seed=s)[0] for s in range(4)] != [a] * 4
    label = {q.id: q.label for q in qs}
    for lab in ("memory", "reasoning"):  # both labels on both sides
        assert any(label[i] == lab for i in a) and any(label[i] == lab for i in b)
    assert 10 <= len(a) <= 20
    one_label = [_q(i, f"g{i}") for i in range(6)]  # a set of one label splits too
    a1, b1 = split_halves(one_label, 0.5, 0)
    assert len(a1) == len(b1) == 3
    with pytest.raises(LirefError, match="two groups"):
        split_halves([_q(i, "same") for i in range(4)])
    with pytest.raises(LirefError, match="fraction"):
        Selection(fraction=1.0)
    with pytest.raises(LirefError, match="sign"):
        Objective(sign=2)
    assert SteeringSettings(selection={"fraction": 0.4}).selection.fraction == 0.4
    with pytest.raises(LirefError, match="push"):
        SteeringSettings(headline={"push": 1.0})


def _infos() -> list[dict]:
    def info(strength, condition, seed=None):
        return {**dict.fromkeys(INFO_KEYS), "intervention": "add", "layer": 1,
                "strength": strength, "condition": condition, "seed": seed}

    return [{**dict.fromkeys(INFO_KEYS), "intervention": "none", "strength": 0.0,
             "condition": "unsteered"},
            info(1.0, "direction"), info(1.0, "random", 0),
            info(2.0, "direction"), info(2.0, "random", 0)]


def test_the_strength_is_chosen_on_half_a_and_reported_on_half_b():
    """Strength 1 helps on half A only, strength 2 on half B only: the choice follows A, the
    headline figure is strength 1's effect on B (zero), not the full set's or B's best."""
    ids = [f"q{i}" for i in range(20)]
    a, b = ids[:10], ids[10:]
    in_a = np.array([i < 10 for i in range(20)])
    correct = np.zeros((5, 20), dtype=bool)
    correct[1] = in_a       # strength 1, direction: right on A
    correct[3] = ~in_a      # strength 2, direction: right on B
    outcome = Outcomes("toy", "teacher_forced", ids, correct,
                       {"margin": correct.astype(float)})
    parts: dict[str, list] = {"choice": [], "report": []}
    rows = _score(outcome, _infos(), (a, b), 200, 0, parts)
    assert {r["half"] for r in rows} == {"all"} and [r["n"] for r in parts["report"]] == [10] * 5
    chosen = choose_strengths(parts["choice"], {"toy": Objective()}, "teacher_forced", 1)
    assert chosen["add"]["strength"] == 1.0
    assert chosen["add"]["objective"] == {1.0: 1.0, 2.0: 0.0}
    m = _headline(parts["report"], {"add": chosen["add"]["strength"]}, 1)
    assert m["headline/add/strength"] == 1.0 and m["toy/teacher_forced/add/direction/diff"] == 0
    # an objective that wants the margin down: strength 1 raises it on A, strength 2 wins
    down = choose_strengths(parts["choice"], {"toy": Objective("margin", -1)}, "teacher_forced",
                            1)
    assert down["add"]["strength"] == 2.0
    fixed = choose_strengths(parts["choice"], {"toy": Objective()}, "teacher_forced", 1,
                             {"add": 2.0})
    assert fixed["add"]["strength"] == 2.0 and fixed["add"]["fixed"]


def test_the_instruction_goes_before_or_after_the_question():
    q = _q(3, "g")
    tmpl = PromptTemplate(few_shot=(("what is 1 ?", "1"),))
    before, after = (instructed_prompts([q], tmpl, None, "Think step by step.", x)[0]
                     for x in (False, True))
    plain = format_prompts([q], tmpl)[0]
    assert before == plain.replace("Q: what is 3 ?", "Q: Think step by step. what is 3 ?")
    assert after == plain.replace("what is 3 ?\nA:", "what is 3 ? Think step by step.\nA:")
    assert before.startswith("Q: what is 1 ?\nA: 1")  # the few-shot example unchanged
    assert set_mode([q]) == "reasoning" and set_mode([_q(1, "g", "memory")]) == "memory"
    assert set_mode([_q(1, "g", "memory", context_answer="x")]) == "context"
    assert set_mode([q], "memory") == "memory"
    with pytest.raises(LirefError, match="allowed"):
        Prompting(instructions={"mood": "x"})


def test_prompting_is_scored_with_paired_statistics_on_a_tiny_model(tiny_model_dir):
    model, tok = load_model(str(tiny_model_dir("llama")))
    qs = [Question(id=f"t/{i}", question=p, answers=("3",), label="memory", source="t",
                   group=f"g{i}") for i, p in enumerate(PROMPTS)]
    es = EvalSet("toy", qs, format_prompts(qs))
    seen: list[list[str]] = []

    def evaluate(e, settings):
        seen.append(list(e.prompts))
        return evaluate_teacher_forced(model, tok, e, settings, 8, progress=False)

    extra, infos, texts = prompt_outcomes(model, tok, es, PromptTemplate(), Prompting(),
                                          "memory", evaluate)
    assert texts == {"direction": "Answer from memory.", "negated": "Think step by step."}
    assert seen[0][0] == "Q: Answer from memory. " + PROMPTS[0] + "\nA: "
    assert extra.correct.shape == (2, len(qs)) and [i["condition"] for i in infos] == [
        "direction", "negated"]
    base = evaluate(es, [[]])
    rows = sweep_rows(merge_outcomes(base, extra), [{"intervention": "none"}, *infos], 200)
    assert rows[1]["intervention"] == "prompt" and rows[1]["logp_gold_diff"] != 0
    assert rows[1]["logp_gold_diff"] == pytest.approx(
        float((extra.scores["logp_gold"][0] - base.scores["logp_gold"][0]).mean()))
    assert {"p_value", "diff_ci_low", "logp_gold_diff_ci_high"} <= set(rows[1])
