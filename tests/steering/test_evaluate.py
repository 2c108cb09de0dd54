"""Evaluation under steering: per-source scorers, teacher-forced candidate scores, paired
statistics against the unsteered run, batched sweep evaluation, headline effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probing.errors import LirefError
from probing.evaluation.margins import score_candidates, split_answer
from probing.evaluation.paired import add_q_values, compare_settings
from probing.evaluation.scorers import (
    extract_choice_cot,
    extract_last_number,
    gives_answer,
    score_answer,
    scoring_rule,
)
from probing.model.loading import load_model
from probing.questions import Question
from probing.stats import (
    accuracy_with_ci,
    bootstrap_mean,
    bootstrap_means,
    mcnemar_exact,
    paired_bootstrap_diff,
)
from probing.steering import AblateDirection, AddDirection, steer
from probing.steering.evaluate import (
    EvalSet,
    evaluate_generation,
    evaluate_teacher_forced,
    headline_metrics,
)
from tests.tiny_models import PROMPTS, D

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mk(source: str, answers: tuple[str, ...], **meta: object) -> Question:
    return Question(id=f"{source}/0", question="?", answers=answers, label="reasoning",
                    source=source, meta=meta)


# ----------------------------------------------------------------------------- scorers


@pytest.mark.parametrize(("text", "expected"), [
    ("16 - 3 - 4 = 9 eggs. She sells 9 * 2 = 18. The answer is 18.", "18"),
    ("Total: $1,200. Then 1,450,000 - 1,449,000 = 1,000", "1000"),
    ("It falls by 3, to -3.5 degrees", "-3.5"),
    ("no digits", None),
])
def test_last_number(text, expected):
    assert extract_last_number(text) == expected


def test_per_source_rules():
    gsm = mk("gsm8k", ("18",), answer_type="number")
    assert scoring_rule(gsm) == "last_number"
    assert score_answer("9 + 9 = 18.\nThe answer is 18.", gsm).correct
    assert not score_answer("The answer is 18 + 1 = 19", gsm).correct  # the last number counts
    miss = score_answer("I cannot say.", gsm)
    assert not miss.correct and miss.parse_failed and miss.parsed is None
    mgsm = mk("mgsm", ("5600",), answer_type="number")
    assert score_answer("so 5,600", mgsm).correct and scoring_rule(mgsm) == "last_number"
    pop = mk("popqa", ("politician", "statesman"), answer_type="text")
    scored = score_answer("He was a Statesman.", pop)
    assert scored.correct and scored.parsed == "statesman" and not scored.parse_failed
    assert score_answer("   ", pop).parse_failed
    org = mk("organism", ("5",))
    assert score_answer("5", org).correct and score_answer(" 5 \n", org).correct
    assert not score_answer("15", org).correct and not score_answer("5x", org).correct
    assert score_answer("", org).parse_failed
    assert scoring_rule(mk("custom", ("1",), scoring="first_number")) == "first_number"
    with pytest.raises(LirefError, match="scoring rule"):
        scoring_rule(mk("custom", ("1",), scoring="vibes"))


def test_multiple_choice_parse_failures_are_counted_never_guessed():
    q = mk("mmlu_pro", ("C", "x"), choices=list("abcd"), answer_index=2, answer_type="choice")
    assert extract_choice_cot("so the answer is (B). Wait: the answer is (C).", 4) == "C"
    assert extract_choice_cot("Answer: D", 4) == "D"
    assert extract_choice_cot("The answer is (J)", 4) is None  # not among 4 options
    assert score_answer("the answer is (C)", q).correct
    outcomes = [score_answer(t, q) for t in ("hmm, hard to say", "maybe", "the answer is (A)")]
    assert [o.parse_failed for o in outcomes] == [True, True, False]
    assert not any(o.correct for o in outcomes)
    assert all(score_answer("hmm, hard to say", q) == outcomes[0] for _ in range(5))


def test_gives_answer_for_rates():
    stale = mk("organism", ("12",), stale_answer="9")
    assert gives_answer("9\n", "9", "first_word", question=stale)
    assert not gives_answer("19", "9", "first_word", question=stale)
    assert gives_answer("it is 9.0", "9", "last_number")


# ----------------------------------------------------------------------------- margins


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(str(tiny_model_dir("llama")))


def _manual_logprob(model, tok, prompt: str, answer: str) -> tuple[float, bool]:
    ctx, ans = split_answer(tok, prompt, answer)
    ids = torch.tensor([ctx + ans])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    rows = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(ans))
    return (float(logp[rows, torch.tensor(ans)].double().sum()),
            bool((logp[rows].argmax(-1) == torch.tensor(ans)).all()))


def test_candidate_scores_equal_a_manual_computation(tiny):
    model, tok = tiny
    prompts = PROMPTS[:3]
    cands = [["3", "4 plus"], ["red", "blue"], ["seven", "7"]]
    res = score_candidates(model, tok, prompts, cands, batch_size=2)
    for i, p in enumerate(prompts):
        for j, a in enumerate(cands[i]):
            lp, greedy = _manual_logprob(model, tok, p, a)
            assert res.logprob[i, j] == pytest.approx(lp, abs=1e-4)
            assert res.greedy[i, j] == greedy
    assert np.allclose(res.margin(0, 1), res.logprob[:, 0] - res.logprob[:, 1])
    ctx, ans = split_answer(tok, "Q: who\nA: ", "red")
    assert ctx + ans == tok("Q: who\nA: red")["input_ids"]
    # after a prompt without a trailing space the answer is scored with its leading space
    assert split_answer(tok, "Q: who\nA:", "red") == split_answer(tok, "Q: who\nA:", " red")
    assert split_answer(tok, "Q: who\nA:", " red")[1] == tok("Q: who\nA: red")["input_ids"][
        len(tok("Q: who\nA:")["input_ids"]):]
    with pytest.raises(LirefError, match="candidate lists"):
        score_candidates(model, tok, prompts, cands[:2])


def test_steered_batched_candidate_scores_equal_one_setting_at_a_time(tiny):
    from probing.steering import steer_settings

    model, tok = tiny
    r = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    settings = [[], [AddDirection(1, r, 3.0)], [AblateDirection(None, r, positions="prompt")]]
    prompts, cands = PROMPTS[:3], [["3", "red blue"]] * 3
    with steer_settings(model, settings) as s:
        batched = score_candidates(model, tok, prompts * 3, cands * 3, 4, steering=s,
                                   row_settings=[0, 0, 0, 1, 1, 1, 2, 2, 2])
    for k, setting in enumerate(settings):
        with steer(model, setting) as one_setting:
            one = score_candidates(model, tok, prompts, cands, 4, steering=one_setting)
        assert np.allclose(batched.logprob[3 * k: 3 * k + 3], one.logprob, atol=1e-5)
    assert not np.allclose(batched.logprob[3:6], batched.logprob[:3], atol=1e-3)


@pytest.fixture(scope="module")
def organism():
    return load_model("organism")


def test_organism_teacher_forced_matches_greedy_generation(organism):
    from probing.evaluation.generation import greedy_generate
    from probing.organism.questions import load_organism_questions
    from probing.questions.prompts import format_prompts

    model, tok = organism
    qs = load_organism_questions(kinds=["near_exception"])[:48]
    evalset = EvalSet("near_exceptions", qs, format_prompts(qs), {"stale": "stale_answer"},
                      ("gold", "stale_answer"))
    out = evaluate_teacher_forced(model, tok, evalset, [[]], progress=False)
    texts = greedy_generate(model, tok, evalset.prompts, max_new_tokens=3)
    first = np.array([t.split()[0] if t.split() else "" for t in texts])
    assert np.array_equal(out.correct[0], first == np.array([q.answers[0] for q in qs]))
    assert np.array_equal(out.scores["rate_stale"][0],
                          first == np.array([q.meta["stale_answer"] for q in qs]))
    assert out.correct.mean() > 0.8 and out.scores["rate_stale"].mean() < 0.2
    assert (out.scores["margin"][0][out.correct[0]] > 0).all()  # right -> computed beats stale


# ----------------------------------------------------------------------------- statistics


def test_bootstrap_means_equal_bootstrap_mean_per_column():
    v = np.random.default_rng(0).random((40, 3))
    boot = bootstrap_means(v, 300, seed=4)
    for j in range(3):
        assert np.allclose(boot[:, j], bootstrap_mean(v[:, j], 300, seed=4))


def test_compare_settings_equals_the_shared_statistics():
    rng = np.random.default_rng(1)
    base = rng.random(60) < 0.6
    up = base | (rng.random(60) < 0.3)
    down = base & (rng.random(60) < 0.5)
    correct = np.stack([base, up, down])
    margin = rng.normal(size=(3, 60))
    failed = np.zeros((3, 60), dtype=bool)
    failed[2, :4] = True
    rows = compare_settings(correct, 0, {"margin": margin, "rate_x": correct}, failed,
                            np.full((3, 60), 2.0), n_resamples=400, seed=3)
    for j, row in enumerate(rows):
        acc, lo, hi = accuracy_with_ci(correct[j], n_resamples=400, seed=3)
        assert (row["accuracy"], row["ci_low"], row["ci_high"]) == pytest.approx((acc, lo, hi))
        d, dlo, dhi = paired_bootstrap_diff(base, correct[j], n_resamples=400, seed=3)
        assert (row["diff"], row["diff_ci_low"], row["diff_ci_high"]) == pytest.approx(
            (d, dlo, dhi))
        test = mcnemar_exact(base, correct[j])
        assert row["p_value"] == test["p_value"] and row["flips_up"] == test["flips_up"]
        assert row["margin_diff"] == pytest.approx(float((margin[j] - margin[0]).mean()))
        assert row["rate_x_p_value"] == test["p_value"]
        assert row["mean_length"] == 2.0
    assert rows[1]["flips_down"] == 0 and rows[2]["flips_up"] == 0
    assert [r["parse_failures"] for r in rows] == [0, 0, 4]
    assert rows[0]["diff"] == 0 and rows[0]["p_value"] == 1.0
    add_q_values(rows, skip=[True, False, False])
    assert "q_value" not in rows[0] and rows[1]["q_value"] >= rows[1]["p_value"]
    with pytest.raises(LirefError, match="baseline"):
        compare_settings(correct, baseline=5)


# ----------------------------------------------------------------------------- sweeps


def test_batched_generation_sweep_equals_one_setting_at_a_time(tiny):
    model, tok = tiny
    qs = [Question(id=f"t/{i}", question=p, answers=("3",), label="reasoning", source="t",
                   meta={"alt": "red"}) for i, p in enumerate(PROMPTS)]
    evalset = EvalSet("toy", qs, list(PROMPTS), {"alt": "alt"})
    r = torch.randn(D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    settings = [[], [AddDirection(1, r, 8.0)], [AddDirection(0, -r, 8.0, positions="generated")]]
    out = evaluate_generation(model, tok, evalset, settings, max_new_tokens=4, batch_size=4,
                              stop_at=None)
    assert out.correct.shape == (3, len(qs)) and out.length.shape == (3, len(qs))
    for k, setting in enumerate(settings):
        alone = evaluate_generation(model, tok, evalset, [setting], 4, 4, None)
        assert out.completions[k] == alone.completions[0], k
    assert out.completions[1] != out.completions[0]


def test_headline_metrics_and_selectivity():
    def row(cond, diff, seed=None, strength=1.0, intervention="add", **kw):
        return {"set": "s", "metric": "teacher_forced", "intervention": intervention,
                "layer": 2, "strength": strength, "condition": cond, "seed": seed,
                "latent": None, "rank": None, "accuracy": 0.5 + diff, "diff": diff,
                "diff_ci_low": diff - 0.1, "diff_ci_high": diff + 0.1, "p_value": 0.01,
                "margin": diff, "margin_ci_low": 0.0, "margin_diff": 2 * diff, **kw}

    rows = [row("unsteered", 0.0, intervention="none", strength=0.0),
            row("direction", 0.3), row("negated", -0.2), row("random", 0.02, seed=0),
            row("random", -0.04, seed=1), row("random", 0.05, seed=2),
            row("direction", 0.9, strength=2.0)]
    m = headline_metrics(rows, "add", 1.0)
    key = "s/teacher_forced/add"
    assert m[f"{key}/direction/diff"] == pytest.approx(0.3)
    assert m[f"{key}/random/diff"] == pytest.approx(0.01)
    assert m[f"{key}/direction/selectivity"] == pytest.approx(0.29)
    assert m[f"{key}/direction/margin_selectivity"] == pytest.approx(0.58)
    assert m[f"{key}/negated/p_value"] == 0.01
    assert m["s/teacher_forced/unsteered/accuracy"] == 0.5
    assert m["headline/add/strength"] == 1.0 and m["headline/add/layer"] == 2.0


def test_scorers_on_the_real_benchmark_files():
    """Gold worked solutions score as correct: GSM8K's ends in '#### <n>' (the last number),
    MMLU-Pro's validation chains of thought end in 'the answer is (X)'."""
    from probing.questions import load_question_set
    from tests.questions.test_questions import shared

    gsm = load_question_set("gsm8k", path=str(shared("gsm8k/test.jsonl")), n=50, seed=0)
    assert all(score_answer(q.meta["solution"], q).correct for q in gsm)
    mmlu = load_question_set("mmlu_pro", path=str(shared("mmlu_pro/validation.jsonl")),
                             split="validation")
    cots = [q for q in mmlu if q.meta.get("cot_content")]
    assert len(cots) >= 60
    hits = [score_answer(q.meta["cot_content"], q) for q in cots]
    assert sum(h.correct for h in hits) / len(hits) > 0.95
    assert all(h.parsed is not None for h in hits)
