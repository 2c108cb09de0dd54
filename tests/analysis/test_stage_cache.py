"""analysis.stage_cache: what a stage's key covers, atomic store and restore."""

from __future__ import annotations

from analysis.stage_cache import (
    DONE,
    code_fingerprint,
    model_source_key,
    restore_stage,
    stage_key,
    store_stage,
)


def test_key_covers_config_upstream_and_model(tmp_path):
    base = stage_key("sae", {"k": 16}, {"probe": "a"}, {"name": "m"})
    assert base == stage_key("sae", {"k": 16}, {"probe": "a"}, {"name": "m"})
    assert base != stage_key("sae", {"k": 8}, {"probe": "a"}, {"name": "m"})
    assert base != stage_key("sae", {"k": 16}, {"probe": "b"}, {"name": "m"})
    assert base != stage_key("sae", {"k": 16}, {"probe": "a"}, {"name": "n"})
    assert base != stage_key("match", {"k": 16}, {"probe": "a"}, {"name": "m"})
    assert len(code_fingerprint()) == 16


def test_model_key_follows_the_weights_not_the_name(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights v1")
    first = model_source_key({"name": str(folder)})
    (folder / "model.safetensors").write_bytes(b"weights v2")
    assert model_source_key({"name": str(folder)}) != first
    organism = model_source_key({"name": "organism"})
    assert "model.safetensors" in organism["files"]


def test_store_then_restore_and_incomplete_entries_are_ignored(tmp_path):
    src = tmp_path / "stage"
    (src / "sub").mkdir(parents=True)
    (src / "metrics.json").write_text('{"a": 1}')
    (src / "sub" / "x.bin").write_bytes(b"123")
    (src / "wandb").mkdir()
    cache = tmp_path / "cache"
    assert not restore_stage(cache, "probe", "k1", tmp_path / "nothing")
    entry = store_stage(cache, "probe", "k1", src)
    assert (entry / DONE).is_file() and not (entry / "wandb").exists()
    dest = tmp_path / "dest"
    assert restore_stage(cache, "probe", "k1", dest)
    assert (dest / "sub" / "x.bin").read_bytes() == b"123" and not (dest / DONE).exists()
    half = cache / "stages" / "probe-k2"  # a crashed store: no completion marker
    half.mkdir()
    (half / "metrics.json").write_text("{}")
    assert not restore_stage(cache, "probe", "k2", tmp_path / "dest2")
