"""On-disk cache of prompt activations: sharded safetensors + a manifest JSON.

Layout of one cache entry (a content-addressed folder ``<cache_dir>/activations/<key>/``, lock
``<key>.lock`` beside it; the crash-safe core is ``probing.activations.store``)::

    manifest.json            format "liref-activations" version 2, model, layers, position, data
                             and ids fingerprints, dtype, N, labels, ids,
                             shards [{file, start, end, sha256, bytes}], complete
    shard-00000000.safetensors  tensor "activations" [end - start, n_layers, d_model] float32

The key covers model, data (prompts + labels), the prompt ``ids``, position and layers. Shards and
manifest are written atomically (temp file + rename); the manifest is rewritten after each shard,
so an interrupted run (even ``kill -9``) resumes from the last complete shard. Every shard is
checked against its size and sha256 before it is read: a corrupted or truncated shard is never
silently read. A damaged manifest is discarded with a warning and the entry rebuilt.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from probing.activations.extract import POSITIONS, extract_activations
from probing.activations.store import MANIFEST, CacheEntry, CorruptCacheError
from probing.errors import LirefError
from probing.fingerprint import data_fingerprint, fingerprint, model_fingerprint
from probing.model.blocks import model_id
from probing.model.hooks import check_layers
from probing.version import __version__

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "VERSION", "ActivationCache", "CachedActivations", "cached_extract",
           "find_cache", "load_activations"]

#: the file a probe or extract run writes to say which cache entry holds its activations
POINTER = "activations.json"

FORMAT = "liref-activations"
VERSION = 2
SHARD_GLOB = "shard-*.safetensors"
_SCHEMA = {"model": str, "model_fingerprint": str, "position": str, "data_fingerprint": str,
           "ids_fingerprint": str, "add_special_tokens": bool, "dtype": str, "layers": list,
           "n": int, "d_model": (int, type(None)), "shard_size": int, "labels": list,
           "ids": list}
_SHARD_SCHEMA = {"start": int, "end": int}


@dataclass
class CachedActivations:
    """Activations read back from a cache: ``acts`` is ``[N, n_layers, d_model]`` float32."""

    acts: torch.Tensor
    layers: list[int]
    manifest: dict[str, Any]
    folder: Path

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels", []))

    @property
    def ids(self) -> list[str]:
        return list(self.manifest.get("ids", []))

    def layer(self, layer: int) -> torch.Tensor:
        """``[N, d_model]`` activations at block ``layer``."""
        if layer not in self.layers:
            raise LirefError(f"layer {layer} is not in this cache; cached layers: {self.layers}")
        return self.acts[:, self.layers.index(layer)]


class ActivationCache:
    """One cache entry (folder). Use ``cached_extract`` for the usual read-or-compute path."""

    def __init__(self, folder: str | Path) -> None:
        self.entry = CacheEntry(folder, FORMAT, VERSION, _SCHEMA, _SHARD_SCHEMA)
        self.folder = self.entry.folder

    @property
    def manifest_path(self) -> Path:
        return self.entry.manifest_path

    def exists(self) -> bool:
        return self.entry.exists()

    def manifest(self) -> dict[str, Any]:
        """The checked manifest; a damaged one raises ``LirefError`` naming the folder."""
        return self.entry.read_manifest()

    def _read_shard(self, shard: dict[str, Any]) -> torch.Tensor:
        acts = self.entry.read_shard(shard)
        if acts.shape[0] != shard["end"] - shard["start"]:
            raise LirefError(f"activation cache shard {self.folder / shard['file']} has "
                             f"{acts.shape[0]} rows, manifest says {shard['end'] - shard['start']}")
        return acts

    def load(self, layers: Sequence[int] | None = None) -> CachedActivations:
        """Read a complete cache (all shards verified); optionally keep only some layers."""
        m = self.manifest()
        if not m["complete"]:
            raise LirefError(f"activation cache {self.folder} is incomplete "
                             f"({len(m['shards'])} shards written); re-run extraction to resume")
        cached = list(m["layers"])
        keep = list(range(len(cached)))
        if layers is not None:
            missing = [layer for layer in layers if layer not in cached]
            if missing:
                raise LirefError(f"layers {missing} are not cached in {self.folder}; "
                                 f"cached layers: {cached}")
            keep = [cached.index(layer) for layer in layers]
            cached = list(layers)
        # one result tensor filled shard by shard: peak memory = the result + one shard
        acts = torch.empty((int(m["n"]), len(keep), int(m["d_model"])), dtype=torch.float32)
        filled = 0
        for shard in m["shards"]:
            rows = self._read_shard(shard)
            acts[shard["start"]:shard["end"]] = rows[:, keep] if len(keep) < rows.shape[1] \
                else rows
            filled += rows.shape[0]
        if filled != acts.shape[0]:
            raise CorruptCacheError(f"activation cache {self.folder}: its shards hold {filled} "
                                    f"rows, the manifest says {acts.shape[0]}; delete the "
                                    "folder to re-extract")
        return CachedActivations(acts=acts, layers=cached, manifest=m, folder=self.folder)

    def write_shard(self, manifest: dict[str, Any], start: int, acts: torch.Tensor) -> None:
        """Atomically write rows ``start..start+len(acts)`` then the updated manifest."""
        record = self.entry.write_shard(f"shard-{start:08d}.safetensors", acts)
        manifest["shards"].append({**record, "start": start, "end": start + acts.shape[0]})
        self.entry.write_manifest(manifest)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock so parallel sweep jobs never write one entry at the same time."""
        with self.entry.lock():
            yield


