from __future__ import annotations

import pytest
import torch

from probing.errors import LirefError
from probing.models import decoder_layers, load_model, num_layers, resolve_dtype
from tests.tiny_models import FAMILY_CONFIGS

FAMILIES = sorted(FAMILY_CONFIGS)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_loads_and_exposes_its_blocks(tiny_model_dir, family):
    model, tok = load_model(str(tiny_model_dir(family)))
    assert not model.training
    assert model.config.model_type == family
    assert num_layers(model) == 3
    assert len(decoder_layers(model)) == 3
    assert tok.pad_token is not None
    assert all(not p.requires_grad for p in model.parameters())


def test_dtype_is_applied(tiny_model_dir):
    model, _ = load_model(str(tiny_model_dir("llama")), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_unknown_dtype_is_named():
    with pytest.raises(LirefError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")


def test_unknown_local_path_gives_one_clear_error(tmp_path):
    with pytest.raises(LirefError, match="model folder .* does not exist") as err:
        load_model(str(tmp_path / "no-such-model"))
    assert "no-such-model" in str(err.value)


def test_hub_name_without_network_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LirefError, match="Hub may be unreachable") as err:
        load_model("liref-nonexistent-org/no-such-model")
    assert "local folder" in str(err.value)


def test_unsupported_architecture_is_named(tiny_llama):
    model, _ = tiny_llama

    class Fake(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = type("C", (), {"model_type": "bert"})()

    with pytest.raises(LirefError, match="unsupported architecture 'bert'"):
        decoder_layers(Fake())


def test_device_map_passes_through_to_accelerate(tiny_model_dir, monkeypatch):
    from transformers import AutoModelForCausalLM

    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    model, _ = load_model(str(tiny_model_dir("llama")), device_map={"": "cpu"})
    assert seen["device_map"] == {"": "cpu"}
    assert next(model.parameters()).device.type == "cpu"
