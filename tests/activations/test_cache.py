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
    entries = [p for p in (tmp_path / "activations").iterdir() if p.is_dir()]
    assert len(entries) == 3
    assert {p.name + ".lock" for p in entries} == {  # one lock file beside each entry
        p.name for p in (tmp_path / "activations").glob("*.lock")}


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
    (entry,) = [p for p in (tmp_path / "activations").iterdir() if p.is_dir()]
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


def test_top_level_names_resolve():
    import probing

    assert probing.ActivationCache is ActivationCache
    assert probing.cached_extract is cached_extract


def test_ids_are_part_of_the_key(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    calls = _count_extractions(monkeypatch)
    a = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], ids=list("abcde"),
                       progress=False)
    b = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], ids=list("vwxyz"),
                       progress=False)
    assert a.ids == list("abcde") and b.ids == list("vwxyz")  # not the earlier call's ids
    assert a.folder != b.folder and len(calls) == 2
    again = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], ids=list("abcde"),
                           progress=False)
    assert again.ids == list("abcde") and again.folder == a.folder and len(calls) == 2
    with pytest.raises(LirefError, match="4 ids for 5 prompts"):
        cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], ids=list("abcd"))


@pytest.mark.parametrize("damage", ["not_json", "foreign_format", "bad_field"])
def test_corrupted_manifest_is_named_then_rebuilt(tiny_llama, tmp_path, monkeypatch, caplog,
                                                  damage):
    model, tok = tiny_llama
    first = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], shard_size=2,
                           progress=False)
    manifest = first.folder / "manifest.json"
    m = json.loads(manifest.read_text())
    if damage == "not_json":
        manifest.write_text("{not json")
    elif damage == "foreign_format":
        manifest.write_text(json.dumps({**m, "format": "liref-activations/1"}))
    else:
        manifest.write_text(json.dumps({**m, "shards": [{**m["shards"][0], "end": "two"}]}))
    # reading it directly: one error naming the folder and how to clear it
    with pytest.raises(LirefError, match="manifest") as err:
        ActivationCache(first.folder).load()
    assert str(first.folder) in str(err.value) and "delete the folder" in str(err.value)
    # the extraction path discards the entry with a warning and rebuilds it
    calls = _count_extractions(monkeypatch)
    with caplog.at_level("WARNING"):
        fixed = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], shard_size=2,
                               progress=False)
    assert "discarding the entry" in caplog.text and str(first.folder) in caplog.text
    assert fixed.folder == first.folder and calls == [2, 2, 1]
    assert torch.equal(fixed.acts, first.acts)
    assert ActivationCache(first.folder).load().manifest["complete"]


def test_orphaned_temp_and_unlisted_shard_files_are_removed(tiny_llama, tmp_path, monkeypatch):
    model, tok = tiny_llama
    real = ac.extract_activations
    calls = []

    def dies_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(ac, "extract_activations", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], shard_size=2, progress=False)
    (entry,) = [p for p in (tmp_path / "activations").iterdir() if p.is_dir()]
    # what a writer killed mid-write leaves: a temp file, a shard the manifest does not list
    orphan = entry / ".shard-00000002.safetensors.k1ll3d.tmp"
    orphan.write_bytes(b"half a shard")
    unlisted = entry / "shard-00000004.safetensors"
    unlisted.write_bytes(b"written, but the manifest was not")
    monkeypatch.setattr(ac, "extract_activations", real)
    done = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], shard_size=2,
                          progress=False)
    assert not orphan.exists()
    assert unlisted.is_file() and unlisted.read_bytes() != b"written, but the manifest was not"
    assert sorted(p.name for p in entry.iterdir()) == [
        "manifest.json", "shard-00000000.safetensors", "shard-00000002.safetensors",
        "shard-00000004.safetensors"]
    torch.testing.assert_close(done.acts, real(model, tok, PROMPTS, [0], "last", 8, False),
                               atol=1e-6, rtol=0)


def test_missing_layer_in_cache_is_named(tiny_llama, tmp_path):
    model, tok = tiny_llama
    first = cached_extract(model, tok, PROMPTS, tmp_path, layers=[0], progress=False)
    with pytest.raises(LirefError, match=r"layers \[2\] are not cached"):
        ActivationCache(first.folder).load([2])