def _spec(model: Any, prompts: Sequence[str], labels: Sequence[str] | None,
          ids: Sequence[str] | None, position: str, add_special_tokens: bool) -> dict[str, Any]:
    return {
        "model": model_id(model),
        "add_special_tokens": add_special_tokens,
        "model_fingerprint": model_fingerprint(model),
        "position": position,
        "data_fingerprint": data_fingerprint(prompts, labels),
        "ids_fingerprint": fingerprint([str(i) for i in ids or []]),
        "dtype": "float32",
    }


def find_cache(cache_dir: str | Path, spec: dict[str, Any], layers: Sequence[int]) -> Path | None:
    """A complete cache entry for ``spec`` holding all of ``layers``, if any (entries with a
    damaged manifest are skipped here; the extraction path rebuilds them)."""
    root = Path(cache_dir).expanduser() / "activations"
    if not root.is_dir():
        return None
    for manifest in sorted(root.glob(f"*/{MANIFEST}")):
        try:
            m = ActivationCache(manifest.parent).manifest()
        except CorruptCacheError as exc:
            log.debug("skipping %s", exc)
            continue
        if (m["complete"] and all(m.get(k) == v for k, v in spec.items())
                and set(layers) <= set(m["layers"])):
            return manifest.parent
    return None


def cached_extract(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    cache_dir: str | Path,
    layers: Sequence[int] | None = None,
    position: str = "last",
    batch_size: int = 8,
    labels: Sequence[str] | None = None,
    ids: Sequence[str] | None = None,
    shard_size: int = 512,
    progress: bool = True,
    add_special_tokens: bool = True,
) -> CachedActivations:
    """Read activations from the cache, or extract them (resuming a partial entry).

    The entry is keyed by model, data (prompts + labels), ``ids``, position and layers; a
    complete entry with a superset of ``layers`` is reused too. Parallel callers are serialised
    by the entry's file lock; a damaged entry (manifest or shard) is repaired with a warning.
    Returns ``CachedActivations`` whose ``acts`` is ``[N, len(layers), d_model]``.
    """
    if position not in POSITIONS:
        raise LirefError(f"unknown position {position!r}; allowed: {list(POSITIONS)}")
    if shard_size < 1:
        raise LirefError(f"shard_size must be >= 1, got {shard_size}")
    if ids is not None and len(ids) != len(prompts):
        raise LirefError(f"got {len(ids)} ids for {len(prompts)} prompts: give one id per prompt")
    layers = check_layers(model, layers)
    spec = _spec(model, prompts, labels, ids, position, add_special_tokens)
    hit = find_cache(cache_dir, spec, layers)
    if hit is not None:
        try:
            cached = ActivationCache(hit).load(layers)
            log.info("activation cache hit: %s", hit)
            return cached
        except LirefError as exc:  # a damaged entry is reported, then repaired below
            log.warning("activation cache entry unusable, repairing: %s", exc)
    key = fingerprint({**spec, "layers": layers})
    cache = ActivationCache(Path(cache_dir).expanduser() / "activations" / key)
    entry = cache.entry
    with cache.lock():
        manifest = entry.read_manifest_or_discard()
        if manifest is None or manifest["shard_size"] != shard_size:
            manifest = entry.new_manifest(
                **spec, layers=layers, n=len(prompts), d_model=None, shard_size=shard_size,
                labels=list(labels or []), ids=[str(i) for i in ids or []],
                liref_version=__version__)
        # drop interrupted writes, keep only verified shards (a bad one is re-extracted)
        entry.clean(manifest, SHARD_GLOB)
        manifest["shards"] = entry.verified(manifest["shards"])
        manifest["complete"] = False
        done = {s["start"] for s in manifest["shards"]}
        if done:
            log.info("resuming activation cache %s: %d shards already done", cache.folder,
                     len(done))
        for start in range(0, len(prompts), shard_size):
            if start in done:
                continue
            acts = extract_activations(model, tokenizer, prompts[start : start + shard_size],
                                       layers, position, batch_size, progress,
                                       add_special_tokens)
            manifest["d_model"] = int(acts.shape[-1])
            cache.write_shard(manifest, start, acts)
        manifest["shards"].sort(key=lambda s: s["start"])
        manifest["complete"] = True
        entry.write_manifest(manifest)
    return cache.load(layers)


def load_activations(path: str | Path, layers: Sequence[int] | None = None
                     ) -> CachedActivations:
    """Activations ``[N, L, d]`` with their labels and ids, from a cache entry folder or from a
    run folder (``train.extract``, ``train.probe``, a pipeline's ``probe/``) whose
    ``activations.json`` names the entry."""
    from probing.io import read_json

    folder = Path(path)
    if (folder / POINTER).is_file() and not (folder / MANIFEST).is_file():
        folder = Path(read_json(folder / POINTER)["cache"])
        if not (folder / MANIFEST).is_file():
            raise LirefError(f"{path} points at the activation cache {folder}, which is gone; "
                             "re-run the job (it re-extracts into the cache)")
    return ActivationCache(folder).load(layers)
