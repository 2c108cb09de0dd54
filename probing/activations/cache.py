"""On-disk cache of prompt activations: sharded safetensors + a manifest JSON.

Layout of one cache entry (a content-addressed folder ``<cache_dir>/activations/<key>/``)::

    manifest.json            model, layers, position, data fingerprint, dtype, N, labels, ids,
                             shards [{file, start, end, sha256, bytes}], complete
    shard-00000.safetensors  tensor "activations" [end - start, n_layers, d_model] float32

Shards and manifest are written atomically (temp file + rename); the manifest is rewritten after
each shard, so an interrupted run resumes from the last complete shard. Every shard is checked
against its sha256 before it is read: a corrupted or truncated shard is never silently read.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from probing import __version__
from probing.activations.extract import POSITIONS, extract_activations
from probing.errors import LirefError
from probing.fingerprint import data_fingerprint, file_sha256, fingerprint, model_fingerprint
from probing.hooks import check_layers
from probing.io import atomic_write_bytes, read_json, write_json
from probing.models import model_id

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "ActivationCache", "CachedActivations", "cached_extract", "find_cache"]

FORMAT = "liref-activations/1"
MANIFEST = "manifest.json"


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
        self.folder = Path(folder)

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        m = read_json(self.manifest_path)
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise LirefError(f"{self.manifest_path} is not a liref activation manifest ({FORMAT})")
        return m

    def is_complete(self) -> bool:
        return self.exists() and bool(self.manifest().get("complete"))

    def verify_shard(self, shard: dict[str, Any]) -> Path:
        """Check a shard's size and sha256 against the manifest; raise if it differs."""
        path = self.folder / shard["file"]
        if not path.is_file():
            raise LirefError(f"activation cache shard missing: {path}")
        size = path.stat().st_size
        if size != shard["bytes"]:
            raise LirefError(
                f"activation cache shard {path} is truncated or corrupted: {size} bytes, "
                f"manifest says {shard['bytes']}; delete the folder {self.folder} to re-extract"
            )
        if file_sha256(path) != shard["sha256"]:
            raise LirefError(
                f"activation cache shard {path} is corrupted (sha256 mismatch); "
                f"delete the folder {self.folder} to re-extract"
            )
        return path

    def _read_shard(self, shard: dict[str, Any]) -> torch.Tensor:
        path = self.verify_shard(shard)
        try:
            acts = load_file(str(path))["activations"]
        except (SafetensorError, KeyError, OSError) as exc:
            raise LirefError(f"activation cache shard {path} cannot be read: {exc}") from exc
        if acts.shape[0] != shard["end"] - shard["start"]:
            raise LirefError(f"activation cache shard {path} has {acts.shape[0]} rows, "
                             f"manifest says {shard['end'] - shard['start']}")
        return acts

    def load(self, layers: Sequence[int] | None = None) -> CachedActivations:
        """Read a complete cache (all shards verified); optionally keep only some layers."""
        m = self.manifest()
        if not m.get("complete"):
            raise LirefError(f"activation cache {self.folder} is incomplete "
                             f"({len(m['shards'])} shards written); re-run extraction to resume")
        acts = torch.cat([self._read_shard(s) for s in m["shards"]], dim=0)
        cached = list(m["layers"])
        if layers is not None:
            missing = [layer for layer in layers if layer not in cached]
            if missing:
                raise LirefError(f"layers {missing} are not cached in {self.folder}; "
                                 f"cached layers: {cached}")
            acts = acts[:, [cached.index(layer) for layer in layers]]
            cached = list(layers)
        return CachedActivations(acts=acts, layers=cached, manifest=m, folder=self.folder)

    def write_shard(self, manifest: dict[str, Any], start: int, acts: torch.Tensor) -> None:
        """Atomically write rows ``start..start+len(acts)`` then the updated manifest."""
        name = f"shard-{start:08d}.safetensors"
        blob = save({"activations": acts.contiguous()})
        atomic_write_bytes(self.folder / name, blob)
        manifest["shards"].append({
            "file": name, "start": start, "end": start + acts.shape[0],
            "sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob),
        })
        write_json(self.manifest_path, manifest)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive lock so parallel sweep jobs never write one entry at the same time."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def _spec(model: Any, prompts: Sequence[str], labels: Sequence[str] | None,
          position: str, add_special_tokens: bool) -> dict[str, Any]:
    return {
        "model": model_id(model),
        "add_special_tokens": add_special_tokens,
        "model_fingerprint": model_fingerprint(model),
        "position": position,
        "data_fingerprint": data_fingerprint(prompts, labels),
        "dtype": "float32",
    }


def find_cache(cache_dir: str | Path, spec: dict[str, Any], layers: Sequence[int]) -> Path | None:
    """A complete cache entry for ``spec`` holding all of ``layers``, if any."""
    root = Path(cache_dir) / "activations"
    if not root.is_dir():
        return None
    for manifest in sorted(root.glob(f"*/{MANIFEST}")):
        try:
            m = read_json(manifest)
        except LirefError:
            continue
        if (m.get("complete") and all(m.get(k) == v for k, v in spec.items())
                and set(layers) <= set(m.get("layers", []))):
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

    The entry is keyed by model, data (prompts + labels), position and layers; a complete entry
    with a superset of ``layers`` is reused too. Returns ``CachedActivations`` whose ``acts`` is
    ``[N, len(layers), d_model]``.
    """
    if position not in POSITIONS:
        raise LirefError(f"unknown position {position!r}; allowed: {list(POSITIONS)}")
    if shard_size < 1:
        raise LirefError(f"shard_size must be >= 1, got {shard_size}")
    layers = check_layers(model, layers)
    spec = _spec(model, prompts, labels, position, add_special_tokens)
    hit = find_cache(cache_dir, spec, layers)
    if hit is not None:
        try:
            cached = ActivationCache(hit).load(layers)
            log.info("activation cache hit: %s", hit)
            return cached
        except LirefError as exc:  # a damaged entry is reported, then repaired below
            log.warning("activation cache entry unusable, repairing: %s", exc)
    key = fingerprint({**spec, "layers": layers})
    cache = ActivationCache(Path(cache_dir) / "activations" / key)
    with cache.lock():
        manifest = cache.manifest() if cache.exists() else None
        if manifest is None or manifest.get("shard_size") != shard_size:
            manifest = {
                "format": FORMAT, **spec, "layers": layers, "n": len(prompts),
                "d_model": None, "shard_size": shard_size, "labels": list(labels or []),
                "ids": list(ids or []), "shards": [], "complete": False,
                "liref_version": __version__,
            }
        # keep only verified shards; a bad one is reported and re-extracted, never read
        good = []
        for shard in manifest["shards"]:
            try:
                cache.verify_shard(shard)
                good.append(shard)
            except LirefError as exc:
                log.warning("re-extracting: %s", exc)
        manifest["shards"] = good
        manifest["complete"] = False
        done = {s["start"] for s in good}
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
        write_json(cache.manifest_path, manifest)
    return cache.load(layers)
