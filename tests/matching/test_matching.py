"""SAE latent matching with planted truth: geometry (cosines, OMP), nulls, activation scores
(ReasonScore, gap shares), sparse probes and the token-injection control."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch

from probing.errors import LirefError
from probing.matching.geometry import (
    decoder_cosines,
    encoder_cosines,
    omp_path,
    reconstruct_direction,
    reconstruction_curve,
)
from probing.matching.injection import (
    InjectionConfig,
    Target,
    Unit,
    class_vs_random,
    frequency_bands,
    inject,
    injection_class,
    matched_random_units,
    ngram_table,
    random_units,
    run_injection,
    top_units,
)
from probing.matching.nulls import (
    analytic_z,
    cosine_null,
    cosine_significance,
    max_null_p,
    permuted_directions,
    random_directions,
)
from probing.matching.scores import (
    TokenLatents,
    class_scores,
    encode_questions,
    gap_decomposition,
    highlight,
    prompt_readouts,
    reason_scores,
    token_stats,
    top_examples,
)
from probing.matching.sparse_probes import (
    saebench_pool_exclude,
    saebench_sparse_probes,
    select_by_mean_diff,
    sparse_probe_table,
)
from probing.stats import auroc, cohens_d

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_sae(w_dec: torch.Tensor, w_enc: torch.Tensor | None = None,
             b_enc: torch.Tensor | None = None, b_dec: torch.Tensor | None = None):
    """A real sae-lens ``StandardSAE`` (ReLU) with the given weights."""
    from sae_lens import StandardSAE, StandardSAEConfig

    d_sae, d_in = w_dec.shape
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=d_sae))
    with torch.no_grad():
        sae.W_dec.copy_(w_dec.float())
        sae.W_enc.copy_((w_dec.T if w_enc is None else w_enc).float())
        sae.b_enc.copy_(torch.zeros(d_sae) if b_enc is None else b_enc.float())
        sae.b_dec.copy_(torch.zeros(d_in) if b_dec is None else b_dec.float())
    return sae


@pytest.fixture(scope="module")
def planted():
    """64 random unit decoder rows in 32 dims; latent 7 holds the direction (plus noise),
    latent 13 its negation (plus noise)."""
    g = torch.Generator().manual_seed(0)
    d, d_sae = 32, 64
    w = torch.nn.functional.normalize(torch.randn(d_sae, d, generator=g), dim=1)
    r = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
    w[7] = r + 0.05 * torch.randn(d, generator=g)
    w[13] = -r + 0.05 * torch.randn(d, generator=g)
    return make_sae(w), r.double(), w


# --- geometry ------------------------------------------------------------------------------
def test_planted_latent_ranks_first_and_anti_aligned_is_near_minus_one(planted):
    sae, r, _ = planted
    cos = decoder_cosines(sae, 3.5 * r)  # the direction's norm does not matter
    assert cos.shape == (64,) and cos.dtype == torch.float64
    # noise of norm ~0.05 * sqrt(32): expected cosine ~ 1 / sqrt(1 + 0.08) = 0.96
    assert int(torch.argmax(cos)) == 7 and cos[7] > 0.93
    assert int(torch.argmin(cos)) == 13 and cos[13] < -0.93
    others = torch.cat([cos[:7], cos[8:13], cos[14:]])
    assert others.abs().max() < 0.7
    enc = encoder_cosines(sae, r)  # tied weights here: the same cosines
    assert torch.allclose(enc, cos, atol=1e-6)


def test_direction_of_another_width_is_a_clear_error(planted):
    sae, _, _ = planted
    with pytest.raises(LirefError, match="width 16"):
        decoder_cosines(sae, torch.ones(16))
    with pytest.raises(LirefError, match="zero"):
        decoder_cosines(sae, torch.zeros(32))


def test_three_signed_rows_are_reconstructed_at_k3(planted):
    sae, _, w = planted
    w64 = w.double()
    target = 0.8 * w64[3] - 0.5 * w64[40] + 0.3 * w64[22]
    idx, coef, cosine = reconstruct_direction(sae, target, 3)
    assert sorted(idx) == [3, 22, 40] and cosine > 0.99
    scale = target.norm()  # coefficients reconstruct the unit direction
    got = dict(zip(idx, (coef * scale).tolist(), strict=True))
    assert got[3] == pytest.approx(0.8, abs=1e-6) and got[40] == pytest.approx(-0.5, abs=1e-6)
    curve = reconstruction_curve(sae, target, ks=[1, 2, 3, 5])
    cosines = [row["cosine"] for row in curve]
    assert cosines == sorted(cosines) and cosines[2] > 0.99 and curve[0]["latent"] in (3, 22, 40)


def test_omp_on_a_random_direction_needs_many_latents(planted):
    _, _, w = planted
    r = random_directions(1, 32, seed=5)[0]
    path = omp_path(w.double(), r, 8)
    assert len(path) == 8 and path[0].cosine < 0.7
    assert all(a.cosine <= b.cosine + 1e-12 for a, b in zip(path, path[1:], strict=False))


# --- nulls ---------------------------------------------------------------------------------
def test_random_null_flags_only_the_planted_latents(planted):
    sae, r, w = planted
    cos = decoder_cosines(sae, r).numpy()
    null = cosine_null(w.double(), random_directions(1000, 32, seed=1), "random")
    assert np.allclose(null.mean, 0, atol=0.02) and np.allclose(null.std, 1 / math.sqrt(32),
                                                                rtol=0.15)
    sig = cosine_significance(cos, null)
    assert set(np.flatnonzero(sig["q"] < 0.01).tolist()) == {7, 13}
    assert sig["p"][7] < 1e-4 and abs(sig["z"][7] - analytic_z(cos, 32)[7]) < 1.0
    assert max_null_p(cos[7], null) < 0.01


def test_random_null_p_values_are_calibrated():
    """A random direction against a random dictionary: p-values roughly uniform."""
    g = torch.Generator().manual_seed(2)
    w = torch.randn(256, 24, generator=g, dtype=torch.float64)
    null = cosine_null(w, random_directions(500, 24, seed=3), "random")
    fractions = []
    for seed in range(5):
        r = random_directions(1, 24, seed=100 + seed)[0]
        cos = (w @ r) / w.norm(dim=1)
        fractions.append((cosine_significance(cos.numpy(), null)["p"] < 0.05).mean())
    assert 0.02 < float(np.mean(fractions)) < 0.09


def test_permutation_null_uses_the_data_subspace(planted):
    """Activations vary most along a nuisance axis (latent 30); the labels shift them along
    r (latent 7). The isotropic null calls latent 30 aligned with the real diff-in-means; the
    permutation null sees that random label splits point along that axis too."""
    sae, r, w = planted
    g = torch.Generator().manual_seed(7)
    y = np.array([0, 1] * 100)
    nuisance = w[30].double() / w[30].double().norm()
    x = (torch.randn(200, 1, generator=g, dtype=torch.float64) * 6 * nuisance
         + torch.from_numpy(y).double().unsqueeze(1) * 1.5 * r
         + torch.randn(200, 32, generator=g, dtype=torch.float64))
    dirs = permuted_directions(x, y, 300, seed=0)
    assert dirs.shape == (300, 32)
    perm = cosine_null(w.double(), dirs, "permutation")
    rnd = cosine_null(w.double(), random_directions(300, 32, seed=0), "random")
    real = x[y == 1].mean(0) - x[y == 0].mean(0)
    cos = decoder_cosines(sae, real).numpy()
    sig, sig_r = cosine_significance(cos, perm), cosine_significance(cos, rnd)
    assert sig["q"][7] < 0.05 and sig_r["q"][7] < 0.05
    assert sig_r["q"][30] < 0.05 < 0.5 < sig["q"][30]
    assert perm.std[30] > 2 * perm.std[7]
    # without class centring the real gap leaks into every shuffled split
    leaky = cosine_null(w.double(), permuted_directions(x, y, 300, seed=0, center=False), "p")
    assert leaky.std[7] > 1.2 * perm.std[7]
    # family-wise: raw max |cos| is dominated by the nuisance latent; maxT on z is not
    assert max_null_p(sig["z"][7], perm, studentized=True) < 0.05
    assert max_null_p(cos[7], perm) > max_null_p(sig["z"][7], perm, studentized=True)


# --- activation scores ---------------------------------------------------------------------
def _tokens(values: list[list[float]], prompt: list[int]) -> TokenLatents:
    dense = torch.tensor(values, dtype=torch.float32)
    nz = dense.nonzero()
    return TokenLatents(prompt=torch.tensor(prompt), pos=torch.arange(len(prompt)),
                        token=torch.arange(len(prompt)), rows=nz[:, 0], cols=nz[:, 1],
                        vals=dense[nz[:, 0], nz[:, 1]], d_sae=dense.shape[1])


def test_reason_score_on_a_hand_computed_example():
    # 6 tokens: 0-1 reasoning source A, 2-3 reasoning source B, 4-5 memory
    values = [[1.0, 2.0, 0.0],
              [3.0, 0.0, 0.0],
              [1.0, 0.0, 0.0],
              [1.0, 0.0, 1.0],
              [0.0, 0.0, 2.0],
              [0.0, 1.0, 2.0]]
    tokens = _tokens(values, [0, 0, 1, 1, 2, 2])
    label = np.array([1, 1, 1, 1, 0, 0])
    source = np.array([0, 0, 1, 1, 0, 0])
    norms = torch.tensor([1.0, 2.0, 1.0])  # decoder norms fold into the activations
    out = reason_scores(tokens, label, source, norms, alpha=0.7)
    # folded: latent 0 -> [1,3,1,1,0,0]; latent 1 -> [4,0,0,0,0,2]; latent 2 -> [0,0,0,1,2,2]
    mu_pos = np.array([6 / 4, 4 / 4, 1 / 4])
    mu_neg = np.array([0.0, 2 / 2, 4 / 2])
    assert np.allclose(out["mu_reasoning"], mu_pos) and np.allclose(out["mu_memory"], mu_neg)
    # per-source means: latent 0: A=2, B=1; latent 1: A=2, B=0; latent 2: A=0, B=0.5
    p0 = np.array([2 / 3, 1 / 3])
    h0 = -(p0 * np.log(p0)).sum() / np.log(2)
    assert np.allclose(out["entropy"], [h0, 0.0, 0.0])
    want = mu_pos / mu_pos.sum() * np.array([h0, 0.0, 0.0]) ** 0.7 - mu_neg / mu_neg.sum()
    assert np.allclose(out["reason_score"], want)
    assert out["reason_score"][0] > 0 > out["reason_score"][2]
    # alpha = 0 removes the entropy penalty for latents that fire on reasoning at all
    flat = reason_scores(tokens, label, source, norms, alpha=0.0)  # H^0 = 1 (0^0 = 1)
    assert np.allclose(flat["reason_score"], mu_pos / mu_pos.sum() - mu_neg / mu_neg.sum())


def test_gap_shares_add_up_and_match_a_hand_example():
    w_dec = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    sae = make_sae(w_dec, b_dec=torch.tensor([0.5, -1.0]))
    r = torch.tensor([1.0, 0.0], dtype=torch.float64)
    f = torch.tensor([[1.0, 0.0, 2.0], [3.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 2.0, 1.0]])
    y = np.array([1, 1, 0, 0])
    x = torch.tensor([[3.0, 1.0], [4.0, 0.0], [2.0, 2.0], [1.0, 1.0]])
    out = gap_decomposition(sae, x, f, y, r)
    # <d_i, r> = [1, 0, 1]; class-mean gaps of f: [1.5, -0.5, 0.0]
    assert np.allclose(out["contribution"], [1.5, 0.0, 0.0])
    assert out["gap"] == pytest.approx(3.5 - 1.5)
    assert out["bias_term"] == 0.0
    assert out["error_term"] == pytest.approx(2.0 - 1.5)
    assert out["contribution"].sum() + out["bias_term"] + out["error_term"] == \
        pytest.approx(out["gap"])
    assert np.allclose(out["share"], out["contribution"] / out["gap"])


def test_gap_shares_add_up_with_real_encodings(planted):
    sae, r, _ = planted
    g = torch.Generator().manual_seed(1)
    x = torch.randn(60, 32, generator=g) + torch.arange(60).remainder(2).unsqueeze(1) * r.float()
    y = np.arange(60) % 2
    with torch.no_grad():
        f = sae.encode(x)
    out = gap_decomposition(sae, x, f, y, r)
    total = out["contribution"].sum() + out["bias_term"] + out["error_term"]
    assert total == pytest.approx(out["gap"], abs=1e-9) and out["gap"] > 0.5
    assert int(np.argmax(out["contribution"])) == 7


def test_class_scores_use_the_shared_statistics():
    g = np.random.default_rng(0)
    y = np.array([0] * 30 + [1] * 30)
    f = np.abs(g.normal(size=(60, 4)))
    f[:, 2] += 2 * y
    out = class_scores(f, y)
    assert np.argmax(out["auroc"]) == 2 and out["auroc"][2] == auroc(y, f[:, 2])
    assert out["cohens_d"][2] == pytest.approx(cohens_d(f[y == 1, 2], f[y == 0, 2]))
    assert out["mean_diff"][2] == pytest.approx(f[y == 1, 2].mean() - f[y == 0, 2].mean())


def test_token_stats_density_and_max():
    tokens = _tokens([[1.0, 0.0], [0.0, 0.0], [3.0, 0.0], [0.5, 0.0]], [0, 0, 1, 1])
    out = token_stats(tokens)
    assert np.allclose(out["density"], [0.75, 0.0]) and np.allclose(out["max_activation"],
                                                                     [3.0, 0.0])


# --- sparse probes -------------------------------------------------------------------------
def test_sparse_probes_find_the_planted_latent():
    g = np.random.default_rng(1)
    n = 120
    y = np.array([0, 1] * (n // 2))
    latents = torch.from_numpy(np.abs(g.normal(size=(n, 30))) * 0.3).float()
    latents[:, 11] += torch.from_numpy(y * 2.0).float()
    neurons = torch.from_numpy(g.normal(size=(n, 8))).float()
    neurons[:, 3] += torch.from_numpy(y * 0.3).float()
    texts = [f"item {i} {'sum' if y[i] else 'city'}" for i in range(n)]
    assert select_by_mean_diff(latents.numpy(), y, 1).tolist() == [11]
    train, test = np.arange(0, 80), np.arange(80, 120)
    rows = sparse_probe_table(latents, neurons, y, train, test, texts, ks=[1, 2, 50],
                              n_resamples=200)
    lat = [r for r in rows if r["kind"] == "latents"]
    assert [r["k"] for r in lat] == [1, 2]  # k=50 > 30 features is dropped
    assert lat[0]["features"] == [11] and lat[0]["auroc"] > 0.95
    assert lat[0]["auroc_lo"] <= lat[0]["auroc"] <= lat[0]["auroc_hi"]
    neu = [r for r in rows if r["kind"] == "neurons"]
    assert [r["k"] for r in neu] == [1, 2] and neu[0]["auroc"] < lat[0]["auroc"]
    kinds = {r["kind"] for r in rows if r["k"] is None}
    assert kinds == {"dense", "diffmean", "bow"}
    bow = next(r for r in rows if r["kind"] == "bow")
    assert bow["auroc"] == 1.0  # the texts name the class: the control catches it


def test_saebench_probes_select_on_the_training_part_only():
    g = np.random.default_rng(2)
    n = 120
    y = np.array([0, 1] * (n // 2))
    train, test = np.arange(0, 80), np.arange(80, 120)
    latents = np.abs(g.normal(size=(n, 30))) * 0.3
    latents[:, 11] += y * 2.0  # informative everywhere
    latents[test, 4] += y[test] * 10.0  # held-out part only: the largest gap on all items
    assert select_by_mean_diff(latents, y, 1).tolist() == [4]
    neurons = g.normal(size=(n, 8))
    neurons[train, 6] += y[train] * 4.0  # informative on the training part only
    out = saebench_sparse_probes(torch.from_numpy(latents).float(), neurons, y, train, test,
                                 ks=(1, 2, 5, 50), n_resamples=200)
    lat, neu = out["latents"], out["neurons"]
    assert [r["k"] for r in lat] == [1, 2, 5] and [r["k"] for r in neu] == [1, 2, 5]
    assert lat[0]["selected"] == [11]  # chosen on the training part
    assert lat[0]["accuracy"] > 0.95 and lat[0]["auroc"] > 0.95
    assert lat[0]["accuracy_lo"] <= lat[0]["accuracy"] <= lat[0]["accuracy_hi"]
    assert neu[0]["selected"] == [6] and neu[0]["auroc"] < 0.8  # chosen on train, useless on test
    assert out["protocol"]["ks"] == [1, 2, 5, 50] and "LogisticRegression" in \
        out["protocol"]["estimator"]
    with pytest.raises(LirefError, match="no usable k"):
        saebench_sparse_probes(latents, neurons, y, train, test, ks=(50,))


def test_mean_pooling_ignores_padding_bos_and_eos(tiny_llama):
    from probing.model.hooks import forward_residual

    model, tok = tiny_llama
    g = torch.Generator().manual_seed(0)
    sae = make_sae(torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=1))
    prompts = ["<s>Q: what is the capital city of the blue sum ?\nA: ", "<s>Q: who\nA: </s>"]
    exclude = saebench_pool_exclude(tok)
    assert exclude == sorted({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id})
    both = encode_questions(model, tok, sae, prompts, 1, batch_size=2, pool_exclude=exclude,
                            progress=False)
    assert both.x_mean.shape == (2, 32) and both.f_mean.shape == (2, 16)
    for i, prompt in enumerate(prompts):  # alone: no padding
        one = encode_questions(model, tok, sae, [prompt], 1, pool_exclude=exclude,
                               progress=False)
        assert torch.allclose(both.x_mean[i], one.x_mean[0], atol=1e-5)
        assert torch.allclose(both.f_mean[i], one.f_mean[0], atol=1e-5)
        ids = torch.tensor([tok(prompt)["input_ids"]])
        hidden = forward_residual(model, ids, None, [1])[1][0].float()
        real = ~torch.isin(ids[0], torch.tensor(exclude))
        assert 0 < int(real.sum()) < ids.shape[1]  # BOS (and EOS) are left out
        assert torch.allclose(one.x_mean[0], hidden[real].mean(0), atol=1e-5)
        assert torch.allclose(one.f_mean[0], sae.encode(hidden[real]).mean(0), atol=1e-5)
    assert encode_questions(model, tok, sae, prompts, 1, progress=False).x_mean is None


def test_match_settings_validate_rank_keys_and_nested_groups():
    from probing.matching.run import MatchSettings

    s = MatchSettings.from_dict({"rank_by": "abs_decoder_cosine", "nulls": {"n_random": 50},
                                 "injection": {"top_k": 3}})
    assert s.nulls.n_random == 50 and s.nulls.n_permutations == 1000 and s.injection.top_k == 3
    assert s.sparse_probes.saebench and s.sparse_probes.saebench_ks == [1, 2, 5]
    for bad, words in (({"rank_by": "injection_d"}, "rank_by"),
                       ({"rank_by": "colour"}, "allowed"),
                       ({"nulls": {"n_rnd": 5}}, "unknown nulls"),
                       ({"test_size": 1.0}, "test_size"),
                       ({"sparse_probes": {"saebench_ks": [0, 2]}}, "saebench_ks")):
        with pytest.raises(LirefError, match=words):
            MatchSettings.from_dict(bad)


# --- token injection -----------------------------------------------------------------------
def test_injection_classes_and_strategies():
    assert injection_class(1.2) == "token-driven" and injection_class(0.8) == "token-driven"
    assert injection_class(0.6) == "partly token-driven"
    assert injection_class(0.3) == "weakly token-driven"
    assert injection_class(0.1) == "context-dependent" and injection_class(-2) == \
        "context-dependent"
    assert injection_class(float("nan")) is None
    assert inject("who is it", "plus", "prepend") == "plus who is it"
    assert inject("who is it", "plus", "append") == "who is it plus"
    assert inject("who is it", "plus two", "intersperse", 0.0) == "who plus two is it"
    assert inject("who is it", "plus two", "intersperse", 0.99) == "who is plus two it"
    assert inject("who", "x", "intersperse", 0.3) == "who x"
    with pytest.raises(LirefError, match="strategy"):
        inject("a b", "x", "sideways")
    with pytest.raises(LirefError, match="baseline"):
        InjectionConfig(baseline="other")
    with pytest.raises(LirefError, match="unknown injection"):
        InjectionConfig.from_dict({"n_promts": 5})
    with pytest.raises(LirefError, match="n_freq_bands"):
        InjectionConfig(n_freq_bands=0)
    with pytest.raises(LirefError, match="n_random_draws"):
        InjectionConfig(n_random_draws=-1)
    # token-driven against random tokens only when the interval of d_excess is above 0
    assert class_vs_random(1.5, 0.1) == "token-driven"
    assert class_vs_random(0.6, 0.05) == "partly token-driven"
    assert class_vs_random(1.5, -0.1) == "context-dependent"
    assert class_vs_random(None, None) is None and class_vs_random(float("nan"), 0.1) is None


MEMORY = [f"which colour is the favourite of person {i} ?" for i in range(40)]
REASONING = [f"how much is {i % 9} plus {i % 7} ?" for i in range(40)]


def _noise(text: str, column: int) -> float:
    return float(np.random.default_rng([zlib.crc32(text.encode()), column]).normal(0, 0.3))


def _synthetic_score(texts: list[str]) -> dict[str, torch.Tensor]:
    """Column 0 fires on the word 'plus' (a token latent); column 1 fires on the context
    pattern '<number> plus <number>' (a context latent): its words alone do not make it;
    column 2 counts words (a length latent: any inserted word moves it alike)."""
    import re

    out = torch.zeros((len(texts), 3))
    for i, t in enumerate(texts):
        words = t.split()
        out[i, 0] = (2.0 if "plus" in words else 0.0) + _noise(t, 0)
        out[i, 1] = (2.0 if re.search(r"\d+ plus \d+", t) else 0.0) + _noise(t, 1)
        out[i, 2] = len(words) + _noise(t, 2)
    return {"max": out, "mean": out / 4, "position": out}


def test_token_latent_is_token_driven_and_context_latent_is_not():
    units = [Unit((5,), "plus", 2.0, 40),
             Unit((6, 5), "much is", 2.0, 40), Unit((7, 6, 5), "how much is", 2.0, 40)]
    # frequency-matched random units per unit (as matched_random_units would draw them)
    words = ["zebra", "seven", "lamp", "river", "blue", "stone"]
    matched = {u.ids: [Unit(tuple(range(20 + k, 20 + k + len(u.ids))),
                            " ".join(words[(k + j) % 6] for j in range(len(u.ids))),
                            float("nan"), 0) for k in range(5)] for u in units}
    targets = [Target(f"latent {c}", c, 1, units, matched) for c in range(3)]
    controls = [Unit((9,), "zebra", float("nan"), 0), Unit((10,), "seven", float("nan"), 0)]
    calls = []

    def score(texts: list[str]) -> dict[str, torch.Tensor]:
        calls.append(len(texts))
        return _synthetic_score(texts)

    rows = run_injection(targets, {0: MEMORY[:32], 1: REASONING[:32]}, score,
                         {0: "max", 1: "max", 2: "max"}, controls=controls, seed=0,
                         extra_readouts=("position",), n_resamples=300)
    token, context, length = rows
    assert token["class"] == "token-driven" and token["d"] > 2
    assert token["best"].startswith("token 'plus'") or "plus" in token["best"]
    assert context["class"] in ("context-dependent", "weakly token-driven") and \
        context["d"] < 0.5
    assert abs(token["d_random"]) < 0.8 and abs(context["d_random"]) < 0.8
    assert len(token["conditions"]) == 3 * len(units) and "d_position" in token
    # against frequency-matched random tokens: the token latent stays token-driven ...
    assert token["class_vs_random"] == "token-driven" and token["d_excess_lo"] > 0
    assert abs(token["d_random_matched"]) < 0.8 and len(token["random_matched"]) == 5
    assert token["d_excess"] == pytest.approx(token["d"] - token["d_random_matched"])
    assert token["d_excess_lo"] < token["d_excess_hi"]
    # ... the context latent is not, and neither is the length latent, which the old
    # class (own tokens vs no insertion) calls token-driven: any word moves it alike
    assert context["class_vs_random"] == "context-dependent"
    assert length["class"] == "token-driven" and length["d"] > 2
    assert length["d_random_matched"] > 2 and length["d_excess_lo"] <= 0
    assert length["class_vs_random"] == "context-dependent"
    # the second score call holds only the matched random texts (report half, chosen strategy)
    assert len(calls) == 2 and 0 < calls[1] <= 3 * 5 * 16
    no_draws = run_injection([Target("latent 0", 0, 1, units)], {0: MEMORY[:8]},
                             _synthetic_score, {0: "max"}, n_resamples=50)[0]
    assert no_draws["class_vs_random"] is None and no_draws["d_excess"] is None


def test_frequency_bands_and_matched_draws(tiny_llama):
    _, tok = tiny_llama
    text = " ".join(["the"] * 30 + ["cat sat on the mat"] * 6 + ["a dog ran far away"] * 3 +
                    ["zebra quietly hums", "violet kettle", "seven", "rivers"])
    ids = tok(text, add_special_tokens=False)["input_ids"]
    token = torch.tensor(ids + [tok.eos_token_id or 0])
    use = torch.ones_like(token, dtype=torch.bool)
    bands = frequency_bands(token, use, tok.all_special_ids, n_bands=3)
    count = bands.count
    assert int(count[ids[0]]) == ids.count(ids[0]) and len(bands.edges) == 2
    seen = count > 0
    assert bool((bands.band[seen] >= 0).all()) and bool((bands.band[~seen] == -1).all())
    for s in tok.all_special_ids:  # specials are never drawn
        assert s >= count.shape[0] or int(bands.band[s]) == -1
    # bands are ordered by count: every token of a higher band is more frequent
    for b in range(2):
        lower, upper = bands.members(b), bands.members(b + 1)
        if lower.size and upper.size:
            assert int(count[lower].max()) < int(count[upper].min())
    rare = min(set(ids), key=lambda t: (int(count[t]), t))
    common = max(set(ids), key=lambda t: int(count[t]))
    for unit_ids in ((rare,), (common, rare)):
        unit = Unit(unit_ids, tok.decode(list(unit_ids)).strip(), 1.0, 1)
        draws = matched_random_units(unit, bands, tok, 4, np.random.default_rng(1),
                                     exclude=unit_ids)
        assert draws and len({d.ids for d in draws}) == len(draws)
        for d in draws:
            assert len(d.ids) == len(unit_ids) and not set(d.ids) & set(unit_ids)
            assert all(int(bands.band[a]) == int(bands.band[b])
                       for a, b in zip(d.ids, unit_ids, strict=True))
            assert tuple(tok(d.text, add_special_tokens=False)["input_ids"]) == d.ids or \
                tuple(tok(" " + d.text, add_special_tokens=False)["input_ids"]) == d.ids
        again = matched_random_units(unit, bands, tok, 4, np.random.default_rng(1),
                                     exclude=unit_ids)
        assert [d.ids for d in again] == [d.ids for d in draws]  # seeded
    assert all(b.size for b in map(bands.members, range(3)))
    whole_band = bands.members(int(bands.band[rare]))  # nothing left to draw from
    assert matched_random_units(Unit((rare,), "x", 1.0, 1), bands, tok, 3,
                                np.random.default_rng(0), exclude=whole_band) == []


def test_top_units_read_off_the_token_stream(tiny_llama):
    _, tok = tiny_llama
    prompts = [f"Q: what is {i % 3} + {i + 1} ?\nA: " for i in range(6)] + \
              [f"Q: who is the capital city of the {c} ?\nA: " for c in ("red", "blue", "green")]
    ids = [tok(p)["input_ids"] for p in prompts]
    prompt = torch.tensor([i for i, row in enumerate(ids) for _ in row])
    pos = torch.tensor([j for row in ids for j in range(len(row))])
    token = torch.tensor([t for row in ids for t in row])
    plus = tok(" +", add_special_tokens=False)["input_ids"]  # one token in the tiny BPE
    assert len(plus) == 1
    values = (token == plus[0]).double() * 3.0 + 0.01 * pos.double()
    table = ngram_table(prompt, pos, token, tok.all_special_ids)
    use = prompt < 6
    units = top_units(values, table, use, tok, counts=(2, 1, 1), min_count=2)
    assert [u.kind for u in units] == ["token", "token", "bigram", "trigram"]
    assert units[0].ids == (plus[0],) and units[0].text == "+" and units[0].count == 6
    assert units[2].ids[-1] == plus[0] and units[3].ids[-1] == plus[0]
    (newline,) = tok("\n", add_special_tokens=False)["input_ids"]
    on_newline = top_units((token == newline).double(), table, use, tok, counts=(1, 1, 1))
    assert on_newline and all("\n" not in u.text for u in on_newline)  # would break prompts
    rnd = random_units(table, use, tok, counts=(3, 2, 1), seed=0)
    assert [u.kind for u in rnd] == ["token"] * 3 + ["bigram"] * 2 + ["trigram"]


# --- on a model: token-level activations, readouts, a planted token latent --------------------
@pytest.fixture(scope="module")
def embedding_model(tiny_model_dir):
    """The tiny Llama with block 0's attention and MLP outputs zeroed: layer 0's residual is
    each token's input embedding (no context at all)."""
    from probing.model.loading import load_model

    model, tok = load_model(str(tiny_model_dir("llama")))
    block = model.model.layers[0]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    return model, tok


