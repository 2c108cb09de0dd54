from __future__ import annotations

import json

import pytest
import torch

import probing.activations.cache as ac
from probing.activations.cache import ActivationCache, cached_extract
from probing.activations.extract import extract_activations
from probing.errors import LirefError
from tests.tiny_models import PROMPTS

LABELS = ["memory", "reasoning", "reasoning", "reasoning", "memory"]


def _count_extractions(monkeypatch):
    calls = []
    real = ac.extract_activations

    def counting(*args, **kwargs):
        calls.append(len(args[2]))
        return real(*args, **kwargs)

    monkeypatch.setattr(ac, "extract_activations", counting)
    return calls


def test_cache_round_trip_and_reuse(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    calls = _count_extractions(monkeypatch)
    first = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0, 2], labels=LABELS,
                           shard_size=2, progress=False)
    assert calls == [2, 2, 1]
    direct = extract_activations(model, tok, PROMPTS, layers=[0, 2], progress=False)
    torch.testing.assert_close(first.acts, direct, atol=1e-6, rtol=0)
    m = first.manifest
    assert m["n"] == 5 and m["layers"] == [0, 2] and m["labels"] == LABELS
    assert m["complete"] and len(m["shards"]) == 3 and m["d_model"] == 32
    again = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0, 2], labels=LABELS,
                           shard_size=2, progress=False)
    assert calls == [2, 2, 1]  # no new forward pass
    torch.testing.assert_close(again.acts, first.acts)
    # a subset of cached layers is served from the same entry
    sub = cached_extract(model, tok, PROMPTS, tmp_path, layers=[2], labels=LABELS,
                         progress=False)
    assert calls == [2, 2, 1]
    torch.testing.assert_close(sub.acts[:, 0], first.acts[:, 1])


def test_other_data_or_position_is_a_new_entry(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    calls = _count_extractions(monkeypatch)
    cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], progress=False)
    cached_extract(model, tok, PROMPTS[:3], tmp_path, layers=[0], progress=False)
    cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], position="mean", progress=False)
    assert len(calls) == 3
    assert len(list((tmp_path / "activations").iterdir())) == 3


def test_interrupted_run_resumes_from_last_complete_shard(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    real = ac.extract_activations
    calls = []

    def dies_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ac, "extract_activations", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        cached_extract(model, tok, PROMPTS, tmp_path, layers=[1], shard_size=2, progress=False)
    (entry,) = (tmp_path / "activations").iterdir()
    manifest = json.loads((entry / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) == 2
    with pytest.raises(LirefError, match="incomplete"):
        ActivationCache(entry).load()
    calls.clear()
    done = cached_extract(model, tok, PROMPTS, tmp_path, layers=[1], shard_size=2,
                          progress=False)
    assert len(calls) == 1  # only the missing shard
    direct = real(model, tok, PROMPTS, [1], "last", 8, False)
    torch.testing.assert_close(done.acts, direct, atol=1e-6, rtol=0)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupted_shard_is_detected_never_read(tiny_llama, tmp_path, damage):
    model, tok = tiny_llama
    first = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], shard_size=2,
                           progress=False)
    shard = first.folder / first.manifest["shards"][1]["file"]
    blob = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(blob[: len(blob) // 2])
    else:
        shard.write_bytes(blob[:-4] + bytes(4 * [0x7F]))
    with pytest.raises(LirefError, match=str(shard.name)):
        ActivationCache(first.folder).load()
    # the extraction path re-extracts the bad shard (with a warning) and keeps the good ones
    fixed = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], shard_size=2,
                           progress=False)
    torch.testing.assert_close(fixed.acts, first.acts)


def test_corrupted_manifest_is_a_clear_error(tiny_llama, tmp_path):
    model, tok = tiny_llama
    first = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], progress=False)
    (first.folder / "manifest.json").write_text("{not json")
    with pytest.raises(LirefError, match="corrupted JSON file"):
        ActivationCache(first.folder).load()


def test_missing_layer_in_cache_is_named(tiny_llama, tmp_path):
    model, tok = tiny_llama
    first = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], progress=False)
    with pytest.raises(LirefError, match=r"layers \[2\] are not cached"):
        ActivationCache(first.folder).load([2])
