"""Steering: exactness of every intervention on tiny models of several families, positions
under the KV cache, batched settings, hook removal, the released-code preset, controls."""

from __future__ import annotations

import pytest
import torch

from probing.errors import LirefError
from probing.model.blocks import decoder_layers
from probing.model.hooks import forward_residual, modify_residual, site_module
from probing.model.loading import load_model
from probing.steering import (
    AblateDirection,
    AddDirection,
    AddLatent,
    ClampLatent,
    EraseConcept,
    ScaleProjection,
    fit_eraser,
    mean_residual_norm,
    orthogonalise,
    random_directions,
    random_latents,
    released_code,
    steer,
    steer_settings,
)
from tests.tiny_models import PROMPTS, D

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAMILIES = ["llama", "gpt2", "gemma2", "gpt_neox"]
CACHE_FAMILIES = ["llama", "gpt2"]
LAYER = 1


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    cache: dict[str, tuple] = {}

    def get(family: str):
        if family not in cache:
            cache[family] = load_model(str(tiny_model_dir(family)))
        return cache[family]

    return get


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    """``{architecture: sae-lens SAE}`` with random weights, width D -> 64."""
    from probing.sae.training import SAETrainConfig, load_sae, make_training_sae, save_sae

    out = {}
    for arch, k in (("standard", None), ("topk", 8)):
        torch.manual_seed(0)
        cfg = SAETrainConfig(architecture=arch, d_sae=64, k=k, normalize_activations="none",
                             decoder_init_norm=0.5, training_tokens=64, batch_size=64)
        folder = save_sae(make_training_sae(cfg, D), tmp_path_factory.mktemp(f"sae-{arch}"))
        out[arch] = load_sae(folder)
    return out


