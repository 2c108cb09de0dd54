"""LEACE erasure (``probing.steering.erasure``, ``EraseConcept``): the erase op is the package's
eraser, at the configured positions only; a planted linear concept becomes unreadable while
erasers fitted on permuted labels leave it readable; the sweep's erase settings; saved erasers
reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from concept_erasure import LeaceFitter
from sklearn.linear_model import LogisticRegression

from probing.errors import LirefError
from probing.model.hooks import forward_residual
from probing.steering import (
    EraseConcept,
    fit_eraser,
    fit_probe_erasers,
    load_erasers,
    save_erasers,
    steer,
    steer_settings,
)
from tests.job_fixtures import write_probe_activations
from tests.tiny_models import PROMPTS, D

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LAYER = 1


def _planted(n: int = 1200, seed: int = 0, classes: int = 2) -> tuple[torch.Tensor, np.ndarray]:
    """``x [n, D]`` float64: correlated Gaussian noise plus a class mean (a linear concept)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    mix = torch.randn(D, D, generator=g, dtype=torch.float64) / D ** 0.5
    means = 1.5 * torch.randn(classes, D, generator=g, dtype=torch.float64)
    x = torch.randn(n, D, generator=g, dtype=torch.float64) @ mix + means[y]
    return x, y.numpy()


def _residual(model, enc) -> torch.Tensor:
    return forward_residual(model, enc["input_ids"], enc["attention_mask"], [LAYER],
                            early_exit=False)[LAYER]


def test_erase_op_equals_the_leace_eraser(tiny_llama):
    model, tok = tiny_llama
    tok.padding_side = "right"
    enc = tok(list(PROMPTS), return_tensors="pt", padding=True)
    x, y = _planted(400)
    package = LeaceFitter.fit(x, torch.as_tensor(y, dtype=torch.float64)[:, None]).eraser
    ours = fit_eraser(x, y)  # cut to its rank: the same map
    assert ours.proj_left.shape == (D, 1)
    assert torch.allclose(ours(x), package(x), atol=1e-10)
    with torch.no_grad():
        before = _residual(model, enc)
        with steer(model, EraseConcept(LAYER, package)):
            after = _residual(model, enc)
    assert torch.allclose(after.double(), package(before.double()), atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-3)
    # two erasers of different rank (2 classes: rank 1, 3 classes one-hot: rank 2) in one batch
    x3, y3 = _planted(400, seed=1, classes=3)
    three = fit_eraser(x3, np.eye(3)[y3])
    assert three.proj_left.shape == (D, 2)
    n = enc["input_ids"].shape[0]
    big = {k: v.repeat(2, 1) for k, v in enc.items()}
    with torch.no_grad(), steer_settings(model, [[EraseConcept(LAYER, package)],
                                                 [EraseConcept(LAYER, three)]]) as s:
        s.set_rows([0] * n + [1] * n)
        both = _residual(model, big).double()
    assert torch.allclose(both[:n], package(before.double()), atol=1e-5)
    assert torch.allclose(both[n:], three(before.double()), atol=1e-5)


