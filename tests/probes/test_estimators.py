from __future__ import annotations

import numpy as np
import pytest
import torch

from probing.errors import LirefError
from probing.probes.estimators import PROBES, DiffMeanProbe, load_probe, make_probe


def _data(n=200, d=16, shift=1.5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([0, 1] * (n // 2))
    x = rng.normal(size=(n, d))
    x[:, 3] += shift * (2 * y - 1)
    return x, y


@pytest.mark.parametrize("kind", sorted(PROBES))
def test_probes_learn_a_planted_direction_on_held_out_data(kind):
    x, y = _data()
    xt, yt = _data(seed=1)
    probe = make_probe(kind).fit(x, y)
    assert probe.score(xt, yt) > 0.85
    proba = probe.predict_proba(xt)
    assert proba.shape == (len(yt),) and ((proba >= 0) & (proba <= 1)).all()
    d = probe.direction
    assert d.shape == (16,) and d.dtype == torch.float64
    assert d.norm().item() == pytest.approx(1.0)
    assert abs(d[3].item()) == d.abs().max().item() and d[3].item() > 0


def test_diffmean_threshold_is_midpoint_of_class_projections():
    x = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 0.0], [-2.0, 0.0]])
    y = np.array([1, 1, 0, 0])
    p = DiffMeanProbe().fit(x, y)
    assert p.threshold_ == pytest.approx((3.0 + -1.0) / 2)
    assert p.predict(np.array([[1.1, 5.0], [0.9, -5.0]])).tolist() == [1, 0]