def _token_sae(model, tok, word: str):
    """An SAE whose latent 0 fires exactly on ``word``'s token (encoder = its unit embedding,
    threshold between its own and every other token's projection); latent 1 is random."""
    emb = model.get_input_embeddings().weight.detach().double()
    (tid,) = tok(" " + word, add_special_tokens=False)["input_ids"]
    u = emb[tid] / emb[tid].norm()
    proj = emb @ u
    others = torch.cat([proj[:tid], proj[tid + 1:]])
    threshold = float((proj[tid] + others.max()) / 2)
    g = torch.Generator().manual_seed(3)
    w_enc = torch.stack([u, torch.nn.functional.normalize(torch.randn(32, generator=g,
                                                                      dtype=torch.float64),
                                                          dim=0)], 1)
    sae = make_sae(w_enc.T.clone(), w_enc=w_enc, b_enc=torch.tensor([-threshold, 0.0]))
    return sae, tid


def test_planted_token_latent_on_a_model_is_token_driven(embedding_model):
    model, tok = embedding_model
    sae, tid = _token_sae(model, tok, "+")
    reasoning = [f"what is {i} + {j} ?" for i in range(5) for j in range(4)]
    memory = [f"who is the capital city of the {c} {n} ?" for c in ("red", "blue", "green", "a")
              for n in ("one", "two", "three", "four", "five", "six")][:20]
    prompts = [f"Q: {q}\nA: " for q in reasoning + memory]
    y = np.array([1] * 20 + [0] * 20)
    r = torch.randn(32, dtype=torch.float64)
    acts = encode_questions(model, tok, sae, prompts, 0, "mean", r, batch_size=8, progress=False)
    col = acts.tokens.column(0)
    fires = acts.tokens.token == tid
    assert bool((col[fires] > 0).all()) and bool((col[~fires] == 0).all())
    assert acts.x.shape == (40, 32) and acts.f.shape == (40, 2)
    per_prompt = acts.readout([0], "max")[:, 0]
    assert bool((per_prompt[:20] > 0).all()) and bool((per_prompt[20:] == 0).all())
    assert torch.allclose(acts.readout([0, 1], "position"), acts.f)
    proj_max = acts.direction_readout(r, "max")
    assert bool((proj_max >= acts.direction_readout(r, "mean") - 1e-9).all())
    ex = top_examples(acts, col, tok, y, n_tokens=3, n_prompts=2)
    assert ex["tokens"][0]["label"] == 1 and "[[+]]" in ex["tokens"][0]["text"]
    table = ngram_table(acts.tokens.prompt, acts.tokens.pos, acts.tokens.token,
                        tok.all_special_ids)
    use = torch.as_tensor(y)[acts.tokens.prompt] == 1
    units = top_units(col, table, use, tok, counts=(1, 1, 0))
    assert units[0].text == "+"

    def score(texts: list[str]) -> dict[str, torch.Tensor]:
        return prompt_readouts(model, tok, sae, [f"Q: {t}\nA: " for t in texts], 0, [0, 1],
                               r, "mean", progress=False)

    bands = frequency_bands(acts.tokens.token, torch.ones_like(use), tok.all_special_ids, 3)
    own = [t for u in units for t in u.ids]
    matched = {u.ids: matched_random_units(u, bands, tok, 3, np.random.default_rng(0), own)
               for u in units}
    rows = run_injection([Target("latent 0", 0, 1, units, matched)], {0: memory, 1: reasoning},
                         score, {0: "max"}, controls=[], seed=0, n_resamples=200)
    assert rows[0]["class"] == "token-driven", rows[0]
    # against random tokens of the same frequency bands at the same positions, too
    assert rows[0]["random_matched"] and rows[0]["d_random_matched"] == 0.0
    assert rows[0]["class_vs_random"] == "token-driven" and rows[0]["d_excess_lo"] > 0
    readouts = score(memory[:3])
    assert torch.allclose(readouts["max"][:, 0], torch.zeros(3))


def test_highlight_marks_one_token(tiny_llama):
    _, tok = tiny_llama
    ids = tok("Q: what is 3 + 4 ?\nA: ")["input_ids"]
    (plus,) = tok(" +", add_special_tokens=False)["input_ids"]
    text = highlight(tok, ids, ids.index(plus))
    assert text == "Q: what is 3 [[+]] 4 ?\nA: "
    (newline,) = tok("\n", add_special_tokens=False)["input_ids"]
    assert highlight(tok, ids, ids.index(newline)) == "Q: what is 3 + 4 ?[[\\n]]A: "
