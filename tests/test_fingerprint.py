"""Model fingerprints: the same weights anywhere share one; other weights never do."""

from __future__ import annotations

import shutil

import torch

from probing.fingerprint import model_fingerprint
from probing.model.loading import load_model
from tests.tiny_models import save_tiny_model


def test_fingerprint_follows_the_weights_not_the_folder(tmp_path):
    first = save_tiny_model("llama", tmp_path / "a")
    copy = shutil.copytree(first, tmp_path / "elsewhere" / "b")
    a, b = load_model(str(first))[0], load_model(str(copy))[0]
    assert a.config._name_or_path != b.config._name_or_path
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1.0
    assert model_fingerprint(a) != model_fingerprint(b)
    other = load_model(str(save_tiny_model("llama", tmp_path / "c", seed=1)))[0]
    assert model_fingerprint(other) != model_fingerprint(a)