def test_erase_changes_hidden_states_only_at_the_configured_positions(tiny_llama):
    model, tok = tiny_llama
    tok.padding_side = "right"
    enc = tok(list(PROMPTS[:3]), return_tensors="pt", padding=True)
    width = enc["input_ids"].shape[1]
    mask = torch.zeros((3, width), dtype=torch.bool)
    mask[0, 1] = mask[2, :2] = True
    eraser = fit_eraser(*_planted(400))
    with torch.no_grad():
        before = forward_residual(model, enc["input_ids"], enc["attention_mask"], [0, LAYER],
                                  early_exit=False)
        with steer(model, EraseConcept(LAYER, eraser, positions=mask)):
            after = forward_residual(model, enc["input_ids"], enc["attention_mask"], [0, LAYER],
                                     early_exit=False)
    assert torch.equal(after[0], before[0])  # an earlier block: untouched
    assert torch.equal(after[LAYER][~mask], before[LAYER][~mask])
    want = eraser(before[LAYER][mask].double())
    assert torch.allclose(after[LAYER][mask].double(), want, atol=1e-5)
    assert not torch.allclose(after[LAYER][mask], before[LAYER][mask], atol=1e-3)


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    """A probe run folder whose cached layer-1 activations carry a planted linear concept
    (layer 0: noise); its training part is the first half of the items."""
    from probing.probes.directions import save_directions

    folder = tmp_path_factory.mktemp("probe")
    x, y = _planted(1200)
    noise = torch.randn(1200, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    acts = torch.stack([noise, x], dim=1)
    ids = [f"q{i}" for i in range(1200)]
    labels = ["reasoning" if v else "memory" for v in y]
    save_directions(folder / "directions", torch.zeros(2, D, dtype=torch.float64), [0, 1],
                    {"model": "tiny", "d_model": D})
    write_probe_activations(folder, acts, [0, 1], labels, ids, ids[:600])
    return folder, x.float().double(), y


def _fresh_probe_accuracy(x: torch.Tensor, y: np.ndarray) -> float:
    """A logistic regression fitted on items 600..899 and scored on 900..1199 (neither seen
    by the erasers)."""
    lr = LogisticRegression(max_iter=2000).fit(x[600:900].numpy(), y[600:900])
    return float(lr.score(x[900:].numpy(), y[900:]))


def test_leace_hides_a_planted_concept_that_permuted_erasers_leave_readable(probe_run, tmp_path):
    folder, x, y = probe_run
    erasers, meta = fit_probe_erasers(folder, [LAYER], seeds=range(5))
    assert meta["n_fit"] == 600 and meta["classes"] == ["memory", "reasoning"]
    le = erasers[LAYER]
    assert sorted(le.permuted) == [0, 1, 2, 3, 4]
    assert {v["rank"] for v in le.info.values()} == {1}  # the same rank as the control
    assert le.info["direction"]["leftover"] < 1e-8
    assert _fresh_probe_accuracy(x, y) > 0.95
    assert abs(_fresh_probe_accuracy(le.direction(x), y) - 0.5) < 0.08  # chance
    for e in le.permuted.values():
        assert _fresh_probe_accuracy(e(x), y) > 0.9
    # saved and reloaded (safetensors + JSON): the same maps
    back = load_erasers(save_erasers(tmp_path / "erasers", erasers, meta))[LAYER]
    assert torch.equal(back.direction(x), le.direction(x))
    assert all(torch.equal(back.permuted[s](x), le.permuted[s](x)) for s in le.permuted)
    assert back.info == le.info


def test_sweep_builds_one_erase_setting_per_eraser(probe_run):
    from probing.steering.sweep import SweepSpec, build_settings

    folder, _, _ = probe_run
    erasers, _ = fit_probe_erasers(folder, [LAYER], seeds=range(3, 8))
    spec = SweepSpec(["ablate", "erase"], [LAYER], seed=3, n_random=1)  # no strengths needed
    r = torch.ones(D, dtype=torch.float64)
    settings = build_settings(spec, {LAYER: r}, erasers=erasers)
    erase = [s for s in settings if s.info["intervention"] == "erase"]
    assert len(erase) == 1 + spec.n_permuted == 6
    assert [(s.info["condition"], s.info["seed"]) for s in erase] == \
        [("direction", None)] + [("permuted", k) for k in range(3, 8)]
    assert all(s.info["strength"] is None and s.info["layer"] == LAYER for s in erase)
    assert erase[0].interventions[0].eraser is erasers[LAYER].direction
    with pytest.raises(LirefError, match="erasers"):
        build_settings(spec, {LAYER: r})
    with pytest.raises(LirefError, match="seeds"):
        build_settings(SweepSpec(["erase"], [LAYER], n_permuted=6, seed=3), {LAYER: r},
                       erasers=erasers)
    with pytest.raises(LirefError, match="two labels"):
        fit_eraser(torch.zeros(4, D), [1, 1, 1, 1])
