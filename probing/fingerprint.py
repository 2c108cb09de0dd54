"""Stable content fingerprints for cache keys, and the sha256 content hashes of cache files."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["bytes_sha256", "data_fingerprint", "file_sha256", "fingerprint", "model_fingerprint"]


def fingerprint(obj: Any, length: int = 16) -> str:
    """sha256 of ``obj``'s canonical JSON, truncated to ``length`` hex chars."""
    blob = json.dumps(obj, sort_keys=True, default=str, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


def bytes_sha256(data: bytes) -> str:
    """Hex sha256 of ``data`` (what cache manifests record for each shard)."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in chunks (equals ``bytes_sha256`` of its content)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model: Any) -> str:
    """A cheap hash of a loaded model: its full config (without the folder it was loaded from)
    plus the first 4096 values of a few weights, so a model retrained or edited in place under
    the same name gets a new key, and the same weights copied elsewhere keep theirs."""
    import torch

    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    if cfg is not None and hasattr(cfg, "to_dict"):
        config = {k: v for k, v in cfg.to_dict().items()
                  if k not in ("_name_or_path", "liref_name")}  # where it was loaded from
        h.update(json.dumps(config, sort_keys=True, default=str).encode("utf-8"))
    params = list(model.named_parameters())
    picks = params[:2] + params[len(params) // 2 : len(params) // 2 + 1] + params[-2:]
    for name, p in picks:
        h.update(name.encode("utf-8"))
        sample = p.detach().reshape(-1)[:4096].to("cpu", torch.float32).contiguous()
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:16]


def data_fingerprint(prompts: Sequence[str], labels: Sequence[Any] | None = None) -> str:
    return fingerprint({"prompts": list(prompts), "labels": list(labels or [])})