def _direction(seed: int = 0) -> torch.Tensor:
    return torch.randn(D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _left(tok, prompts=PROMPTS):
    tok.padding_side = "left"
    return tok(list(prompts), return_tensors="pt", padding=True)


def _right(tok, prompts=PROMPTS):
    tok.padding_side = "right"
    return tok(list(prompts), return_tensors="pt", padding=True)


def _residual(model, enc, layers=(LAYER,)):
    return forward_residual(model, enc["input_ids"], enc["attention_mask"], list(layers),
                            early_exit=False)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("family", FAMILIES)
def test_zero_strength_leaves_logits_bit_identical(models, family):
    model, tok = models(family)
    enc = _right(tok)
    with torch.no_grad():
        base = model(**enc).logits
        for iv in (AddDirection(LAYER, _direction(), 0.0), ScaleProjection(None, _direction(), 0.0),
                   AddDirection(None, _direction(), 0.0, positions="prompt"),
                   *released_code(_direction(), 0.0)):
            with steer(model, iv):
                assert torch.equal(model(**enc).logits, base), iv


@pytest.mark.parametrize("family", FAMILIES)
def test_add_direction_shifts_the_block_output_by_alpha_r_hat(models, family):
    model, tok = models(family)
    enc = _right(tok)
    r = _direction()
    before = _residual(model, enc, (0, LAYER))
    with steer(model, AddDirection(LAYER, r, 3.0)):
        after = _residual(model, enc, (0, LAYER))
    shift = (after[LAYER] - before[LAYER]).double()
    want = (3.0 * r / r.norm()).expand_as(shift)
    assert torch.allclose(shift, want, atol=1e-5)
    assert torch.equal(after[0], before[0])  # earlier blocks untouched


def test_units_gap_and_norm(models):
    model, tok = models("llama")
    enc = _right(tok)
    r = 0.37 * _direction()
    before = _residual(model, enc)[LAYER]
    with steer(model, AddDirection(LAYER, r, 2.0, units="gap")):
        gap = _residual(model, enc)[LAYER] - before
    assert torch.allclose(gap.double(), (2.0 * r).expand_as(gap), atol=1e-5)  # 2 x ||r|| r_hat
    with steer(model, AddDirection(LAYER, r, 2.0, units="norm", unit={LAYER: 5.0})):
        norm = _residual(model, enc)[LAYER] - before
    assert torch.allclose(norm.double(), (10.0 * r / r.norm()).expand_as(norm), atol=1e-5)
    norms = mean_residual_norm(model, tok, PROMPTS, [0, LAYER])
    assert set(norms) == {0, LAYER} and all(v > 0 for v in norms.values())
    with pytest.raises(LirefError, match="unit"):
        AddDirection(LAYER, r, 1.0, units="norm")


@pytest.mark.parametrize("family", FAMILIES)
def test_ablation_zeroes_the_projection_and_scale_rescales_it(models, family):
    model, tok = models(family)
    enc = _right(tok)
    r = _direction(1)
    u = (r / r.norm()).float()
    before = _residual(model, enc)[LAYER]
    with steer(model, AblateDirection(LAYER, r)):
        ablated = _residual(model, enc)[LAYER]
    assert (ablated @ u).abs().max() < 1e-4 * before.norm(dim=-1).max()
    with steer(model, ScaleProjection(LAYER, r, 0.5)):
        scaled = _residual(model, enc)[LAYER]
    assert torch.allclose(scaled @ u, 1.5 * (before @ u), atol=1e-4)
    orth = before - (before @ u).unsqueeze(-1) * u
    assert torch.allclose(scaled - (scaled @ u).unsqueeze(-1) * u, orth, atol=1e-4)


@pytest.mark.parametrize("arch", ["standard", "topk"])
def test_clamp_latent_to_its_own_value_changes_nothing(models, saes, arch):
    model, tok = models("llama")
    sae = saes[arch]
    enc = _right(tok)
    before = _residual(model, enc)[LAYER]
    with torch.no_grad():
        feats = sae.encode(before)
    b, t = 1, 3
    latent = int(feats[b, t].argmax())
    own = float(feats[b, t, latent])
    assert own > 0
    mask = torch.zeros(enc["input_ids"].shape, dtype=torch.bool)
    mask[b, t] = True
    with torch.no_grad():
        base = model(**enc).logits
        with steer(model, ClampLatent(LAYER, sae, latent, own, positions=mask)):
            same = model(**enc).logits
        with steer(model, ClampLatent(LAYER, sae, latent, own + 5.0, positions=mask)):
            moved = _residual(model, enc)[LAYER]
    assert torch.allclose(same, base, atol=1e-5)
    # the error term is kept: only the latent's decoder contribution changes
    want = before.clone()
    want[b, t] += 5.0 * sae.W_dec[latent].detach()
    assert torch.allclose(moved, want, atol=1e-4)


def test_add_latent_adds_the_decoder_row(models, saes):
    model, tok = models("llama")
    sae = saes["standard"]
    enc = _right(tok)
    before = _residual(model, enc)[LAYER]
    with steer(model, AddLatent(LAYER, sae, 7, 2.0, units="max_act", max_activation=1.5)):
        after = _residual(model, enc)[LAYER]
    want = 3.0 * sae.W_dec[7].detach()
    assert torch.allclose(after - before, want.expand_as(before), atol=1e-5)


# ----------------------------------------------------------------------------- hooks


def test_hooks_are_removed_after_an_exception(models):
    model, tok = models("llama")
    enc = _right(tok)
    block = decoder_layers(model)[LAYER]
    with torch.no_grad():
        base = model(**enc).logits
        with pytest.raises(RuntimeError, match="boom"):
            with steer(model, [AddDirection(LAYER, _direction(), 5.0), *released_code(_direction())]):
                assert "generate" in model.__dict__
                raise RuntimeError("boom")
        assert not block._forward_hooks and not block._forward_pre_hooks
        assert not site_module(model, LAYER, "attn_out")._forward_hooks
        assert "generate" not in model.__dict__
        assert torch.equal(model(**enc).logits, base)


def test_extraction_inside_the_context_sees_the_steered_stream(models):
    from probing.activations.extract import extract_activations

    model, tok = models("llama")
    r = _direction()
    plain = extract_activations(model, tok, PROMPTS, [LAYER], progress=False)
    with steer(model, AddDirection(LAYER, r, 2.0)):
        steered = extract_activations(model, tok, PROMPTS, [LAYER], progress=False)
    want = (2.0 * r / r.norm()).float()
    assert torch.allclose(steered[:, 0] - plain[:, 0], want.expand(len(PROMPTS), -1), atol=1e-5)


def test_modify_residual_and_unknown_sites(models):
    model, tok = models("gpt2")
    enc = _right(tok)
    with modify_residual(model, {LAYER: torch.zeros_like}):
        zero = _residual(model, enc)[LAYER]
    assert torch.equal(zero, torch.zeros_like(zero))
    with pytest.raises(LirefError, match="site"):
        site_module(model, 0, "resid_mid")
    with pytest.raises(LirefError, match="out of range"):
        with steer(model, AddDirection(7, _direction(), 1.0)):
            pass


def test_released_code_preset_equals_a_hand_written_version(models):
    model, tok = models("llama")
    enc = _right(tok)
    r = _direction(2)
    u = (r / r.norm()).float()

    def rescale(x):
        return x + 0.1 * (x @ u).unsqueeze(-1) * u

    handles = []
    for block in decoder_layers(model):
        handles.append(block.register_forward_pre_hook(
            lambda _m, args, kw: ((rescale(args[0]), *args[1:]), kw) if args else
            (args, {**kw, "hidden_states": rescale(kw["hidden_states"])}), with_kwargs=True))
        handles.append(block.self_attn.register_forward_hook(
            lambda _m, _i, out: (rescale(out[0]), *out[1:])))
        handles.append(block.mlp.register_forward_hook(lambda _m, _i, out: rescale(out)))
    with torch.no_grad():
        try:
            reference = model(**enc).logits
        finally:
            for h in handles:
                h.remove()
        with steer(model, released_code(r, 0.1)):
            ours = model(**enc).logits
    assert torch.allclose(ours, reference, atol=1e-6)
    assert not torch.allclose(ours, model(**enc).logits, atol=1e-3)


# ----------------------------------------------------------------------------- KV cache


def _interventions(kind: str, positions, sae):
    r = _direction(3)
    return {
        "add": [AddDirection([0, LAYER], r, 6.0, positions=positions)],
        "ablate": [AblateDirection(None, r, positions=positions)],
        "scale": [ScaleProjection(LAYER, r, 4.0, positions=positions)],
        "add_latent": [AddLatent(LAYER, sae, 3, 40.0, positions=positions)],
        "clamp_latent": [ClampLatent(LAYER, sae, 5, 60.0, positions=positions)],
        "released": [ScaleProjection(None, r, 2.0, site=("block_in", "attn_out", "mlp_out"),
                                     positions=positions)],
    }[kind]


def _generate(model, enc, use_cache: bool, new: int = 5):
    out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                         use_cache=use_cache, output_scores=True, return_dict_in_generate=True,
                         pad_token_id=0)
    return out.sequences, torch.stack(out.scores, 1)