def _imbalanced(seed: int, d: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """108 reasoning vs 252 memory items, well separated along feature 3 (reasoning at 3 +- 0.3,
    memory below 1.5 with a long tail): the class-mean midpoint falls inside the memory class."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(108, dtype=np.int64), np.zeros(252, dtype=np.int64)]
    x = rng.normal(size=(360, d))
    x[y == 1, 3] = rng.normal(3.0, 0.3, 108)
    x[y == 0, 3] = 1.5 - rng.exponential(4.0, 252)
    return x, y


@pytest.mark.parametrize("kind", sorted(PROBES))
def test_threshold_chosen_on_fit_data_holds_up_on_imbalanced_classes(kind):
    from sklearn.metrics import balanced_accuracy_score

    x, y = _imbalanced(0)
    xt, yt = _imbalanced(1)
    probe = make_probe(kind).fit(x, y)
    pred = probe.predict(xt)
    accuracy, balanced = float((pred == yt).mean()), balanced_accuracy_score(yt, pred)
    assert accuracy > 0.98 and balanced > 0.98 and abs(accuracy - balanced) < 0.02
    assert ((probe.predict_proba(xt) > 0.5) == pred.astype(bool)).all()


def test_diffmean_midpoint_alone_fails_on_imbalanced_classes():
    """What the chosen threshold fixes: at the class-mean midpoint the same probe misreads a
    sixth of the held-out items although it ranks them perfectly."""
    from probing.stats import auroc

    x, y = _imbalanced(0)
    xt, yt = _imbalanced(1)
    probe = DiffMeanProbe().fit(x, y)
    midpoint = (xt @ probe.direction.numpy() - probe.threshold_) > 0
    assert (midpoint == yt).mean() < 0.9 < auroc(yt, probe.decision_function(xt)) == 1.0
    assert probe.decision_threshold_ > 0.1  # moved, in pooled-std units, towards reasoning
    assert probe.score(xt, yt) > 0.98


def test_balanced_data_keep_the_probes_own_threshold():
    x, y = _data(shift=4.0)  # separable: the probe's own threshold is already the best
    for kind in sorted(PROBES):
        assert make_probe(kind).fit(x, y).decision_threshold_ == 0.0, kind


def test_saved_probe_keeps_its_threshold(tmp_path):
    import json

    x, y = _imbalanced(0)
    xt, _ = _imbalanced(1)
    probe = DiffMeanProbe(layer=2).fit(x, y)
    probe.save(tmp_path / "p")
    meta = json.loads((tmp_path / "p" / "probe.json").read_text())
    assert meta["threshold"] == probe.decision_threshold_ != 0.0
    loaded = load_probe(tmp_path / "p")
    assert loaded.decision_threshold_ == probe.decision_threshold_
    np.testing.assert_array_equal(loaded.predict(xt), probe.predict(xt))
    np.testing.assert_array_equal(loaded.decision_function(xt), probe.decision_function(xt))
    del meta["threshold"]  # a probe saved before thresholds were chosen: its own (0)
    (tmp_path / "p" / "probe.json").write_text(json.dumps(meta))
    old = load_probe(tmp_path / "p")
    assert old.decision_threshold_ == 0.0
    np.testing.assert_allclose(old.decision_function(xt),
                               probe.decision_function(xt) + probe.decision_threshold_)


def test_sparse_topk_keeps_k_features():
    x, y = _data()
    p = make_probe("sparse", k=2).fit(x, y)
    assert p.n_nonzero == 2 and p.coef_[3] != 0


@pytest.mark.parametrize("kind", sorted(PROBES))
def test_save_load_round_trip(kind, tmp_path):
    x, y = _data()
    probe = make_probe(kind, layer=4, metadata={"model": "tiny", "position": "last"}).fit(x, y)
    probe.save(tmp_path / "p")
    loaded = load_probe(tmp_path / "p")
    assert type(loaded) is type(probe)
    assert loaded.layer == 4 and loaded.metadata["model"] == "tiny"
    np.testing.assert_allclose(loaded.predict_proba(x), probe.predict_proba(x))
    torch.testing.assert_close(loaded.direction, probe.direction)
    assert not list((tmp_path / "p").glob("*.pkl"))


def test_probe_on_other_width_is_a_clear_error(tmp_path):
    x, y = _data(d=16)
    make_probe("diffmean", layer=1, metadata={"model": "tiny"}).fit(x, y).save(tmp_path / "p")
    probe = load_probe(tmp_path / "p")
    with pytest.raises(LirefError, match="width 16 .* got width 8"):
        probe.predict_proba(np.zeros((2, 8)))


def test_corrupted_probe_files(tmp_path):
    x, y = _data()
    make_probe("logistic").fit(x, y).save(tmp_path / "p")
    (tmp_path / "p" / "probe.safetensors").write_bytes(b"garbage")
    with pytest.raises(LirefError, match="cannot be read"):
        load_probe(tmp_path / "p")
    with pytest.raises(LirefError, match="file not found"):
        load_probe(tmp_path / "missing")


def test_unknown_probe_and_bad_params():
    with pytest.raises(LirefError, match="unknown probe kind 'svm'"):
        make_probe("svm")
    with pytest.raises(LirefError, match="C must be > 0"):
        make_probe("logistic", C=0)


def test_one_class_fit_is_rejected():
    with pytest.raises(LirefError, match="one-class"):
        make_probe("logistic").fit(np.ones((4, 3)), [1, 1, 1, 1])


def test_probe_check_names_what_does_not_match(tiny_llama, tiny_model_dir):
    from probing.fingerprint import model_fingerprint
    from probing.model.loading import load_model
    from probing.questions.prompts import PromptTemplate

    model, _ = tiny_llama
    x, y = _data(d=32)
    meta = {"model": "tiny", "position": "last", "model_fingerprint": model_fingerprint(model),
            "prompt_template": {"template": "Q: {question}\nA: ", "few_shot": []}}
    probe = make_probe("diffmean", layer=2, metadata=meta).fit(x, y)
    assert probe.check(model=model, layer=2, position="last") is probe
    with pytest.raises(LirefError, match="trained on layer 2, not layer 0"):
        probe.check(layer=0)
    with pytest.raises(LirefError, match="position 'last', not 'mean'"):
        probe.check(position="mean")
    with pytest.raises(LirefError, match="another prompt template .*template"):
        probe.check(template=PromptTemplate(template="Question: {question}\nAnswer:"))
    probe.check(template=PromptTemplate())  # the default template matches
    other, _ = load_model(str(tiny_model_dir("qwen2")))  # same width, other weights
    with pytest.raises(LirefError, match="other weights than model"):
        probe.check(model=other)
    with pytest.raises(LirefError, match="belongs to model 'tiny', not 'gpt2'"):
        probe.check(model="gpt2")
    narrow = make_probe("diffmean", layer=2, metadata={"model": "tiny"}).fit(*_data(d=16))
    with pytest.raises(LirefError, match="16-wide activations.*width 32"):
        narrow.check(model=model)
