from __future__ import annotations

import pytest
import torch

from probing.activations.extract import extract_activations
from probing.errors import LirefError
from probing.model.blocks import decoder_layers
from probing.model.hooks import check_layers, forward_residual
from probing.model.loading import load_model
from tests.tiny_models import FAMILY_CONFIGS, PROMPTS


def _reference(model, tok, prompts, position):
    """HF output_hidden_states, one prompt at a time (no padding): [N, n_blocks - 1, d]."""
    rows = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        hs = model(**enc, output_hidden_states=True).hidden_states
        # hidden_states[l + 1] = output of block l; the last entry has the final norm applied
        per_layer = [hs[layer + 1][0] for layer in range(len(hs) - 2)]
        rows.append(torch.stack([h[-1] if position == "last" else h.mean(0) for h in per_layer]))
    return torch.stack(rows)


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
@pytest.mark.parametrize("position", ["last", "mean"])
def test_equals_hf_hidden_states_batched_mixed_lengths(tiny_model_dir, family, position):
    model, tok = load_model(str(tiny_model_dir(family)))
    n_blocks = len(decoder_layers(model))
    lengths = {len(tok(p)["input_ids"]) for p in PROMPTS}
    assert len(lengths) > 2  # mixed prompt lengths, so batches need padding
    acts = extract_activations(model, tok, PROMPTS, layers=None, position=position,
                               batch_size=3, progress=False)
    assert acts.shape == (len(PROMPTS), n_blocks, model.config.hidden_size)
    assert acts.dtype == torch.float32
    ref = _reference(model, tok, PROMPTS, position)
    torch.testing.assert_close(acts[:, : n_blocks - 1], ref, atol=1e-5, rtol=0)


def test_batched_equals_unbatched_and_keeps_prompt_order(tiny_llama):
    model, tok = tiny_llama
    a = extract_activations(model, tok, PROMPTS, layers=[0, 2], batch_size=2, progress=False)
    b = torch.cat([extract_activations(model, tok, [p], layers=[0, 2], batch_size=1,
                                       progress=False) for p in PROMPTS])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_layer_subset_and_negative_index(tiny_llama):
    model, tok = tiny_llama
    full = extract_activations(model, tok, PROMPTS, progress=False)
    sub = extract_activations(model, tok, PROMPTS, layers=[-1, 1], progress=False)
    torch.testing.assert_close(sub[:, 0], full[:, 2])
    torch.testing.assert_close(sub[:, 1], full[:, 1])


def test_forward_stops_after_last_needed_block(tiny_llama):
    model, tok = tiny_llama
    calls = []
    blocks = decoder_layers(model)
    handles = [b.register_forward_hook(lambda m, i, o, k=k: calls.append(k))
               for k, b in enumerate(blocks)]
    try:
        enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
        out = forward_residual(model, enc["input_ids"], enc["attention_mask"], [0])
    finally:
        for h in handles:
            h.remove()
    assert calls == [0]
    assert set(out) == {0}


@pytest.mark.parametrize("bad", [3, -4, 100])
def test_layer_out_of_range_names_valid_range(tiny_llama, bad):
    model, _ = tiny_llama
    with pytest.raises(LirefError, match=r"valid layers are 0\.\.2"):
        check_layers(model, [bad])


def test_bad_position_and_empty_prompts(tiny_llama):
    model, tok = tiny_llama
    with pytest.raises(LirefError, match="unknown position 'first'"):
        extract_activations(model, tok, PROMPTS, position="first")
    with pytest.raises(LirefError, match="no prompts"):
        extract_activations(model, tok, [])


def test_extraction_sees_an_active_intervention_hook(tiny_llama):
    """Our own block hooks read the residual stream after another hook (e.g. steering) edits it."""
    model, tok = tiny_llama
    clean = extract_activations(model, tok, PROMPTS, layers=[0, 1], progress=False)
    shift = torch.zeros(model.config.hidden_size)
    shift[5] = 10.0

    def add(_module, _inputs, output):
        if isinstance(output, tuple):
            return (output[0] + shift, *output[1:])
        return output + shift

    handle = decoder_layers(model)[0].register_forward_hook(add)
    try:
        steered = extract_activations(model, tok, PROMPTS, layers=[0, 1], progress=False)
    finally:
        handle.remove()
    torch.testing.assert_close(steered[:, 0] - clean[:, 0], shift.expand(len(PROMPTS), -1),
                               atol=1e-4, rtol=0)
    assert not torch.allclose(steered[:, 1], clean[:, 1])  # the edit propagates downstream


def test_prompts_with_their_own_special_tokens(tiny_llama):
    """Chat-templated prompts already start with BOS: add_special_tokens=False adds no second."""
    model, tok = tiny_llama
    prompts = [tok.bos_token + p for p in PROMPTS[:3]]
    acts = extract_activations(model, tok, prompts, layers=[0], add_special_tokens=False,
                               progress=False)
    for i, p in enumerate(prompts):
        enc = tok(p, return_tensors="pt", add_special_tokens=False)
        assert enc["input_ids"][0].tolist().count(tok.bos_token_id) == 1
        hs = model(**enc, output_hidden_states=True).hidden_states
        torch.testing.assert_close(acts[i, 0], hs[1][0, -1], atol=1e-5, rtol=0)