@pytest.mark.parametrize("family", CACHE_FAMILIES)
@pytest.mark.parametrize("kind", ["add", "ablate", "scale", "add_latent", "clamp_latent",
                                  "released"])
def test_generation_with_cache_equals_without_under_every_position_mode(models, saes, family,
                                                                         kind):
    model, tok = models(family)
    enc = _left(tok, PROMPTS[:3])
    width = enc["input_ids"].shape[1]
    explicit = torch.zeros((3, width + 5), dtype=torch.bool)
    explicit[0, width - 2:] = True
    explicit[2, width + 1: width + 3] = True
    with torch.no_grad():
        plain_seq, plain_scores = _generate(model, enc, True)
        changed = False
        for positions in ("all", "prompt", "generated", explicit):
            with steer(model, _interventions(kind, positions, saes["topk"])):
                cached_seq, cached_scores = _generate(model, enc, True)
                full_seq, full_scores = _generate(model, enc, False)
            assert torch.equal(cached_seq, full_seq), (kind, positions)
            assert torch.allclose(cached_scores, full_scores, atol=1e-4), (kind, positions)
            changed |= not torch.allclose(cached_scores, plain_scores, atol=1e-3)
            if isinstance(positions, str) and positions == "generated":
                # the first new token is predicted from the (unsteered) prompt
                assert torch.equal(cached_seq[:, width], plain_seq[:, width])
    assert changed, f"{kind} never changed the logits: the test would not see a bug"


def test_prompt_and_generated_masks_follow_absolute_columns(models):
    model, tok = models("llama")
    enc = _left(tok, PROMPTS[:2])
    width = enc["input_ids"].shape[1]
    seen: list[tuple[int, int, torch.Tensor]] = []
    with steer(model, AddDirection(LAYER, _direction(), 0.0, positions="generated")) as s:
        def spy(h):
            seen.append((s.positions.offset, h.shape[1], s.positions.prompt_mask()[0].clone()))
            return h

        with modify_residual(model, {0: spy}), torch.no_grad():
            model.generate(**enc, max_new_tokens=3, min_new_tokens=3, do_sample=False,
                           pad_token_id=0)
    assert [(o, w) for o, w, _ in seen] == [(0, width), (width, 1), (width + 1, 1)]
    assert seen[0][2].all() and not seen[1][2].any() and not seen[2][2].any()


# ----------------------------------------------------------------------------- batching


def test_batched_settings_equal_one_by_one(models, saes):
    model, tok = models("llama")
    sae = saes["standard"]
    r = _direction(4)
    labels = torch.arange(64) % 2  # a LEACE eraser of a planted concept
    x = torch.randn(64, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    eraser = fit_eraser(x + 2.0 * labels[:, None] * _direction(8), labels)
    settings = [
        [AddDirection(LAYER, r, 2.0)],
        [AddDirection(LAYER, -r, 2.0, positions="generated")],
        [AblateDirection(LAYER, r)],
        [ScaleProjection(LAYER, r, 3.0), AddDirection(0, r, 1.0)],
        [ClampLatent(LAYER, sae, 2, 8.0)],
        [AddLatent(LAYER, sae, 9, 30.0, positions="prompt")],
        [EraseConcept(LAYER, eraser, positions="prompt")],
        [],
    ]
    prompts = PROMPTS[:3]
    enc = _left(tok, prompts)
    n = len(prompts)
    rows = torch.arange(len(settings)).repeat_interleave(n)
    rows[rows == len(settings) - 1] = -1  # the empty setting: rows without any intervention
    big = {k: v.repeat(len(settings), 1) for k, v in enc.items()}
    with torch.no_grad():
        with steer_settings(model, settings) as s:
            s.set_rows(rows)
            logits = model(**big).logits
            seqs, _ = _generate(model, big, True, new=4)
        for i, setting in enumerate(settings):
            with steer(model, setting):
                one_logits = model(**enc).logits
                one_seq, _ = _generate(model, enc, True, new=4)
            part = slice(i * n, (i + 1) * n)
            assert torch.allclose(logits[part], one_logits, atol=1e-5), i
            assert torch.equal(seqs[part], one_seq), i


def test_row_settings_are_checked(models):
    model, tok = models("llama")
    enc = _right(tok)
    settings = [[AddDirection(LAYER, _direction(), 1.0)], [AblateDirection(LAYER, _direction())]]
    with steer_settings(model, settings) as s, torch.no_grad():
        with pytest.raises(LirefError, match="set_rows"):
            model(**enc)
        with pytest.raises(LirefError, match="-1..1"):
            s.set_rows([0, 2])
        s.set_rows([0, 1])
        with pytest.raises(LirefError, match="rows"):
            model(**enc)


def test_bad_interventions_are_clear_errors(models, saes):
    model, _ = models("llama")
    with pytest.raises(LirefError, match="width"):
        with steer(model, AddDirection(LAYER, torch.ones(D + 1), 1.0)):
            pass
    with pytest.raises(LirefError, match="positions"):
        AddDirection(LAYER, _direction(), 1.0, positions="middle")
    with pytest.raises(LirefError, match="units"):
        AddDirection(LAYER, _direction(), 1.0, units="sigma")
    with pytest.raises(LirefError, match="out of range"):
        AddLatent(LAYER, saes["topk"], 64, 1.0)
    with pytest.raises(LirefError, match="max_activation"):
        ClampLatent(LAYER, saes["topk"], 1, 1.0, units="max_act")
    with pytest.raises(LirefError, match="zero"):
        with steer(model, AblateDirection(LAYER, torch.zeros(D))):
            pass
    with pytest.raises(LirefError, match="layer 2"):
        with steer(model, AddDirection(2, {1: _direction()}, 1.0)):
            pass


# ----------------------------------------------------------------------------- controls


def test_random_directions_are_seeded_and_of_the_given_norm():
    a = random_directions(D, [0, 1, 2], norm=3.0)
    b = random_directions(D, [2, 0], norm=3.0)
    assert a.shape == (3, D) and torch.allclose(a.norm(dim=1), torch.full((3,), 3.0,
                                                                          dtype=torch.float64))
    assert torch.equal(a[2], b[0]) and torch.equal(a[0], b[1])
    assert abs(float(a[0] @ a[1])) < 9.0 * 0.8


def test_orthogonalise_removes_the_span_and_keeps_the_norm():
    r = _direction(5)
    rows = torch.randn(3, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v, retained = orthogonalise(r, rows)
    assert torch.allclose(rows @ v, torch.zeros(3, dtype=torch.float64), atol=1e-9)
    assert float(v.norm()) == pytest.approx(float(r.norm()))
    assert 0 < retained < 1
    with pytest.raises(LirefError, match="span"):
        orthogonalise(rows[0] * 2, rows)


def test_random_latents_match_the_density():
    rows = [{"latent": i, "density": 10 ** (-4 + 3 * i / 99)} for i in range(100)]
    rows.append({"latent": 100, "density": 0.0})
    picked = random_latents(rows, target_density=1e-2, n=3, seed=0, exclude=[66])
    assert len(set(picked)) == 3 and 66 not in picked and 100 not in picked
    assert all(0.5e-2 <= rows[i]["density"] <= 2e-2 for i in picked)
    assert picked == random_latents(rows, target_density=1e-2, n=3, seed=0, exclude=[66])


def test_sweep_settings_put_every_strength_beside_its_controls():
    from probing.steering.sweep import SweepSpec, build_settings

    r = 3.0 * _direction(6)
    spec = SweepSpec(["add", "ablate", "scale"], [1], {"add": [0.5, 2.0], "scale": [1.0]},
                     n_random=3)
    settings = build_settings(spec, {1: r})
    assert settings[0].is_baseline and settings[0].interventions == []
    add = [s for s in settings if s.info["intervention"] == "add"]
    assert len(add) == 2 * (1 + 1 + 3)
    for strength in (0.5, 2.0):
        vecs = {(s.info["condition"], s.info["seed"]): s.interventions[0].op(1, "block_out", D)
                .vector for s in add if s.info["strength"] == strength}
        want = strength * float(r.norm())  # gap units: the same norm for every control
        assert all(float(v.norm()) == pytest.approx(want) for v in vecs.values())
        assert torch.allclose(vecs[("negated", None)], -vecs[("direction", None)])
        assert {seed for cond, seed in vecs if cond == "random"} == {0, 1, 2}
    ablate = [s.info["condition"] for s in settings if s.info["intervention"] == "ablate"]
    assert ablate == ["direction", "random", "random", "random"]  # negating changes nothing
    assert len([s for s in settings if s.info["intervention"] == "scale"]) == 4
    with pytest.raises(LirefError, match="strengths"):
        SweepSpec(["scale"], [1], {})
    with pytest.raises(LirefError, match="matching run"):
        build_settings(SweepSpec(["add_latent"], [1], {"add_latent": [1.0]}), {1: r})
